"""The `ObjectDriver` conformance suite: what defines a driver (moorage/storage/objects.py).

Every test runs on the filesystem driver and on the S3 driver against a real S3 server (Swift
with s3api, started by tests/services/swift-s3.sh), each S3 test in a new bucket. `nodes()`
gives another driver instance on the same storage: a writer resumed there is one on another
node. Design: docs/design/storage-drivers.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import psutil
import pytest

from moorage.storage import paths
from moorage.storage.base import PathNotFound, StorageError
from moorage.storage.fsobjects import FilesystemObjects
from moorage.storage.objects import ObjectDriver, StaleWriter
from moorage.storage.s3 import S3Driver
from tests.services.fixtures import s3_client

MiB = 1 << 20
KiB = 1 << 10
BLOB = paths.blob("ab" + "0" * 62)
PREFIX = "reg/istry"  # S3: every key lives under it, which the checks below also prove


class Backend:
    """One driver's storage: new driver instances on it, and what is left in it."""

    def __init__(self, kind: str, root: Path | None = None, s3: dict[str, str] | None = None):
        self.kind = kind
        self.root = root
        self.s3 = s3 or {}
        self.opened: list[ObjectDriver] = []

    async def node(self) -> ObjectDriver:
        driver: ObjectDriver
        if self.kind == "filesystem":
            assert self.root is not None
            driver = FilesystemObjects(self.root)
        else:
            driver = await S3Driver.open(
                self.s3["bucket"],
                endpoint=self.s3["S3_ENDPOINT"],
                region=self.s3["S3_REGION"],
                prefix=PREFIX,
                accesskey=self.s3["S3_ACCESS_KEY"],
                secretkey=self.s3["S3_SECRET_KEY"],
            )
        self.opened.append(driver)
        return driver

    async def leftovers(self) -> list[str]:
        """Every object and unfinished multipart upload in the storage."""
        if self.kind == "filesystem":
            assert self.root is not None
            return sorted(
                str(Path(d, f).relative_to(self.root))
                for d, _, fs in os.walk(self.root)
                for f in fs
            )
        async with s3_client(self.s3) as client:
            bucket = self.s3["bucket"]
            objects = await client.list_objects_v2(Bucket=bucket)
            uploads = await client.list_multipart_uploads(Bucket=bucket)
        names = [o["Key"] for o in objects.get("Contents", [])]
        assert all(n.startswith(f"{PREFIX}/") for n in names)
        return sorted(names + [f"upload:{u['Key']}" for u in uploads.get("Uploads", [])])


