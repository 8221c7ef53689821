"""Several worker processes on one port: any worker continues any upload session, concurrent
uploads of one blob all succeed and store it once, and SIGTERM drains in-flight requests.

Requests that must be free to land on different workers each go over a new TCP connection
(a `force_close` connector), since the kernel hands each accepted connection to one worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.harness import REPO_ROOT, MakeServer, MoorageProcess
from tests.process.registry import TIMEOUT, Registry, range_end, sha256
from tests.process.test_readonly import READ_ONLY, hup, mode, post_upload, write_config

pytestmark = pytest.mark.timeout(120)

KIB = 1 << 10
MIB = 1 << 20
DRAIN_BOUND = 15.0  # seconds an in-flight request may take to finish after SIGTERM


def _patch_on_new_connection(
    server: MoorageProcess, location: str, data: bytes, start: int
) -> tuple[str, int | None]:
    """PATCH one chunk over a fresh TCP connection; returns the new Location and the pid of
    the worker that holds the server end of that connection (looked up before closing it)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{start}-{start + len(data) - 1}",
        }
        conn.request("PATCH", location, body=data, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 202, f"PATCH {start}: {resp.status} {body[:200]!r}"
        assert range_end(resp.getheader("Range")) == start + len(data)
        assert conn.sock is not None
        client_port = conn.sock.getsockname()[1]
        owner = None
        for proc in server.processes()[1:]:
            for c in proc.net_connections(kind="tcp"):
                if c.raddr and c.raddr.port == client_port:
                    owner = proc.pid
        return resp.getheader("Location") or location, owner
    finally:
        conn.close()


async def test_chunked_upload_over_new_connections_completes(
    make_server: MakeServer, http_new_conn: aiohttp.ClientSession
) -> None:
    server = make_server(workers=2)
    await server.start()
    assert len(server.processes()) >= 3, "expected a supervisor and 2 workers"
    reg = Registry(http_new_conn, server.url)
    chunk, count = 256 * KIB, 40
    data = random.Random(1).randbytes(chunk * count)

    location = await reg.start_upload("workers/chunked")
    owners: Counter[int | None] = Counter()
    for i in range(count):
        location, owner = await asyncio.to_thread(
            _patch_on_new_connection, server, location, data[i * chunk : (i + 1) * chunk], i * chunk
        )
        owners[owner] += 1
    assert await reg.upload_status(location) == (204, len(data))
    await reg.finish(location, sha256(data))
    print(f"\nPATCHes per worker pid: {dict(owners)}")
    # Which worker takes a connection is the kernel's choice, not the server's: this checks
    # the test did exercise the hand-over between workers (40 fresh connections spread).
    assert len([pid for pid in owners if pid is not None]) >= 2, f"one worker took all {owners}"

    await reg.assert_blob("workers/chunked", sha256(data), data)
    assert await server.stop() == 0, server.log_tail()


def _copies(root: Path, data: bytes) -> int:
    """Files below `root` holding exactly `data` (hard links counted once)."""
    want = hashlib.sha256(data).digest()
    inodes = set()
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            stat = os.stat(path)
            if stat.st_size != len(data):
                continue
            with open(path, "rb") as f:
                if hashlib.sha256(f.read()).digest() == want:
                    inodes.add((stat.st_dev, stat.st_ino))
    return len(inodes)


async def test_concurrent_uploads_of_one_blob_all_succeed_and_store_it_once(
    make_server: MakeServer, http_new_conn: aiohttp.ClientSession
) -> None:
    server = make_server(workers=2)
    await server.start()
    reg = Registry(http_new_conn, server.url)
    data = random.Random(2).randbytes(2 * MIB + 3)
    digest = sha256(data)
    repos = ("workers/same", "workers/same-too")

    async def chunked(repo: str) -> str:
        return await reg.push_blob_chunked(repo, data, 512 * KIB)

    async def monolithic(repo: str) -> str:
        return await reg.push_blob(repo, data)

    uploads = [(chunked if i % 2 else monolithic)(repos[i % 4 // 2]) for i in range(8)]
    results = await asyncio.wait_for(asyncio.gather(*uploads), 60)
    assert results == [digest] * 8

    for repo in repos:
        await reg.assert_blob(repo, digest, data)
    assert _copies(server.data_dir, data) == 1
    assert await server.stop() == 0, server.log_tail()


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_lets_an_in_flight_upload_finish(
    make_server: MakeServer, workers: int
) -> None:
    server = make_server(workers=workers)
    await server.start()
    data = random.Random(3).randbytes(8 * MIB)
    digest = sha256(data)
    piece, pause = 256 * KIB, 0.05  # 32 pieces: about 1.6 s of streaming
    halfway = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        for i, start in enumerate(range(0, len(data), piece)):
            if i == 10:
                halfway.set()
            yield data[start : start + piece]
            await asyncio.sleep(pause)

    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        reg = Registry(session, server.url)
        location = await reg.start_upload("workers/drain")
        upload = asyncio.create_task(reg.finish(location, digest, slow_body()))
        await asyncio.wait_for(halfway.wait(), 30)
        server.signal(signal.SIGTERM)
        signalled = time.monotonic()
        done, _ = await asyncio.wait({upload}, timeout=DRAIN_BOUND)
        if not done:
            upload.cancel()
            alive = server.proc is not None and server.proc.poll() is None
            pytest.fail(
                f"the in-flight upload got no answer within {DRAIN_BOUND}s of SIGTERM (its "
                f"whole body takes ~{len(data) // piece * pause:.1f}s to send; server "
                f"{'still running' if alive else 'exited'}):\n{server.log_tail()}"
            )
        assert upload.result() == digest  # 201 after the SIGTERM
        finished = time.monotonic() - signalled

    code = await server.wait_exit(15)
    exited = time.monotonic() - signalled
    assert code == 0, f"exit code {code} ({exited:.1f}s after SIGTERM):\n{server.log_tail()}"
    print(f"\nworkers={workers}: upload done {finished:.2f}s, exit 0 {exited:.2f}s after SIGTERM")

    await server.start()  # the drained upload was committed, not just answered
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        await Registry(session, server.url).assert_blob("workers/drain", digest, data)
    assert await server.stop() == 0, server.log_tail()


CONNECTIONS = 64


def _owners_of_new_connections(server: MoorageProcess) -> Counter[int | None]:
    """Open CONNECTIONS keep-alive connections at once, make one request on each, and count
    which worker holds the server end of each (all still open)."""
    conns = [
        http.client.HTTPConnection("127.0.0.1", server.port, timeout=30) for _ in range(CONNECTIONS)
    ]
    try:
        for conn in conns:
            conn.connect()
        for conn in conns:
            conn.request("GET", "/v2/")
        for conn in conns:
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200
        ports = {conn.sock.getsockname()[1] for conn in conns if conn.sock is not None}
        owners: Counter[int | None] = Counter()
        for proc in server.processes()[1:]:
            for c in proc.net_connections(kind="tcp"):
                if c.raddr and c.raddr.port in ports and c.status == "ESTABLISHED":
                    owners[proc.pid] += 1
        return owners
    finally:
        for conn in conns:
            conn.close()


def _assert_spread(owners: Counter[int | None], workers: list[int]) -> None:
    assert sum(owners.values()) == CONNECTIONS, owners
    assert set(owners) == set(workers), (owners, workers)
    # Even spreading by the kernel's hash: 64 over 2 workers gives each fewer than 16 with a
    # probability of about 1e-5. A socket shared by both let one worker take nearly all.
    assert min(owners.values()) >= CONNECTIONS // 4, owners


async def test_keep_alive_connections_opened_at_once_are_spread_over_workers(
    make_server: MakeServer,
) -> None:
    server = make_server(workers=2)
    await server.start()
    workers = [p.pid for p in server.processes()[1:]]
    assert len(workers) == 2
    _assert_spread(await asyncio.to_thread(_owners_of_new_connections, server), workers)
    assert await server.stop() == 0, server.log_tail()


async def _kill_one_worker_and_see_it_replaced(server: MoorageProcess) -> list[int]:
    """SIGKILL the first worker; once the supervisor has forked another, the replacement
    serves (its socket was kept open by the supervisor): every request on every new
    connection is answered, and both workers take their share. The workers' pids."""
    victim, survivor = (p.pid for p in server.processes()[1:])
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    workers: list[int] = []
    while time.monotonic() < deadline:
        workers = [p.pid for p in server.processes()[1:] if p.status() != "zombie"]
        if len(workers) == 2 and victim not in workers:
            break
        await asyncio.sleep(0.1)
    assert survivor in workers and victim not in workers and len(workers) == 2, workers
    deadline = time.monotonic() + 30
    while True:
        owners = await asyncio.to_thread(_owners_of_new_connections, server)
        if set(owners) == set(workers) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)  # the replacement may still be starting up
    _assert_spread(owners, workers)
    return workers


async def test_a_killed_worker_is_replaced_and_takes_its_share(make_server: MakeServer) -> None:
    server = make_server(workers=2)
    await server.start()
    await _kill_one_worker_and_see_it_replaced(server)
    assert "starting another" in server.log_tail(200)
    assert await server.stop() == 0, server.log_tail()


# Libraries the workers load to serve; the supervisor, once it has handed over, maps none.
SERVING_LIBRARIES = ("pydantic_core", "cryptography", "sqlalchemy", "aiohttp", "multidict", "yarl")


def _status(pid: int) -> dict[str, int]:
    """The kB fields of /proc/PID/smaps_rollup."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value, *_ = line.split()
        fields[name.rstrip(":")] = int(value)
    return fields


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_text().rstrip("\0").split("\0")


async def test_the_supervisor_is_small_and_replaces_a_worker_as_the_others_run(
    make_server: MakeServer,
) -> None:
    """Once the workers are forked, the supervisor becomes `moorage.supervisor` (same pid):
    none of the serving libraries in its memory, a fraction of a worker's. It still replaces
    a killed worker, by running the server's command line again. The replacement serves its
    share of new connections; it starts in the read-only mode the others were switched to by
    a reload, keeps a setting that needs a restart as the server started with it although
    the file changed it, and takes the next reload as the others do."""
    server = make_server(workers=2, config=mode(False))
    await server.start()
    workers = [p.pid for p in server.processes()[1:]]
    (server_connections,) = set(re.findall(r"at most (\d+) connections", server.log_tail(100)))
    supervisor_maps = Path(f"/proc/{server.pid}/maps").read_text()
    worker_maps = Path(f"/proc/{workers[0]}/maps").read_text()
    command = _cmdline(server.pid)
    assert command[1:3] == ["-m", "moorage.supervisor"] and "serve" in command, command
    for library in SERVING_LIBRARIES:
        assert library in worker_maps, library  # the check below means something
        assert library not in supervisor_maps, library
    anonymous = _status(server.pid)["Anonymous"]
    assert anonymous < min(_status(pid)["Anonymous"] for pid in workers) / 3, anonymous

    write_config(server, mode(True))
    await hup(server, "read-only mode on: every write is refused")
    # Changed in the file, not reloaded: the replacement must not take it.
    write_config(server, {**mode(True), "http": {"maxconnections": 7}})
    (replacement,) = set(await _kill_one_worker_and_see_it_replaced(server)) - set(workers)
    assert "serve" in _cmdline(replacement) and "moorage.supervisor" not in _cmdline(replacement)
    for _ in range(24):  # new connections: both workers, the replacement among them
        assert await post_upload(server.url) == (405, READ_ONLY)
    assert f"at most {server_connections} connections" in server.log_tail(100)
    assert "at most 7 connections" not in server.log_tail(400), server.log_tail(400)
    assert "these changes need a restart: http.maxconnections" in server.log_tail(100)
    write_config(server, mode(False))
    await hup(server, "read-only mode off")
    for _ in range(24):
        assert (await post_upload(server.url))[0] == 202
    assert await server.stop() == 0, server.log_tail()


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


@pytest.mark.parametrize("delay", [0.0, 0.02, 0.1])
def test_sigterm_while_the_supervisor_hands_over_stops_the_server_cleanly(
    tmp_path: Path, delay: float
) -> None:
    """SIGTERM from the moment both workers are forked (`delay` after it), while the
    supervisor replaces itself or has just done so: held back, not lost and not fatal. The
    workers get it once the supervisor can pass it on, and the server exits with 0, leaving
    no process behind."""
    server = MoorageProcess(tmp_path / "data", tmp_path, workers=2)
    server.root.mkdir(parents=True, exist_ok=True)
    with open(tmp_path / "server.log", "wb") as log:
        proc = subprocess.Popen(
            server.command(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            start_new_session=True,
            env=server.environment(),
        )
    try:
        deadline = time.monotonic() + 60
        while len(_children(proc.pid)) < 2:  # both workers (before: the schema's check)
            assert proc.poll() is None and time.monotonic() < deadline, proc.returncode
            time.sleep(0.002)
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=60)
        text = (tmp_path / "server.log").read_text(errors="replace")
        assert code == 0, text
        time.sleep(0.5)
        with pytest.raises(ProcessLookupError):
            os.killpg(proc.pid, 0)  # nothing of the server's group is left
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


async def test_workers_that_keep_dying_stop_the_server_with_the_reason(
    make_server: MakeServer, tmp_path: Path
) -> None:
    """Every worker killed as soon as it appears, the replacements included: past five exits
    per worker within a minute the supervisor stops replacing them, says why, and exits with
    1, leaving no process behind (the surviving worker, if any, is stopped) and no metrics
    directory."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    server = make_server(workers=2, env={"TMPDIR": str(temp)})
    await server.start()
    assert len(list(temp.glob("moorage-metrics-*"))) == 1
    killed: set[int] = set()
    deadline = time.monotonic() + 60
    while server.alive() and time.monotonic() < deadline:
        for proc in server.processes()[1:]:
            if proc.pid not in killed:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                killed.add(proc.pid)
        await asyncio.sleep(0.02)
    assert await server.wait_exit(30) == 1, server.log_tail()
    assert "workers keep dying; giving up" in server.log_tail(200)
    assert 11 <= len(killed) <= 12, killed  # the eleventh exit in a minute is the last
    await asyncio.sleep(0.5)
    with pytest.raises(ProcessLookupError):
        os.killpg(server.pid, 0)
    assert list(temp.glob("moorage-metrics-*")) == []


async def test_after_an_upgrade_in_place_no_worker_is_started_on_the_new_code(
    make_server: MakeServer, tmp_path: Path
) -> None:
    """A module of the server replaced on disk as an upgrade does it (a new file in its
    place), then a worker killed: no replacement runs the new code beside the old. The
    supervisor says why, lets go of the dead worker's listening socket, so that every new
    connection goes to the worker left (none hangs on a socket no one accepts from), and
    once no worker is left it exits with 1, leaving nothing behind."""
    source = tmp_path / "source"
    shutil.copytree(
        REPO_ROOT / "moorage", source / "moorage", ignore=shutil.ignore_patterns("__pycache__")
    )
    server = make_server(workers=2, source=source, env={"MOORAGE_HTTP_DRAINTIMEOUT": "0"})
    await server.start()
    first, second = (p.pid for p in server.processes()[1:])
    module = source / "moorage" / "errors.py"
    upgraded = module.with_name("errors.py.new")
    upgraded.write_text(module.read_text() + "\n# the next version\n")
    os.replace(upgraded, module)

    os.kill(first, signal.SIGKILL)
    message = f"the server's code changed on disk since it started ({module}); 1 worker(s) left"
    deadline = time.monotonic() + 30
    while message not in server.log_tail(50) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert message in server.log_tail(50), server.log_tail(50)
    # The message comes once the socket is closed: from then on every new connection (CONNECTIONS
    # at a time, three times) is answered, all by the worker left.
    for _ in range(3):
        owners = await asyncio.to_thread(_owners_of_new_connections, server)
        assert owners == Counter({second: CONNECTIONS}), owners
    assert [p.pid for p in server.processes()[1:]] == [second]

    os.kill(second, signal.SIGKILL)
    assert await server.wait_exit(30) == 1, server.log_tail()
    assert "0 worker(s) left" in server.log_tail(50)
    await asyncio.sleep(0.5)
    with pytest.raises(ProcessLookupError):
        os.killpg(server.pid, 0)


async def test_where_the_small_supervisor_cannot_start_the_server_supervises_itself(
    make_server: MakeServer, tmp_path: Path
) -> None:
    """The exec of `python -m moorage.supervisor` fails (here the interpreter's path names no
    file: a `sitecustomize` on the server's PYTHONPATH says so): the process that forked the
    workers says why and supervises them itself. Both workers serve, a reload reaches both,
    and SIGTERM stops the server with 0."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.executable = '/nonexistent/python3'\n")
    server = make_server(workers=2, config=mode(False), env={"PYTHONPATH": str(site)})
    await server.start()
    workers = [p.pid for p in server.processes()[1:]]
    assert "cannot start a small supervisor" in server.log_tail(50), server.log_tail(50)
    assert "moorage.supervisor" not in _cmdline(server.pid), _cmdline(server.pid)
    _assert_spread(await asyncio.to_thread(_owners_of_new_connections, server), workers)
    write_config(server, mode(True))
    await hup(server, "read-only mode on: every write is refused")
    for _ in range(24):  # new connections: both workers took the reload
        assert await post_upload(server.url) == (405, READ_ONLY)
    assert [p.pid for p in server.processes()[1:]] == workers
    assert await server.stop() == 0, server.log_tail()


async def test_a_second_server_on_the_same_port_is_refused(
    make_server: MakeServer, tmp_path: Path
) -> None:
    """Each worker's socket has SO_REUSEPORT, which would let another server share the port;
    a second `moorage serve` started there by mistake must fail instead of taking a share."""
    first = make_server(workers=2)
    await first.start()
    for workers in (2, 1):
        argv = [sys.executable, "-m", "moorage", "serve", "--listen", f"127.0.0.1:{first.port}"]
        argv += ["--data-dir", str(tmp_path / f"second-{workers}"), "--workers", str(workers)]
        second = await asyncio.to_thread(
            subprocess.run, argv, capture_output=True, text=True, timeout=60, cwd=tmp_path
        )
        assert second.returncode == 1, "a second server started on a port in use"
        assert second.stderr.splitlines() == [
            f"moorage: a Moorage is already serving on 127.0.0.1:{first.port} (pid {first.pid})"
        ], second.stderr[-2000:]
    # The first one still answers every connection.
    owners = await asyncio.to_thread(_owners_of_new_connections, first)
    assert sum(owners.values()) == CONNECTIONS
    assert await first.stop() == 0, first.log_tail()
