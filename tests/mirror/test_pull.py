"""Pulls through the cache from a real upstream (CNCF Distribution with htpasswd): manifests
by tag and by digest, blobs streamed while they are cached, one upstream fetch however many
clients ask at once, nothing stored when the upstream dies mid-blob, pushes refused."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient
from click.testing import CliRunner

from moorage.api.context import REGISTRY
from moorage.api.mirror import MIRROR
from moorage.app import create_app
from moorage.cli import main
from moorage.mirror.cache import WINDOW
from tests.api.helpers import sha256
from tests.conftest import PASSWORD, USER
from tests.mirror.conftest import (
    AuthDistribution,
    CountingProxy,
    UpstreamWriter,
    error_message,
    mirror_settings,
)

Client = TestClient[Any, Any]


def test_config_check_names_what_is_wrong(tmp_path: Path) -> None:
    good = tmp_path / "good.yml"
    good.write_text(
        "proxy:\n  upstreams:\n"
        "    - {prefix: hub, url: 'https://registry-1.docker.io', ttl: 1h}\n"
        "    - {prefix: '', url: 'http://127.0.0.1:5001', username: u, password: p}\n"
    )
    result = CliRunner().invoke(main, ["config", "check", str(good)])
    assert result.exit_code == 0, result.output
    assert '"ttl": 3600.0' in result.output and '"password": "**********"' in result.output
    cases = {
        "prefix: /hub, url: 'http://a'": "prefix '/hub' is not a repository path",
        "url: 'ftp://a'": "must be http(s)://host[:port]",
        "url: 'http://a/v2/'": "without a path",
        "url: 'http://a', username: u": "username and password go together",
        "url: 'http://a', ttl: soon": "not a duration",
        "url: 'http://a', colour: red": "colour",
    }
    for entry, words in cases.items():
        bad = tmp_path / "bad.yml"
        bad.write_text(f"proxy:\n  upstreams:\n    - {{{entry}}}\n")
        result = CliRunner().invoke(main, ["config", "check", str(bad)])
        assert result.exit_code != 0, entry
        assert "proxy.upstreams.0" in result.output and words in result.output, result.output
    twice = tmp_path / "twice.yml"
    twice.write_text("proxy:\n  upstreams:\n    - {url: 'http://a'}\n    - {url: 'http://b'}\n")
    result = CliRunner().invoke(main, ["config", "check", str(twice)])
    assert result.exit_code != 0 and "two upstreams with prefix ''" in result.output


async def test_pull_by_tag_and_digest_through_the_cache(
    mirror: Client, upstream: UpstreamWriter, proxy: CountingProxy
) -> None:
    image = await upstream.push_image("team/app", "v1", [os.urandom(300_000), os.urandom(1000)])
    resp = await mirror.get("/v2/up/team/app/manifests/v1")
    assert resp.status == 200, await resp.text()
    assert await resp.read() == image.manifest
    assert resp.headers["Docker-Content-Digest"] == image.digest
    for digest, data in image.blobs.items():
        resp = await mirror.get(f"/v2/up/team/app/blobs/{digest}")
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(len(data))
        assert await resp.read() == data
    # Everything again, by tag and by digest: from the cache, no upstream GET.
    resp = await mirror.get(f"/v2/up/team/app/manifests/{image.digest}")
    assert resp.status == 200 and await resp.read() == image.manifest
    resp = await mirror.head("/v2/up/team/app/manifests/v1")
    assert resp.status == 200 and resp.headers["Docker-Content-Digest"] == image.digest
    for digest, data in image.blobs.items():
        resp = await mirror.get(f"/v2/up/team/app/blobs/{digest}")
        assert await resp.read() == data
        assert proxy.count("GET", f"/v2/team/app/blobs/{digest}") == 1
    assert proxy.count("GET", "/v2/team/app/manifests/v1") == 1
    assert proxy.count("GET", f"/v2/team/app/manifests/{image.digest}") == 0
    # What is cached is listed like anything pushed.
    resp = await mirror.get("/v2/up/team/app/tags/list")
    assert (await resp.json())["tags"] == ["v1"]
    resp = await mirror.get("/v2/_catalog")
    assert "up/team/app" in (await resp.json())["repositories"]


async def test_a_manifest_by_digest_and_unknown_names(
    mirror: Client, upstream: UpstreamWriter, proxy: CountingProxy
) -> None:
    image = await upstream.push_image("team/bydigest", "v1", [os.urandom(500)])
    resp = await mirror.get(f"/v2/up/team/bydigest/manifests/{image.digest}")
    assert resp.status == 200 and await resp.read() == image.manifest
    assert proxy.count("GET", f"/v2/team/bydigest/manifests/{image.digest}") == 1
    resp = await mirror.get("/v2/up/team/bydigest/manifests/nosuchtag")
    assert resp.status == 404
    assert (await resp.json())["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    resp = await mirror.get(f"/v2/up/team/bydigest/blobs/{sha256(b'nothing')}")
    assert resp.status == 404
    assert (await resp.json())["errors"][0]["code"] == "BLOB_UNKNOWN"
    # Names outside every prefix are local repositories, pushed and pulled as usual.
    resp = await mirror.post("/v2/local/app/blobs/uploads/")
    assert resp.status == 202


async def test_pushes_into_a_mirror_are_denied(mirror: Client, proxy: CountingProxy) -> None:
    for method, path in [
        ("POST", "/v2/up/team/app/blobs/uploads/"),
        ("PUT", "/v2/up/team/app/manifests/v1"),
        ("PATCH", "/v2/up/team/app/blobs/uploads/0f6f7a4e-2b1f-4c61-9c77-3c7c4a0b1d22"),
    ]:
        resp = await mirror.request(method, path, data=b"{}")
        assert resp.status == 403, path
        body = await resp.read()
        assert b'"DENIED"' in body
        assert error_message(body) == (
            f"up/team/app is a mirror of {proxy.url}/team/app: pushes are refused"
        )
    assert not proxy.counts


async def test_concurrent_pulls_fetch_each_blob_once(
    mirror: Client, upstream: UpstreamWriter, proxy: CountingProxy
) -> None:
    layers = [os.urandom(4 << 20), os.urandom(1 << 20), os.urandom(10_000)]
    image = await upstream.push_image("team/busy", "v1", layers)

    async def pull() -> None:
        resp = await mirror.get("/v2/up/team/busy/manifests/v1")
        assert await resp.read() == image.manifest

        async def blob(digest: str) -> None:
            resp = await mirror.get(f"/v2/up/team/busy/blobs/{digest}")
            assert resp.status == 200
            assert sha256(await resp.read()) == digest

        await asyncio.gather(*(blob(d) for d in image.blobs))

    await asyncio.gather(*(pull() for _ in range(32)))
    assert proxy.count("GET", "/v2/team/busy/manifests/v1") == 1
    for digest in image.blobs:
        assert proxy.count("GET", f"/v2/team/busy/blobs/{digest}") == 1, digest
    # What the registry itself reports it sent (the benchmark reads this).
    resp = await mirror.get("/metrics")
    sent = [
        line
        for line in (await resp.text()).splitlines()
        if line.startswith("moorage_mirror_upstream_requests_total{") and proxy.url in line
    ]
    blob_gets = [line for line in sent if 'method="GET"' in line and 'object="blob"' in line]
    assert len(blob_gets) == 1 and float(blob_gets[0].split()[-1]) == len(image.blobs), sent


async def test_upstream_killed_mid_blob_stores_nothing(
    aiohttp_client: Any, tmp_path: Path, htpasswd_file: Path
) -> None:
    server = AuthDistribution(tmp_path / "doomed", htpasswd_file)
    await server.start()
    proxy = CountingProxy(server.url)
    await proxy.start()
    try:
        writer = UpstreamWriter(server.url, aiohttp.encode_basic_auth(USER, PASSWORD))
        big = os.urandom(64 << 20)
        image = await writer.push_image("team/big", "v1", [big])
        client = await aiohttp_client(create_app(mirror_settings(tmp_path / "data", proxy.url)))
        registry = client.app[REGISTRY]
        proxy.hold_after = 16 << 20
        digest = sha256(big)
        resp = await client.get(f"/v2/up/team/big/blobs/{digest}")
        assert resp.status == 200 and resp.headers["Content-Length"] == str(len(big))
        received = bytearray(await resp.content.readexactly(8 << 20))
        await asyncio.wait_for(proxy.held.wait(), 30)
        await server.kill()
        proxy.release.set()
        try:
            while chunk := await resp.content.read(1 << 20):
                received += chunk
        except aiohttp.ClientPayloadError:
            pass
        else:
            raise AssertionError("the body ended cleanly")
        assert len(received) < len(big) and big.startswith(bytes(received))
        for _ in range(100):  # the fetch drops its session as it ends
            if not await registry.metadata.count("uploads"):
                break
            await asyncio.sleep(0.05)
        assert await registry.metadata.blob(digest) is None
        assert await registry.metadata.count("uploads") == 0
        leftovers = [p for p in (tmp_path / "data" / "storage").rglob("*") if p.is_file()]
        assert [p for p in leftovers if p.stat().st_size >= 8 << 20] == []
        # With the upstream gone, what was never cached is unavailable, not unknown.
        resp = await client.get(f"/v2/up/team/big/blobs/{digest}")
        assert resp.status == 503
        assert image.digest
    finally:
        await proxy.close()
        server.cleanup()


async def test_a_client_that_joins_a_fetch_late_gets_the_stored_blob(
    mirror: Client, upstream: UpstreamWriter, proxy: CountingProxy
) -> None:
    """Bytes every reader has passed are not kept in memory: a client that asks after some
    are gone waits for the blob to be stored and is served from storage, still one fetch."""
    big = os.urandom(8 << 20)
    await upstream.push_image("team/late", "v1", [big])
    digest = sha256(big)
    proxy.hold_after = 4 << 20
    first = await mirror.get(f"/v2/up/team/late/blobs/{digest}")
    assert first.status == 200
    head = bytearray(await first.content.readexactly(2 << 20))
    await asyncio.wait_for(proxy.held.wait(), 30)
    fetch = mirror.app[MIRROR]._blobs[("up/team/late", digest)]
    for _ in range(600):  # every reader, the store's included, is past the first bytes
        if fetch.base > 0:
            break
        await asyncio.sleep(0.05)
    assert fetch.base > 0
    late = asyncio.ensure_future(mirror.get(f"/v2/up/team/late/blobs/{digest}"))
    await asyncio.sleep(0.3)
    assert not late.done()  # waiting for the blob to be stored
    proxy.release.set()
    assert bytes(head + await first.read()) == big
    second = await asyncio.wait_for(late, 30)
    assert second.status == 200 and await second.read() == big
    assert proxy.count("GET", f"/v2/team/late/blobs/{digest}") == 1


async def _a_client_stalls(
    mirror: Client, upstream: UpstreamWriter, repository: str, size: int
) -> tuple[aiohttp.ClientResponse, bytes, bytes, str, str]:
    """A blob of `size` random bytes pushed upstream to `repository`, and a client of the
    mirror that reads its first MiB and then nothing: its answer, the bytes it read, the
    blob, its digest and the mirror's path of it."""
    big = os.urandom(size)
    await upstream.push_image(repository, "v1", [big])
    digest = sha256(big)
    path = f"/v2/up/{repository}/blobs/{digest}"
    stalled = await mirror.get(path)
    assert stalled.status == 200
    head = await stalled.content.readexactly(1 << 20)
    return stalled, head, big, digest, path


