"""The exceptions of the standalone inferencer.

Every message names the offending file (metadata.json, the model file) and says what is wrong, so a
user deploying an export can act on it without reading the code or a runtime's C++ traceback.
"""

from __future__ import annotations


class DeployError(RuntimeError):
    """An export folder, its model file or a runtime cannot serve predictions."""


class MetadataError(DeployError, ValueError):
    """metadata.json is missing, not JSON, written by a newer kdad, or has a missing / ill-typed key."""
