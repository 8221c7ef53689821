"""PostgreSQL stopped under a running store, then started again: calls fail fast with
`Unavailable` (503 with the registry's JSON error through the API) and the same store, the same
app, works again once the database is back, without being reopened. A server of its own: the
session's is shared with other tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from moorage.app import create_app
from moorage.config import Settings
from moorage.content.activity import Activity
from moorage.errors import Unavailable
from moorage.metadata import BlobRow, MetadataStore, migrations
from tests.services.fixtures import POSTGRES, database_url, start_service, stop_service

BOUND = 20.0  # seconds a call may take to give up while the database is down


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    run_dir = tmp_path / "pg"
    run_dir.mkdir()
    try:
        yield run_dir, start_service(POSTGRES, run_dir)
    finally:
        stop_service(POSTGRES, run_dir)


async def _new_database(settings: dict[str, str]) -> str:
    admin = await asyncpg.connect(settings["DATABASE_URL"])
    try:
        await admin.execute('CREATE DATABASE "outage"')
    finally:
        await admin.close()
    url = database_url(settings, "outage")
    await migrations.run_async(url, migrations.upgrade)
    return url


def _restart(run_dir: Path, settings: dict[str, str]) -> None:
    again = start_service(POSTGRES, run_dir)
    assert again["PGPORT"] == settings["PGPORT"]


async def _unavailable(call: Any) -> float:
    started = time.monotonic()
    with pytest.raises(Unavailable):
        await asyncio.wait_for(call, BOUND)
    return time.monotonic() - started


async def test_store_raises_unavailable_and_recovers_by_itself(
    own_postgres: tuple[Path, dict[str, str]],
) -> None:
    run_dir, settings = own_postgres
    store = MetadataStore(await _new_database(settings))
    await store.open()
    try:
        await store.link_blobs("r", [BlobRow("sha256:" + "1" * 64, "k", 1)])
        stop_service(POSTGRES, run_dir)
        await _unavailable(store.repository_exists("r"))
        await _unavailable(store.ensure_repository("other"))
        await _unavailable(store.upload("u"))
        await asyncio.to_thread(_restart, run_dir, settings)
        assert await store.repository_exists("r")
        await store.ensure_repository("other")
        assert await store.repository_exists("other")
    finally:
        await store.close()


async def test_api_answers_503_during_an_outage_and_recovers(
    own_postgres: tuple[Path, dict[str, str]], tmp_path: Path, aiohttp_client: Any
) -> None:
    run_dir, settings = own_postgres
    url = await _new_database(settings)
    client = await aiohttp_client(
        create_app(Settings(datadir=tmp_path / "data", metadata={"url": url}))
    )
    manifest = "/v2/team/app/manifests/latest"
    assert (await client.get(manifest)).status == 404
    stop_service(POSTGRES, run_dir)
    for path in (manifest, "/v2/team/app/tags/list", "/v2/_catalog"):
        response = await asyncio.wait_for(client.get(path), BOUND)
        assert response.status == 503, path
        body = await response.json()
        assert body["errors"][0]["code"] == "UNAVAILABLE"
    started = await asyncio.wait_for(client.post("/v2/team/app/blobs/uploads/"), BOUND)
    assert started.status == 503
    await asyncio.to_thread(_restart, run_dir, settings)
    assert (await client.get(manifest)).status == 404
    assert (await client.post("/v2/team/app/blobs/uploads/")).status == 202


async def test_activity_counts_wait_out_an_outage(
    own_postgres: tuple[Path, dict[str, str]],
) -> None:
    """A flush that fails keeps its counts, added to those counted meanwhile, for the next."""
    run_dir, settings = own_postgres
    store = MetadataStore(await _new_database(settings))
    await store.open()
    try:
        activity = Activity(store)
        activity.count("team/app", pushes=1, pulls=2, pulled=30)
        stop_service(POSTGRES, run_dir)
        with pytest.raises(Unavailable):
            await asyncio.wait_for(activity.flush(), BOUND)
        activity.count("team/other", pulls=1, pulled=5)
        await asyncio.to_thread(_restart, run_dir, settings)
        await activity.flush()
        await activity.flush()  # nothing left: nothing added twice
        status = await store.storage_status(days=1)
        team = status.activity["team"]
        assert (team.pushes, team.pulls, team.pulled_bytes) == (1, 3, 35)
    finally:
        await store.close()
