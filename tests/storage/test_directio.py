"""Uploads written around the page cache (moorage/storage/directio.py) on a real ext4 disk:
the bytes come back exactly, across the threshold, stage boundaries and resumes at any
offset; they are not left in the page cache; a full disk in the middle of a direct write is
`StorageFull` with the space given back; tmpfs and `directio: off` write as before."""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from moorage.storage.base import StorageFull
from moorage.storage.directio import ALIGN, STAGE, open_direct
from moorage.storage.fsobjects import FilesystemObjects
from tests.disks import mounted, resident_pages

THRESHOLD = 3 * ALIGN + 5  # not aligned: the first direct stage starts inside a block


@pytest.fixture
def ext4(tmp_path: Path) -> Iterator[Path]:
    with mounted("ext4", tmp_path / "ext4", 96) as disk:
        yield disk


def pieces(data: bytes, seed: int) -> Iterator[bytes]:
    """`data` in pieces of odd sizes: single bytes, a few KiB, more than a stage."""
    rng = random.Random(seed)
    at = 0
    while at < len(data):
        size = rng.choice((1, 7, 4095, 4097, 300_000, STAGE - 1, STAGE + 3, 2 * STAGE))
        yield data[at : at + size]
        at += size


def upload_file(root: Path) -> Path:
    (found,) = [p for p in root.rglob("*.upload")]
    return found


async def test_bytes_past_the_threshold_come_back_exactly_and_leave_no_cache(ext4: Path) -> None:
    objects = FilesystemObjects(ext4 / "root", direct_from=THRESHOLD)
    data = random.Random(1).randbytes(9 * STAGE + 12_345)
    # Three writers in turn, each resuming where the last stopped (an unaligned offset), as
    # the PATCHes of one upload do; the state names the size only after a flush.
    cuts = [0, THRESHOLD + 1000, 5 * STAGE + 77, len(data)]
    state = None
    for first, last in itertools.pairwise(cuts):
        writer = await objects.writer("blobs/x", state)
        assert writer.size == first
        for piece in pieces(data[first:last], first):
            await writer.write(piece)
        state = await writer.state()
        assert os.path.getsize(upload_file(ext4 / "root")) == last
        if last != len(data):
            await writer.close()
    # Only the bytes below the threshold and the tails of the writers went through the cache.
    cached = resident_pages(upload_file(ext4 / "root"))
    assert cached * 4096 < THRESHOLD + 3 * STAGE, f"{cached} pages in the page cache"
    assert await writer.commit() == "blobs/x"
    assert (ext4 / "root" / "blobs" / "x").read_bytes() == data


async def test_an_upload_expected_to_reach_the_threshold_goes_direct_from_where_it_stands(
    ext4: Path,
) -> None:
    """A body of declared length that takes the upload past the threshold is written around
    the cache from its first byte; one that stays below it, and a writer told nothing, are
    not."""
    threshold = 6 * STAGE
    objects = FilesystemObjects(ext4 / "root", direct_from=threshold)
    data = random.Random(4).randbytes(8 * STAGE + 99)
    small = await objects.writer("blobs/small")
    small.expect(2 * STAGE)  # below the threshold: cached, as every small upload is
    await small.write(data[: 2 * STAGE])
    state = await small.state()
    await small.close()
    assert resident_pages(upload_file(ext4 / "root")) * 4096 == 2 * STAGE
    # The next body (from an unaligned offset) declares it reaches the threshold: direct now.
    writer = await objects.writer("blobs/small", state)
    await writer.write(data[2 * STAGE : 2 * STAGE + 5])
    writer.expect(len(data))
    for piece in pieces(data[2 * STAGE + 5 :], 4):
        await writer.write(piece)
    await writer.state()
    cached = resident_pages(upload_file(ext4 / "root"))
    # The first two stages, the block of the unaligned start read back, and the tail.
    assert cached * 4096 <= 2 * STAGE + 2 * ALIGN + STAGE, f"{cached} pages in the page cache"
    assert await writer.commit() == "blobs/small"
    assert (ext4 / "root" / "blobs" / "small").read_bytes() == data


async def test_a_blocking_writer_and_an_exact_stage(ext4: Path) -> None:
    """The drained-body path: the blocking write callable, blocks of exactly a stage."""
    objects = FilesystemObjects(ext4 / "root", direct_from=0)
    data = random.Random(2).randbytes(4 * STAGE)
    writer = await objects.writer("blobs/y")
    write = writer.blocking_write()
    for at in range(0, len(data), STAGE):
        write(memoryview(data[at : at + STAGE]))
    await writer.commit()
    assert (ext4 / "root" / "blobs" / "y").read_bytes() == data


async def test_a_full_disk_in_a_direct_write_gives_the_space_back(ext4: Path) -> None:
    objects = FilesystemObjects(ext4 / "root", direct_from=0)
    data = random.Random(3).randbytes(8 * STAGE)
    writer = await objects.writer("blobs/z")
    for at in range(0, len(data), STAGE):
        await writer.write(data[at : at + STAGE])
    state = await writer.state()
    await writer.close()

    filler = ext4 / "filler"
    free = os.statvfs(ext4).f_bavail * os.statvfs(ext4).f_frsize
    with open(filler, "wb") as f:
        f.truncate(0)
        os.posix_fallocate(f.fileno(), 0, free - 2 * STAGE)
    writer = await objects.writer("blobs/z", state)
    with pytest.raises(StorageFull):
        for _ in range(16):
            await writer.write(data[:STAGE])
        await writer.state()
    await writer.close()
    assert os.path.getsize(upload_file(ext4 / "root")) == len(data)  # back where it began

    filler.unlink()
    writer = await objects.writer("blobs/z", state)
    await writer.write(data[:STAGE] + b"tail")
    await writer.commit()
    assert (ext4 / "root" / "blobs" / "z").read_bytes() == data + data[:STAGE] + b"tail"


async def test_memory_filesystems_and_off_write_through_the_cache(
    tmp_path: Path, ext4: Path
) -> None:
    with mounted("tmpfs", tmp_path / "tmpfs", 16) as memory:
        fd = os.open(memory / "f", os.O_RDWR | os.O_CREAT)
        try:
            assert open_direct(fd) is None
        finally:
            os.close(fd)
    fd = os.open(ext4 / "f", os.O_RDWR | os.O_CREAT)
    try:
        direct = open_direct(fd)
        assert direct is not None
        os.close(direct)
    finally:
        os.close(fd)

    objects = FilesystemObjects(ext4 / "root", direct_from=None)
    data = random.Random(4).randbytes(4 * STAGE)
    writer = await objects.writer("blobs/w")
    await writer.write(data)
    await writer.state()
    assert resident_pages(upload_file(ext4 / "root")) == len(data) // 4096
    await writer.commit()
    assert (ext4 / "root" / "blobs" / "w").read_bytes() == data
