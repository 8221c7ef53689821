"""Blobs sent on threads of their own (moorage/api/sending.py), in each `http.sendfile` mode:
whole bodies and ranges come back exactly, on kept-alive connections, also with more pulls at
once than a worker has threads for; clients that vanish in the middle of a pull leave the
server serving; a send stalled by a client that stopped reading ends when the kernel drops
that client, and does not keep the worker from stopping."""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import threading
import time

import aiohttp
import pytest

from moorage.api import sending
from tests.harness import MakeServer
from tests.process.registry import Registry, sha256

pytestmark = pytest.mark.timeout(180)

BIG = 3 * sending.BUFFER * 4 + 12_345  # many copy buffers, not a multiple of one


@pytest.mark.parametrize("mode", ["auto", "on", "off"])
async def test_blobs_and_ranges_come_back_exactly(
    make_server: MakeServer, http: aiohttp.ClientSession, mode: str
) -> None:
    server = make_server(env={"MOORAGE_HTTP_SENDFILE": mode})
    await server.start()
    reg = Registry(http, server.url)
    rng = random.Random(7)
    big = rng.randbytes(BIG)
    small = rng.randbytes(sending.THREAD_FROM - 1)  # on the loop's sendfile
    for data in (big, small):
        await reg.push_blob("send/modes", data)
    # Twice each on the session's kept-alive connections: a body sent on a thread leaves the
    # connection exactly at the next response.
    for _ in range(2):
        for data in (big, small):
            await reg.assert_blob("send/modes", sha256(data), data)
    path = f"/v2/send/modes/blobs/{sha256(big)}"
    edge = sending.BUFFER
    for first, last in ((0, 0), (edge - 1, edge), (5, BIG - 1), (BIG - 300_000, BIG - 1)):
        status, body, headers = await reg.get(path, {"Range": f"bytes={first}-{last}"})
        assert status == 206, (status, body[:200])
        assert body == big[first : last + 1], (first, last, len(body))
        assert headers["Content-Range"] == f"bytes {first}-{last}/{BIG}"


async def test_more_pulls_at_once_than_threads(
    make_server: MakeServer, http: aiohttp.ClientSession
) -> None:
    """One worker, more concurrent pulls than MAX_THREADS: the first `COPIES` copied, the
    others on the threads with `sendfile`, those beyond the threads on the loop; every body is
    exact."""
    server = make_server(workers=1)
    await server.start()
    reg = Registry(http, server.url)
    blobs = [random.Random(n).randbytes(sending.THREAD_FROM + n * 4099) for n in range(4)]
    for data in blobs:
        await reg.push_blob("send/many", data)
    pulls = sending.MAX_THREADS + 36
    connector = aiohttp.TCPConnector(limit=pulls)
    async with aiohttp.ClientSession(connector=connector) as session:
        many = Registry(session, server.url)
        await asyncio.gather(
            *(
                many.assert_blob("send/many", sha256(blobs[n % 4]), blobs[n % 4])
                for n in range(pulls)
            )
        )


