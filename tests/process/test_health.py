"""`/healthz` and `/readyz` on real server processes: no credentials needed, readiness follows
the storage directory and a PostgreSQL server of the test's own, and SIGTERM drains (readyz
503 at once, requests still served for `http.draintimeout`) so that a real HAProxy takes the
node out before it stops.
"""

from __future__ import annotations

import asyncio
import csv
import io
import random
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from moorage.auth import htpasswd
from moorage.metadata import migrations
from tests.harness import MakeServer, MoorageProcess
from tests.process.registry import TIMEOUT, Registry, sha256
from tests.services.fixtures import (
    POSTGRES,
    Settings,
    create_database,
    database_url,
    start_service,
    stop_service,
)

pytestmark = pytest.mark.timeout(180)

READY = {"status": "ready", "checks": {"metadata": "ok", "storage": "ok"}}
KIB = 1 << 10


async def probe(url: str, path: str) -> tuple[int, dict[str, Any]]:
    """Status and JSON body of one GET on a new connection (with several workers, each probe
    may land on any of them)."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT, connector=connector) as session,
        session.get(url + path) as resp,
    ):
        return resp.status, await resp.json()


async def kept_alive(url: str) -> tuple[int, str]:
    """Status and `Connection` header of a GET /healthz from a client that would keep its
    connection open."""
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.get(url + "/healthz") as resp,
    ):
        return resp.status, resp.headers.get("Connection", "").lower()


async def until(url: str, path: str, status: int, bound: float = 15.0) -> dict[str, Any]:
    """Probe until `path` answers `status` (bounded); its body."""
    deadline = time.monotonic() + bound
    while True:
        got, body = await probe(url, path)
        if got == status:
            return body
        assert time.monotonic() < deadline, f"{path} still {got} {body} after {bound}s"
        await asyncio.sleep(0.1)


async def logged(server: MoorageProcess, text: str) -> None:
    """Wait until every worker logged `text`."""
    deadline = time.monotonic() + 15
    while server.log_tail(400).count(text) < server.workers:
        assert time.monotonic() < deadline, server.log_tail()
        await asyncio.sleep(0.05)


async def serving(server: MoorageProcess) -> None:
    """Wait until every worker serves: /v2/ answering proves one, and a worker signalled
    before it installs its handlers just dies (it had nothing to drain)."""
    await logged(server, "serving on")


async def test_both_answer_without_credentials_and_readyz_names_its_checks(
    make_server: MakeServer, tmp_path: Path
) -> None:
    users = tmp_path / "htpasswd"
    htpasswd.write(users, {"alice": htpasswd.hash_password("a password")})
    server = make_server(args=["--htpasswd", users], ready=(401,))
    await server.start()
    assert await probe(server.url, "/healthz") == (200, {"status": "alive"})
    assert await probe(server.url, "/readyz") == (200, READY)
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        async with session.head(server.url + "/readyz") as resp:
            assert resp.status == 200
            assert resp.headers["Cache-Control"] == "no-store"
        async with session.post(server.url + "/readyz") as resp:
            assert resp.status == 405
        async with session.get(server.url + "/v2/") as resp:
            assert resp.status == 401  # the registry itself still wants credentials
    assert await server.stop() == 0, server.log_tail()


async def test_readyz_fails_while_the_storage_directory_is_unusable(
    make_server: MakeServer,
) -> None:
    server = make_server(workers=2)
    await server.start()
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        await Registry(session, server.url).push_blob("health/storage", b"some bytes")
    storage = server.data_dir / "storage"
    aside = storage.with_name("storage-aside")
    storage.rename(aside)
    storage.write_text("a file where the blob directory was\n")  # as root, chmod would not do
    try:
        for _ in range(6):  # every worker says so
            assert await probe(server.url, "/readyz") == (
                503,
                {"status": "unavailable", "checks": {"metadata": "ok", "storage": "failed"}},
            )
        assert (await probe(server.url, "/healthz"))[0] == 200  # alive all the same
    finally:
        storage.unlink()
        aside.rename(storage)
    assert await until(server.url, "/readyz", 200) == READY
    assert "is not a directory" in server.log_tail(200)
    assert await server.stop() == 0, server.log_tail()


async def test_readyz_fails_while_postgresql_is_down(
    make_server: MakeServer, tmp_path: Path
) -> None:
    """A PostgreSQL server of this test's own, stopped and started again under the node."""
    run_dir = tmp_path / "pg"
    run_dir.mkdir()
    pg = start_service(POSTGRES, run_dir)
    try:
        await create_database(pg, "health")
        database = database_url(pg, "health")
        await migrations.run_async(database, migrations.upgrade)
        server = make_server(workers=2, env={"MOORAGE_METADATA_URL": database})
        await server.start()
        assert await probe(server.url, "/readyz") == (200, READY)
        await asyncio.to_thread(stop_service, POSTGRES, run_dir)
        body = await until(server.url, "/readyz", 503)
        assert body["checks"]["storage"] == "ok"
        assert body["checks"]["metadata"] in ("failed", "timeout"), body
        assert (await probe(server.url, "/healthz"))[0] == 200
        again = await asyncio.to_thread(start_service, POSTGRES, run_dir)
        assert again["PGPORT"] == pg["PGPORT"]
        assert await until(server.url, "/readyz", 200) == READY  # no restart needed
        assert await server.stop() == 0, server.log_tail()
    finally:
        stop_service(POSTGRES, run_dir)


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_drains_readyz_fails_at_once_while_requests_are_still_served(
    make_server: MakeServer, workers: int
) -> None:
    drain = 3.0
    server = make_server(workers=workers, config={"http": {"draintimeout": drain}})
    await server.start()
    await serving(server)
    data = random.Random(5).randbytes(2048 * KIB)
    digest = sha256(data)
    halfway = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:  # 16 pieces, about 1.6 s
        for i, start in enumerate(range(0, len(data), 128 * KIB)):
            if i == 4:
                halfway.set()
            yield data[start : start + 128 * KIB]
            await asyncio.sleep(0.1)

    assert await kept_alive(server.url) == (200, "")  # keep-alive is HTTP/1.1's default
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        reg = Registry(session, server.url)
        location = await reg.start_upload("health/drain")
        upload = asyncio.create_task(reg.finish(location, digest, slow_body()))
        await asyncio.wait_for(halfway.wait(), 30)
        server.signal(signal.SIGTERM)
        signalled = time.monotonic()
        # A supervisor passes the signal on: give its workers a moment to get it.
        assert await until(server.url, "/readyz", 503, bound=2.0) == {"status": "draining"}
        for _ in range(4):
            assert await probe(server.url, "/readyz") == (503, {"status": "draining"})
            # New connections are still accepted and served, and told not to stay.
            assert await kept_alive(server.url) == (200, "close")
        assert await asyncio.wait_for(upload, 30) == digest  # the in-flight upload completes
        assert server.alive() and time.monotonic() - signalled < drain
        assert (await reg.get_blob("health/drain", digest))[1] == data
    code = await server.wait_exit(drain + 15)
    exited = time.monotonic() - signalled
    assert code == 0, server.log_tail()
    assert exited >= drain - 0.2, f"stopped after {exited:.2f}s, before the {drain}s drain"


