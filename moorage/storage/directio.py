"""Appending the large part of an upload to its file around the page cache (`O_DIRECT`).

A buffered write copies each block into page-cache pages that the kernel must find first (on a
virtual machine, pages the host may have to fault in), marks them dirty, and writes them back
later; the commit's fsync then waits for that write-back. For a large upload that is the most
expensive part of a push, and the most variable. Written with `O_DIRECT`, a block goes from a
reused buffer straight to the device, and a gigabyte pushed does not push a gigabyte of other
files out of the cache (MinIO writes large objects the same way).

`DirectAppender` takes the bytes from the thread that receives and hashes them, copies them
into a stage of `STAGE` bytes aligned to the file's blocks, and has a pool thread write each
full stage while the next one fills: one write in flight per upload. What is left at a flush
(less than a stage, the upload's tail or the end of a chunk) is written through the page cache,
as every byte was before; the next direct write over the same block is coherent with it (the
kernel writes back and drops cached pages in the range of a direct write).

Where direct writes cannot help or cannot work (a file in memory, tmpfs or ramfs, where the
page cache is the storage; a filesystem that refuses `O_DIRECT` or its alignment), the appender
is not made or falls back to buffered writes, and nothing else changes.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import errno
import mmap
import os
from collections.abc import Callable

ALIGN = 4096  # file offset, length and memory alignment of a direct write
STAGE = 1 << 20  # bytes per direct write
_MEMORY_FILESYSTEMS = frozenset({0x01021994, 0x858458F6})  # TMPFS_MAGIC, RAMFS_MAGIC

# Threads that write full stages; each upload has at most one write in flight, so an upload
# never waits for another's thread except behind more uploads than threads.
_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="direct-write")


def _fstatfs() -> Callable[[int, ctypes.Array[ctypes.c_char]], int] | None:
    try:
        call: Callable[[int, ctypes.Array[ctypes.c_char]], int] = ctypes.CDLL(None).fstatfs
    except (OSError, AttributeError):
        return None
    return call


_FSTATFS = _fstatfs()


def _filesystem_type(fd: int) -> int | None:
    """The `f_type` of the filesystem holding `fd` (Linux `fstatfs`), None if unknown."""
    if _FSTATFS is None:
        return None
    buffer = ctypes.create_string_buffer(256)  # struct statfs: f_type is its first word
    if _FSTATFS(fd, buffer) != 0:
        return None
    return ctypes.c_long.from_buffer(buffer).value


def open_direct(fd: int) -> int | None:
    """A second descriptor of `fd`'s file, for direct writes; None where there is no use in
    one (a file in memory) or the system has none."""
    direct = getattr(os, "O_DIRECT", None)
    if direct is None or _filesystem_type(fd) in (None, *_MEMORY_FILESYSTEMS):
        return None
    try:
        # A new open file description: O_DIRECT set on it leaves `fd`'s own untouched.
        return os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | direct | os.O_CLOEXEC)
    except OSError:
        return None


def pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        if not written:
            raise OSError(errno.EIO, "short write")
        data = data[written:]
        offset += written


class DirectAppender:
    """Appends at the end of a file: full stages with `O_DIRECT` on a pool thread, the rest
    through `fd`'s page cache at `flush`. Not thread-safe: one writing thread at a time.

    An error of a stage's write (a full disk) is raised by the next `append` or `flush`; after
    one, `discard` must be called before the file is truncated, so that no write still in
    flight lands past the truncation."""

    def __init__(self, fd: int, direct_fd: int) -> None:
        self._fd = fd
        self._direct_fd: int | None = direct_fd
        self._stages: list[mmap.mmap] = []
        self._stage: mmap.mmap | None = None
        self._base = 0  # file offset of the stage's first byte (aligned)
        self._fill = 0  # bytes of the stage in use
        self._pending: concurrent.futures.Future[None] | None = None

    @property
    def staged(self) -> bool:
        """Whether some bytes appended are not written yet (`flush` writes them)."""
        return self._stage is not None or self._pending is not None

    def append(self, data: memoryview, offset: int) -> None:
        """Append `data`, which belongs at `offset`: the file's end, counting staged bytes."""
        if self._stage is None:
            self._begin(offset)
        assert self._base + self._fill == offset, "appends must be contiguous"
        while data:
            stage = self._stage
            assert stage is not None
            take = min(len(data), STAGE - self._fill)
            stage[self._fill : self._fill + take] = data[:take]
            self._fill += take
            data = data[take:]
            if self._fill == STAGE:
                self._wait()
                self._pending = _POOL.submit(self._write_stage, stage, self._base)
                self._base += STAGE
                self._fill = 0
                self._stage = self._other(stage)

    def flush(self) -> None:
        """Write everything appended; the last partial stage goes through the page cache."""
        self._wait()
        stage, self._stage = self._stage, None
        if stage is not None and self._fill:
            with memoryview(stage) as view:
                pwrite_all(self._fd, view[: self._fill], self._base)
        self._fill = 0

    def discard(self) -> None:
        """Drop what is staged, after the write in flight (if any) has ended either way."""
        with contextlib.suppress(OSError):
            self._wait()
        self._stage = None
        self._fill = 0

    def close(self) -> None:
        """Release the buffers and the direct descriptor (`flush` or `discard` first)."""
        self.discard()
        for stage in self._stages:
            stage.close()
        self._stages.clear()
        if self._direct_fd is not None:
            os.close(self._direct_fd)
            self._direct_fd = None

    def _begin(self, offset: int) -> None:
        """Start a stage at the aligned block holding `offset`, with that block's bytes before
        `offset` read back from the file (written through the page cache before)."""
        self._base = offset - offset % ALIGN
        self._fill = offset - self._base
        self._stage = self._other(None)
        if self._fill:
            head = os.pread(self._fd, self._fill, self._base)
            if len(head) != self._fill:
                raise OSError(errno.EIO, f"read {len(head)} of {self._fill} bytes back")
            self._stage[: self._fill] = head

    def _other(self, current: mmap.mmap | None) -> mmap.mmap:
        """A stage buffer other than `current` (at most two; page-aligned anonymous memory)."""
        for stage in self._stages:
            if stage is not current:
                return stage
        stage = mmap.mmap(-1, STAGE)
        self._stages.append(stage)
        return stage

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _write_stage(self, stage: mmap.mmap, offset: int) -> None:
        view = memoryview(stage)
        try:
            if self._direct_fd is not None:
                try:
                    pwrite_all(self._direct_fd, view, offset)
                    return
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    # The filesystem takes no direct write of this alignment: buffered from now.
                    os.close(self._direct_fd)
                    self._direct_fd = None
            pwrite_all(self._fd, view, offset)
        finally:
            view.release()
