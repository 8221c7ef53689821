"""Failed-login limits per auth.window: auth.maxfailures per (user, client address) pair and
auth.maxaddressfailures per client address, 429 TOOMANYREQUESTS with Retry-After even for the
right password, from that address only: a guesser must never lock the real user out."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from moorage.auth.ratelimit import LoginLimiter
from tests.auth.conftest import MakeRegistry
from tests.auth.helpers import Client, assert_basic_challenge, assert_error, basic

MAX = 3
ADDRESS_MAX = 5
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
        return await self.request("GET", path, **kwargs)

    async def request(self, method: str, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        resp = await self.session.request(method, self.client.make_url(path), **kwargs)
        await resp.read()
        return resp


@pytest.fixture
def auth_mode() -> str:
    """Every test here sets `auth` itself; one run is enough."""
    return "none"


@pytest.fixture
async def addresses() -> AsyncIterator[list[FromAddress]]:
    made: list[FromAddress] = []
    yield made
    for item in made:
        await item.session.close()


async def _basic_registry(
    make_registry: MakeRegistry, addresses: list[FromAddress], mode: str = "basic"
) -> tuple[Client, FromAddress, FromAddress]:
    registry = await make_registry(
        mode, maxfailures=MAX, maxaddressfailures=ADDRESS_MAX, window=WINDOW
    )
    client = registry.client
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


async def test_wrong_passwords_lock_out_their_address_not_the_user(
    make_registry: MakeRegistry, addresses: list[FromAddress]
) -> None:
    client, two, three = await _basic_registry(make_registry, addresses)
    # Warm the credentials cache first: a remembered good password must not bypass the limit.
    assert (await two.get("/v2/", headers=basic("alice"))).status == 200
    for _ in range(MAX):
        resp = await two.get("/v2/", headers=basic("alice", "guess"))
        assert resp.status == 401  # below the limit: a plain failed login
        assert resp.headers["WWW-Authenticate"] == 'Basic realm="Moorage"'
    # The guessing address is refused for alice, even with her right password.
    await assert_limited(await two.get("/v2/", headers=basic("alice")))
    await assert_limited(await two.get("/v2/team/a/tags/list", headers=basic("alice")))
    # The real alice, from any other address, is not.
    assert (await three.get("/v2/", headers=basic("alice"))).status == 200
    assert (await client.get("/v2/", headers=basic("alice"))).status == 200
    # Nor are other users from the guessing address (it is below its address limit).
    assert (await two.get("/v2/", headers=basic("bob"))).status == 200
    # Anonymous requests are not logins: still 401, not 429, from the failing address.
    await assert_basic_challenge(await two.get("/v2/"))


async def test_eleven_wrong_passwords_with_the_defaults_do_not_lock_alice_out(
    make_registry: MakeRegistry, addresses: list[FromAddress]
) -> None:
    """The report: eleven wrong passwords for alice from one address locked her out."""
    client = (await make_registry("basic")).client
    two = FromAddress(client, "127.0.0.2")
    addresses.append(two)
    for _ in range(11):
        await two.get("/v2/", headers=basic("alice", "guess"))
    await assert_error(await two.get("/v2/", headers=basic("alice")), 429, "TOOMANYREQUESTS")
    assert (await client.get("/v2/", headers=basic("alice"))).status == 200


async def test_address_limited_after_max_failures_across_users(
    make_registry: MakeRegistry, addresses: list[FromAddress]
) -> None:
    client, two, three = await _basic_registry(make_registry, addresses)
    # One address tries several user names, each fewer times than the per-user limit.
    names = ["root", "admin", "bob", "root", "admin"]
    assert len(names) == ADDRESS_MAX
    for name in names:
        resp = await two.get("/v2/", headers=basic(name, "guess"))
        assert resp.status == 401
    # Now that address is refused for everyone, even with right passwords.
    await assert_limited(await two.get("/v2/", headers=basic("carol")))
    await assert_limited(await two.get("/v2/", headers=basic("dave")))
    # Other addresses carry on, including for bob who failed there once.
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
    await assert_limited(await two.get("/auth/token", params=params, headers=basic("bob")))
    form = {"grant_type": "password", "username": "bob", "password": "bob-secret-pw"}
    resp = await two.request("POST", "/auth/token", data=form)
    await assert_limited(resp)
    # bob from other addresses still gets tokens, by GET and by POST.
    resp = await three.get("/auth/token", params=params, headers=basic("bob"))
    assert resp.status == 200, await resp.text()
    resp = await client.post("/auth/token", data=form)
    assert resp.status == 200, await resp.text()


async def test_v1_logins_are_limited_the_same_way(
    make_registry: MakeRegistry, addresses: list[FromAddress]
) -> None:
    client, two, three = await _basic_registry(make_registry, addresses)
    for _ in range(MAX):
        assert (await two.get("/v1/users/", headers=basic("alice", "guess"))).status == 401
    # v1 login, v1 search (any v1 request with Basic credentials) and v2: 429 from there.
    for path in ("/v1/users/", "/v1/search?q=x"):
        resp = await two.get(path, headers=basic("alice"))
        assert resp.status == 429
        assert int(resp.headers["Retry-After"]) > 0
    await assert_limited(await two.get("/v2/", headers=basic("alice")))
    # alice from elsewhere logs in, by v1 and by v2.
    assert (await three.get("/v1/users/", headers=basic("alice"))).status == 200
    assert (await three.get("/v1/search?q=x", headers=basic("alice"))).status == 200
    assert (await client.get("/v2/", headers=basic("alice"))).status == 200


async def test_successful_logins_do_not_count(
    make_registry: MakeRegistry, addresses: list[FromAddress]
) -> None:
    client, _, _ = await _basic_registry(make_registry, addresses)
    for _ in range(MAX * 3):
        assert (await client.get("/v2/", headers=basic("alice"))).status == 200
    for _ in range(MAX - 1):
        assert (await client.get("/v2/", headers=basic("alice", "x"))).status == 401
    assert (await client.get("/v2/", headers=basic("alice"))).status == 200


async def test_ipv6_addresses_count_per_64_and_ipv4_alone() -> None:
    limiter = LoginLimiter(per_pair=2, per_address=100, window=WINDOW)
    for host in ("2001:db8:1:2::1", "2001:db8:1:2:ffff::9"):
        await limiter.failed("alice", host)
    assert await limiter.retry_after("alice", "2001:db8:1:2::77") > 0
    assert await limiter.retry_after("alice", "2001:db8:1:3::1") == 0
    for _ in range(2):
        await limiter.failed("alice", "192.0.2.1")
    assert await limiter.retry_after("alice", "::ffff:192.0.2.1") > 0
    assert await limiter.retry_after("alice", "192.0.2.2") == 0
    assert await limiter.retry_after("bob", "192.0.2.1") == 0


async def test_nodes_on_one_database_share_the_failure_counts(
    make_registry: MakeRegistry, migrated_database: str
) -> None:
    """Two nodes on one PostgreSQL: failures on either count against the one limit, so the
    next try on either node is refused (the limit is not nodes x the limit)."""
    shared = {"metadata": {"url": migrated_database}}
    nodes = [
        (await make_registry("basic", shared, maxfailures=MAX, window=WINDOW)).client
        for _ in range(2)
    ]
    for i in range(MAX):
        resp = await nodes[i % 2].get("/v2/", headers=basic("alice", "wrong"))
        assert resp.status == 401
    for node in nodes:
        await assert_limited(await node.get("/v2/", headers=basic("alice")))