@pytest.mark.parametrize("how", ["SIGINT", "second SIGTERM"])
async def test_sigint_or_a_second_sigterm_cuts_the_drain_short(
    make_server: MakeServer, how: str
) -> None:
    server = make_server(workers=2, config={"http": {"draintimeout": 120}})
    await server.start()
    await serving(server)
    if how == "SIGINT":
        server.signal(signal.SIGINT)
    else:
        server.signal(signal.SIGTERM)
        await until(server.url, "/readyz", 503, bound=2.0)
        # Each worker has had the first: two signals pending at once would count as one.
        await logged(server, "draining for")
        server.signal(signal.SIGTERM)
    assert await server.wait_exit(15) == 0, server.log_tail()


def haproxy_status(admin_socket: str, server: str) -> str:
    """The status (UP, DOWN, ...) of backend server `server` from HAProxy's `show stat`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(admin_socket)
        sock.sendall(b"show stat\n")
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    rows = csv.DictReader(io.StringIO(raw.decode().lstrip("# ")))
    for row in rows:
        if row["pxname"] == "be" and row["svname"] == server:
            return row["status"].split()[0]
    raise AssertionError(f"no server {server} in:\n{raw.decode()}")


async def test_haproxy_checking_readyz_takes_a_draining_node_out_before_it_stops(
    make_server: MakeServer, haproxy: Callable[..., Settings]
) -> None:
    nodes: list[MoorageProcess] = [
        make_server(config={"http": {"draintimeout": 60}}) for _ in range(2)
    ]
    await asyncio.gather(*(node.start() for node in nodes))
    lb = haproxy(*(node.host for node in nodes), health_path="/readyz")
    admin = lb["HAPROXY_SOCKET"]
    deadline = time.monotonic() + 15
    while {haproxy_status(admin, s) for s in ("node1", "node2")} != {"UP"}:
        assert time.monotonic() < deadline, "the nodes never came up in HAProxy"
        await asyncio.sleep(0.2)

    nodes[0].signal(signal.SIGTERM)
    signalled = time.monotonic()
    while haproxy_status(admin, "node1") != "DOWN":
        assert time.monotonic() - signalled < 20, "HAProxy never took the draining node out"
        # Meanwhile every request through the balancer is served, by either node.
        assert (await probe(lb["LB_URL"], "/healthz"))[0] == 200
        await asyncio.sleep(0.2)
    assert nodes[0].alive(), "the node stopped before the balancer took it out"
    assert haproxy_status(admin, "node2") == "UP"
    for _ in range(6):
        assert await probe(lb["LB_URL"], "/readyz") == (200, READY)  # node2 alone
    nodes[0].signal(signal.SIGTERM)  # a second one: no need to wait out the drain
    assert await nodes[0].wait_exit(15) == 0, nodes[0].log_tail()
    nodes[1].signal(signal.SIGINT)  # Ctrl-C: no drain
    assert await nodes[1].wait_exit(15) == 0, nodes[1].log_tail()