async def _another_reads_it_all_and_it_is_stored(mirror: Client, path: str, digest: str) -> None:
    """While a first client of `path` reads nothing: a second one gets the whole blob, right,
    and the blob is then stored (so the first is left behind)."""
    other = await mirror.get(path)
    assert other.status == 200 and sha256(await other.read()) == digest
    registry = mirror.app[REGISTRY]
    for _ in range(200):
        if await registry.metadata.blob(digest) is not None:
            break
        await asyncio.sleep(0.05)
    assert await registry.metadata.blob(digest) is not None


async def test_a_stalled_client_holds_no_memory_and_goes_on_from_storage(
    mirror: Client, upstream: UpstreamWriter, proxy: CountingProxy
) -> None:
    """A client that stops reading during the fetch cannot make the registry keep the blob in
    memory (nor hold up the fetch or the other clients): once more than WINDOW behind, it is
    let go of, and when it reads again it gets the rest from storage, every byte right."""
    stalled, head, big, digest, path = await _a_client_stalls(
        mirror, upstream, "team/stall", 48 << 20
    )
    fetch = mirror.app[MIRROR]._blobs[("up/team/stall", digest)]
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, fetch.held)
            await asyncio.sleep(0.002)

    watcher = asyncio.ensure_future(watch())
    try:
        await _another_reads_it_all_and_it_is_stored(mirror, path, digest)
    finally:
        watcher.cancel()
    # Before the window, the stalled client kept about 40 MiB of the 48 in memory.
    assert 0 < peak <= WINDOW + (4 << 20), peak
    assert head + await stalled.read() == big
    assert proxy.count("GET", f"/v2/team/stall/blobs/{digest}") == 1