def _small_window_get(port: int, path: str, timeout: float = 30) -> socket.socket:
    """A connection with a receive buffer of 4 KiB that has sent `GET path`: the server's
    send fills it after a few pieces."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    except BaseException:
        sock.close()
        raise
    return sock


def _held_pull(port: int, path: str, release: threading.Event) -> int:
    """GET `path`, read the first bytes, then stop reading until `release`: bytes read."""
    sock = _small_window_get(port, path)
    try:
        received = len(sock.recv(65536))
        release.wait(60)
        return received
    finally:
        sock.close()


async def test_clients_holding_every_copy_leave_the_next_pull_unhindered(
    make_server: MakeServer, http: aiohttp.ClientSession
) -> None:
    """`COPIES` local clients stop reading in the middle of their pulls, holding every place a
    worker copies in: the next pull goes out at once (with `sendfile`), whole, and so do pulls
    after the stalled clients let go."""
    server = make_server(workers=1, env={"MOORAGE_HTTP_SENDFILE": "auto"})
    await server.start()
    reg = Registry(http, server.url)
    data = random.Random(13).randbytes(32 << 20)
    digest = await reg.push_blob("send/held", data)
    path = f"/v2/send/held/blobs/{digest}"
    release = threading.Event()
    held = [
        asyncio.create_task(asyncio.to_thread(_held_pull, server.port, path, release))
        for _ in range(sending.COPIES)
    ]
    try:
        # Each stalled send is on its thread once its client has had the first bytes.
        await asyncio.sleep(1)
        assert not any(task.done() for task in held)
        await asyncio.wait_for(reg.assert_blob("send/held", digest, data), 20)
    finally:
        release.set()
        received = await asyncio.gather(*held)
    assert all(0 < n < len(data) for n in received), received
    await reg.assert_blob("send/held", digest, data)
    assert "Traceback" not in server.log_path.read_text(errors="replace"), server.log_tail()


def _vanish(port: int, path: str) -> int:
    """GET `path`, read a little, close the socket with a reset: bytes read."""
    sock = _small_window_get(port, path)
    try:
        received = len(sock.recv(65536))
        time.sleep(0.05)
        # SO_LINGER 0: the close sends a reset, the server's next send fails at once.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return received
    finally:
        sock.close()


@pytest.mark.parametrize("mode", ["auto", "on"])
async def test_clients_that_vanish_mid_pull_leave_the_server_serving(
    make_server: MakeServer, http: aiohttp.ClientSession, mode: str
) -> None:
    server = make_server(workers=1, env={"MOORAGE_HTTP_SENDFILE": mode})
    await server.start()
    reg = Registry(http, server.url)
    data = random.Random(9).randbytes(32 << 20)
    digest = await reg.push_blob("send/vanish", data)
    path = f"/v2/send/vanish/blobs/{digest}"
    for _ in range(3):
        received = await asyncio.gather(
            *(asyncio.to_thread(_vanish, server.port, path) for _ in range(8))
        )
        assert all(0 < n < len(data) for n in received), received
    await reg.assert_blob("send/vanish", digest, data)
    log = server.log_path.read_text(errors="replace")
    assert "Traceback" not in log, server.log_tail()
    assert "client went away" in log


def _stalled_pull(
    port: int, path: str, ready: asyncio.Event, loop: asyncio.AbstractEventLoop
) -> str:
    """GET `path` and stop reading after the first bytes; then wait for the server's end."""
    sock = _small_window_get(port, path, timeout=60)
    try:
        sock.recv(4096)
        loop.call_soon_threadsafe(ready.set)
        time.sleep(8)  # the server's thread waits for the socket, until the kernel drops it
        try:
            while sock.recv(1 << 20):
                pass
            return "closed"
        except ConnectionResetError:
            return "reset"
        except TimeoutError:
            return "still open"
    finally:
        sock.close()


@pytest.mark.parametrize("mode", ["auto", "on"])
async def test_a_send_to_a_stalled_client_ends_and_the_worker_stops(
    make_server: MakeServer, mode: str
) -> None:
    """A client stops reading in the middle of a large pull, and the worker is told to stop:
    the kernel drops the client after `http.sendtimeout`, the thread's send fails, the request
    ends and the worker exits without being killed."""
    server = make_server(
        workers=1,
        env={
            "MOORAGE_HTTP_SENDFILE": mode,
            "MOORAGE_HTTP_SENDTIMEOUT": "2",
            "MOORAGE_HTTP_DRAINTIMEOUT": "0",
        },
    )
    await server.start()
    async with aiohttp.ClientSession() as http:
        digest = await Registry(http, server.url).push_blob(
            "send/stop", random.Random(11).randbytes(64 << 20)
        )
    ready = asyncio.Event()
    path = f"/v2/send/stop/blobs/{digest}"
    loop = asyncio.get_running_loop()
    pull = asyncio.create_task(asyncio.to_thread(_stalled_pull, server.port, path, ready, loop))
    await asyncio.wait_for(ready.wait(), 30)
    await asyncio.sleep(0.5)
    code = await server.stop(timeout=20)
    assert code is not None, "the worker had to be killed"
    assert await pull in ("closed", "reset")


