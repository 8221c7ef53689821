"""The filesystem driver: objects are files below a root directory.

Blocking file calls run in the default thread pool so the event loop never waits on a disk.
Commits are `fsync` + `rename` + `fsync(dir)`: after a crash a key either holds its whole
object or does not exist.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO

from moorage.storage.base import PathNotFound, StorageError

READ_SIZE = 1 << 20
WRITEBACK_STEP = 8 << 20
SYNC_FILE_RANGE_WRITE = 2


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    that the commit's fsync finds little left to write instead of the whole blob."""

    def __init__(self, file: BinaryIO, size: int) -> None:
        self._file = file
        self._size = size
        self._started = size  # write-back was started for [.., _started)

    @property
    def size(self) -> int:
        return self._size

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = self._file.write(view)
            if not written:
                raise OSError("short write")
            view = view[written:]
        self._size += len(data)
        if self._size - self._started >= WRITEBACK_STEP:
            self._start_writeback()

    def _start_writeback(self) -> None:
        if _start_writeback is not None and self._size > self._started:
            _start_writeback(self._file.fileno(), self._started, self._size - self._started)
        self._started = self._size

    async def write(self, data: bytes) -> None:
        await asyncio.to_thread(self._write, data)

    def _close(self) -> None:
        try:
            self._start_writeback()
        finally:
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

    def _put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._put, key, data)

    def _open_at(self, key: str, offset: int) -> FileWriter:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        file = os.fdopen(fd, "wb", buffering=0)
        size = os.fstat(fd).st_size
        if size < offset:
            file.close()
            raise StorageError(f"{key} holds {size} bytes, cannot append at {offset}")
        os.ftruncate(fd, offset)
        file.seek(offset)
        return FileWriter(file, offset)

    async def writer(self, key: str, offset: int) -> FileWriter:
        return await asyncio.to_thread(self._open_at, key, offset)

    def _commit(self, source: str, target: str, size: int | None) -> None:
        src, dst = self._path(source), self._path(target)
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            if dst.exists():
                src.unlink(missing_ok=True)  # an empty upload never made its file
                return
            if size == 0:  # an empty upload may never have had a byte written: make its file
                src.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(src, os.O_RDWR | (os.O_CREAT if size == 0 else 0), 0o644)
            try:
                if size is not None:
                    os.ftruncate(fd, size)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(src, dst)
        except FileNotFoundError as exc:
            raise PathNotFound(source) from exc
        _fsync_dir(dst.parent)

    async def commit(self, source: str, target: str, size: int | None = None) -> None:
        await asyncio.to_thread(self._commit, source, target, size)

    def _delete(self, key: str) -> None:
        path = self._path(key)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._delete, key)

    async def list(self, prefix: str) -> list[str]:
        path = self._path(prefix)
        try:
            names = await asyncio.to_thread(os.listdir, path)
        except FileNotFoundError:
            return []
        return sorted(f"{prefix}/{name}" for name in names if not name.startswith("."))
