"""Real upstreams for the pull-through cache: CNCF Distribution (Debian's `docker-registry`)
with htpasswd authentication, behind a small reverse proxy of our own that counts the
requests the mirror makes and can hold a blob's body halfway (so that the upstream can be
killed in the middle of it)."""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from moorage.app import create_app
from moorage.config import Settings
from tests.api.helpers import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    descriptor,
    encode,
    make_config,
    make_oci_manifest,
    sha256,
)
from tests.conftest import PASSWORD, USER
from tests.harness import LOOPBACK, DistributionProcess
from tests.images import Image

# Hop-by-hop and framing headers the proxy does not pass on (aiohttp frames its own answer).
_HOP = {"connection", "keep-alive", "transfer-encoding", "host", "content-length"}


class AuthDistribution(DistributionProcess):
    """Distribution asking for Basic credentials (htpasswd)."""

    def __init__(self, root: Path, htpasswd: Path) -> None:
        super().__init__(root, ready=(401,))
        self.htpasswd = htpasswd

    def config(self) -> dict[str, Any]:
        auth = {"htpasswd": {"realm": "upstream", "path": str(self.htpasswd)}}
        return {**super().config(), "auth": auth}


class CountingProxy:
    """A reverse proxy on 127.0.0.1 in front of `target`, counting the requests it forwards
    by (method, path), except those the upstream answers 401 (an authentication challenge).
    With `hold_after` set, the body of a blob GET stops after that many bytes: `held` is
    set, and the body goes on once `release` is. With `answer_with` set, every request is
    answered with that status and not forwarded (an upstream failing or limiting). With
    `chunked` set, blob bodies go out without a length (chunked transfer-encoding), as a
    registry behind some proxies answers."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self.hold_after: int | None = None
        self.answer_with: int | None = None
        self.chunked = False
        self.held = asyncio.Event()
        self.release = asyncio.Event()
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, LOOPBACK, 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://{LOOPBACK}:{port}"
        self._session = aiohttp.ClientSession(auto_decompress=False)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def count(self, method: str, path: str) -> int:
        return self.counts[(method, path)]

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        if self.answer_with is not None:
            return web.Response(status=self.answer_with, text="not now")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with self._session.request(
            request.method,
            self.target + request.path_qs,
            headers=headers,
            data=await request.read() or None,
            allow_redirects=False,
        ) as upstream:
            if upstream.status != 401:
                self.counts[(request.method, request.path)] += 1
            response = web.StreamResponse(status=upstream.status)
            for key, value in upstream.headers.items():
                if key.lower() not in _HOP:
                    response.headers.add(key, value)
            if self.chunked and "/blobs/" in request.path and request.method == "GET":
                response.enable_chunked_encoding()
            elif upstream.content_length is not None:
                response.content_length = upstream.content_length
            await response.prepare(request)
            sent = 0
            holding = self.hold_after is not None and "/blobs/" in request.path
            async for chunk in upstream.content.iter_chunked(1 << 16):
                if holding and self.hold_after is not None and sent >= self.hold_after:
                    self.held.set()
                    await self.release.wait()
                    holding = False
                await response.write(chunk)
                sent += len(chunk)
            await response.write_eof()
            return response


@dataclass
class Pushed:
    repository: str
    tag: str
    digest: str
    manifest: bytes
    blobs: dict[str, bytes] = field(default_factory=dict)


class UpstreamWriter:
    """Pushes images straight into an upstream (not through the counting proxy)."""

    def __init__(self, url: str, authorization: str) -> None:
        self.url = url
        self.auth = {"Authorization": authorization}

    async def push_blob(self, session: aiohttp.ClientSession, repo: str, data: bytes) -> str:
        digest = sha256(data)
        async with session.post(f"{self.url}/v2/{repo}/blobs/uploads/", headers=self.auth) as resp:
            assert resp.status == 202, await resp.text()
            location = resp.headers["Location"]
        if location.startswith("/"):
            location = self.url + location
        sep = "&" if "?" in location else "?"
        async with session.put(
            f"{location}{sep}digest={digest}",
            data=data,
            headers={**self.auth, "Content-Type": "application/octet-stream"},
        ) as resp:
            assert resp.status == 201, await resp.text()
        return digest

    async def push_image(
        self, repo: str, tag: str, layers: list[bytes], note: str | None = None
    ) -> Pushed:
        config = make_config(note)
        async with aiohttp.ClientSession() as session:
            blobs = {}
            for data in [config, *layers]:
                blobs[await self.push_blob(session, repo, data)] = data
            manifest = encode(
                make_oci_manifest(
                    descriptor(config, OCI_CONFIG), [descriptor(x, OCI_LAYER) for x in layers]
                )
            )
            async with session.put(
                f"{self.url}/v2/{repo}/manifests/{tag}",
                data=manifest,
                headers={**self.auth, "Content-Type": OCI_MANIFEST},
            ) as resp:
                assert resp.status == 201, await resp.text()
        return Pushed(repo, tag, sha256(manifest), manifest, blobs)

    async def push_layout(self, repo: str, image: Image) -> None:
        """An image built by tests.images (real layers and config), under `image.tag`."""
        async with aiohttp.ClientSession() as session:
            for blob in [image.config, *image.layers]:
                assert await self.push_blob(session, repo, blob.read()) == blob.digest
            async with session.put(
                f"{self.url}/v2/{repo}/manifests/{image.tag}",
                data=image.manifest.read(),
                headers={**self.auth, "Content-Type": image.manifest.media_type},
            ) as resp:
                assert resp.status == 201, await resp.text()


@pytest.fixture(scope="module")
def distribution(
    tmp_path_factory: pytest.TempPathFactory, htpasswd_file: Path
) -> Iterator[AuthDistribution]:
    server = AuthDistribution(tmp_path_factory.mktemp("distribution"), htpasswd_file)
    server.start_sync()
    try:
        yield server
    finally:
        server.stop_sync()


@pytest.fixture
def upstream(distribution: AuthDistribution) -> UpstreamWriter:
    return UpstreamWriter(distribution.url, aiohttp.encode_basic_auth(USER, PASSWORD))


@pytest.fixture
async def proxy(distribution: AuthDistribution) -> AsyncIterator[CountingProxy]:
    counting = CountingProxy(distribution.url)
    await counting.start()
    try:
        yield counting
    finally:
        await counting.close()


def mirror_settings(datadir: Path, url: str, **upstream: Any) -> Settings:
    """A registry mirroring `url` under `up/` with the test user's credentials."""
    entry = {"prefix": "up", "url": url, "username": USER, "password": PASSWORD, **upstream}
    return Settings(datadir=datadir, proxy={"upstreams": [entry]})


@pytest.fixture
async def mirror(aiohttp_client: Any, tmp_path: Path, proxy: CountingProxy) -> TestClient[Any, Any]:
    """An in-process Moorage mirroring the Distribution (through the counting proxy)."""
    client: TestClient[Any, Any] = await aiohttp_client(
        create_app(mirror_settings(tmp_path / "data", proxy.url))
    )
    return client


def error_message(body: bytes) -> str:
    return str(json.loads(body)["errors"][0]["message"])
