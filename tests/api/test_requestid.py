"""Issue 9 item 11: request ids, the "unexpected error" line, and clients that hang up."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from moorage.app import create_app
from moorage.config import Settings
from tests.api.helpers import (
    Client,
    assert_error,
    local,
    push_blob,
    random_bytes,
    raw_request,
    sha256,
)

HEADER = "X-Request-Id"


# --- every response names its request ---------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("GET", "/v2/"),
        ("GET", f"/v2/repo/blobs/{sha256(b'missing')}"),  # a v2 error
        ("GET", "/v2/repo/nothing/here"),  # no such v2 endpoint
        ("PATCH", "/v2/"),  # 405
        ("GET", "/v1/_ping"),
        ("GET", "/v1/repositories/library/nothing/tags"),  # a v1 error
        ("GET", "/elsewhere"),  # outside both protocols
    ],
)
async def test_every_response_has_a_request_id(client: Client, method: str, target: str) -> None:
    first = await raw_request(client, method, target)
    second = await raw_request(client, method, target)
    assert first is not None and second is not None
    assert first.headers.get(HEADER)
    assert second.headers.get(HEADER)
    assert first.headers[HEADER] != second.headers[HEADER]


@pytest.mark.parametrize("incoming", ["abc-123", "0f8e1c2a9b7d4e6f", "trace:1/2+3=="])
async def test_a_sane_incoming_request_id_is_kept(client: Client, incoming: str) -> None:
    resp = await client.get("/v2/", headers={HEADER: incoming})
    assert resp.headers[HEADER] == incoming
    resp = await client.get(f"/v2/repo/blobs/{sha256(b'missing')}", headers={HEADER: incoming})
    await assert_error(resp, 404, "BLOB_UNKNOWN")
    assert resp.headers[HEADER] == incoming


@pytest.mark.parametrize("incoming", ["", "a" * 129, "has space", 'quote"d', "-leading", "é"])
async def test_an_insane_incoming_request_id_is_replaced(client: Client, incoming: str) -> None:
    resp = await raw_request(client, "GET", "/v2/", headers={HEADER: incoming})
    assert resp is not None
    assert resp.headers[HEADER]
    assert resp.headers[HEADER] != incoming


# --- a real 500 can be traced -----------------------------------------------------------------


@pytest.mark.embedded_only  # swaps a blob's file for a directory
async def test_unexpected_error_line_names_method_path_and_request_id(
    client: Client, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    data = random_bytes(77)
    digest = await push_blob(client, "repo", data)
    # Break the stored blob behind the registry's back: its file becomes a directory.
    (stored,) = [p for p in settings.datadir.rglob("*") if p.is_file() and p.read_bytes() == data]
    stored.unlink()
    stored.mkdir()
    try:
        with caplog.at_level(logging.INFO):
            resp = await client.get(f"/v2/repo/blobs/{digest}")
            await assert_error(resp, 500, "UNKNOWN")
    finally:
        stored.rmdir()
    rid = resp.headers[HEADER]
    (record,) = [r for r in caplog.records if r.msg.startswith("unexpected error")]
    assert record.exc_info is not None
    line = record.getMessage()
    assert "method=GET" in line
    assert f"path=/v2/repo/blobs/{digest}" in line
    assert f"request_id={rid}" in line
    assert record.__dict__["request_id"] == rid


# --- a client that hangs up mid-body ----------------------------------------------------------


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[str, int]]:
    """The registry on a real socket with aiohttp's serving defaults (the test client's server
    cancels handlers when a client disconnects; `moorage serve` does not)."""
    runner = web.AppRunner(create_app(Settings(datadir=tmp_path / "data")))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    assert site._server is not None
    host, port = site._server.sockets[0].getsockname()[:2]  # type: ignore[union-attr]
    try:
        yield host, port
    finally:
        await runner.cleanup()


async def _hang_up_mid_body(host: str, port: int, method: str, target: str, rid: str) -> None:
    """Send a request head announcing 1 MB and 5,000 bytes of it, then reset the connection."""
    _reader, writer = await asyncio.open_connection(host, port)
    head = (
        f"{method} {target} HTTP/1.1\r\nHost: {host}:{port}\r\n{HEADER}: {rid}\r\n"
        "Content-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n"
    )
    writer.write(head.encode() + b"x" * 5000)
    await writer.drain()
    await asyncio.sleep(0.2)  # the handler is reading the body now
    sock: socket.socket = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()


async def _wait_for(caplog: pytest.LogCaptureFixture, rid: str) -> logging.LogRecord:
    for _ in range(100):
        found = [r for r in caplog.records if r.__dict__.get("request_id") == rid]
        if found:
            return found[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"nothing logged for {rid}: {[r.getMessage() for r in caplog.records]}")


@pytest.mark.parametrize("what", ["patch", "put", "single-post", "manifest"])
async def test_client_hanging_up_mid_body_is_one_info_line(
    server: tuple[str, int], caplog: pytest.LogCaptureFixture, what: str
) -> None:
    host, port = server
    base = f"http://{host}:{port}"
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base}/v2/repo/blobs/uploads/") as resp:
            assert resp.status == 202
            location = local(resp.headers["Location"])
        targets: dict[str, tuple[str, str]] = {
            "patch": ("PATCH", location),
            "put": ("PUT", f"{location}?digest={sha256(b'never')}"),
            "single-post": ("POST", f"/v2/repo/blobs/uploads/?digest={sha256(b'never')}"),
            "manifest": ("PUT", "/v2/repo/manifests/latest"),
        }
        method, target = targets[what]
        rid = f"hangup-{what}"
        with caplog.at_level(logging.DEBUG):
            await _hang_up_mid_body(host, port, method, target, rid)
            record = await _wait_for(caplog, rid)
            await asyncio.sleep(0.2)  # anything else it would log
        mine = [r for r in caplog.records if r.__dict__.get("request_id") == rid]
        assert [r.levelno for r in mine] == [logging.INFO], [r.getMessage() for r in mine]
        assert record.msg.startswith("client went away")
        assert record.exc_info is None
        assert f"method={method}" in record.getMessage()
        assert f"path={target.split('?')[0]}" in record.getMessage()
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
        # The registry still serves.
        async with session.get(f"{base}/v2/") as resp:
            assert resp.status == 200


@pytest.mark.parametrize("what", ["v1-layer", "v1-json"])
async def test_a_v1_client_hanging_up_mid_body_is_one_info_line(
    server: tuple[str, int], caplog: pytest.LogCaptureFixture, what: str
) -> None:
    host, port = server
    base = f"http://{host}:{port}"
    image_id = "ab" * 32
    async with aiohttp.ClientSession() as session:
        if what == "v1-layer":
            body = json.dumps({"id": image_id, "created": "2014-09-24T09:12:01Z"}).encode()
            async with session.put(f"{base}/v1/images/{image_id}/json", data=body) as resp:
                assert resp.status == 200, await resp.text()
            target = f"/v1/images/{image_id}/layer"
        else:
            target = f"/v1/images/{'cd' * 32}/json"
        rid = f"hangup-{what}"
        with caplog.at_level(logging.DEBUG):
            await _hang_up_mid_body(host, port, "PUT", target, rid)
            record = await _wait_for(caplog, rid)
            await asyncio.sleep(0.2)
        mine = [r for r in caplog.records if r.__dict__.get("request_id") == rid]
        assert [r.levelno for r in mine] == [logging.INFO], [r.getMessage() for r in mine]
        assert record.msg.startswith("client went away")
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
        async with session.get(f"{base}/v1/_ping") as resp:
            assert resp.status == 200
