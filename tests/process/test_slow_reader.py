"""A client that stops reading a response cannot hold its request for ever.

The server's sends must be acknowledged, and the client's receive window may not stay shut,
for longer than `http.sendtimeout` (TCP_USER_TIMEOUT, which also bounds zero-window probing):
then the kernel drops the connection, the handler's write (a blob sent on its own thread by
sendfile or a copy, moorage/api/sending.py) fails and the request ends as a client that went
away. Before, the handler waited in sendfile indefinitely,
holding a connection slot and an open file.
"""

from __future__ import annotations

import asyncio
import socket
import time

import aiohttp
import pytest

from tests.harness import MakeServer
from tests.process.registry import Registry, sha256

pytestmark = pytest.mark.timeout(120)

SEND_TIMEOUT = 2
BLOB = 48 << 20


def _read_some_then_stall(port: int, path: str, stall: float) -> tuple[int, str]:
    """GET `path` with a tiny receive buffer, read 64 KiB, stop reading for `stall` seconds,
    then read on: (bytes received in all, how the connection ended)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    try:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        received = 0
        while received < 64 << 10:
            received += len(sock.recv(8192))
        time.sleep(stall)
        try:
            while True:
                data = sock.recv(1 << 20)
                if not data:
                    return received, "closed"
                received += len(data)
        except ConnectionResetError:
            return received, "reset"
        except TimeoutError:
            return received, "still open"
    finally:
        sock.close()


@pytest.mark.parametrize("mode", ["auto", "on"])  # over loopback: a copy, and sendfile
async def test_a_client_that_stops_reading_is_dropped(
    make_server: MakeServer, http: aiohttp.ClientSession, mode: str
) -> None:
    env = {"MOORAGE_HTTP_SENDTIMEOUT": str(SEND_TIMEOUT), "MOORAGE_HTTP_SENDFILE": mode}
    server = make_server(env=env)
    await server.start()
    reg = Registry(http, server.url)
    data = bytes(range(256)) * (BLOB // 256)
    await reg.push_blob("slow/reader", data)
    path = f"/v2/slow/reader/blobs/{sha256(data)}"

    received, ending = await asyncio.to_thread(
        _read_some_then_stall, server.port, path, SEND_TIMEOUT * 4
    )
    assert ending in ("closed", "reset"), ending
    assert received < len(data), "the whole blob arrived: the client never stalled the server"
    # The server is fine and serves the blob whole to a client that reads.
    status, body, _ = await reg.get_blob("slow/reader", sha256(data))
    assert status == 200 and body == data
    assert "Traceback" not in server.log_path.read_text(errors="replace"), server.log_tail()
