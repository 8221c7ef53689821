"""`/metrics` of real server processes with two workers: what a push and a pull through the
API count, summed over both workers (each request on a connection of its own, and the worker
that took it looked up, so the totals are known to span both); uploads in flight; the
server's own garbage collection; login failures; readiness while draining; a worker killed
and restarted; `metrics.enabled: false`; and `metrics.listen`.

A worker adds what it counted to the shared totals once a second, so every expectation is
polled for (bounded), never timed.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from moorage.auth import htpasswd
from tests.auth.helpers import basic
from tests.harness import MakeServer, MoorageProcess, free_port
from tests.images import memory_image
from tests.process.registry import TIMEOUT, Registry, sha256

pytestmark = pytest.mark.timeout(180)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
BOUND = 20.0  # seconds an expected value may take to show


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample's value; 0 when the series is not there (nothing counted yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(url: str) -> Samples:
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT, connector=connector) as session,
        session.get(url + "/metrics") as resp,
    ):
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/plain")
        return parse(await resp.text())


async def until(url: str, check: Callable[[Samples], bool], what: str) -> Samples:
    """Scrape until `check` holds (bounded); the samples that satisfied it."""
    deadline = time.monotonic() + BOUND
    while True:
        samples = await scrape(url)
        if check(samples):
            return samples
        if time.monotonic() > deadline:
            shown = {k[0]: v for k, v in samples.items() if "bucket" not in k[0]}
            raise AssertionError(f"{what}: not seen within {BOUND}s; last scrape {shown}")
        await asyncio.sleep(0.2)


def requests(samples: Samples, route: str, method: str, status: int) -> float:
    return value(
        samples, "moorage_http_requests_total", route=route, method=method, status=str(status)
    )


def get_on_new_connection(server: MoorageProcess, path: str) -> tuple[int, int | None]:
    """GET `path` over a fresh TCP connection; the status and the pid of the worker that
    holds the server end of that connection."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        assert conn.sock is not None
        client_port = conn.sock.getsockname()[1]
        owner = None
        for proc in server.processes()[1:]:
            for c in proc.net_connections(kind="tcp"):
                if c.raddr and c.raddr.port == client_port:
                    owner = proc.pid
        return resp.status, owner
    finally:
        conn.close()


async def gets_over_both_workers(server: MoorageProcess, path: str, count: int) -> None:
    """`count` GETs of `path` (200 each), each on its own connection, which the kernel spread
    over both workers (asserted: otherwise a total proves nothing about adding up). The
    kernel picks a worker per connection by a hash: with 16, both get some but once in
    30,000 runs."""
    owners: Counter[int | None] = Counter()
    for _ in range(count):
        status, owner = await asyncio.to_thread(get_on_new_connection, server, path)
        assert status == 200
        owners[owner] += 1
    assert len([pid for pid in owners if pid is not None]) == 2, f"one worker took all {owners}"


def metrics_directory(server: MoorageProcess) -> Path | None:
    """The directory the workers keep their metrics files in, seen from their open files."""
    for proc in server.processes()[1:]:
        for f in proc.open_files():
            if Path(f.path).name.endswith(".db") and "moorage-metrics-" in f.path:
                return Path(f.path).parent
    return None


async def test_a_push_and_a_pull_are_counted_over_both_workers(
    make_server: MakeServer, http_new_conn: aiohttp.ClientSession
) -> None:
    server = make_server(workers=2)
    await server.start()
    reg = Registry(http_new_conn, server.url)
    image = memory_image(11, (7000, 3000), "counted")
    await reg.push_image("metrics/app", "v1", image)
    for blob in image.blobs:
        await reg.assert_blob("metrics/app", sha256(blob), blob)
    await reg.assert_manifest("metrics/app", "v1", image.manifest)
    await gets_over_both_workers(server, "/v2/_catalog", 20)

    blobs = len(image.blobs)
    blob_bytes = sum(len(b) for b in image.blobs)
    samples = await until(
        server.url,
        lambda s: requests(s, "v2.catalog", "GET", 200) == 20,
        "20 catalog GETs",
    )
    assert requests(samples, "v2.uploads", "POST", 202) == blobs
    assert requests(samples, "v2.upload", "PUT", 201) == blobs
    assert requests(samples, "v2.manifest", "PUT", 201) == 1
    assert requests(samples, "v2.blob", "GET", 200) == blobs
    assert requests(samples, "v2.manifest", "GET", 200) == 1
    received = "moorage_http_received_bytes_total"
    sent = "moorage_http_sent_bytes_total"
    assert value(samples, received, route="v2.upload") == blob_bytes
    assert value(samples, received, route="v2.manifest") == len(image.manifest)
    assert value(samples, sent, route="v2.blob") == blob_bytes
    assert value(samples, sent, route="v2.manifest") == len(image.manifest)
    duration = "moorage_http_request_duration_seconds"
    labels = {"route": "v2.blob", "method": "GET"}
    assert value(samples, duration + "_count", **labels) == blobs
    assert value(samples, duration + "_bucket", le="+Inf", **labels) == blobs
    assert value(samples, duration + "_sum", **labels) > 0
    assert value(samples, "moorage_http_uploads_in_flight") == 0
    assert value(samples, "moorage_ready") == 1
    # Below HTTP: the metadata database and blob storage were used and timed.
    assert value(samples, "moorage_metadata_operation_duration_seconds_count", operation="write")
    assert value(samples, "moorage_storage_operation_duration_seconds_count", operation="commit")
    assert value(samples, "moorage_storage_errors_total", operation="commit") == 0
    # Routes are named, never paths: no label carries the repository.
    assert not any("metrics/app" in v for _, labels_ in samples for _, v in labels_)

    directory = metrics_directory(server)
    assert directory is not None and directory.is_dir()
    assert await server.stop() == 0, server.log_tail()
    assert not directory.exists(), "the supervisor left its metrics directory behind"


