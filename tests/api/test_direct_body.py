"""Large upload bodies taken straight from the socket (moorage/api/direct.py, issue 14).

A body of known length from `direct.MIN_LENGTH` on is read into reused buffers instead of
through aiohttp's parser; the connection then closes after the response. Every integrity rule
holds as on the ordinary path: the digest is verified, nothing partial becomes visible, a body
cut short leaves the session where it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import socket
import struct

import pytest

from moorage.api import direct
from tests.api.helpers import (
    Client,
    assert_error,
    assert_upload_range,
    path_of,
    request_head,
    sha256,
    start_upload,
    with_query,
)

OCTET = {"Content-Type": "application/octet-stream"}


def _data(size: int, seed: str) -> bytes:
    """`size` bytes that differ from block to block (a misplaced block changes the digest)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}/{counter}".encode()).digest() * 2048
        counter += 1
    return bytes(out[:size])


SIZE = direct.MIN_LENGTH + 3 * direct.BLOCK + 12345  # more blocks than buffers, a ragged end


async def _read_back(client: Client, repo: str, digest: str) -> bytes:
    resp = await client.get(f"/v2/{repo}/blobs/{digest}")
    assert resp.status == 200, await resp.text()
    return await resp.read()


async def test_a_large_monolithic_put_is_taken_directly_and_verified(client: Client) -> None:
    data = _data(SIZE, "mono")
    digest = sha256(data)
    location = await start_upload(client, "direct/mono")
    resp = await client.put(with_query(location, digest=digest), data=data, headers=OCTET)
    assert resp.status == 201, await resp.text()
    assert resp.headers["Docker-Content-Digest"] == digest
    # Taken from the socket: aiohttp's parser lost track of the connection, which ends.
    assert resp.headers.get("Connection", "").lower() == "close"
    assert await _read_back(client, "direct/mono", digest) == data


async def test_a_small_body_keeps_the_connection(client: Client) -> None:
    data = _data(direct.MIN_LENGTH - 1, "small")
    digest = sha256(data)
    location = await start_upload(client, "direct/small")
    resp = await client.put(with_query(location, digest=digest), data=data, headers=OCTET)
    assert resp.status == 201, await resp.text()
    assert resp.headers.get("Connection", "").lower() != "close"
    assert await _read_back(client, "direct/small", digest) == data


async def test_a_single_post_upload_is_taken_directly(client: Client) -> None:
    data = _data(SIZE, "post")
    digest = sha256(data)
    resp = await client.post(
        f"/v2/direct/post/blobs/uploads/?digest={digest}", data=data, headers=OCTET
    )
    assert resp.status == 201, await resp.text()
    assert await _read_back(client, "direct/post", digest) == data


async def test_large_patches_resume_the_hash_and_commit(client: Client) -> None:
    first, second = _data(SIZE, "patch-1"), _data(direct.MIN_LENGTH + 777, "patch-2")
    digest = sha256(first + second)
    location = await start_upload(client, "direct/chunked")
    for start, chunk in ((0, first), (len(first), second)):
        resp = await client.patch(
            location,
            data=chunk,
            headers={**OCTET, "Content-Range": f"{start}-{start + len(chunk) - 1}"},
        )
        assert resp.status == 202, await resp.text()
        assert_upload_range(resp, start + len(chunk) - 1)
        location = resp.headers["Location"]
    resp = await client.put(with_query(location, digest=digest))
    assert resp.status == 201, await resp.text()
    assert await _read_back(client, "direct/chunked", digest) == first + second


async def test_a_wrong_digest_on_a_direct_body_commits_nothing(client: Client) -> None:
    data = _data(SIZE, "wrong")
    wrong = sha256(data + b"x")
    location = await start_upload(client, "direct/wrong")
    resp = await client.put(with_query(location, digest=wrong), data=data, headers=OCTET)
    await assert_error(resp, 400, "DIGEST_INVALID")
    assert resp.headers.get("Connection", "").lower() == "close"
    for digest in (wrong, sha256(data)):
        resp = await client.head(f"/v2/direct/wrong/blobs/{digest}")
        assert resp.status == 404


