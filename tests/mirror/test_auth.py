"""Authentication on both sides of the mirror: the anonymous token flow against an upstream
that lets anyone pull (as Docker Hub does for public images), and the mirror's own access
rules, checked before anything is fetched."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from aiohttp import encode_basic_auth
from aiohttp.test_utils import TestClient

from moorage.app import create_app
from moorage.config import Settings
from tests.api.helpers import push_image, sha256
from tests.conftest import PASSWORD, USER
from tests.mirror.conftest import CountingProxy, UpstreamWriter

Client = TestClient[Any, Any]


async def test_an_anonymous_token_flow_upstream(
    aiohttp_client: Any, tmp_path: Path, htpasswd_file: Path
) -> None:
    # The upstream's content, pushed while it asks for nothing; then served with token
    # authentication, anonymous pulls allowed.
    datadir = tmp_path / "upstream"
    writer: Client = await aiohttp_client(create_app(Settings(datadir=datadir)))
    image = await push_image(writer, "team/public", "v1", layers=2)
    await writer.close()
    auth = {"mode": "token", "htpasswd": htpasswd_file, "anonymouspull": True}
    upstream: Client = await aiohttp_client(create_app(Settings(datadir=datadir, auth=auth)))
    resp = await upstream.get("/v2/team/public/manifests/v1")
    assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer ")
    url = str(upstream.make_url("")).rstrip("/")
    mirror: Client = await aiohttp_client(
        create_app(
            Settings(
                datadir=tmp_path / "mirror", proxy={"upstreams": [{"prefix": "pub", "url": url}]}
            )
        )
    )
    resp = await mirror.get("/v2/pub/team/public/manifests/v1")
    assert resp.status == 200 and await resp.read() == image.body
    for layer in image.layers:
        resp = await mirror.get(f"/v2/pub/team/public/blobs/{sha256(layer)}")
        assert resp.status == 200 and await resp.read() == layer


async def test_access_rules_apply_before_anything_is_fetched(
    aiohttp_client: Any,
    tmp_path: Path,
    htpasswd_file: Path,
    upstream: UpstreamWriter,
    proxy: CountingProxy,
) -> None:
    await upstream.push_image("team/guarded", "v1", [os.urandom(1000)])
    opened = await upstream.push_image("team/open", "v1", [os.urandom(1000)])
    entry = {"prefix": "up", "url": proxy.url, "username": USER, "password": PASSWORD}
    settings = Settings(
        datadir=tmp_path / "data",
        proxy={"upstreams": [entry]},
        auth={
            "mode": "basic",
            "htpasswd": htpasswd_file,
            "rules": [{"repository": "up/team/open", "users": ["*"], "actions": ["pull"]}],
        },
    )
    client: Client = await aiohttp_client(create_app(settings))
    resp = await client.get("/v2/up/team/open/manifests/v1")
    assert resp.status == 401  # no credentials
    credentials = {"Authorization": encode_basic_auth(USER, PASSWORD)}
    resp = await client.get("/v2/up/team/guarded/manifests/v1", headers=credentials)
    assert resp.status == 403  # the rules do not let this user pull it
    assert not proxy.counts  # neither asked anything of the upstream
    resp = await client.get("/v2/up/team/open/manifests/v1", headers=credentials)
    assert resp.status == 200 and await resp.read() == opened.manifest
    assert proxy.count("GET", "/v2/team/open/manifests/v1") == 1
    assert proxy.count("GET", "/v2/team/guarded/manifests/v1") == 0


async def test_refused_credentials_are_reported(
    aiohttp_client: Any, tmp_path: Path, upstream: UpstreamWriter, proxy: CountingProxy
) -> None:
    await upstream.push_image("team/locked", "v1", [os.urandom(100)])
    entry = {"prefix": "up", "url": proxy.url, "username": USER, "password": "wrong"}
    settings = Settings(datadir=tmp_path / "data", proxy={"upstreams": [entry]})
    client: Client = await aiohttp_client(create_app(settings))
    resp = await client.get("/v2/up/team/locked/manifests/v1")
    assert resp.status == 503
    error = (await resp.json())["errors"][0]
    assert error["code"] == "UNAVAILABLE" and "answered 401" in error["detail"]["reason"]
