"""The single exception type of the data layer.

Every message names the offending file or folder, says what is wrong and how to fix it, so that a
user pointing kdad at a dataset on disk can act on the message without reading the code. It is a
``kdad.errors.UserError`` (reported without a traceback) and, as before, a ``ValueError``.
"""

from __future__ import annotations

from kdad.errors import UserError


class DatasetError(UserError, ValueError):
    """A dataset on disk (or a data option) is missing, malformed or inconsistent."""
