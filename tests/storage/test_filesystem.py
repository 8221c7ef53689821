"""The filesystem driver against the storage driver protocol."""

from __future__ import annotations

from pathlib import Path

import pytest

from moorage.storage import PathNotFound, StorageError
from moorage.storage.filesystem import FilesystemDriver


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


async def test_writer_appends_and_truncates_past_offset(driver: FilesystemDriver) -> None:
    writer = await driver.writer("uploads/x", 0)
    await writer.write(b"hello ")
    await writer.write(b"world")
    await writer.close()
    assert writer.size == 11
    # A crashed writer left bytes past the committed offset 6: the next writer drops them.
    writer = await driver.writer("uploads/x", 6)
    await writer.write(b"there")
    await writer.close()
    assert await driver.get("uploads/x") == b"hello there"
    with pytest.raises(StorageError):
        await driver.writer("uploads/x", 100)


async def test_commit_moves_atomically_and_keeps_existing_content(
    driver: FilesystemDriver,
) -> None:
    await driver.put("uploads/1", b"same")
    await driver.commit("uploads/1", "blobs/k")
    assert await driver.get("blobs/k") == b"same"
    assert await driver.stat("uploads/1") is None
    await driver.put("uploads/2", b"same")
    await driver.commit("uploads/2", "blobs/k")
    assert await driver.get("blobs/k") == b"same"
    assert await driver.stat("uploads/2") is None
    with pytest.raises(PathNotFound):
        await driver.commit("uploads/none", "blobs/other")


async def test_delete_and_list(driver: FilesystemDriver) -> None:
    await driver.put("d/1", b"1")
    await driver.put("d/2", b"2")
    assert await driver.list("d") == ["d/1", "d/2"]
    await driver.delete("d/1")
    await driver.delete("d/1")  # absent is fine
    assert await driver.list("d") == ["d/2"]
    await driver.delete("d")
    assert await driver.list("d") == []


@pytest.mark.parametrize("key", ["", "../etc/passwd", "a/../../b", "a//b", "a/./b", "a/\0"])
async def test_keys_cannot_escape_the_root(driver: FilesystemDriver, key: str) -> None:
    with pytest.raises(StorageError):
        await driver.put(key, b"x")


async def test_a_detached_writer_leaves_the_old_holder_writing_into_nothing(
    driver: FilesystemDriver,
) -> None:
    first = await driver.writer("uploads/x", 0)
    await first.write(b"abc")
    # The first writer stalls with its file open; a second one takes over at offset 3.
    second = await driver.writer("uploads/x", 3, detach=True)
    await second.write(b"DEF")
    await second.close()
    await first.write(b"late bytes from a writer that lost its lease")
    await first.close()
    assert await driver.get("uploads/x") == b"abcDEF"
    await driver.commit("uploads/x", "blobs/sha256/ab/abcdef", 6)
    assert await driver.get("blobs/sha256/ab/abcdef") == b"abcDEF"


async def test_blob_keys_are_never_opened_for_writing_or_replaced(
    driver: FilesystemDriver,
) -> None:
    key = "blobs/sha256/00/00ff"
    await driver.put(key, b"first")
    with pytest.raises(StorageError):
        await driver.writer(key, 0)
    await driver.put(key, b"other")  # content-addressed: what is there stays
    assert await driver.get(key) == b"first"
    inode = (driver.root / key).stat().st_ino
    writer = await driver.writer("uploads/y", 0)
    await writer.write(b"second")
    await writer.close()
    await driver.commit("uploads/y", key, 6)
    assert await driver.get(key) == b"first"
    assert (driver.root / key).stat().st_ino == inode
    assert await driver.stat("uploads/y") is None


async def test_committing_an_empty_upload_twice(driver: FilesystemDriver) -> None:
    key = "blobs/sha256/e3/e3b0"
    await driver.commit("uploads/a", key, 0)  # never had a byte written: no file
    await driver.commit("uploads/b", key, 0)
    assert await driver.get(key) == b""