def connections_of(proc: psutil.Process) -> list[Any]:
    """The process's TCP connections; none if it has exited since it was listed."""
    try:
        return list(proc.net_connections(kind="tcp"))
    except psutil.NoSuchProcess:
        return []


async def test_uploads_in_flight_and_a_killed_worker(
    make_server: MakeServer, http_new_conn: aiohttp.ClientSession
) -> None:
    """An upload streaming its body counts as in flight; when the worker serving it is
    killed, the supervisor has its gauge dropped, and the counters of every worker, the dead
    one's included, neither drop nor double when another takes its place."""
    server = make_server(workers=2)
    await server.start()
    reg = Registry(http_new_conn, server.url)
    await gets_over_both_workers(server, "/v2/_catalog", 16)
    await until(server.url, lambda s: requests(s, "v2.catalog", "GET", 200) == 16, "16 GETs")

    location = await reg.start_upload("metrics/slow")
    release = asyncio.Event()

    async def held_body() -> AsyncIterator[bytes]:
        yield b"x" * 1000
        await release.wait()

    upload = asyncio.create_task(reg.patch_stream(location, held_body()))
    try:
        await until(
            server.url, lambda s: value(s, "moorage_http_uploads_in_flight") == 1, "1 in flight"
        )
        workers = server.processes()[1:]
        serving = [
            proc
            for proc in workers
            if any(
                c.status == "ESTABLISHED" and c.laddr.port == server.port
                for c in connections_of(proc)
            )
        ]
        assert len(serving) == 1, f"the upload's connection is held by {serving}"
        killed = serving[0].pid
        os.kill(killed, signal.SIGKILL)
        await until(
            server.url,
            lambda s: value(s, "moorage_http_uploads_in_flight") == 0,
            "no upload in flight once its worker is gone",
        )
    finally:
        release.set()
        with contextlib.suppress(aiohttp.ClientError, AssertionError):
            await upload

    deadline = time.monotonic() + BOUND
    while len(server.processes()) != 3 or killed in [p.pid for p in server.processes()]:
        assert time.monotonic() < deadline, server.log_tail()
        await asyncio.sleep(0.1)
    samples = await scrape(server.url)
    assert requests(samples, "v2.catalog", "GET", 200) == 16
    await gets_over_both_workers(server, "/v2/_catalog", 16)
    await until(server.url, lambda s: requests(s, "v2.catalog", "GET", 200) == 32, "32 GETs")
    await asyncio.sleep(1.5)  # a flush or more later, still exactly that
    assert requests(await scrape(server.url), "v2.catalog", "GET", 200) == 32


async def test_the_servers_own_gc_cycles_are_counted(
    make_server: MakeServer, http: aiohttp.ClientSession
) -> None:
    started = time.time()
    server = make_server(workers=2, env={"MOORAGE_GC_INTERVAL": "1", "MOORAGE_GC_GRACE": "3s"})
    await server.start()
    reg = Registry(http, server.url)
    image = memory_image(12, (6000, 2000), "collected")
    await reg.push_image("metrics/gc", "v1", image)
    async with http.delete(f"{server.url}/v2/metrics/gc/manifests/{image.digest}") as resp:
        assert resp.status == 202

    samples = await until(
        server.url,
        lambda s: value(s, "moorage_gc_blobs_deleted_total") == len(image.blobs),
        "the image's blobs collected",
    )
    assert value(samples, "moorage_gc_freed_bytes_total") == sum(len(b) for b in image.blobs)
    assert value(samples, "moorage_gc_cycles_total") >= 1
    assert value(samples, "moorage_gc_failures_total") == 0
    assert value(samples, "moorage_gc_last_cycle_timestamp_seconds") > started


