"""Chunked request bodies taken from the socket by a worker thread (moorage/api/direct.py,
`ChunkedBody`), on a real server: the connection guard follows the framing as aiohttp reads
the start of the body, and the thread goes on from exactly there.

Every body here is sent in pieces with pauses between them, so the takeover happens in the
middle of the body, at framing positions the pieces' cuts choose. The response to a body taken
over says `Connection: close`; one that went through aiohttp does not (these requests do not
ask for it). Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import random
import socket
import time

import pytest

from moorage.api import direct, http
from moorage.chunked import Framing
from tests.harness import MakeServer, MoorageProcess
from tests.v1.client import make_image, payload_checksum

pytestmark = pytest.mark.timeout(120)

BOUND = 20.0  # seconds any one answer may take
PAUSE = 0.3  # between pieces: the handler takes over while the rest is still to come


def _data(size: int, seed: str) -> bytes:
    rng = random.Random(seed)
    return rng.randbytes(size)


def _frame(data: bytes, sizes: list[int], trailer: bytes = b"") -> bytes:
    """`data` in chunks of `sizes` (cycled), some with extensions, then the last chunk."""
    out, at, n = bytearray(), 0, 0
    while at < len(data):
        size = sizes[n % len(sizes)]
        piece = data[at : at + size]
        ext = b";n=" + str(n).encode() if n % 3 == 1 else b""
        out += f"{len(piece):x}".encode() + ext + b"\r\n" + piece + b"\r\n"
        at += len(piece)
        n += 1
    return bytes(out + b"0\r\n" + trailer + b"\r\n")


class Reply:
    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {
            k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])
        }

    @property
    def closes(self) -> bool:
        return self.headers.get("connection", "").lower() == "close"


async def _exchange(
    server: MoorageProcess,
    head: str,
    pieces: list[bytes],
    *,
    stall: bool = False,
    pause: float = PAUSE,
    gates: dict[int, asyncio.Event] | None = None,
) -> Reply | None:
    """Send `head` then each piece with a pause before it (and for the pieces `gates` names,
    once their event is set); read the answer until the server closes (a body taken over
    always ends its connection) or BOUND. `stall`: after the pieces, send nothing more and
    wait for the server to close (None then)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(head.encode("latin-1") + b"\r\n\r\n")
        for n, piece in enumerate(pieces):
            if gates and n in gates:
                async with asyncio.timeout(BOUND):
                    await gates[n].wait()
            await asyncio.sleep(PAUSE if n == 0 else pause)
            writer.write(piece)
            await writer.drain()
        raw = bytearray()
        async with asyncio.timeout(BOUND):
            with contextlib.suppress(ConnectionError):
                while chunk := await reader.read(65536):
                    raw += chunk
                    if not stall and _complete(raw):
                        break
        return None if stall else Reply(bytes(raw))
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def _complete(raw: bytearray) -> bool:
    head, sep, body = bytes(raw).partition(b"\r\n\r\n")
    if not sep:
        return False
    if head.split(b" ", 2)[1] in (b"204", b"304"):
        return True  # no body
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def _patch_head(location: str) -> str:
    return (
        f"PATCH {location} HTTP/1.1\r\nHost: registry\r\nContent-Type: application/octet-stream"
        "\r\nTransfer-Encoding: chunked"
    )


async def _simple(server: MoorageProcess, method: str, target: str, body: bytes = b"") -> Reply:
    head = f"{method} {target} HTTP/1.1\r\nHost: registry\r\nContent-Length: {len(body)}"
    reply = await _exchange(server, head, [body] if body else [])
    assert reply is not None
    return reply


async def _start(server: MoorageProcess, repo: str) -> str:
    reply = await _simple(server, "POST", f"/v2/{repo}/blobs/uploads/")
    assert reply.status == 202, reply.body
    return reply.headers["location"]


def _cut(raw: bytes, at: list[int]) -> list[bytes]:
    bounds = [0, *at, len(raw)]
    return [raw[a:b] for a, b in itertools.pairwise(bounds)]


async def _push(server: MoorageProcess, repo: str, raw: bytes, cuts: list[int]) -> Reply:
    location = await _start(server, repo)
    reply = await _exchange(server, _patch_head(location), _cut(raw, cuts))
    assert reply is not None
    return reply


