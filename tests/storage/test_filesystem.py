"""The filesystem driver against the storage driver protocol."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import warnings
from pathlib import Path

import pytest

from moorage.storage import PathNotFound, StorageError, fsobjects
from moorage.storage.filesystem import FilesystemDriver
from moorage.storage.fsobjects import FilesystemObjects


@pytest.fixture
def driver(tmp_path: Path) -> FilesystemDriver:
    return FilesystemDriver(tmp_path / "root")


async def collect(driver: FilesystemDriver, key: str, offset: int = 0, length: int | None = None):
    return b"".join([chunk async for chunk in driver.read(key, offset, length)])


async def test_put_get_stat_read_ranges(driver: FilesystemDriver) -> None:
    await driver.put("a/b", b"0123456789")
    assert await driver.get("a/b") == b"0123456789"
    assert await driver.stat("a/b") == 10
    assert await driver.stat("a/missing") is None
    assert await collect(driver, "a/b", 3, 4) == b"3456"
    assert await collect(driver, "a/b", 8) == b"89"
    with pytest.raises(PathNotFound):
        await collect(driver, "a/missing")
    with pytest.raises(PathNotFound):
        await driver.get("a/missing")


async def test_delete(driver: FilesystemDriver) -> None:
    await driver.put("d/1", b"1")
    await driver.put("d/2", b"2")
    await driver.delete("d/1")
    await driver.delete("d/1")  # absent is fine
    assert await driver.stat("d/1") is None
    assert await driver.stat("d/2") == 1
    await driver.delete("d")
    assert await driver.stat("d/2") is None


async def test_small_blob_objects_are_never_replaced(driver: FilesystemDriver) -> None:
    key = "blobs/sha256/00/00ff"
    await driver.put(key, b"first")
    inode = (driver.root / key).stat().st_ino
    await driver.put(key, b"other")  # content-addressed: what is there stays
    assert await driver.get(key) == b"first"
    assert (driver.root / key).stat().st_ino == inode


@pytest.mark.parametrize("key", ["", "../etc/passwd", "a/../../b", "a//b", "a/./b", "a/\0"])
async def test_keys_cannot_escape_the_root(driver: FilesystemDriver, key: str) -> None:
    with pytest.raises(StorageError):
        await driver.put(key, b"x")


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _uploads(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*.upload"))


@pytest.mark.parametrize("resumed", [False, True], ids=["new", "resumed"])
async def test_a_writer_cancelled_while_its_file_opens_is_let_go(
    tmp_path: Path, resumed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request cancelled (its client gone) while its writer's file is made on a thread: a
    new writer's file is removed; a resumed one's is only closed (it is the upload's) and its
    lock released, so the next resume appends in place. No descriptor is left open."""
    root = tmp_path / "root"
    objects = FilesystemObjects(root)
    key = "uploads/u1/data"
    state = None
    if resumed:
        writer = await objects.writer(key)
        await writer.write(b"first part")
        state = await writer.state()
        await writer.close()
    uploads, fds = _uploads(root), _open_fds()

    go, opened = threading.Event(), threading.Event()
    real_open = objects._open

    def slow_open(key: str, state: bytes | None) -> fsobjects.FilesystemObjectWriter:
        go.wait(10)  # until the request has been cancelled
        try:
            return real_open(key, state)
        finally:
            opened.set()

    monkeypatch.setattr(objects, "_open", slow_open)
    with warnings.catch_warnings(record=True) as caught:
        # A writer nobody closed would be closed by the collector, with a ResourceWarning.
        warnings.simplefilter("always", ResourceWarning)
        task = asyncio.create_task(objects.writer(key, state))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        go.set()
        assert await asyncio.to_thread(opened.wait, 10)
        for _ in range(500):  # the writer it made is let go of on the loop, then on a thread
            await asyncio.sleep(0.01)
            if not fsobjects._letting_go and _open_fds() == fds and _uploads(root) == uploads:
                break
        gc.collect()
    assert [w.message for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert _open_fds() == fds
    assert _uploads(root) == uploads
    monkeypatch.undo()
    if resumed:
        writer = await objects.writer(key, state)  # in place: no copy under another name
        assert _uploads(root) == uploads
        await writer.write(b", second")
        await writer.commit()
        assert (root / key).read_bytes() == b"first part, second"


async def test_a_writer_resumed_at_the_files_end_leaves_the_file_untouched(tmp_path: Path) -> None:
    """Resuming where the upload's file ends (every chunk after the first, every commit) does
    not truncate it: on ext4 a truncate to the same size rewrites the last partial page and
    waits for its write-back. Linux stamps the file's mtime on any truncate, so an unchanged
    mtime shows that none was made; a resume behind the file's end still cuts it there."""
    objects = FilesystemObjects(tmp_path / "root")
    writer = await objects.writer("uploads/u1/data")
    await writer.write(b"x" * 5000)  # not a whole page: a truncate would zero its tail
    state = await writer.state()
    await writer.close()
    (data,) = (tmp_path / "root").rglob("*.upload")
    before = data.stat().st_mtime_ns
    await asyncio.sleep(0.05)  # past the coarse clock's tick that stamps the times

    writer = await objects.writer("uploads/u1/data", state)
    await writer.close()
    assert data.stat().st_mtime_ns == before

    with data.open("ab") as f:  # what a failed write may leave past the state's offset
        f.write(b"left over")
    writer = await objects.writer("uploads/u1/data", state)
    await writer.close()
    assert data.stat().st_size == 5000