async def test_login_failures_are_counted(
    make_server: MakeServer, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    users = tmp_path / "htpasswd"
    htpasswd.write(users, {"alice": htpasswd.hash_password("right")})
    server = make_server(workers=2, args=["--htpasswd", users], ready=(401,))
    await server.start()
    for password in ("wrong", "also wrong", "right"):
        async with http.get(f"{server.url}/v2/", headers=basic("alice", password)) as resp:
            assert resp.status == (200 if password == "right" else 401)
    samples = await until(
        server.url,
        lambda s: value(s, "moorage_login_failures_total", reason="password") == 2,
        "two wrong passwords",
    )
    assert requests(samples, "v2.base", "GET", 401) >= 2


async def test_readiness_is_zero_while_draining(make_server: MakeServer) -> None:
    server = make_server(workers=2, config={"http": {"draintimeout": 10}})
    await server.start()
    assert value(await scrape(server.url), "moorage_ready") == 1
    server.signal(signal.SIGTERM)
    await until(server.url, lambda s: value(s, "moorage_ready") == 0, "ready 0 while draining")
    server.signal(signal.SIGINT)  # skip the rest of the drain
    assert await server.wait_exit(30) == 0, server.log_tail()


async def test_metrics_disabled(make_server: MakeServer, http: aiohttp.ClientSession) -> None:
    server = make_server(workers=2, env={"MOORAGE_METRICS_ENABLED": "false"})
    await server.start()
    async with http.get(f"{server.url}/metrics") as resp:
        assert resp.status == 404
    assert metrics_directory(server) is None


async def test_metrics_on_their_own_address(
    make_server: MakeServer, http: aiohttp.ClientSession
) -> None:
    port = free_port()
    server = make_server(workers=2, config={"metrics": {"listen": f"127.0.0.1:{port}"}})
    await server.start()
    await gets_over_both_workers(server, "/v2/_catalog", 16)
    async with http.get(f"{server.url}/metrics") as resp:
        assert resp.status == 404
    await until(
        f"http://127.0.0.1:{port}",
        lambda s: requests(s, "v2.catalog", "GET", 200) == 16,
        "the main port's requests, on the metrics address",
    )
    samples = await scrape(f"http://127.0.0.1:{port}")
    assert requests(samples, "unmatched", "GET", 404) == 1  # the main port's /metrics
    assert requests(samples, "metrics", "GET", 200) == 0  # scrapes there are not counted
    assert await server.stop() == 0, server.log_tail()


async def test_an_inherited_multiprocess_directory_is_ignored(
    make_server: MakeServer, tmp_path: Path
) -> None:
    """A `PROMETHEUS_MULTIPROC_DIR` in the environment (another program's, or one that does
    not exist) is neither written into nor a reason to fail, by the server or `moorage gc`."""
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    server = make_server(workers=2, env={"PROMETHEUS_MULTIPROC_DIR": str(theirs)})
    await server.start()
    await gets_over_both_workers(server, "/v2/_catalog", 16)
    await until(server.url, lambda s: requests(s, "v2.catalog", "GET", 200) == 16, "16 GETs")
    assert list(theirs.iterdir()) == []
    assert metrics_directory(server) not in (None, theirs)

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "missing")}
    done = subprocess.run(
        [sys.executable, "-m", "moorage", "gc", "--dry-run", "--data-dir", str(server.data_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "would free" in done.stdout


async def test_a_killed_servers_directory_is_removed_by_the_next(
    make_server: MakeServer, tmp_path: Path
) -> None:
    """SIGKILL leaves the supervisor no chance to remove its metrics directory; the next
    `moorage serve` removes it (and those of other supervisors gone), not a running one's."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    orphan = temp / f"moorage-metrics-{int(gone.stdout)}-abc"
    running = temp / f"moorage-metrics-{os.getpid()}-def"
    for directory in (orphan, running):
        directory.mkdir()
        (directory / "counter_1.db").write_bytes(b"")
    server = make_server(workers=2, env={"TMPDIR": str(temp)})
    await server.start()
    first = metrics_directory(server)
    assert first is not None and first.parent == temp
    assert first.name.startswith(f"moorage-metrics-{server.pid}-")
    assert not orphan.exists()
    assert running.exists()

    await server.kill()
    assert first.exists()
    await server.start()
    second = metrics_directory(server)
    assert second is not None and second != first
    assert not first.exists()
    assert running.exists()
