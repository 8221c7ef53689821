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
