"""Connection limits of a real server: idle, slow and stalled clients are closed on time, and
while hundreds of them are held, other clients are still served (moorage/connections.py).

The server runs with an open-file limit of 256, so a couple of hundred sockets are enough to
show what 1,100 did to a worker with the usual 1,024. Every wait is bounded; a server that
holds a connection for ever fails the test at the bound instead of hanging it.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import resource
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from moorage.api import direct
from tests.harness import MakeServer, MoorageProcess

pytestmark = pytest.mark.timeout(120)

OPEN_FILES = 256
BOUND = 15.0  # seconds past its timeout a connection may take to be closed, at most
ANSWER_BOUND = 10.0  # seconds a client that is not attacking may wait for its answer
REQUEST = b"GET /v2/ HTTP/1.1\r\nHost: registry\r\n\r\n"

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _connect(server: MoorageProcess) -> Stream:
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", server.port), 10)


async def _closed_by_server(reader: asyncio.StreamReader, bound: float) -> bool:
    """True when the server closes the connection within `bound` seconds (anything it sent
    before closing is read and dropped)."""
    try:
        async with asyncio.timeout(bound):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


async def _get_v2(server: MoorageProcess) -> int:
    """GET /v2/ over a new connection; the status."""

    def get() -> int:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=ANSWER_BOUND)
        try:
            conn.request("GET", "/v2/")
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()

    return await asyncio.to_thread(get)


async def _drip(writer: asyncio.StreamWriter, stop: asyncio.Event) -> None:
    """Slowloris: a request head that never ends, one byte every half second."""
    with contextlib.suppress(ConnectionError):
        writer.write(b"GET /v2/ HTTP/1.1\r\nHost: registry\r\nX-Slow: ")
        while not stop.is_set():
            await asyncio.sleep(0.5)
            writer.write(b"a")
            await writer.drain()


async def test_idle_and_slow_connections_do_not_starve_other_clients(
    make_server: MakeServer,
) -> None:
    head_timeout = 4.0
    server = make_server(
        env={"MOORAGE_HTTP_HEADERTIMEOUT": str(head_timeout), "MOORAGE_HTTP_IDLETIMEOUT": "600"},
        nofile=OPEN_FILES,
    )
    await server.start()
    held: list[Stream] = []
    stop = asyncio.Event()
    drips: list[asyncio.Task[None]] = []
    try:
        # 50 keep-alive connections that made a request and stay open, 200 that never send a
        # byte, 40 slowloris: more than the worker has descriptors for.
        for _ in range(50):
            reader, writer = await _connect(server)
            writer.write(REQUEST)
            line = await asyncio.wait_for(reader.readline(), ANSWER_BOUND)
            assert line.startswith(b"HTTP/1.1 200"), line
            held.append((reader, writer))
        held += [await _connect(server) for _ in range(200)]
        slow = [await _connect(server) for _ in range(40)]
        drips = [asyncio.create_task(_drip(writer, stop)) for _, writer in slow]
        # Others are served all the while.
        for _ in range(20):
            assert await asyncio.wait_for(_get_v2(server), ANSWER_BOUND + 5) == 200
        # No slowloris outlives the head timeout (some were shed earlier, at the cap).
        closed = await asyncio.gather(
            *(_closed_by_server(reader, head_timeout + BOUND) for reader, _ in slow)
        )
        assert all(closed), f"{closed.count(False)} slow heads still open"
        assert await _get_v2(server) == 200
    finally:
        stop.set()
        for task in drips:
            task.cancel()
        for _, writer in held:
            writer.close()
    assert server.proc is not None and server.proc.poll() is None, server.log_tail()
    log = server.log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
    assert "connection limit reached" in log, log[-3000:]
    # Some 200 connections were shed: their warning is rate-limited, so the log stays small.
    assert log.count("connection limit reached") <= 20, log[-3000:]
    assert len(log) < 16_384, log[-3000:]


async def test_idle_connections_are_closed_after_their_timeout(make_server: MakeServer) -> None:
    server = make_server(
        env={"MOORAGE_HTTP_IDLETIMEOUT": "1", "MOORAGE_HTTP_HEADERTIMEOUT": "1"},
    )
    await server.start()
    silent = await _connect(server)  # never sends a request
    kept = await _connect(server)  # sends one and keeps the connection
    kept[1].write(REQUEST)
    line = await asyncio.wait_for(kept[0].readline(), ANSWER_BOUND)
    assert line.startswith(b"HTTP/1.1 200"), line
    try:
        assert await _closed_by_server(silent[0], 1 + BOUND), "a silent connection stays open"
        assert await _closed_by_server(kept[0], 1 + BOUND), "an idle keep-alive stays open"
    finally:
        silent[1].close()
        kept[1].close()
    assert await _get_v2(server) == 200


def _start_upload(server: MoorageProcess) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=ANSWER_BOUND)
    try:
        conn.request("POST", "/v2/conn/test/blobs/uploads/")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 202, resp.status
        location = resp.getheader("Location")
        assert location is not None
        return location
    finally:
        conn.close()


def _slow_patch(server: MoorageProcess, location: str, pieces: int, gap: float) -> int:
    """PATCH `pieces` pieces of 1 KiB, one every `gap` seconds; the status."""

    def body() -> Iterator[bytes]:
        for n in range(pieces):
            time.sleep(gap)
            yield bytes([n]) * 1024

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=ANSWER_BOUND + 10)
    try:
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(pieces * 1024),
            "Content-Range": f"0-{pieces * 1024 - 1}",
        }
        conn.request("PATCH", location, body=body(), headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


async def test_a_stalled_body_is_closed_and_a_slow_one_completes(make_server: MakeServer) -> None:
    body_timeout = 2.0
    server = make_server(env={"MOORAGE_HTTP_BODYTIMEOUT": str(body_timeout)})
    await server.start()
    # Slow but moving: 12 pieces over 6 s, three times the body timeout, each well within it.
    location = await asyncio.to_thread(_start_upload, server)
    assert await asyncio.to_thread(_slow_patch, server, location, 12, 0.5) == 202
    # Stalled: 100 of 1,000 bytes, then nothing.
    location = await asyncio.to_thread(_start_upload, server)
    reader, writer = await _connect(server)
    try:
        writer.write(
            f"PATCH {location} HTTP/1.1\r\nHost: registry\r\n"
            "Content-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\n".encode()
            + b"x" * 100
        )
        await writer.drain()
        assert await _closed_by_server(reader, body_timeout + BOUND), "a stalled body is held"
    finally:
        writer.close()
    assert await _get_v2(server) == 200
    assert server.proc is not None and server.proc.poll() is None, server.log_tail()


def test_the_open_file_limit_is_raised_to_the_hard_limit() -> None:
    """In a process of its own started with soft 128 / hard 512: the start-up step of
    `moorage serve` leaves it with 512."""
    code = (
        "import resource; from moorage import server; server._raise_open_file_limit(); "
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    )

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, 512))

    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, preexec_fn=lower
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "512"


async def test_a_large_body_taken_directly_is_timed_as_any_other(make_server: MakeServer) -> None:
    """A body from `direct.MIN_LENGTH` on bypasses aiohttp's parser (moorage/api/direct.py):
    the guard still sees its bytes arrive, so a slow one completes and a stalled one is
    closed."""
    body_timeout = 2.0
    size = direct.MIN_LENGTH + 1024
    server = make_server(env={"MOORAGE_HTTP_BODYTIMEOUT": str(body_timeout)})
    await server.start()

    def slow_then_fast(location: str) -> int:
        """1 MiB every 0.5 s for 3 s (past the body timeout), then the rest at once."""

        def body() -> Iterator[bytes]:
            sent = 0
            for _ in range(6):
                time.sleep(0.5)
                yield b"s" * (1 << 20)
                sent += 1 << 20
            yield b"f" * (size - sent)

        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=ANSWER_BOUND + 10)
        try:
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Length": str(size),
                "Content-Range": f"0-{size - 1}",
            }
            conn.request("PATCH", location, body=body(), headers=headers)
            resp = conn.getresponse()
            resp.read()
            assert resp.getheader("Connection") == "close"
            return resp.status
        finally:
            conn.close()

    location = await asyncio.to_thread(_start_upload, server)
    assert await asyncio.to_thread(slow_then_fast, location) == 202
    location = await asyncio.to_thread(_start_upload, server)
    reader, writer = await _connect(server)
    try:
        writer.write(
            f"PATCH {location} HTTP/1.1\r\nHost: registry\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n".encode()
            + b"x" * (5 << 20)
        )
        await writer.drain()
        assert await _closed_by_server(reader, body_timeout + BOUND), "a stalled body is held"
    finally:
        writer.close()
    assert await _get_v2(server) == 200
    assert server.proc is not None and server.proc.poll() is None, server.log_tail()