async def test_a_body_cut_short_leaves_the_session_where_it_was(client: Client) -> None:
    """The client announces more than it sends, then hangs up: nothing of it counts."""
    location = await start_upload(client, "direct/cut")
    head = {"Content-Length": str(SIZE), "Content-Range": f"0-{SIZE - 1}", **OCTET}
    _reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(await request_head(client, "PATCH", path_of(location), head))
    writer.write(_data(SIZE // 2, "cut"))
    await writer.drain()
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    # The server notices and gives the session back as it was: nothing of the cut body
    # counts. Until it has, the session's lease is still held (416).
    data = _data(SIZE, "after")
    digest = sha256(data)
    for _ in range(100):
        resp = await client.put(with_query(location, digest=digest), data=data, headers=OCTET)
        if resp.status != 416:
            break
        assert_upload_range(resp, None)
        assert resp.headers["Range"] == "0-0"  # the cut body moved nothing
        await asyncio.sleep(0.05)
    assert resp.status == 201, await resp.text()
    assert await _read_back(client, "direct/cut", digest) == data


async def test_bytes_past_the_announced_length_are_not_part_of_the_blob(client: Client) -> None:
    """The body is exactly Content-Length bytes: what a client sends beyond is not read into
    the blob, and the answer still comes, whole, then a clean end: the server drops the extra
    bytes in a lingering close instead of answering them with a reset."""
    data = _data(SIZE, "over")
    digest = sha256(data)
    location = await start_upload(client, "direct/over")
    target = with_query(path_of(location), digest=digest)
    head = await request_head(client, "PUT", target, {**OCTET, "Content-Length": str(SIZE)})
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(head + data + b"x" * (3 * direct.BLOCK))
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 30)  # to the server's end, no reset
        status, _, rest = answer.partition(b"\r\n")
        assert status.split()[1] == b"201", answer
        assert b"\r\nConnection: close\r\n" in rest and rest.endswith(b"\r\n\r\n"), answer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    assert await _read_back(client, "direct/over", digest) == data


async def test_a_client_that_resets_mid_body_commits_nothing(client: Client) -> None:
    """A connection reset (not a clean end) in the middle of a monolithic body: no blob, and
    the session can be finished afterwards with the right bytes."""
    data = _data(SIZE, "reset")
    digest = sha256(data)
    location = await start_upload(client, "direct/reset")
    target = with_query(path_of(location), digest=digest)
    head = await request_head(client, "PUT", target, {**OCTET, "Content-Length": str(SIZE)})
    _reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(head + data[: SIZE - direct.BLOCK])
    await writer.drain()
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()  # RST
    resp = await client.head(f"/v2/direct/reset/blobs/{digest}")
    assert resp.status == 404
    for _ in range(100):
        resp = await client.put(with_query(location, digest=digest), data=data, headers=OCTET)
        if resp.status != 416:
            break
        assert resp.headers["Range"] == "0-0"  # the cut body moved nothing
        await asyncio.sleep(0.05)
    assert resp.status == 201, await resp.text()
    assert await _read_back(client, "direct/reset", digest) == data


async def test_past_the_cap_a_large_body_goes_through_aiohttp(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a worker takes direct.MAX_BODIES bodies from their sockets, another large body
    goes the ordinary path (its connection stays open) and is verified the same; the held ones
    then arrive whole, and their places are given back."""
    monkeypatch.setattr(direct, "MAX_BODIES", 2)
    await _no_bodies_taken()  # those of the tests before (in this process) given back
    held = []
    for n in range(2):
        data = _data(SIZE, f"cap{n}")
        digest = sha256(data)
        location = await start_upload(client, f"direct/cap{n}")
        target = with_query(path_of(location), digest=digest)
        head = await request_head(client, "PUT", target, {**OCTET, "Content-Length": str(SIZE)})
        reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
        writer.write(head + data[:3000])
        await writer.drain()
        held.append((reader, writer, data, digest))
    try:
        for _ in range(200):  # both handlers reach their bodies
            if direct._bodies >= 2:
                break
            await asyncio.sleep(0.02)
        assert direct._bodies == 2
        data = _data(SIZE, "past")
        digest = sha256(data)
        location = await start_upload(client, "direct/past")
        resp = await client.put(with_query(location, digest=digest), data=data, headers=OCTET)
        assert resp.status == 201, await resp.text()
        assert resp.headers.get("Connection", "").lower() != "close"  # not taken directly
        assert await _read_back(client, "direct/past", digest) == data
        for reader, writer, data, _ in held:
            writer.write(data[3000:])
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 30)
            status, _, rest = answer.partition(b"\r\n")
            assert status.split()[1] == b"201", answer
            assert b"\r\nConnection: close\r\n" in rest, answer  # these were taken directly
    finally:
        for _, writer, _, _ in held:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
    for n, (_, _, data, digest) in enumerate(held):
        assert await _read_back(client, f"direct/cap{n}", digest) == data
    await _no_bodies_taken(collect=False)  # given back as each ended, not when collected


async def _no_bodies_taken(collect: bool = True) -> None:
    for _ in range(200):
        if collect:
            gc.collect()
        if direct._bodies == 0:
            break
        await asyncio.sleep(0.02)
    assert direct._bodies == 0


@pytest.mark.embedded_only  # on object storage an upload's body is not drained on a thread
async def test_an_upload_takes_its_body_through_one_reused_block(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upload hashes and writes each block before its call returns (`keep=False`): the
    thread taking the body reuses one block, however many the body fills, and the blob is
    whole."""
    made: list[direct._Blocks] = []

    class Counted(direct._Blocks):
        def __init__(self, size: int, turns: int = 2) -> None:
            super().__init__(size, turns)
            made.append(self)

    monkeypatch.setattr(direct, "_Blocks", Counted)
    data = _data(SIZE, "one-block")
    digest = sha256(data)
    location = await start_upload(client, "direct/one-block")
    resp = await client.put(with_query(location, digest=digest), data=data, headers=OCTET)
    assert resp.status == 201, await resp.text()
    assert resp.headers.get("Connection", "").lower() == "close"  # taken by the thread
    assert len(made) == 1
    assert len(made[0].made) == 1  # several blocks' worth of body through one buffer
    assert await _read_back(client, "direct/one-block", digest) == data
