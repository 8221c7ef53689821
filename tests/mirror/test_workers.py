"""One upstream fetch per blob across the worker processes of a node: concurrent pulls that
land on different workers share one fetch (a claim in the metadata), whichever worker made
it."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp

from tests.api.helpers import sha256
from tests.conftest import PASSWORD, USER
from tests.harness import MoorageProcess
from tests.mirror.conftest import CountingProxy, UpstreamWriter


async def test_concurrent_pulls_on_two_workers_fetch_each_blob_once(
    tmp_path: Path, upstream: UpstreamWriter, proxy: CountingProxy
) -> None:
    layers = [os.urandom(8 << 20), os.urandom(1 << 20), os.urandom(5000)]
    image = await upstream.push_image("team/workers", "v1", layers)
    entry = {"prefix": "up", "url": proxy.url, "username": USER, "password": PASSWORD}
    server = MoorageProcess(tmp_path / "data", workers=2, config={"proxy": {"upstreams": [entry]}})
    await server.start()
    try:
        # A new connection per request: the kernel spreads them over both workers.
        connector = aiohttp.TCPConnector(force_close=True, limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def pull() -> None:
                url = f"{server.url}/v2/up/team/workers/manifests/v1"
                async with session.get(url) as resp:
                    assert resp.status == 200 and await resp.read() == image.manifest

                async def blob(digest: str) -> None:
                    url = f"{server.url}/v2/up/team/workers/blobs/{digest}"
                    async with session.get(url) as resp:
                        assert resp.status == 200
                        assert sha256(await resp.read()) == digest

                await asyncio.gather(*(blob(d) for d in image.blobs))

            await asyncio.gather(*(pull() for _ in range(32)))
        for digest in image.blobs:
            assert proxy.count("GET", f"/v2/team/workers/blobs/{digest}") == 1, digest
        assert len(server.processes()) == 3  # the supervisor and both workers served
    finally:
        await server.stop()
        server.cleanup()
