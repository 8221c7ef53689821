"""The filesystem `ObjectDriver`: objects are files below a root directory.

It reuses `FilesystemDriver` for reads and small objects. A writer appends to a hidden sibling
of its key, `.<name>.<id>.upload`, that it holds with an exclusive `flock` while open;
`commit` fsyncs it and links it to the key (never replacing a content-addressed object). A
writer resumed from a state whose file someone still holds locked (a writer that lost its
lease and may still write) does not touch that file: it copies the first `offset` bytes into a
new file and unlinks the old name, so whatever the old writer writes later lands in a file
that no key and no state names.

`walk` skips those hidden writer files and `put`'s temporary files: they are no objects. An
object's time is the later of its file's mtime and ctime: `link`, `rename` (a commit, a move)
change the ctime, so an upload written slowly and committed just now is not taken for old.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import itertools
import os
import re
import stat
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from glob import escape
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

from moorage.storage import paths
from moorage.storage.base import PathNotFound, StorageError
from moorage.storage.filesystem import (
    DIRECT_FROM,
    FilesystemDriver,
    FileWriter,
    _full_is_typed,
    _link_new,
    fsync_dir,
)
from moorage.storage.objects import (
    REDIRECT_EXPIRES,
    Listed,
    ObjectDriver,
    ObjectWriter,
    StaleWriter,
    decode_state,
    encode_state,
)

DRIVER = "filesystem"
WALK_BATCH = 1000  # entries listed per trip to a thread
# A writer's data file (`_data_name`, also of a detached copy) and `put`'s temporary file.
_NOT_OBJECTS = re.compile(r"^\..*\.(?:[0-9a-f]{32}\.upload|\d+\.[0-9a-f]{32}\.tmp)$")


def _data_name(key_path: Path) -> str:
    return f".{key_path.name}.{uuid.uuid4().hex}.upload"


def _lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _addressable(name: str) -> bool:
    """A file name that can be part of a key (keys are text: not one with undecodable bytes)."""
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return True


class FilesystemObjectWriter:
    def __init__(
        self,
        key: str,
        path: Path,
        data: Path,
        file: FileWriter,
        fd: int,
        resolve: Callable[[str], Path],
    ) -> None:
        self._key = key
        self._path = path  # where the object appears on commit
        self._resolve = resolve  # a key's path (a commit's `target`)
        self._data = data  # the file being appended to
        self._file = file
        self._fd = fd
        self._open = True

    @property
    def size(self) -> int:
        return self._file.size

    def _check_open(self) -> None:
        if not self._open:
            raise StorageError(f"writer of {self._key} is closed")

    async def write(self, data: bytes) -> None:
        self._check_open()
        await self._file.write(data)

    def expect(self, size: int) -> None:
        self._file.expect(size)

    def blocking_write(self) -> Callable[[memoryview], None]:
        return self._write_now

    def _write_now(self, data: memoryview) -> None:
        self._check_open()
        self._file.write_now(data)

    async def state(self) -> bytes:
        self._check_open()
        if self._file.staged:  # the state names the file's size: what is staged goes first
            await asyncio.to_thread(self._file.flush_now)
        return encode_state(DRIVER, file=self._data.name, offset=self._file.size)

    async def close(self) -> None:
        if self._open:
            self._open = False
            await self._file.close()  # also releases the flock

    @_full_is_typed
    def _commit(self, target: str | None) -> str:
        """Durable at `target` if given and free, else at the writer's own key; returns which."""
        self._file.flush_now()
        os.fsync(self._fd)
        if target is not None:
            path = self._resolve(target)
            path.parent.mkdir(parents=True, exist_ok=True)
            if _link_new(self._data, path):
                self._data.unlink(missing_ok=True)
                fsync_dir(path.parent)
                return target
        if paths.is_content_addressed(self._key):
            _link_new(self._data, self._path)  # an object already there is never replaced
        else:
            os.replace(self._data, self._path)
        self._data.unlink(missing_ok=True)
        fsync_dir(self._path.parent)
        return self._key

    async def commit(self, target: str | None = None) -> str:
        self._check_open()
        if target is not None and not paths.is_content_addressed(target):
            raise ValueError(f"a commit's target must be content-addressed: {target}")
        try:
            return await asyncio.to_thread(self._commit, target)
        finally:
            await self.close()

    async def cancel(self) -> None:
        if self._open:
            await self.close()
            await asyncio.to_thread(self._data.unlink, True)


