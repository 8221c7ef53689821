"""Failed-login limits (auth.maxfailures per auth.window): per user and per client address,
429 TOOMANYREQUESTS with Retry-After even for the right password."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.auth.conftest import MakeRegistry
from tests.auth.helpers import Client, assert_basic_challenge, assert_error, basic

MAX = 3
WINDOW = 60


class FromAddress:
    """Requests to the test server from another loopback source address (127.0.0.x), so the
    registry sees another client."""

    def __init__(self, client: Client, address: str) -> None:
        self.client = client
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(local_addr=(address, 0))
        )

    async def get(self, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        resp = await self.session.get(self.client.make_url(path), **kwargs)
        await resp.read()
        return resp


@pytest.fixture
async def addresses() -> AsyncIterator[list[FromAddress]]:
    made: list[FromAddress] = []
    yield made
    for item in made:
        await item.session.close()


async def _basic_registry(
    make_registry: MakeRegistry, addresses: list[FromAddress], mode: str = "basic"
) -> tuple[Client, FromAddress, FromAddress]:
    client = (await make_registry(mode, maxfailures=MAX, window=WINDOW)).client
    two = FromAddress(client, "127.0.0.2")
    three = FromAddress(client, "127.0.0.3")
    addresses += [two, three]
    return client, two, three


async def assert_limited(resp: aiohttp.ClientResponse) -> None:
    assert resp.status == 429, await resp.text()
    body = json.loads(await resp.text())
    assert body["errors"][0]["code"] == "TOOMANYREQUESTS", body
    retry = int(resp.headers["Retry-After"])
    assert 1 <= retry <= WINDOW + 1, retry


async def test_user_limited_after_max_failures_even_with_right_password(
    make_registry: MakeRegistry, addresses: list[FromAddress]
) -> None:
    client, two, three = await _basic_registry(make_registry, addresses)
    # Warm the credentials cache first: a remembered good password must not bypass the limit.
    assert (await two.get("/v2/", headers=basic("alice"))).status == 200
    for _ in range(MAX):
        resp = await two.get("/v2/", headers=basic("alice", "guess"))
        assert resp.status == 401  # below the limit: a plain failed login
        assert resp.headers["WWW-Authenticate"] == 'Basic realm="Moorage"'
    resp = await two.get("/v2/", headers=basic("alice"))
    await assert_limited(resp)
    # Per user: the limit follows alice to other addresses.
    await assert_limited(await three.get("/v2/", headers=basic("alice")))
    resp = await client.get("/v2/team/a/tags/list", headers=basic("alice"))
    await assert_error(resp, 429, "TOOMANYREQUESTS")
    assert resp.headers["Retry-After"]
    # Other users are unaffected (from addresses that did not fail).
    assert (await three.get("/v2/", headers=basic("bob"))).status == 200
    assert (await client.get("/v2/", headers=basic("carol"))).status == 200
    # Anonymous requests are not logins: still 401, not 429, from the failing address.
    await assert_basic_challenge(await client.get("/v2/"))


async def test_address_limited_after_max_failures_across_users(
    make_registry: MakeRegistry, addresses: list[FromAddress]
) -> None:
    client, two, three = await _basic_registry(make_registry, addresses)
    # One address tries several user names, each once.
    for name in ("root", "admin", "bob"):
        resp = await two.get("/v2/", headers=basic(name, "guess"))
        assert resp.status == 401
    # Now that address is refused for everyone, even with right passwords.
    await assert_limited(await two.get("/v2/", headers=basic("carol")))
    await assert_limited(await two.get("/v2/", headers=basic("dave")))
    # Other addresses carry on, including for bob who failed only once.
    assert (await three.get("/v2/", headers=basic("carol"))).status == 200
    assert (await client.get("/v2/", headers=basic("bob"))).status == 200


async def test_limit_applies_to_the_token_endpoint(
    make_registry: MakeRegistry, addresses: list[FromAddress]
) -> None:
    client, two, three = await _basic_registry(make_registry, addresses, mode="token")
    params = {"service": "moorage", "scope": "repository:team/a:pull"}
    for _ in range(MAX):
        resp = await two.get("/auth/token", params=params, headers=basic("bob", "guess"))
        assert resp.status == 401
    resp = await three.get("/auth/token", params=params, headers=basic("bob"))
    await assert_limited(resp)
    form = {"grant_type": "password", "username": "bob", "password": "bob-secret-pw"}
    resp = await client.post("/auth/token", data=form)
    assert resp.status == 429
    assert resp.headers["Retry-After"]
    # carol from a clean address still gets tokens.
    resp = await three.get("/auth/token", params=params, headers=basic("carol"))
    assert resp.status == 200, await resp.text()


async def test_successful_logins_do_not_count(
    make_registry: MakeRegistry, addresses: list[FromAddress]
) -> None:
    client, _, _ = await _basic_registry(make_registry, addresses)
    for _ in range(MAX * 3):
        assert (await client.get("/v2/", headers=basic("alice"))).status == 200
    for _ in range(MAX - 1):
        assert (await client.get("/v2/", headers=basic("alice", "x"))).status == 401
    assert (await client.get("/v2/", headers=basic("alice"))).status == 200
