"""Memory stays flat whatever the blob size: a 1 GiB streamed upload and its full download
keep the server's resident memory (whole process tree) under a fixed bound.

The test never holds the blob either: it streams 1 MiB blocks made from one random block plus
a block counter (so no two blocks are equal) and hashes them on the fly.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import pytest

from tests.harness import MakeServer
from tests.process.registry import TIMEOUT, Registry

# serial: the other tests of a parallel run would be in the machine memory these measure.
pytestmark = [pytest.mark.timeout(240), pytest.mark.serial]

MIB = 1 << 20
BLOCKS = 1024  # 1 GiB
RSS_LIMIT = 150 * MIB
PHASE_BOUND = 120.0  # seconds for each of the upload and the download


class Peak:
    """Samples the server tree's RSS on a thread every few milliseconds."""

    def __init__(self, sample: Callable[[], int]) -> None:
        self.sample = sample
        self.peak = 0
        self.samples = 0

    @contextmanager
    def watching(self, interval: float = 0.02) -> Iterator[None]:
        stop = threading.Event()

        def run() -> None:
            while not stop.is_set():
                self.peak = max(self.peak, self.sample())
                self.samples += 1
                stop.wait(interval)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(5)


def blocks(seed_block: bytes, hasher: Any) -> AsyncIterator[bytes]:
    async def gen() -> AsyncIterator[bytes]:
        for i in range(BLOCKS):
            block = i.to_bytes(8, "big") + seed_block[8:]
            hasher.update(block)
            yield block
            if i % 64 == 0:
                await asyncio.sleep(0)

    return gen()


async def test_1gib_upload_and_download_keep_rss_bounded(make_server: MakeServer) -> None:
    server = make_server()
    await server.start()
    seed_block = os.urandom(MIB)
    upload_peak, download_peak = Peak(server.rss), Peak(server.rss)
    idle = server.rss()
    repo = "memory/big"

    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        reg = Registry(session, server.url)
        sent = hashlib.sha256()
        location = await reg.start_upload(repo)
        started = time.monotonic()
        with upload_peak.watching():
            location, offset = await asyncio.wait_for(
                reg.patch_stream(location, blocks(seed_block, sent)), PHASE_BOUND
            )
            assert offset == BLOCKS * MIB
            digest = "sha256:" + sent.hexdigest()
            await asyncio.wait_for(reg.finish(location, digest), PHASE_BOUND)
        upload_s = time.monotonic() - started

        got, size = hashlib.sha256(), 0
        started = time.monotonic()
        with download_peak.watching():
            async with session.get(reg.url(f"/v2/{repo}/blobs/{digest}")) as resp:
                assert resp.status == 200
                assert resp.headers.get("Docker-Content-Digest") == digest
                assert resp.content_length == BLOCKS * MIB
                deadline = time.monotonic() + PHASE_BOUND
                async for chunk in resp.content.iter_chunked(MIB):
                    got.update(chunk)
                    size += len(chunk)
                    assert time.monotonic() < deadline, "download too slow"
        download_s = time.monotonic() - started

    assert size == BLOCKS * MIB
    assert "sha256:" + got.hexdigest() == digest
    print(
        f"\nRSS idle {idle / MIB:.0f} MiB; peak upload {upload_peak.peak / MIB:.0f} MiB "
        f"({upload_peak.samples} samples, {upload_s:.1f}s), peak download "
        f"{download_peak.peak / MIB:.0f} MiB ({download_peak.samples} samples, {download_s:.1f}s)"
    )
    assert upload_peak.samples > 10 and download_peak.samples > 10
    assert upload_peak.peak < RSS_LIMIT, f"upload peak RSS {upload_peak.peak / MIB:.0f} MiB"
    assert download_peak.peak < RSS_LIMIT, f"download peak RSS {download_peak.peak / MIB:.0f} MiB"
    assert await server.stop() == 0, server.log_tail()


BURST_UPLOADS = 100
# What the burst may add to the tree at its peak: 100 uploads of 1 MiB PATCHes held ~115 MiB
# of request bodies at once when each connection's reads were buffered in large pieces; within
# the body budget (moorage.api.http.Arriving) they add ~30.
BURST_HELD = 64 * MIB
TRIM_WAIT = 30.0  # the server trims every 10 s after serving requests


async def test_a_burst_of_uploads_holds_bounded_memory_and_gives_it_back(
    make_server: MakeServer,
) -> None:
    """100 concurrent chunked uploads (100 MiB of PATCH bodies on their way at once) add a
    bounded amount to the tree, and once the burst is over the worker hands back what it
    took instead of keeping it for good."""
    server = make_server()
    await server.start()
    idle = server.rss()
    seed_block = os.urandom(MIB)
    peak = Peak(server.rss)

    async def one(reg: Registry, i: int) -> None:
        data = [i.to_bytes(8, "big") + bytes([j]) + seed_block[9:] for j in range(3)]
        location = await reg.start_upload("memory/burst")
        for j, block in enumerate(data):
            location = await reg.patch(location, block, j * MIB)
        await reg.finish(location, "sha256:" + hashlib.sha256(b"".join(data)).hexdigest())

    connector = aiohttp.TCPConnector(limit=BURST_UPLOADS)
    async with aiohttp.ClientSession(timeout=TIMEOUT, connector=connector) as session:
        reg = Registry(session, server.url)
        with peak.watching():
            await asyncio.gather(*(one(reg, i) for i in range(BURST_UPLOADS)))
        after = server.rss()
        deadline = time.monotonic() + TRIM_WAIT
        settled = after
        while time.monotonic() < deadline:
            await asyncio.sleep(1)
            settled = server.rss()
            if settled - idle < 32 * MIB:
                break
        # Every upload landed.
        for i in (0, BURST_UPLOADS - 1):
            data = b"".join(i.to_bytes(8, "big") + bytes([j]) + seed_block[9:] for j in range(3))
            assert await reg.head_blob("memory/burst", sha256_of(data)) == 200

    print(
        f"\nRSS idle {idle / MIB:.0f} MiB, burst peak {peak.peak / MIB:.0f} MiB, "
        f"right after {after / MIB:.0f} MiB, settled {settled / MIB:.0f} MiB"
    )
    assert peak.samples > 10
    assert peak.peak - idle < BURST_HELD, f"the burst added {(peak.peak - idle) / MIB:.0f} MiB"
    assert settled - idle < 32 * MIB, f"kept {(settled - idle) / MIB:.0f} MiB after the burst"
    assert await server.stop() == 0, server.log_tail()


def sha256_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
