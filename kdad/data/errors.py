"""The single exception type of the data layer.

Every message names the offending file or folder, says what is wrong and how to fix it, so that a
user pointing kdad at a dataset on disk can act on the message without reading the code.
"""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset on disk (or a data option) is missing, malformed or inconsistent."""
