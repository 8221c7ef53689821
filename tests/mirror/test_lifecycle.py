"""Cached content follows the registry's lifecycle like anything pushed: retention rules
delete cached tags (by when they were stored or last confirmed upstream), garbage collection
frees what they kept, and a pull after that fetches from the upstream again."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from moorage.api.context import REGISTRY
from moorage.app import create_app
from moorage.config import Settings
from tests.conftest import PASSWORD, USER
from tests.mirror.conftest import CountingProxy, UpstreamWriter

Client = TestClient[Any, Any]


async def test_retention_and_gc_apply_to_cached_tags(
    aiohttp_client: Any, tmp_path: Path, upstream: UpstreamWriter, proxy: CountingProxy
) -> None:
    settings = Settings(
        datadir=tmp_path / "data",
        proxy={
            "upstreams": [
                {"prefix": "up", "url": proxy.url, "username": USER, "password": PASSWORD}
            ]
        },
        retention=[{"repository": "up/*", "keep_last": 1}],
        gc={"grace": 0, "interval": 0, "untagged": "collect"},
    )
    client: Client = await aiohttp_client(create_app(settings))
    old = await upstream.push_image("team/kept", "old", [os.urandom(50_000)], note="old")
    new = await upstream.push_image("team/kept", "new", [os.urandom(50_000)], note="new")
    for image in (old, new):  # cached in this order: "new" is the newer tag here
        resp = await client.get(f"/v2/up/team/kept/manifests/{image.tag}")
        assert resp.status == 200
        for digest in image.blobs:
            resp = await client.get(f"/v2/up/team/kept/blobs/{digest}")
            assert resp.status == 200 and await resp.read() == image.blobs[digest]
    registry = client.app[REGISTRY]
    cycle = await registry.collector.cycle()
    assert cycle.collected.tags == 1 and cycle.collected.manifests == 1
    # What the deleted manifest kept is collected by the next cycle (its grace starts now).
    await asyncio.sleep(0.01)
    cycle = await registry.collector.cycle()
    assert cycle.collected.blobs == len(old.blobs)
    resp = await client.get("/v2/up/team/kept/tags/list")
    assert (await resp.json())["tags"] == ["new"]
    for digest in old.blobs:
        assert await registry.metadata.blob(digest) is None
    # Pulled again: fetched again from the upstream.
    resp = await client.get("/v2/up/team/kept/manifests/old")
    assert resp.status == 200 and await resp.read() == old.manifest
    assert proxy.count("GET", "/v2/team/kept/manifests/old") == 2
    for digest, data in old.blobs.items():
        resp = await client.get(f"/v2/up/team/kept/blobs/{digest}")
        assert await resp.read() == data
        assert proxy.count("GET", f"/v2/team/kept/blobs/{digest}") == 2


async def test_a_quota_refuses_a_fetch_that_would_exceed_it(
    aiohttp_client: Any, tmp_path: Path, upstream: UpstreamWriter, proxy: CountingProxy
) -> None:
    settings = Settings(
        datadir=tmp_path / "data",
        proxy={
            "upstreams": [
                {"prefix": "up", "url": proxy.url, "username": USER, "password": PASSWORD}
            ]
        },
        quotas=[{"namespace": "up", "bytes": 100_000}],
    )
    client: Client = await aiohttp_client(create_app(settings))
    image = await upstream.push_image("team/quota", "v1", [os.urandom(200_000)])
    layer = next(d for d, data in image.blobs.items() if len(data) == 200_000)
    resp = await client.get(f"/v2/up/team/quota/blobs/{layer}")
    assert resp.status == 403
    body = await resp.json()
    assert body["errors"][0]["code"] == "DENIED"
    assert "quota" in body["errors"][0]["message"]
    assert await client.app[REGISTRY].metadata.blob(layer) is None
