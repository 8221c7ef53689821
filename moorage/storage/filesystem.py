"""Files below a root directory: reads, small objects, deletes and the appending file writer,
which `fsobjects.FilesystemObjects` (the filesystem `ObjectDriver`) builds on.

Blocking file calls run in the default thread pool so the event loop never waits on a disk.
A small object is written whole and renamed (or, at a content-addressed key, linked: never
replacing one that is there) into place. A full disk (ENOSPC, EDQUOT) is raised as the typed
`StorageFull`, and a write that fails on it first gives back the space it took.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import functools
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO, ParamSpec, TypeVar

from moorage.storage import directio, paths
from moorage.storage.base import PathNotFound, StorageError, StorageFull

READ_SIZE = 1 << 20
WRITEBACK_STEP = 8 << 20
# An upload's bytes past this offset are written around the page cache (see `FileWriter`).
DIRECT_FROM = 128 << 20
SYNC_FILE_RANGE_WRITE = 2
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})

P = ParamSpec("P")
R = TypeVar("R")


def _full_is_typed(call: Callable[P, R]) -> Callable[P, R]:
    """Raise a full disk from `call` as `StorageFull` (every other error as it was)."""

    @functools.wraps(call)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return call(*args, **kwargs)
        except OSError as exc:
            if exc.errno in FULL_ERRNOS:
                raise StorageFull() from exc
            raise

    return wrapped


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _link_new(source: Path, target: Path) -> bool:
    """Make `target` name the file `source` names, unless `target` exists (then leave it and
    return False)."""
    try:
        os.link(source, target)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise
        # A filesystem without hard links: rename, which replaces an existing target.
        if target.exists():
            return False
        os.replace(source, target)
        return True


def _writeback_starter() -> Callable[[int, int, int], object] | None:
    """`sync_file_range(fd, offset, n, SYNC_FILE_RANGE_WRITE)`: start writing a range of dirty
    pages to disk without waiting for it (Linux; None elsewhere)."""
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)

    def start(fd: int, offset: int, length: int) -> object:
        return call(fd, offset, length, SYNC_FILE_RANGE_WRITE)

    return start


_start_writeback = _writeback_starter()


class FileWriter:
    """Appends to an upload file. No fsync per chunk: an upload's bytes only need to be durable
    when the blob is committed, and `commit` syncs them then (a power loss before that loses an
    unfinished upload, whose digest check would then fail). But the disk is asked to start
    writing every WRITEBACK_STEP bytes as they come, and the rest when the writer closes, so
    that the commit's fsync finds little left to write instead of the whole blob.

    An upload's bytes past `direct_from` are written around the page cache where the filesystem
    allows it (`directio`): the first ones of every upload stay cached for the pulls that often
    follow, a large one neither pays for nor floods the cache. An upload that is known to
    reach `direct_from` (`expect`: a body of declared length) is written that way from where
    it stands: it is large, and only its first bytes would be cached otherwise. Such bytes are
    staged in memory until a stage is full, so `flush_now` must be called before the file's
    size or contents are relied on (the writer's state, the commit's fsync); `close` drops what
    is staged."""

    def __init__(self, file: BinaryIO, size: int, direct_from: int | None = DIRECT_FROM) -> None:
        self._file = file
        self._fd = file.fileno()
        self._origin = size  # where this writer began: bytes past it are only its own
        self._size = size
        self._started = size  # write-back was started for [.., _started)
        self._direct: directio.DirectAppender | None = None
        self._direct_from = direct_from
        self._direct_tried = direct_from is None

    @property
    def size(self) -> int:
        return self._size

    @property
    def staged(self) -> bool:
        """Whether some bytes written are still in memory (`flush_now` writes them)."""
        return self._direct is not None and self._direct.staged

    def expect(self, size: int) -> None:
        """The file will be at least `size` bytes long: if that reaches `direct_from`, what is
        written from now on goes around the page cache."""
        if self._direct_from is not None and size >= self._direct_from:
            self._direct_from = min(self._direct_from, self._size)

    def write_now(self, data: bytes | memoryview) -> None:
        """Append `data` on the calling thread (a blocking call)."""
        view = memoryview(data)
        try:
            limit = self._direct_from
            cached = len(view) if limit is None else min(len(view), max(0, limit - self._size))
            if cached < len(view) and self._appender() is not None:
                if cached:
                    self._write_cached(view[:cached])
                assert self._direct is not None
                self._direct.append(view[cached:], self._size)
                self._size += len(view) - cached
            else:
                self._write_cached(view)
        except OSError as exc:
            self._failed(exc)

    def flush_now(self) -> None:
        """Write what is staged (a blocking call)."""
        if self._direct is not None:
            try:
                self._direct.flush()
            except OSError as exc:
                self._failed(exc)

    def _appender(self) -> directio.DirectAppender | None:
        if not self._direct_tried:
            self._direct_tried = True
            direct_fd = directio.open_direct(self._fd)
            if direct_fd is not None:
                self._direct = directio.DirectAppender(self._fd, direct_fd)
        return self._direct

    def _write_cached(self, view: memoryview) -> None:
        if self.staged:
            assert self._direct is not None
            self._direct.flush()  # what is staged lies before `view`
        directio.pwrite_all(self._fd, view, self._size)
        self._size += len(view)
        if self._size - self._started >= WRITEBACK_STEP:
            self._start_writeback()

    def _failed(self, exc: OSError) -> None:
        if self._direct is not None:
            self._direct.discard()  # no write still in flight lands past the truncation below
        if exc.errno not in FULL_ERRNOS:
            raise exc
        # Give the space back at once: a failed write's bytes are never kept (the upload's
        # offset stays where this writer began), and a full disk must not stay full until the
        # session expires.
        os.ftruncate(self._fd, self._origin)
        self._size = self._started = self._origin
        raise StorageFull() from exc

    def _start_writeback(self) -> None:
        if _start_writeback is not None and self._size > self._started:
            _start_writeback(self._fd, self._started, self._size - self._started)
        self._started = self._size

    async def write(self, data: bytes) -> None:
        await asyncio.to_thread(self.write_now, data)

    def _close(self) -> None:
        try:
            self._start_writeback()
        finally:
            if self._direct is not None:
                # What is still staged was written after the last `state()`: the protocol drops
                # it (`ObjectWriter.close`), so it is not written only to be truncated away.
                self._direct.close()
            self._file.close()

    async def close(self) -> None:
        await asyncio.to_thread(self._close)


class FilesystemDriver:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") or "\0" in p for p in parts):
            raise StorageError(f"invalid storage key {key!r}")
        return self.root.joinpath(*parts)

    async def stat(self, key: str) -> int | None:
        try:
            return (await asyncio.to_thread(os.stat, self._path(key))).st_size
        except FileNotFoundError:
            return None

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    async def read(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        try:
            file = await asyncio.to_thread(open, self._path(key), "rb")
        except FileNotFoundError as exc:
            raise PathNotFound(key) from exc
        try:
            file.seek(offset)
            remaining = length
            while remaining is None or remaining > 0:
                size = READ_SIZE if remaining is None else min(READ_SIZE, remaining)
                chunk = await asyncio.to_thread(file.read, size)
                if not chunk:
                    break
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk
        finally:
            file.close()

    async def get(self, key: str) -> bytes:
        try:
            return await asyncio.to_thread(self._path(key).read_bytes)
        except FileNotFoundError as exc:
            raise PathNotFound(key) from exc

    @_full_is_typed
    def _put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if paths.is_content_addressed(key):
                _link_new(tmp, path)  # a visible blob is never replaced
            else:
                os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(path.parent)

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._put, key, data)

    def _delete(self, key: str) -> None:
        path = self._path(key)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._delete, key)