@pytest.fixture(params=["filesystem", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "filesystem":
        return Backend("filesystem", root=tmp_path / "root")
    settings = dict(request.getfixturevalue("s3_service"))
    settings["bucket"] = request.getfixturevalue("fresh_bucket")
    return Backend("s3", s3=settings)


@pytest.fixture
async def driver(backend: Backend) -> AsyncIterator[ObjectDriver]:
    yield await backend.node()
    for opened in backend.opened:  # every node the test opened
        await opened.close()


async def read(driver: ObjectDriver, key: str, offset: int = 0, length: int | None = None) -> bytes:
    return b"".join([chunk async for chunk in driver.reader(key, offset, length)])


def pattern(size: int, seed: int = 0) -> bytes:
    """Bytes that differ at every position a misplaced write could land on."""
    block = hashlib.sha256(str(seed).encode()).digest() * (1 + size // 32)
    return block[:size]


async def test_put_get_stat(driver: ObjectDriver) -> None:
    await driver.put("a/b", b"0123456789")
    assert await driver.get("a/b") == b"0123456789"
    assert await driver.stat("a/b") == 10
    assert await driver.stat("a/missing") is None
    assert await driver.stat("a") is None  # a prefix is not an object
    await driver.put("a/b", b"replaced")  # a key that is not content-addressed is replaced
    assert await driver.get("a/b") == b"replaced"
    with pytest.raises(PathNotFound):
        await driver.get("a/missing")


async def test_ranged_reads(driver: ObjectDriver) -> None:
    data = pattern(3 * MiB + 7)
    await driver.put("r/x", data)
    assert await read(driver, "r/x") == data
    assert await read(driver, "r/x", 0, 10) == data[:10]
    assert await read(driver, "r/x", MiB - 3, MiB + 5) == data[MiB - 3 : 2 * MiB + 2]
    assert await read(driver, "r/x", 3 * MiB) == data[3 * MiB :]
    assert await read(driver, "r/x", len(data) - 2, 100) == data[-2:]
    assert await read(driver, "r/x", len(data)) == b""
    assert await read(driver, "r/x", len(data) + 100) == b""
    assert await read(driver, "r/x", 5, 0) == b""
    with pytest.raises(PathNotFound):
        await read(driver, "r/missing")
    with pytest.raises(PathNotFound):
        await read(driver, "r/missing", 5, 0)


async def test_small_writes_then_commit(driver: ObjectDriver, backend: Backend) -> None:
    writer = await driver.writer("w/small")
    ones = pattern(100, 1)
    for i in range(len(ones)):
        await writer.write(ones[i : i + 1])
    pieces = pattern(30 * 100 * KiB, 2)
    for start in range(0, len(pieces), 100 * KiB):
        await writer.write(pieces[start : start + 100 * KiB])
    assert writer.size == len(ones) + len(pieces)
    assert await driver.stat("w/small") is None  # nothing visible before the commit
    assert await writer.commit() == "w/small"
    assert await read(driver, "w/small") == ones + pieces
    assert await backend.leftovers() == [_stored(backend, "w/small")]


def _stored(backend: Backend, key: str) -> str:
    return key if backend.kind == "filesystem" else f"{PREFIX}/{key}"


async def test_resume_on_another_node_then_commit(driver: ObjectDriver, backend: Backend) -> None:
    first, second, third = pattern(300 * KiB, 1), pattern(6 * MiB, 2), pattern(5, 3)
    writer = await driver.writer("w/resumed")
    await writer.write(first)
    state = await writer.state()
    await writer.close()

    other = await backend.node()
    writer = await other.writer("w/resumed", state)
    assert writer.size == len(first)
    await writer.write(second)
    state = await writer.state()
    await writer.close()

    writer = await (await backend.node()).writer("w/resumed", state)
    await writer.write(third)
    assert await writer.commit() == "w/resumed"
    assert await read(driver, "w/resumed") == first + second + third
    assert await backend.leftovers() == [_stored(backend, "w/resumed")]


async def test_bytes_after_the_last_state_are_not_resumed(driver: ObjectDriver) -> None:
    writer = await driver.writer("w/lost")
    await writer.write(b"kept")
    state = await writer.state()
    await writer.write(b" lost")  # e.g. a chunk whose request failed: its state was not saved
    await writer.close()
    writer = await driver.writer("w/lost", state)
    assert writer.size == 4
    await writer.write(b" then")
    await writer.commit()
    assert await driver.get("w/lost") == b"kept then"


async def test_zero_byte_object(driver: ObjectDriver) -> None:
    writer = await driver.writer("w/empty")
    assert await writer.commit() == "w/empty"
    assert await driver.stat("w/empty") == 0
    assert await read(driver, "w/empty") == b""
    assert await read(driver, "w/empty", 0, 10) == b""
    await driver.put("w/empty2", b"")
    assert await driver.get("w/empty2") == b""


async def test_multipart_object_is_byte_exact(driver: ObjectDriver, backend: Backend) -> None:
    """More than two S3 parts (5 MiB each but the last), written in 1 MiB then 256 KiB
    pieces across a resume."""
    big, small = pattern(12 * MiB, 4), pattern(3 * MiB + 5, 5)
    writer = await driver.writer("w/multi")
    for start in range(0, len(big), MiB):
        await writer.write(big[start : start + MiB])
    state = await writer.state()
    await writer.close()
    writer = await (await backend.node()).writer("w/multi", state)
    for start in range(0, len(small), 256 * KiB):
        await writer.write(small[start : start + 256 * KiB])
    await writer.commit()
    assert await driver.stat("w/multi") == len(big) + len(small)
    got = hashlib.sha256()
    async for chunk in driver.reader("w/multi"):
        got.update(chunk)
    assert got.hexdigest() == hashlib.sha256(big + small).hexdigest()
    assert await read(driver, "w/multi", 5 * MiB - 2, 4) == big[5 * MiB - 2 : 5 * MiB + 2]


async def test_cancel_frees_everything(driver: ObjectDriver, backend: Backend) -> None:
    writer = await driver.writer("w/cancelled")
    await writer.write(pattern(6 * MiB))  # S3: one part uploaded and a tail in memory
    state = await writer.state()  # ... and the tail stored
    await writer.close()
    assert await backend.leftovers() != []
    writer = await (await backend.node()).writer("w/cancelled", state)
    await writer.write(b"more")
    await writer.cancel()
    assert await backend.leftovers() == []
    assert await driver.stat("w/cancelled") is None


async def test_move(driver: ObjectDriver) -> None:
    await driver.put("m/src", b"moved")
    assert await driver.move("m/src", "m/dst/x") is True
    assert await driver.stat("m/src") is None
    assert await driver.get("m/dst/x") == b"moved"
    await driver.put("m/src", b"again")
    await driver.move("m/src", "m/dst/x")  # not content-addressed: replaced
    assert await driver.get("m/dst/x") == b"again"
    with pytest.raises(PathNotFound):
        await driver.move("m/missing", "m/other")


async def test_content_addressed_objects_are_never_replaced(driver: ObjectDriver) -> None:
    await driver.put(BLOB, b"first")
    await driver.put(BLOB, b"other")
    assert await driver.get(BLOB) == b"first"

    await driver.put("m/src", b"other")
    assert await driver.move("m/src", BLOB) is False
    assert await driver.get(BLOB) == b"first"
    # The source is kept: the caller decides (garbage collection may be deleting BLOB).
    assert await driver.get("m/src") == b"other"

    writer = await driver.writer(BLOB)
    await writer.write(b"other")
    assert await writer.commit() == BLOB
    assert await driver.get(BLOB) == b"first"


async def test_commit_to_a_content_addressed_target(driver: ObjectDriver, backend: Backend) -> None:
    """A commit told its content-addressed target: a filesystem puts the object there in the
    same step (its own key never appears), unless something is there already; S3 leaves it at
    its own key, as a commit without one."""
    data = pattern(3 * 100 * KiB + 7, 5)
    writer = await driver.writer("w/to-target")
    await writer.write(data)
    key = await writer.commit(BLOB)
    expected = BLOB if backend.kind == "filesystem" else "w/to-target"
    assert key == expected
    assert await read(driver, key) == data
    assert await backend.leftovers() == [_stored(backend, expected)]

    # Something at the target already: kept, and the object is at its own key.
    other = await driver.writer("w/beside")
    await other.write(b"other bytes")
    assert await other.commit(BLOB) == "w/beside"
    assert await read(driver, BLOB if backend.kind == "filesystem" else key) == data
    assert await driver.get("w/beside") == b"other bytes"

    # Only a content-addressed key may be a target.
    third = await driver.writer("w/third")
    await third.write(b"x")
    with pytest.raises(ValueError):
        await third.commit("w/not-addressed")
    await third.cancel()


async def test_delete_a_key_and_a_prefix(driver: ObjectDriver, backend: Backend) -> None:
    await driver.put("d/one", b"1")
    await driver.put("d/sub/two", b"2")
    await driver.put("d/sub/three", b"3")
    await driver.put("d/subsequent", b"4")  # shares the prefix's name, not its folder
    writer = await driver.writer("d/sub/pending")
    await writer.write(pattern(6 * MiB))
    await writer.state()
    await writer.close()

    await driver.delete("d/one")
    assert await driver.stat("d/one") is None
    await driver.delete("d/sub")
    assert await driver.stat("d/sub/two") is None
    assert await driver.stat("d/sub/three") is None
    assert await driver.get("d/subsequent") == b"4"
    await driver.delete("d/missing")  # absent is no error
    assert await backend.leftovers() == [_stored(backend, "d/subsequent")]


async def test_redirect_url(driver: ObjectDriver, backend: Backend) -> None:
    data = pattern(100 * KiB)
    await driver.put("u/x", data)
    url = await driver.redirect_url("u/x")
    if backend.kind == "filesystem":
        assert url is None
        assert driver.local_path("u/x") is not None
        return
    assert url is not None
    assert driver.local_path("u/x") is None
    head_url = await driver.redirect_url("u/x", method="HEAD")
    assert head_url is not None
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as response:
            assert response.status == 200
            assert await response.read() == data
        async with session.get(url, headers={"Range": "bytes=10-19"}) as response:
            assert response.status == 206
            assert await response.read() == data[10:20]
        async with session.head(head_url) as response:
            assert response.status == 200
            assert int(response.headers["Content-Length"]) == len(data)


@pytest.mark.parametrize("late_part", ["before", "after"])
async def test_stale_writer_never_gets_into_the_commit(
    driver: ObjectDriver, backend: Backend, late_part: str
) -> None:
    """Writer A exports a state and goes on writing (its lease ran out, it has not noticed);
    writer B resumes from that state on another node and writes other bytes over the same
    range. Whichever lands last, B's commit either fails cleanly (nothing at the key) or holds
    exactly the state's bytes and B's: never A's late ones."""
    head, theirs, mine = pattern(5 * MiB, 1), pattern(5 * MiB, 2), pattern(5 * MiB, 3)
    a = await driver.writer("w/raced")
    await a.write(head)
    state = await a.state()
    b = await (await backend.node()).writer("w/raced", state)
    if late_part == "before":
        await a.write(theirs)
        await b.write(mine)
    else:
        await b.write(mine)
        await a.write(theirs)  # the stale writer's part lands after the resumed writer's
    try:
        await b.commit()
    except StaleWriter:
        # S3 when A's part replaced B's: CompleteMultipartUpload refused B's listed ETag
        assert (backend.kind, late_part) == ("s3", "after")
        assert await driver.stat("w/raced") is None
        assert all(":" not in name for name in await backend.leftovers())  # uploads aborted
    else:
        assert await read(driver, "w/raced") == head + mine
    await a.close()


async def test_memory_stays_flat(driver: ObjectDriver, backend: Backend) -> None:
    """A leak check, not a performance test: 64 MiB through a writer and a reader."""
    block = pattern(MiB)
    process = psutil.Process()
    warm = await driver.writer("w/warm")
    await warm.write(pattern(6 * MiB))
    await warm.cancel()
    before = process.memory_info().rss
    writer = await driver.writer("w/big")
    for _ in range(64):
        await writer.write(block)
    state = await writer.state()
    await writer.close()
    writer = await (await backend.node()).writer("w/big", state)
    await writer.commit()
    total = 0
    async for chunk in driver.reader("w/big"):
        total += len(chunk)
    assert total == 64 * MiB
    assert process.memory_info().rss - before < 64 * MiB


async def test_check_answers_on_working_storage_and_raises_on_broken(
    driver: ObjectDriver, backend: Backend
) -> None:
    """`check` (a node's readiness) passes on an empty store, and raises StorageError when
    the store is gone: a root directory replaced by a file, a bucket that does not exist."""
    await driver.check()
    if backend.kind == "filesystem":
        assert backend.root is not None
        backend.root.rename(backend.root.with_name("aside"))
        backend.root.write_text("a file, not a directory")  # as root, chmod 000 would not do
        with pytest.raises(StorageError, match="is not a directory"):
            await driver.check()
        backend.root.unlink()
        with pytest.raises(StorageError, match="No such file"):
            await driver.check()
    else:
        gone = await Backend("s3", s3={**backend.s3, "bucket": "never-made-here"}).node()
        try:
            with pytest.raises(StorageError, match="never-made-here"):
                await gone.check()
        finally:
            await gone.close()


async def test_s3_bucket_creation_tolerates_an_existing_bucket(
    s3_service: dict[str, str], fresh_bucket: str
) -> None:
    store = Backend("s3", s3={**s3_service, "bucket": fresh_bucket})
    driver = await store.node()
    assert isinstance(driver, S3Driver)
    try:
        await driver.create_bucket()  # Swift answers 409 BucketAlreadyOwnedByYou
        await driver.put("k", b"v")
        assert await driver.get("k") == b"v"
    finally:
        await driver.close()


async def walked(driver: ObjectDriver, prefix: str = "") -> dict[str, int]:
    return {found.key: found.size async for found in driver.walk(prefix)}


async def test_walk_lists_objects_below_a_prefix(driver: ObjectDriver) -> None:
    if isinstance(driver, S3Driver):
        driver.list_page = 2  # several ListObjectsV2 pages
    started = time.time()
    await driver.put("k/one", b"1")
    await driver.put("k/sub/two", b"22")
    await driver.put("k/sub/deeper/three", b"333")
    await driver.put("ks/sibling", b"4444")  # shares the prefix's name, not its folder
    await driver.put(BLOB, b"blob")
    committed = await driver.writer("k/committed")
    await committed.write(b"55555")
    await committed.commit()
    pending = await driver.writer("k/pending")
    await pending.write(pattern(6 * MiB))  # S3: a part uploaded
    await pending.write(b"tail")
    state = await pending.state()  # S3: a tail object stored; filesystem: a hidden data file
    await pending.close()

    below_k = {"k/one": 1, "k/sub/two": 2, "k/sub/deeper/three": 3, "k/committed": 5}
    assert await walked(driver, "k") == below_k  # an unfinished writer is no object
    assert await walked(driver, "k/sub") == {"k/sub/two": 2, "k/sub/deeper/three": 3}
    assert await walked(driver, "k/one") == {"k/one": 1}  # a key is its own prefix
    assert await walked(driver, "k/missing") == {}
    assert await walked(driver, "") == {**below_k, "ks/sibling": 4, BLOB: 4}
    times = [found.modified async for found in driver.walk()]
    assert all(started - 2 <= t <= time.time() + 2 for t in times), (started, times)

    resumed = await driver.writer("k/pending", state)
    await resumed.commit()
    assert (await walked(driver, "k"))["k/pending"] == 6 * MiB + 4


async def test_walk_goes_in_key_order_and_resumes_after_a_key(driver: ObjectDriver) -> None:
    """Key order is code point order of whole keys: `a-c` before `a/...` (`-` 0x2D, `/` 0x2F)
    although the folder `a` sorts before the file `a-c` by name, and `a/b.c` before `a/b/x`;
    `after` starts past any key, listed or not (a resumed listing whose last object was
    deleted meanwhile)."""
    if isinstance(driver, S3Driver):
        driver.list_page = 2
    keys = ["a-c", "a/b.c", "a/b0", "a/b/x", "a/bb/y", "a0", "b/z/z/z", "b/zz", "c"]
    for key in keys:
        await driver.put(key, b"x")
    ordered = sorted(keys)
    assert [found.key async for found in driver.walk()] == ordered
    for after in ["", "a", "a-c", "a/", "a/b", "a/b/", "a/b/x", "a/ba", "a0", "b/z", "bz", "c"]:
        expected = [key for key in ordered if key > after]
        assert [found.key async for found in driver.walk(after=after)] == expected, after
    assert [found.key async for found in driver.walk("a", after="a/b/x")] == ["a/b0", "a/bb/y"]
    assert [found.key async for found in driver.walk("b", after="a")] == ["b/z/z/z", "b/zz"]


async def test_walk_time_is_when_an_object_was_put_in_place(driver: ObjectDriver) -> None:
    """A writer whose bytes were written a while ago and that commits now, and an object moved
    now, look new: an object just put in place (with no blob row yet) must not look old."""
    writer = await driver.writer("t/slow")
    await writer.write(b"written early")
    state = await writer.state()
    await writer.close()
    await driver.put("t/source", b"put early")
    await asyncio.sleep(2.5)
    placed = time.time()
    await (await driver.writer("t/slow", state)).commit()
    await driver.move("t/source", BLOB)
    times = {found.key: found.modified async for found in driver.walk()}
    assert times.keys() == {"t/slow", BLOB}
    assert all(t >= placed - 1 for t in times.values()), (placed, times)
