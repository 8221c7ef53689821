"""Bytes: a small driver protocol and its drivers. Knows nothing of manifests or HTTP."""

from moorage.storage import paths
from moorage.storage.base import PathNotFound, StorageError
from moorage.storage.objects import ObjectDriver, ObjectWriter, StaleWriter

__all__ = [
    "ObjectDriver",
    "ObjectWriter",
    "PathNotFound",
    "StaleWriter",
    "StorageError",
    "paths",
]
