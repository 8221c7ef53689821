"""The storage layer's typed errors. The driver protocol is `moorage.storage.objects`; keys are
computed in one place, `moorage.storage.paths`.
"""

from __future__ import annotations

from moorage import errors


class StorageError(Exception):
    """A storage operation failed."""


class PathNotFound(StorageError):
    """No object at that key."""


class StorageFull(StorageError, errors.StorageFull):
    """No space left (ENOSPC, or a quota: EDQUOT). Also the registry's 507 STORAGE_FULL, so the
    protocols render it as it comes; its message never names a key or a path."""

    def __init__(self) -> None:
        super().__init__()