_letting_go: set[asyncio.Future[None]] = set()


def _let_go(opening: asyncio.Future[FilesystemObjectWriter], resumed: bool) -> None:
    """Cancel (a new writer) or close (a resumed one) the writer `opening` made, if it made one."""
    if opening.cancelled() or opening.exception() is not None:
        return
    writer = opening.result()
    done = asyncio.ensure_future(writer.close() if resumed else writer.cancel())
    _letting_go.add(done)  # a reference until it is done
    done.add_done_callback(_letting_go.discard)


class FilesystemObjects:
    def __init__(self, root: Path, direct_from: int | None = DIRECT_FROM) -> None:
        self.files = FilesystemDriver(root)
        # An upload's bytes past this offset are written around the page cache (None: never).
        self.direct_from = direct_from
        self.root = self.files.root

    def _stat(self, key: str) -> int | None:
        try:
            info = os.stat(self.files._path(key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return info.st_size if stat.S_ISREG(info.st_mode) else None  # a folder is no object

    async def stat(self, key: str) -> int | None:
        return await asyncio.to_thread(self._stat, key)

    def _check(self) -> None:
        # The root is made when the driver is; gone, replaced or read-only since is a fault.
        try:
            info = os.stat(self.root)
        except OSError as exc:
            raise StorageError(f"storage root {self.root}: {exc.strerror}") from exc
        if not stat.S_ISDIR(info.st_mode):
            raise StorageError(f"storage root {self.root} is not a directory")
        if not os.access(self.root, os.R_OK | os.W_OK | os.X_OK):
            raise StorageError(f"storage root {self.root} is not readable and writable")

    async def check(self) -> None:
        await asyncio.to_thread(self._check)

    def reader(self, key: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        return self.files.read(key, offset, length)

    async def get(self, key: str) -> bytes:
        return await self.files.get(key)

    async def put(self, key: str, data: bytes) -> None:
        await self.files.put(key, data)

    @_full_is_typed
    def _open(self, key: str, state: bytes | None) -> FilesystemObjectWriter:
        path = self.files._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        if state is None:
            data = path.with_name(_data_name(path))
            fd = os.open(data, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            _lock(fd)
            offset = 0
        else:
            fields = decode_state(DRIVER, state)
            offset = int(fields["offset"])
            data = path.with_name(str(fields["file"]))
            if "/" in data.name or not data.name.endswith(".upload"):
                raise StorageError("writer state names no upload file")
            data, fd = self._resume(key, data, offset)
        file = os.fdopen(fd, "r+b", buffering=0)
        file.seek(offset)
        writer = FileWriter(file, offset, self.direct_from)
        return FilesystemObjectWriter(key, path, data, writer, fd, self.files._path)

    def _resume(self, key: str, data: Path, offset: int) -> tuple[Path, int]:
        try:
            fd = os.open(data, os.O_RDWR)
        except FileNotFoundError:
            raise StaleWriter(f"the upload data of {key} is gone") from None
        try:
            size = os.fstat(fd).st_size
            if size < offset:
                raise StaleWriter(f"{key} holds {size} bytes, cannot resume at {offset}")
            if _lock(fd):
                # Nobody else has the file open for writing: append in place, dropping what a
                # failed write left past `offset`. Only then: a truncate to the same size is
                # not free (ext4 zeroes the last partial page again, waiting for its
                # write-back, and the commit's fsync writes it once more).
                if size > offset:
                    os.ftruncate(fd, offset)
                return data, fd
            return self._detach(data, fd, offset)
        except BaseException:
            os.close(fd)
            raise

    def _detach(self, data: Path, old: int, offset: int) -> tuple[Path, int]:
        """The file is still held by another writer (one that lost its lease): continue in a
        copy of its first `offset` bytes, and unlink the old name so that nothing reads what
        that writer still writes."""
        new = data.with_name(_data_name(data))
        fd = os.open(new, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            _lock(fd)
            copied = 0
            while copied < offset:
                n = os.copy_file_range(old, fd, offset - copied, copied, copied)
                if n == 0:
                    raise StaleWriter(f"{data.name} holds {copied} bytes, not {offset}")
                copied += n
            data.unlink(missing_ok=True)
        except BaseException:
            os.close(fd)
            new.unlink(missing_ok=True)
            raise
        os.close(old)
        return new, fd

    async def writer(self, key: str, state: bytes | None = None) -> FilesystemObjectWriter:
        opening = asyncio.ensure_future(asyncio.to_thread(self._open, key, state))
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:
            # The file is made on a thread that goes on regardless (a request cancelled as its
            # client hung up): the writer nobody will hold is let go of once it is made, its
            # new file removed. A resumed one is only closed: its file is the upload's.
            opening.add_done_callback(functools.partial(_let_go, resumed=state is not None))
            raise

    @_full_is_typed
    def _move(self, source: str, target: str) -> bool:
        src, dst = self.files._path(source), self.files._path(target)
        if not src.is_file():
            raise PathNotFound(source)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if paths.is_content_addressed(target):
            if not _link_new(src, dst):
                return False
            src.unlink(missing_ok=True)
        else:
            os.replace(src, dst)
        fsync_dir(dst.parent)
        return True

    async def move(self, source: str, target: str) -> bool:
        return await asyncio.to_thread(self._move, source, target)

    def _delete_uploads(self, key: str) -> None:
        path = self.files._path(key)
        if path.parent.is_dir():
            for leftover in path.parent.glob(f".{escape(path.name)}.*.upload"):
                leftover.unlink(missing_ok=True)

    async def delete(self, key: str) -> None:
        await self.files.delete(key)
        await asyncio.to_thread(self._delete_uploads, key)

    def _listed(self, key: str, info: os.stat_result) -> Listed:
        return Listed(key, info.st_size, max(info.st_mtime, info.st_ctime))

    def _walk(self, prefix: str, after: str | None) -> Iterator[Listed]:
        """Depth first, in key order: one folder's entries at a time, sorted by the key each
        starts (a folder's name sorts with its `/`, so `a/b` comes after `a-c` as the keys
        do); folders wholly before `after` are not opened. What vanishes meanwhile is
        skipped."""
        start = self.root if prefix == "" else self.files._path(prefix)
        try:
            info = os.stat(start, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return
        if stat.S_ISREG(info.st_mode):
            if not _NOT_OBJECTS.match(start.name) and (after is None or prefix > after):
                yield self._listed(prefix, info)
            return
        # A stack of folders' remaining entries, each list reversed so that pop() is next.
        pending = [self._entries(str(start), f"{prefix}/" if prefix else "", after)]
        while pending:
            entries = pending[-1]
            if not entries:
                pending.pop()
                continue
            key, entry = entries.pop()
            try:
                if key.endswith("/"):
                    pending.append(self._entries(entry.path, key, after))
                else:
                    yield self._listed(key, entry.stat(follow_symlinks=False))
            except FileNotFoundError:
                continue

    @staticmethod
    def _entries(folder: str, keys: str, after: str | None) -> list[tuple[str, os.DirEntry[str]]]:
        """The objects and folders of `folder` (whose keys start with `keys`) that hold keys
        after `after`, each with its key (a folder's ends in `/`), last first."""
        found = []
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if not _addressable(entry.name):
                        continue
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            key = f"{keys}{entry.name}/"
                            # All of its keys start with `key`: after `after` unless `after`
                            # is past `key` without being inside it.
                            if after is None or key > after or after.startswith(key):
                                found.append((key, entry))
                        elif entry.is_file(follow_symlinks=False) and not _NOT_OBJECTS.match(
                            entry.name
                        ):
                            key = keys + entry.name
                            if after is None or key > after:
                                found.append((key, entry))
                    except FileNotFoundError:
                        continue
        except (FileNotFoundError, NotADirectoryError):
            return []
        found.sort(reverse=True)
        return found

    async def walk(self, prefix: str = "", after: str | None = None) -> AsyncIterator[Listed]:
        found = self._walk(prefix, after)
        while batch := await asyncio.to_thread(lambda: list(itertools.islice(found, WALK_BATCH))):
            for listed in batch:
                yield listed

    async def redirect_url(
        self, key: str, method: Literal["GET", "HEAD"] = "GET", expires: int = REDIRECT_EXPIRES
    ) -> str | None:
        return None

    def local_path(self, key: str) -> Path | None:
        return self.files.local_path(key)

    async def close(self) -> None:
        pass


if TYPE_CHECKING:  # mypy checks that the classes meet the protocols
    _driver: ObjectDriver = FilesystemObjects(Path())
    _writer: ObjectWriter = cast(FilesystemObjectWriter, None)