async def test_a_chunked_patch_is_taken_over_mid_body_at_any_framing_position(
    make_server: MakeServer,
) -> None:
    server = make_server()
    await server.start()
    data = _data(3 * (1 << 20) + 777, "takeover")
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    raw = _frame(data, [1, 7, 4096, 100_000, 65536, 3], trailer=b"X-Sum: ok\r\n")
    # Where the first piece ends decides where the thread takes over: inside a size line,
    # inside an extension, in a chunk's data, between the data and its CRLF, just after it.
    framing, spots = Framing(), []
    for at in range(1, 300_000):
        before = framing.decoded
        framing.feed(raw[at - 1 : at])
        state = framing._state.value  # the test picks its cuts by state
        if len(spots) < 12 and (not spots or state != spots[-1][1]) and before > 0:
            spots.append((at, state))
    assert {state for _, state in spots} >= {"size", "data", "data-end"}
    for n, (at, _state) in enumerate(spots):
        reply = await _push(server, f"chunked/any{n}", raw, [at, at + 500_000, len(raw) - 5])
        assert reply.status == 202, (at, reply.body)
        assert reply.closes, "the body was not taken over"
        assert reply.headers["range"] == f"0-{len(data) - 1}"
        location = reply.headers["location"]
        put = await _simple(server, "PUT", f"{location}?digest={digest}")
        assert put.status == 201, put.body
    blob = await _simple(server, "GET", f"/v2/chunked/any0/blobs/{digest}")
    assert blob.status == 200 and blob.body == data


