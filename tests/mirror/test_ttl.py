"""Tags revalidated after their TTL with a HEAD, digests never; the cache serving what it
holds when the upstream is down or answers 5xx or 429."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from moorage.app import create_app
from tests.mirror.conftest import CountingProxy, UpstreamWriter, mirror_settings

Client = TestClient[Any, Any]
TTL = 1.0


async def start_mirror(aiohttp_client: Any, data: Path, proxy: CountingProxy, ttl: float) -> Client:
    """A mirror of `proxy`'s upstream whose tags expire after `ttl` seconds."""
    client: Client = await aiohttp_client(create_app(mirror_settings(data, proxy.url, ttl=ttl)))
    return client


@pytest.fixture
async def quick(aiohttp_client: Any, tmp_path: Path, proxy: CountingProxy) -> Client:
    """A mirror whose tags expire after a second."""
    return await start_mirror(aiohttp_client, tmp_path / "data", proxy, TTL)


async def digest_of(client: Client, path: str) -> str:
    resp = await client.get(path)
    assert resp.status == 200, await resp.text()
    await resp.read()
    return resp.headers["Docker-Content-Digest"]


# The moved tag's test waits out a longer TTL: "not before" needs the second image pushed
# upstream and asked for within it, and a loaded machine (a parallel test run) once took over a
# second for that.
MOVING_TTL = 3.0


async def test_a_moved_tag_is_seen_after_its_ttl_and_not_before(
    aiohttp_client: Any, tmp_path: Path, upstream: UpstreamWriter, proxy: CountingProxy
) -> None:
    mirror = await start_mirror(aiohttp_client, tmp_path / "data", proxy, MOVING_TTL)
    first = await upstream.push_image("team/moving", "v1", [os.urandom(100)], note="first")
    cached = time.monotonic()
    assert await digest_of(mirror, "/v2/up/team/moving/manifests/v1") == first.digest
    second = await upstream.push_image("team/moving", "v1", [os.urandom(100)], note="second")
    assert await digest_of(mirror, "/v2/up/team/moving/manifests/v1") == first.digest
    waited = time.monotonic() - cached
    assert waited < MOVING_TTL, f"the test itself took {waited:.1f} s, past the TTL"
    assert proxy.count("HEAD", "/v2/team/moving/manifests/v1") == 0
    await asyncio.sleep(MOVING_TTL + 0.2)
    assert await digest_of(mirror, "/v2/up/team/moving/manifests/v1") == second.digest
    assert proxy.count("HEAD", "/v2/team/moving/manifests/v1") == 1
    assert proxy.count("GET", "/v2/team/moving/manifests/v1") == 2
    # Unchanged upstream after another TTL: one HEAD, no GET.
    await asyncio.sleep(MOVING_TTL + 0.2)
    assert await digest_of(mirror, "/v2/up/team/moving/manifests/v1") == second.digest
    assert proxy.count("HEAD", "/v2/team/moving/manifests/v1") == 2
    assert proxy.count("GET", "/v2/team/moving/manifests/v1") == 2
    # The old manifest by digest: cached, never asked for upstream.
    path = f"/v2/up/team/moving/manifests/{first.digest}"
    assert await digest_of(mirror, path) == first.digest
    assert proxy.count("GET", f"/v2/team/moving/manifests/{first.digest}") == 0


async def pull_all(client: Client, repo: str, tag: str, blobs: dict[str, bytes]) -> str:
    digest = await digest_of(client, f"/v2/{repo}/manifests/{tag}")
    for blob, data in blobs.items():
        resp = await client.get(f"/v2/{repo}/blobs/{blob}")
        assert resp.status == 200 and await resp.read() == data
    return digest


async def test_upstream_down_serves_the_warm_cache(
    quick: Client,
    upstream: UpstreamWriter,
    proxy: CountingProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    image = await upstream.push_image("team/warm", "v1", [os.urandom(20_000)])
    await pull_all(quick, "up/team/warm", "v1", image.blobs)
    await proxy.close()  # nothing listens on its port any more
    await asyncio.sleep(TTL + 0.2)
    with caplog.at_level(logging.WARNING, logger="moorage.mirror"):
        assert await pull_all(quick, "up/team/warm", "v1", image.blobs) == image.digest
    assert "serving the cached tag" in caplog.text
    assert await digest_of(quick, f"/v2/up/team/warm/manifests/{image.digest}") == image.digest
    # What was never cached cannot be served: 503, not "unknown".
    resp = await quick.get("/v2/up/team/warm/manifests/other")
    assert resp.status == 503
    error = (await resp.json())["errors"][0]
    assert error["code"] == "UNAVAILABLE"
    assert error["detail"]["upstream"] == proxy.url and proxy.url in error["detail"]["reason"]


@pytest.mark.parametrize("status", [500, 503, 429])
async def test_upstream_errors_serve_the_cached_tag(
    quick: Client, upstream: UpstreamWriter, proxy: CountingProxy, status: int
) -> None:
    image = await upstream.push_image(f"team/err{status}", "v1", [os.urandom(100)])
    await pull_all(quick, f"up/team/err{status}", "v1", image.blobs)
    proxy.answer_with = status
    await asyncio.sleep(TTL + 0.2)
    path = f"/v2/up/team/err{status}/manifests/v1"
    assert await digest_of(quick, path) == image.digest
    proxy.answer_with = None
    # Once it answers again, the next request revalidates (the failure did not renew the tag).
    heads = proxy.count("HEAD", f"/v2/team/err{status}/manifests/v1")
    assert await digest_of(quick, path) == image.digest
    assert proxy.count("HEAD", f"/v2/team/err{status}/manifests/v1") == heads + 1
