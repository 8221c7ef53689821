"""The storage driver protocol.

A driver stores opaque byte strings at slash-separated keys. It offers exactly what the
content layer needs: stat, ranged read, appending write, atomic commit (move into place),
delete and list. Keys are computed in one place, `moorage.storage.paths`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

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


class Writer(Protocol):
    """Appends to an object being written (an upload in progress)."""

    @property
    def size(self) -> int: ...

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None:
        """Finish writing; the object keeps what was written (durable only after commit)."""


class StorageDriver(Protocol):
    async def stat(self, key: str) -> int | None:
        """Size of the object, or None if absent."""

    def local_path(self, key: str) -> Path | None:
        """A local file holding the object, for zero-copy sending; None if not local."""

    def read(self, key: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """Stream `length` bytes (all when None) from `offset`; PathNotFound if absent."""

    async def get(self, key: str) -> bytes:
        """A small object whole."""

    async def put(self, key: str, data: bytes) -> None:
        """Write a small object atomically."""

    async def writer(self, key: str, offset: int, detach: bool = False) -> Writer:
        """Open `key` for appending at `offset`, dropping anything stored past it.

        `detach`: someone else may still hold the old object open for writing (a writer whose
        lease ran out); first give `key` a new object with the first `offset` bytes, so that
        nothing that one writes can land in what `key` holds. Content-addressed keys
        (`paths.is_content_addressed`) are never opened for writing: StorageError."""

    async def commit(self, source: str, target: str, size: int | None = None) -> None:
        """Atomically move `source` to `target`, keeping only its first `size` bytes when given
        (what lies past them is a failed write's leftover). Target content is content-addressed,
        so if it already exists the source is simply dropped."""

    async def delete(self, key: str) -> None:
        """Remove an object or a whole prefix; absent is not an error."""

    async def list(self, prefix: str) -> list[str]:
        """Keys directly below `prefix`."""