async def test_a_body_that_came_with_its_head_keeps_the_connection(
    make_server: MakeServer,
) -> None:
    """aiohttp had all of it: nothing to take over, and the connection stays usable."""
    server = make_server()
    await server.start()
    location = await _start(server, "chunked/small")
    raw = _frame(b"small body", [4])
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(_patch_head(location).encode() + b"\r\n\r\n" + raw)
        await writer.drain()
        async with asyncio.timeout(BOUND):
            head = await reader.readuntil(b"\r\n\r\n")
        reply = Reply(head)
        assert reply.status == 202 and not reply.closes
        assert reply.headers["range"] == "0-9"
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_malformed_framing_after_the_takeover_moves_nothing(
    make_server: MakeServer,
) -> None:
    server = make_server()
    await server.start()
    data = _data(2 * (1 << 20), "bad")
    good = _frame(data, [65536])
    for n, bad in enumerate([b"zz\r\n", b"4\r\nabcdX", b"1" * 20 + b"\r\n", b"3\nabc"]):
        location = await _start(server, f"chunked/bad{n}")
        start = good[: len(good) // 2]
        start = start[: start.rfind(b"\r\n10000\r\n") + 2]  # up to a chunk's end
        reply = await _exchange(server, _patch_head(location), [start[:1000], start[1000:], bad])
        assert reply is not None
        assert reply.status == 400, (bad, reply.body)
        assert json.loads(reply.body)["errors"][0]["code"] == "BLOB_UPLOAD_INVALID"
        assert reply.closes
        # The session is where it was: a whole, correct body still goes in after it.
        status = await _simple(server, "GET", location)
        assert status.status == 204 and status.headers["range"] == "0-0", status.headers
        reply = await _exchange(server, _patch_head(location), _cut(good, [1000]))
        assert reply is not None and reply.status == 202
        assert reply.headers["range"] == f"0-{len(data) - 1}"


async def test_a_client_gone_mid_chunk_moves_nothing(make_server: MakeServer) -> None:
    server = make_server()
    await server.start()
    data = _data(2 * (1 << 20), "gone")
    raw = _frame(data, [100_000])
    location = await _start(server, "chunked/gone")
    _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(_patch_head(location).encode() + b"\r\n\r\n" + raw[:5000])
    await asyncio.sleep(PAUSE)
    writer.write(raw[5000 : len(raw) // 2])
    await writer.drain()
    await asyncio.sleep(PAUSE)
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    # Until the server has noticed, the session's lease is still held (416).
    for _ in range(100):
        reply = await _exchange(server, _patch_head(location), _cut(raw, [3000]))
        assert reply is not None
        if reply.status != 416:
            break
        await asyncio.sleep(0.05)
    assert reply.status == 202, reply.body
    assert reply.headers["range"] == f"0-{len(data) - 1}"


async def test_a_stalled_chunked_body_is_closed(make_server: MakeServer) -> None:
    body_timeout = 2.0
    server = make_server(env={"MOORAGE_HTTP_BODYTIMEOUT": str(body_timeout)})
    await server.start()
    raw = _frame(_data(1 << 20, "stall"), [4096])
    location = await _start(server, "chunked/stall")
    # Taken over, then nothing more, mid-chunk: the guard closes it within its bound.
    pieces = [raw[:100], raw[100:50_000]]
    closed = asyncio.create_task(_exchange(server, _patch_head(location), pieces, stall=True))
    await asyncio.wait_for(closed, body_timeout + BOUND)
    status = await _simple(server, "GET", location)
    assert status.status == 204 and status.headers["range"] == "0-0"


async def test_bytes_past_the_last_chunk_are_not_the_blob(make_server: MakeServer) -> None:
    """A pipelined request after the body: dropped (the connection closes), the blob exact."""
    server = make_server()
    await server.start()
    data = _data((1 << 20) + 5, "past")
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    raw = _frame(data, [30_000]) + b"GET /v2/ HTTP/1.1\r\nHost: registry\r\n\r\n" + b"x" * 5000
    reply = await _push(server, "chunked/past", raw, [2000])
    assert reply.status == 202 and reply.closes
    assert reply.headers["range"] == f"0-{len(data) - 1}"
    put = await _simple(server, "PUT", f"{reply.headers['location']}?digest={digest}")
    assert put.status == 201, put.body


async def test_a_v1_layer_is_taken_over_and_checked(make_server: MakeServer) -> None:
    """v1's layer PUT (always chunked from Docker 1.x) on the drained path: every sum as on
    aiohttp's, and a layer that is not a tar refused with nothing kept."""
    server = make_server()
    await server.start()
    files = {f"data/{i}.bin": _data(300_000, f"v1-{i}") for i in range(8)}
    image, bad = make_image(files=files), make_image()
    for each in (image, bad):
        reply = await _simple(server, "PUT", f"/v1/images/{each.id}/json", each.json)
        assert reply.status == 200, reply.body
    head = (
        f"PUT /v1/images/{image.id}/layer HTTP/1.1\r\nHost: registry\r\n"
        "Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked"
    )
    raw = _frame(image.layer, [32768])
    reply = await _exchange(server, head, _cut(raw, [700, 300_000]))
    assert reply is not None and reply.status == 200, reply.body
    assert reply.closes
    checksum = (
        f"PUT /v1/images/{image.id}/checksum HTTP/1.1\r\nHost: registry\r\nContent-Length: 0\r\n"
        f"X-Docker-Checksum-Payload: {payload_checksum(image.json, image.layer)}"
    )
    reply = await _exchange(server, checksum, [])
    assert reply is not None and reply.status == 200, reply.body
    layer = await _simple(server, "GET", f"/v1/images/{image.id}/layer")
    assert layer.status == 200 and layer.body == image.layer
    # Not a layer: refused on a helper thread, the upload stays unfinished.
    junk = _frame(b"\x1f\x8b" + _data(600_000, "junk"), [32768])
    reply = await _exchange(server, head.replace(image.id, bad.id), _cut(junk, [700]))
    assert reply is not None and reply.status == 400, reply.body
    reply = await _exchange(server, checksum.replace(image.id, bad.id), [])
    assert reply is not None and reply.status == 400


async def test_past_the_cap_chunked_bodies_go_through_aiohttp(make_server: MakeServer) -> None:
    """More chunked bodies at once than a worker drains (direct.MAX_DRAINING_CHUNKED): the
    first are taken over, the others read by aiohttp; every one arrives whole. (Under a block
    of the size those others get, http.BLOCK_MEDIUM, they end before a place could free.)"""
    server = make_server()
    await server.start()
    count = direct.MAX_DRAINING_CHUNKED + 4
    data = _data(http.BLOCK_MEDIUM - 4000, "cap")
    raw = _frame(data, [40_000])
    locations = [await _start(server, f"chunked/cap{n}") for n in range(count)]
    # Each sends its first piece, then all wait together long enough for every handler to
    # decide, then all send the rest.
    replies = await asyncio.gather(
        *(
            _exchange(server, _patch_head(loc), [raw[:3000], raw[3000:]], pause=3.0)
            for loc in locations
        )
    )
    for reply in replies:
        assert reply is not None and reply.status == 202, reply
        assert reply.headers["range"] == f"0-{len(data) - 1}"
    taken = sum(reply.closes for reply in replies if reply is not None)
    assert taken == direct.MAX_DRAINING_CHUNKED, taken


async def test_a_body_past_the_cap_is_taken_over_once_a_place_frees(
    make_server: MakeServer,
) -> None:
    """The cap's bodies wait for their rest while 3 more arrive: those go through aiohttp a
    block at a time. Once the first ones end, each of the 3 is taken over after its next
    block, in mid-body, and arrives whole."""
    server = make_server()
    await server.start()
    full = direct.MAX_DRAINING_CHUNKED
    data = _data(3 * direct.BLOCK + 12_345, "upgrade")
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    raw = _frame(data, [40_000, 7, 65536])
    first = [await _start(server, f"chunked/first{n}") for n in range(full)]
    later = [await _start(server, f"chunked/later{n}") for n in range(3)]
    release, more = asyncio.Event(), asyncio.Event()
    # The first `full` are taken over after 3000 bytes and wait for `release`.
    holding = [
        asyncio.ensure_future(
            _exchange(server, _patch_head(loc), [raw[:3000], raw[3000:]], gates={1: release})
        )
        for loc in first
    ]
    await asyncio.sleep(2.0)
    # The later ones: a block and a half through aiohttp (no place), then, once the first
    # ones are done, a block more and, a while after it, the rest.
    cuts = [3000, 3000 + direct.BLOCK * 3 // 2, 3000 + direct.BLOCK * 5 // 2]
    waiting = [
        asyncio.ensure_future(
            _exchange(server, _patch_head(loc), _cut(raw, cuts), pause=1.0, gates={2: more})
        )
        for loc in later
    ]
    await asyncio.sleep(3.0)
    release.set()
    done = await asyncio.gather(*holding)
    assert all(reply is not None and reply.status == 202 and reply.closes for reply in done)
    more.set()
    replies = await asyncio.gather(*waiting)
    for reply in [*done, *replies]:
        assert reply is not None and reply.status == 202, reply
        assert reply.headers["range"] == f"0-{len(data) - 1}"
        put = await _simple(server, "PUT", f"{reply.headers['location']}?digest={digest}")
        assert put.status == 201, put.body
    taken = [reply is not None and reply.closes for reply in replies]
    assert all(taken), f"not taken over once a place was free: {taken}"


async def test_bodies_beyond_the_full_sized_ones_get_small_blocks_and_arrive_whole(
    make_server: MakeServer,
) -> None:
    """More bodies taken over at once than get blocks of direct.BLOCK
    (direct.FULL_BLOCK_BODIES): chunked and of known length alike, the later ones are taken
    in direct.SMALL_BLOCK pieces, across many blocks with a ragged end, and every one arrives
    whole with its digest."""
    server = make_server()
    await server.start()
    count = direct.FULL_BLOCK_BODIES + 3  # chunked ones: within MAX_DRAINING_CHUNKED
    assert count <= direct.MAX_DRAINING_CHUNKED
    release = asyncio.Event()
    pushes = []
    for n in range(count):
        data = _data(direct.MIN_LENGTH + 5 * direct.SMALL_BLOCK + 777 * n, f"small{n}")
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if n % 2:
            location = await _start(server, f"chunked/small{n}")
            head = _patch_head(location)
            raw = _frame(data, [40_000, 7, 65536])
        else:  # of known length, committed with its digest in one PUT
            location = await _start(server, f"direct/small{n}")
            head = (
                f"PUT {location}?digest={digest} HTTP/1.1\r\nHost: registry\r\n"
                f"Content-Type: application/octet-stream\r\nContent-Length: {len(data)}"
            )
            raw = data
        pushes.append((n, data, digest, location, head, raw))
    # Each is taken over after its first 3000 bytes; all wait together, then send the rest.
    replies = await asyncio.gather(
        *(
            _exchange(server, head, [raw[:3000], raw[3000:]], gates={1: release})
            for _, _, _, _, head, raw in pushes
        ),
        _release_after(release, 3.0),
    )
    # A 201 is the server's check of the digest against every byte it took.
    for (n, data, digest, _location, _head, _raw), reply in zip(pushes, replies, strict=False):
        assert reply is not None and reply.closes, (n, reply)
        if n % 2:
            assert reply.status == 202, (n, reply.body)
            assert reply.headers["range"] == f"0-{len(data) - 1}"
            put = await _simple(server, "PUT", f"{reply.headers['location']}?digest={digest}")
            assert put.status == 201, (n, put.body)
        else:
            assert reply.status == 201, (n, reply.body)
            assert reply.headers["docker-content-digest"] == digest


async def _release_after(event: asyncio.Event, seconds: float) -> None:
    await asyncio.sleep(seconds)
    event.set()


def _answer(sock: socket.socket) -> Reply:
    """Read one whole answer from a blocking `sock` (its end not awaited)."""
    raw = bytearray()
    while not _complete(raw):
        chunk = sock.recv(65536)
        assert chunk, f"the connection ended before the answer: {bytes(raw)!r}"
        raw += chunk
    return Reply(bytes(raw))


async def _refused_layer(server: MoorageProcess) -> tuple[socket.socket, Reply]:
    """A v1 layer PUT, chunked, that is not a tar: 2 MiB of it sent (taken over by a worker
    thread, refused after its first block), the answer read while the client has more to
    send. Returns the still open socket and the answer."""
    bad = make_image()
    reply = await _simple(server, "PUT", f"/v1/images/{bad.id}/json", bad.json)
    assert reply.status == 200, reply.body
    head = (
        f"PUT /v1/images/{bad.id}/layer HTTP/1.1\r\nHost: registry\r\n"
        "Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    junk = _frame(b"\x1f\x8b" + _data(2 * direct.BLOCK, "junk"), [32768])[: -len(b"0\r\n\r\n")]

    def start() -> tuple[socket.socket, Reply]:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=BOUND)
        sock.sendall(head.encode())
        time.sleep(PAUSE)
        sock.sendall(junk)
        return sock, _answer(sock)

    return await asyncio.to_thread(start)


async def test_an_answer_in_the_middle_of_a_body_ends_in_a_lingering_close(
    make_server: MakeServer,
) -> None:
    """A client that writes its whole body before it reads (as many do) still gets the answer
    the server gave in the middle of it: after the answer the server shuts its side and drops
    what still comes until the client ends, instead of closing with bytes unread, which the
    kernel answers with a reset (and the client's writes then fail)."""
    server = make_server()
    await server.start()
    sock, reply = await _refused_layer(server)
    more = _frame(_data(4 * direct.BLOCK, "more"), [65536])

    def finish() -> bytes:
        with sock:
            time.sleep(0.5)  # the server is done with the request by now
            sock.sendall(more)  # the rest of the body, then the client's end
            sock.shutdown(socket.SHUT_WR)
            rest = bytearray()
            while chunk := sock.recv(65536):
                rest += chunk
            return bytes(rest)

    assert reply.status == 400 and reply.closes, reply.body
    assert await asyncio.to_thread(finish) == b""  # a clean end: no reset, nothing more


@pytest.mark.parametrize("pace", ["trickle", "flood"])
async def test_a_lingering_close_is_bounded(make_server: MakeServer, pace: str) -> None:
    """A client that goes on sending after the answer, slowly or as fast as it can, is cut off
    after `direct.LINGER_SECONDS` or `direct.LINGER_BYTES`, whichever comes first; the server
    goes on answering others."""
    server = make_server()
    await server.start()
    sock, reply = await _refused_layer(server)
    assert reply.status == 400, reply.body
    piece = _frame(_data(64 << 10, "piece"), [65536])[: -len(b"0\r\n\r\n")]
    bound = direct.LINGER_SECONDS + 10.0  # the linger, and the sweep's and the kernel's slack

    def keep_sending() -> tuple[float, int]:
        sent, began = 0, time.monotonic()
        with sock:
            sock.settimeout(1.0)
            while time.monotonic() - began < bound:
                try:
                    sock.sendall(piece)
                except TimeoutError:
                    continue  # the server stopped reading: its end is near
                except OSError:
                    return time.monotonic() - began, sent
                sent += len(piece)
                if pace == "trickle":
                    time.sleep(0.2)
        return time.monotonic() - began, sent

    took, sent = await asyncio.to_thread(keep_sending)
    assert took < bound, f"still open after {took:.1f} s, {sent} bytes"
    if pace == "flood":
        # What was dropped, plus what the kernel's buffers at both ends took in.
        assert sent < direct.LINGER_BYTES + (96 << 20), sent
    assert (await _simple(server, "GET", "/v2/")).status in (200, 401)
