"""Bytes: a small driver protocol and its drivers. Knows nothing of manifests or HTTP."""

from moorage.storage import paths
from moorage.storage.base import PathNotFound, StorageDriver, StorageError, Writer

__all__ = ["PathNotFound", "StorageDriver", "StorageError", "Writer", "paths"]