async def test_over_an_upstream_that_sends_no_length_a_client_left_behind_still_gets_every_byte(
    mirror: Client, upstream: UpstreamWriter, proxy: CountingProxy
) -> None:
    """An upstream that answers a blob in chunks, with no Content-Length: the answer to the
    client has no length either (so it is chunked too), and a client left behind gets the rest
    from storage in that framing, not sent raw from the file: every byte right, the blob
    stored once and verified."""
    proxy.chunked = True
    stalled, head, big, digest, path = await _a_client_stalls(
        mirror, upstream, "team/nolength", 24 << 20
    )
    assert stalled.content_length is None and stalled.headers["Transfer-Encoding"] == "chunked"
    await _another_reads_it_all_and_it_is_stored(mirror, path, digest)
    assert head + await stalled.read() == big
    assert proxy.count("GET", f"/v2/team/nolength/blobs/{digest}") == 1
    again = await mirror.get(path)  # now from storage, with its length
    assert again.content_length == len(big) and sha256(await again.read()) == digest


async def test_read_only_serves_only_what_is_cached(
    aiohttp_client: Any, tmp_path: Path, upstream: UpstreamWriter, proxy: CountingProxy
) -> None:
    image = await upstream.push_image("team/frozen", "v1", [os.urandom(1000)])
    settings = mirror_settings(tmp_path / "data", proxy.url)
    settings.maintenance.readonly.enabled = True
    client = await aiohttp_client(create_app(settings))
    resp = await client.get("/v2/up/team/frozen/manifests/v1")
    assert resp.status == 404
    for digest in image.blobs:
        resp = await client.get(f"/v2/up/team/frozen/blobs/{digest}")
        assert resp.status == 404
    assert not proxy.counts
