"""Push and pull counts (moorage/content/activity.py) on a real server of two workers: each
counts in memory and adds its counts to the `activity` table when it stops, so the table holds
every request, whichever worker answered it."""

from __future__ import annotations

import time

import aiohttp
import pytest

from moorage.metadata import MetadataStore
from tests.harness import MakeServer
from tests.images import memory_image
from tests.process.registry import TIMEOUT, Registry, sha256

pytestmark = pytest.mark.timeout(120)


async def test_counts_of_every_worker_are_written_at_shutdown(make_server: MakeServer) -> None:
    server = make_server(workers=2)
    await server.start()
    image = memory_image("activity", [2000, 3000])
    # A new connection per request: both workers answer some of them.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(timeout=TIMEOUT, connector=connector) as session:
        registry = Registry(session, server.url)
        await registry.push_image("team/app", "v1", image)
        await registry.push_image("other/tool", "latest", memory_image("x", [100]))
        for _ in range(6):
            await registry.assert_manifest("team/app", "v1", image.manifest)
        answered, _ = await registry.head("/v2/team/app/manifests/v1")  # a HEAD is no pull
        assert answered == 200
        for blob in image.blobs:
            await registry.assert_blob("team/app", sha256(blob), blob)
    assert await server.stop() == 0

    metadata = MetadataStore(f"sqlite:///{server.data_dir / 'metadata.db'}")
    await metadata.open()
    try:
        status = await metadata.storage_status()
    finally:
        await metadata.close()
    today = status.days[-1]
    assert today.start <= time.time() < today.start + 86400
    assert (today.pushes, today.pulls, today.pulled_bytes) == (2, 6, sum(map(len, image.blobs)))
    team, other = status.activity["team"], status.activity["other"]
    assert (team.pushes, team.pulls, team.pulled_bytes) == (1, 6, today.pulled_bytes)
    assert (other.pushes, other.pulls, other.pulled_bytes) == (1, 0, 0)
