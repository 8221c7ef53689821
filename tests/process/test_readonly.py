"""Read-only mode on a real server process: switched on and off by editing the config file
and sending SIGHUP (every worker reads it again; no restart), an upload in flight refused
on its next PATCH and continued once the mode is off, and a config that no longer loads
keeping the running mode. Which routes are writes: tests/api/test_readonly.py.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import aiohttp
import pytest
import yaml

from tests.harness import MakeServer, MoorageProcess
from tests.process.registry import TIMEOUT, Registry, sha256

pytestmark = pytest.mark.timeout(120)

MESSAGE = "registry is in read-only mode"
READ_ONLY = {"errors": [{"code": "UNSUPPORTED", "message": MESSAGE}]}


def write_config(server: MoorageProcess, settings: dict[str, Any]) -> None:
    """Replace the config file the server was started with (the harness writes it there)."""
    (server.log_dir / "config.yml").write_text(yaml.safe_dump(settings))


async def hup(server: MoorageProcess, line: str) -> None:
    """SIGHUP, then wait until every worker logged `line` once more."""
    before = server.log_tail(1000).count(line)
    server.signal(signal.SIGHUP)
    deadline = time.monotonic() + 15
    while server.log_tail(1000).count(line) < before + server.workers:
        assert time.monotonic() < deadline, server.log_tail()
        await asyncio.sleep(0.05)


async def post_upload(url: str) -> tuple[int, Any]:
    """POST a new upload on a new connection (any worker): status and JSON body."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT, connector=connector) as session,
        session.post(url + "/v2/ro/app/blobs/uploads/") as resp,
    ):
        body = await resp.json() if resp.status == 405 else None
        return resp.status, body


def mode(enabled: bool) -> dict[str, Any]:
    return {"maintenance": {"readonly": {"enabled": enabled}}}


async def test_sighup_switches_read_only_mode_on_and_off_without_a_restart(
    make_server: MakeServer,
) -> None:
    server = make_server(workers=2, config=mode(False))
    await server.start()
    pids = sorted(p.pid for p in server.processes())
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        reg = Registry(session, server.url)
        pushed = b"pushed before the switch"
        digest = await reg.push_blob("ro/app", pushed)
        location = await reg.start_upload("ro/app")
        first, second = b"x" * 1000, b"y" * 500
        location = await reg.patch(location, first, 0)

        # On, and a setting that needs a restart changed with it: named in the log.
        write_config(server, {**mode(True), "http": {"idletimeout": 30}})
        await hup(server, "read-only mode on: every write is refused")
        assert "these changes need a restart: http.idletimeout" in server.log_tail(200)
        for _ in range(6):  # whichever worker gets it
            assert await post_upload(server.url) == (405, READ_ONLY)
        async with session.patch(
            reg.url(location),
            data=second,
            headers={"Content-Range": f"{len(first)}-{len(first) + len(second) - 1}"},
        ) as resp:  # the upload in flight is told why on its next write
            assert (resp.status, await resp.json()) == (405, READ_ONLY)
            assert resp.headers["Allow"] == "GET"  # the status, as the route table has it
        await reg.assert_blob("ro/app", digest, pushed)  # reads go on
        assert await reg.upload_status(location) == (204, len(first))

        # Off again: writes are accepted, and the refused upload continues where it was.
        write_config(server, mode(False))
        await hup(server, "read-only mode off: writes are accepted again")
        location = await reg.patch(location, second, len(first))
        done = await reg.finish(location, sha256(first + second))
        assert done == sha256(first + second)
        for _ in range(4):
            assert (await post_upload(server.url))[0] == 202

        # A config that no longer loads is logged, and the running mode kept.
        (server.log_dir / "config.yml").write_text("maintenance: {readonly: {enabled: maybe}}\n")
        await hup(server, "config reload failed, keeping the running settings")
        assert (await post_upload(server.url))[0] == 202

    assert sorted(p.pid for p in server.processes()) == pids  # never restarted
    assert await server.stop() == 0, server.log_tail()


async def test_read_only_from_the_environment_at_start(make_server: MakeServer) -> None:
    server = make_server(env={"MOORAGE_MAINTENANCE_READONLY": "true"})
    await server.start()
    assert await post_upload(server.url) == (405, READ_ONLY)
    assert "read-only mode: every write is refused" in server.log_tail()
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        async with session.get(server.url + "/v2/_catalog") as resp:
            assert resp.status == 200
        async with session.put(server.url + "/v1/repositories/ro/app/", json=[]) as resp:
            assert (resp.status, await resp.json()) == (405, {"error": MESSAGE})
    assert await server.stop() == 0, server.log_tail()
