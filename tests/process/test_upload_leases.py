"""Issue 9 item 4: a killed worker's uploads go on at once on another worker.

The lease names the process that holds it (host, pid, the pid's start time) so that another
process on the host can see the holder is gone and take the session over without waiting out
the lease. The pid must be the worker's own: it used to be computed at import, in the
supervisor before it forked, so every lease named the (living) supervisor and a killed
worker's uploads answered 416 for the whole lease (90 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import signal
import socket
import time

import aiohttp
import psutil  # type: ignore[import-untyped]
import pytest

from tests.harness import MakeServer, MoorageProcess
from tests.process.registry import Registry, sha256

pytestmark = pytest.mark.timeout(120)

RETRY_BOUND = 15.0  # far below the 90 s lease the old code made clients wait out


def _owner(server: MoorageProcess, client_port: int) -> int | None:
    for proc in server.processes()[1:]:
        for conn in proc.net_connections(kind="tcp"):
            if conn.raddr and conn.raddr.port == client_port:
                return int(proc.pid)
    return None


def _patch(server: MoorageProcess, location: str, data: bytes) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Range": f"0-{len(data) - 1}",
        }
        conn.request("PATCH", location, body=data, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("Location") or location
    finally:
        conn.close()


async def test_a_killed_workers_upload_is_taken_over_at_once(
    make_server: MakeServer, http_new_conn: aiohttp.ClientSession
) -> None:
    server = make_server(workers=2)
    await server.start()
    reg = Registry(http_new_conn, server.url)
    location = await reg.start_upload("workers/killed")

    # A chunked PATCH that sends a little and then waits: its worker holds the lease.
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        head = (
            f"PATCH {location} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        sock.sendall(head.encode() + b"64\r\n" + b"x" * 100 + b"\r\n")
        client_port = sock.getsockname()[1]
        deadline = time.monotonic() + 10
        owner = None
        while owner is None and time.monotonic() < deadline:
            owner = await asyncio.to_thread(_owner, server, client_port)
            await asyncio.sleep(0.1)
        assert owner is not None, "no worker took the connection"
        await asyncio.sleep(0.5)  # let it take the lease
        worker = psutil.Process(owner)
        os.kill(owner, signal.SIGKILL)
        with contextlib.suppress(psutil.NoSuchProcess):
            await asyncio.to_thread(worker.wait, 10)
    finally:
        sock.close()

    data = b"the whole blob, sent again after the worker died"
    deadline = time.monotonic() + RETRY_BOUND
    while True:
        status, location = await asyncio.to_thread(_patch, server, location, data)
        if (status != 416 and status < 500) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert status == 202, f"still {status} after {RETRY_BOUND}s: {server.log_tail()}"
    await reg.finish(location, sha256(data))
    await reg.assert_blob("workers/killed", sha256(data), data)
