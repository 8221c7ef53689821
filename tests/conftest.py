"""Shared fixtures: an in-process registry per test, on its own data directory.

Every test that uses `client` (or `make_client` without its own `auth` settings) runs twice:
once with no authentication and once with token authentication on, where the test client
behaves like a real one: it asks the built-in token server for a token covering what each
request needs, with a user's Basic credentials, and sends it as a Bearer token.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from moorage.api.v2.routes import match
from moorage.app import create_app
from moorage.auth import htpasswd
from moorage.config import Settings
from moorage.content import names
from moorage.errors import NameInvalid
from tests.services.fixtures import (  # noqa: F401  (fixtures, registered by import)
    fresh_bucket,
    fresh_database,
    haproxy,
    migrated_database,
    postgres_service,
    s3_service,
    scaleout,
    scaleout_bucket,
    scaleout_template,
)

MakeClient = Callable[..., Awaitable[TestClient[Any, Any]]]

USER, PASSWORD = "tester", "test-password"
# What each access name of the route table needs in a token (mirrors the registry's mapping).
_ACTIONS = {"pull": "pull", "push": "pull,push", "push-only": "push", "delete": "delete"}


# The modules that take longest (minutes each: real services, clients and processes killed and
# restarted), measured with --durations. scripts/test.sh hands whole modules to its test
# processes in collection order (--dist loadfile --no-loadscope-reorder), so these go first:
# a long one left for the end would run alone while the other processes have finished.
LONGEST_FIRST = (
    "tests/clients/test_import_distribution.py",
    "tests/process/test_fsck.py",
    "tests/cluster/test_cluster.py",
    "tests/process/test_supervisor.py",
    "tests/process/test_gc.py",
    "tests/process/test_soak.py",
    "tests/clients/test_mirror.py",
    "tests/process/test_directio.py",
    "tests/process/test_crash.py",
    "tests/services/test_services.py",
    "tests/clients/test_tls_init.py",
    "tests/process/test_workers.py",
    "tests/process/test_slow_reader.py",
    "tests/process/test_health.py",
    "tests/process/test_events.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {module: i for i, module in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


@pytest.fixture(scope="session")
def htpasswd_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("auth") / "htpasswd"
    htpasswd.write(path, {USER: htpasswd.hash_password(PASSWORD)})
    return path


def _scopes(method: str, target: str) -> list[str] | None:
    """The token scopes a v2 request needs; None when it is not a v2 route."""
    parts = urlsplit(target)
    if not parts.path.startswith("/v2"):
        return None
    found = match(parts.path[len("/v2") :])
    if found is None:
        return []
    route, params = found
    entry = route.methods.get(method)
    if entry is None or entry[1] is None:
        return []
    access = entry[1]
    if access == "catalog":
        return ["registry:catalog:*"]
    try:
        repository = names.canonical_repository(params["name"])
    except NameInvalid:
        return []
    scopes = [f"repository:{repository}:{_ACTIONS[access]}"]
    source = parse_qs(parts.query).get("from")
    if source:
        with contextlib.suppress(NameInvalid):
            scopes.append(f"repository:{names.canonical_repository(source[0])}:pull")
    return scopes


class TokenAuth:
    """A client-side middleware that fetches and caches Bearer tokens, as docker does."""

    def __init__(self) -> None:
        self.base = ""
        self._cache: dict[str, str] = {}

    async def header(self, method: str, target: str) -> str | None:
        scopes = _scopes(method, target)
        if scopes is None:
            return None
        key = " ".join(scopes)
        if key not in self._cache:
            query = [("service", "moorage")] + [("scope", s) for s in scopes]
            basic = {"Authorization": aiohttp.encode_basic_auth(USER, PASSWORD)}
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"{self.base}/auth/token", params=query, headers=basic) as resp,
            ):
                assert resp.status == 200, await resp.text()
                self._cache[key] = (await resp.json())["token"]
        return f"Bearer {self._cache[key]}"

    async def __call__(
        self, request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        if "Authorization" not in request.headers:
            target = request.url.raw_path_qs
            value = await self.header(request.method, target)
            if value is not None:
                request.headers["Authorization"] = value
        return await handler(request)


# Where in-process registries keep metadata and blobs: "embedded" (SQLite and the filesystem,
# the default) or "scaleout" (PostgreSQL and S3, the real services of tests/services). CI runs
# the API suites once with each.
BACKEND = os.environ.get("MOORAGE_TEST_BACKEND", "embedded")
assert BACKEND in ("embedded", "scaleout"), f"MOORAGE_TEST_BACKEND={BACKEND!r}"


# Token authentication is independent of the backend: the scale-out run tests the backend.
@pytest.fixture(params=["none", "token"] if BACKEND == "embedded" else ["none"])
def auth_mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def _start(
    aiohttp_client: Any, settings: Settings, token_client: bool
) -> TestClient[Any, Any]:
    if not token_client:
        return await aiohttp_client(create_app(settings))  # type: ignore[no-any-return]
    auth = TokenAuth()
    client: TestClient[Any, Any] = await aiohttp_client(create_app(settings), middlewares=(auth,))
    auth.base = str(client.make_url("")).rstrip("/")
    client.auth_header = auth.header  # type: ignore[attr-defined]
    return client


class Embedded:
    async def settings_for(self, datadir: Path) -> dict[str, Any]:
        return {}


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> Any:
    """`await backend.settings_for(datadir)`: the settings that put a registry on the backend
    this run tests (the same data directory gets the same database and bucket prefix)."""
    if BACKEND == "embedded":
        return Embedded()
    return request.getfixturevalue("scaleout")


@pytest.fixture
async def settings(tmp_path: Path, auth_mode: str, htpasswd_file: Path, backend: Any) -> Settings:
    datadir = tmp_path / "data"
    placed = await backend.settings_for(datadir)
    if auth_mode == "token":
        return Settings(
            datadir=datadir, auth={"mode": "token", "htpasswd": htpasswd_file}, **placed
        )
    return Settings(datadir=datadir, **placed)


@pytest.fixture
def make_client(
    aiohttp_client: Any, tmp_path: Path, auth_mode: str, htpasswd_file: Path, backend: Any
) -> MakeClient:
    """Start another in-process registry: `await make_client(deletes={"enabled": False})`.

    Keyword arguments are Settings fields; by default each gets its own data directory. Unless
    `auth` is given, the registry uses the test's auth mode (none, or token with a client that
    fetches tokens itself)."""
    count = 0

    async def make(**overrides: Any) -> TestClient[Any, Any]:
        nonlocal count
        count += 1
        overrides.setdefault("datadir", tmp_path / f"data-{count}")
        for key, value in (await backend.settings_for(overrides["datadir"])).items():
            given = overrides.get(key)
            if given is None:
                overrides[key] = value
            elif isinstance(given, dict):  # the test's settings of that section win
                overrides[key] = {**value, **given}
        # Tests that configure auth themselves drive it themselves.
        token_client = "auth" not in overrides and auth_mode == "token"
        if token_client:
            overrides["auth"] = {"mode": "token", "htpasswd": htpasswd_file}
        return await _start(aiohttp_client, Settings(**overrides), token_client)

    return make


@pytest.fixture
async def client(aiohttp_client: Any, settings: Settings, auth_mode: str) -> TestClient[Any, Any]:
    """An aiohttp test client for a registry with the embedded defaults (and, in the token
    run, token authentication)."""
    return await _start(aiohttp_client, settings, auth_mode == "token")