class _Peer(asyncio.Transport):
    """A transport that only answers `get_extra_info("peername")` (a unit test of `copies`)."""

    def __init__(self, peer: object) -> None:
        super().__init__()
        self.peer = peer

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.peer if name == "peername" else default


@pytest.mark.parametrize(
    ("peer", "copied"),
    [
        (("127.0.0.1", 5000), True),
        (("127.8.9.10", 5000), True),
        (("::1", 5000, 0, 0), True),
        (("::ffff:127.0.0.1", 5000, 0, 0), True),
        ("", True),  # a Unix socket
        (("10.1.2.3", 5000), False),
        (("2001:db8::1", 5000, 0, 0), False),
        (("fe80::1%eth0", 5000, 0, 2), False),
        (("::ffff:192.0.2.7", 5000, 0, 0), False),
    ],
)
def test_auto_copies_to_clients_on_this_machine_only(peer: object, copied: bool) -> None:
    transport = _Peer(peer)
    assert sending.copies("auto", transport) is copied
    assert sending.copies("off", transport) is True
    assert sending.copies("on", transport) is False


def test_auto_sends_beyond_the_first_copies_with_sendfile(monkeypatch: pytest.MonkeyPatch) -> None:
    local, remote = _Peer(("127.0.0.1", 5000)), _Peer(("10.1.2.3", 5000))
    monkeypatch.setattr(sending, "_copying", sending.COPIES - 1)
    assert sending.copies("auto", local) is True
    monkeypatch.setattr(sending, "_copying", sending.COPIES)
    assert sending.copies("auto", local) is False
    assert sending.copies("auto", remote) is False
    assert sending.copies("off", local) is True  # `off` copies whatever the count


def _pipelined_slow_reader(port: int, path: str, count: int) -> list[tuple[bytes, bytes]]:
    """Send `count` GETs of `path` at once on one connection, then read the responses, each
    after a pause once its head is in (the buffers on the way full): [(head, body)]."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    stream = sock.makefile("rb")
    try:
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
        sock.sendall(request * count)
        responses = []
        for _ in range(count):
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                line = stream.readline(65536)
                assert line, f"the connection ended in a head: {head!r}"
                head += line
            assert head.startswith(b"HTTP/1.1 200 "), head[:200]
            (length,) = [
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ]
            time.sleep(0.3)  # the server fills every buffer on the way and waits
            responses.append((head, stream.read(length)))
        return responses
    finally:
        stream.close()
        sock.close()


@pytest.mark.parametrize("mode", ["auto", "on"])
async def test_pipelined_pulls_to_a_slow_reader_keep_each_head_before_its_body(
    make_server: MakeServer, http: aiohttp.ClientSession, mode: str
) -> None:
    """Pipelined pulls on one connection, the client pausing after each head with every
    buffer on the way full: each response's head and body arrive whole and in order. (The
    case `sending.send` waits for, a head still in the transport's buffer when the thread
    would start, did not occur in this test's runs: it is a guard of the order, not a proof
    of that wait.)"""
    server = make_server(workers=1, env={"MOORAGE_HTTP_SENDFILE": mode})
    await server.start()
    reg = Registry(http, server.url)
    data = random.Random(13).randbytes(24 << 20)  # more than the socket buffers on the way
    digest = await reg.push_blob("send/pipelined", data)
    path = f"/v2/send/pipelined/blobs/{digest}"
    responses = await asyncio.to_thread(_pipelined_slow_reader, server.port, path, 4)
    for head, body in responses:
        assert digest.encode() in head
        assert body == data
