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
