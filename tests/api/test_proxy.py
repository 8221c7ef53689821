"""Behind a reverse proxy (`http.trustedproxies`, `http.host`): the X-Forwarded-* headers of a
trusted proxy decide the token realm and the v1 endpoints header, and the client address the
login limiter counts; from anyone else they are ignored."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.api.helpers import Client

MakeClient = Callable[..., Awaitable[Client]]
FORWARDED = {
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "registry.example.com",
    "X-Forwarded-For": "198.51.100.7",
}


@pytest.fixture
def auth_mode() -> str:
    return "none"


async def realm(client: Client, headers: dict[str, str]) -> str:
    resp = await client.get("/v2/", headers=headers)
    assert resp.status == 401
    challenge = resp.headers["WWW-Authenticate"]
    return challenge.split('realm="', 1)[1].split('"', 1)[0]


async def endpoints(client: Client, headers: dict[str, str]) -> str:
    resp = await client.put(
        "/v1/repositories/proxy/app/", data=b"[]", headers={**headers, "X-Docker-Token": "true"}
    )
    assert resp.status == 200, await resp.text()
    return resp.headers["X-Docker-Endpoints"]


@pytest.mark.parametrize("trusted", [["127.0.0.1"], ["127.0.0.0/8", "10.0.0.0/8"]])
async def test_a_trusted_proxy_names_the_external_url(
    make_client: MakeClient, htpasswd_file: Any, trusted: list[str]
) -> None:
    token = await make_client(
        auth={"mode": "token", "htpasswd": htpasswd_file}, http={"trustedproxies": trusted}
    )
    assert await realm(token, FORWARDED) == "https://registry.example.com/auth/token"
    assert await realm(token, {}) == f"http://{token.host}:{token.port}/auth/token"
    open_ = await make_client(auth={"mode": "none"}, http={"trustedproxies": trusted})
    assert await endpoints(open_, FORWARDED) == "registry.example.com"


async def test_an_untrusted_peer_cannot_pretend(
    make_client: MakeClient, htpasswd_file: Any
) -> None:
    token = await make_client(
        auth={"mode": "token", "htpasswd": htpasswd_file}, http={"trustedproxies": ["10.0.0.1"]}
    )
    assert await realm(token, FORWARDED) == f"http://{token.host}:{token.port}/auth/token"


async def test_http_host_wins(make_client: MakeClient, htpasswd_file: Any) -> None:
    token = await make_client(
        auth={"mode": "token", "htpasswd": htpasswd_file},
        http={"host": "https://cr.example.org", "trustedproxies": ["127.0.0.1"]},
    )
    assert await realm(token, FORWARDED) == "https://cr.example.org/auth/token"


async def test_the_limiter_counts_the_forwarded_client(
    make_client: MakeClient, htpasswd_file: Any
) -> None:
    """Behind a proxy every request comes from its address: without trusting it, one
    client's failed logins would lock out everyone."""
    client = await make_client(
        auth={"mode": "basic", "htpasswd": htpasswd_file, "maxaddressfailures": 3},
        http={"trustedproxies": ["127.0.0.1"]},
    )
    bad = "Basic " + base64.b64encode(b"nobody:wrong").decode()
    for _ in range(4):
        resp = await client.get("/v2/", headers={"Authorization": bad, **FORWARDED})
    assert resp.status == 429  # that client is limited ...
    other = {**FORWARDED, "X-Forwarded-For": "198.51.100.8"}
    resp = await client.get("/v2/", headers={"Authorization": bad, **other})
    assert resp.status == 401  # ... the next one is not
