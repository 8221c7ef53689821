"""A real server whose data directory is on a real ext4 disk, at the default `storage.directio`
(an upload's bytes past 128 MiB are written around the page cache): blobs larger than that,
pushed whole, in one streamed PATCH (taken from the socket by a worker thread) and in chunks
that cross the threshold, pull back byte for byte, and most of each stays out of the page
cache."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.disks import mounted, resident_pages
from tests.harness import MakeServer
from tests.process.registry import Registry, sha256

SIZE = 160 << 20  # past the default threshold of 128 MiB
THRESHOLD = 128 << 20


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with mounted("ext4", tmp_path / "disk", 1024) as mount:
        yield mount


async def _streamed(data: bytes) -> AsyncIterator[bytes]:
    """A chunked body whose start arrives alone (the server takes the rest from the socket)."""
    yield data[:65536]
    await asyncio.sleep(0.2)
    for at in range(65536, len(data), 1 << 20):
        yield data[at : at + (1 << 20)]


def blob_file(root: Path, digest: str) -> Path:
    (found,) = [p for p in root.rglob(digest.split(":")[1] + "*") if p.is_file()]
    return found


async def test_large_blobs_written_around_the_page_cache_pull_back_exactly(
    make_server: MakeServer, disk: Path, http: aiohttp.ClientSession
) -> None:
    server = make_server()
    server.data_dir = disk / "data"
    await server.start()
    registry = Registry(http, server.url)
    root = server.data_dir / "storage"
    rng = random.Random(5)

    whole = rng.randbytes(SIZE)
    async with http.post(
        f"{server.url}/v2/big/blobs/uploads/", params={"digest": sha256(whole)}, data=whole
    ) as resp:
        assert resp.status == 201, await resp.text()

    streamed = rng.randbytes(SIZE + 12_345)
    location = await registry.start_upload("big")
    async with http.patch(registry.url(location), data=_streamed(streamed)) as resp:
        assert resp.status == 202, await resp.text()
        location = resp.headers["Location"]
    async with http.put(registry.url(location), params={"digest": sha256(streamed)}) as resp:
        assert resp.status == 201, await resp.text()

    # Chunks of odd sizes, the third crossing the threshold at an unaligned offset.
    chunked = rng.randbytes(SIZE - 999)
    cuts = [0, 10_000_001, THRESHOLD - 4099, THRESHOLD + 5_000_003, len(chunked)]
    location = await registry.start_upload("big")
    for first, last in itertools.pairwise(cuts):
        headers = {"Content-Range": f"{first}-{last - 1}"}
        async with http.patch(
            registry.url(location), data=chunked[first:last], headers=headers
        ) as resp:
            assert resp.status == 202, await resp.text()
            location = resp.headers["Location"]
    async with http.put(registry.url(location), params={"digest": sha256(chunked)}) as resp:
        assert resp.status == 201, await resp.text()

    # The whole blob declared its length: around the cache from its first byte. The streamed
    # one (no length) and the chunks below the threshold go through it up to the threshold.
    past = THRESHOLD + (8 << 20)
    for data, most in ((whole, 8 << 20), (streamed, past), (chunked, past)):
        digest = sha256(data)
        cached = resident_pages(blob_file(root, digest)) * 4096
        assert cached < most, f"{cached} bytes of {digest} in the page cache"
        await registry.assert_blob("big", digest, data)
