"""HTTP helpers shared by the protocols: request bodies, byte ranges, zero-copy file bodies."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import re
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO

from aiohttp import web

from moorage import connections
from moorage.api import direct, sending
from moorage.api.context import request_id
from moorage.content import streams

READ_SIZE = 1 << 20
# Header limits for aiohttp's parser (its defaults: 8190 bytes a field, 128 fields). A field
# may be 64 KiB, so a `Range` of thousands of ranges reaches `byte_range` (and is answered
# with the whole body) instead of a text 400 from the parser; fewer fields keep the most a
# request head can hold at 4 MiB. Beyond these the parser answers 400.
HEADER_LIMITS = {"max_field_size": 64 * 1024, "max_headers": 64}
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def body_chunks(request: web.Request) -> AsyncIterator[bytes]:
    """The request body as it arrives (chunked transfer-encoding included); a large one of
    known length straight from the socket in reused blocks (`moorage.api.direct`: each is
    valid until the one after the next is asked for), which can also be drained whole on one
    worker thread (`DirectBody.drain`). The others through aiohttp's parser, within the
    worker's budget for them (`Arriving`); a chunked one may still be drained whole on one
    worker thread, from where aiohttp is in it (`direct.ChunkedBody`)."""
    length = content_length(request)
    transport = direct.eligible(request, length)
    if transport is not None and length is not None:
        return direct.DirectBody(request, transport, length)
    arriving = Arriving(request)
    if direct.chunked_eligible(request):
        return direct.ChunkedBody(request, arriving)
    return arriving


# Bodies through aiohttp's parser: what a worker holds of them is bounded. Each connection's
# parser buffers up to twice its limit, plus what one read from the socket brought, before it
# stops reading (the rest waits in the kernel, and the client with it); the body's consumer
# groups what arrives into blocks (streams.pipelined). Three sizes of those pieces:
#
# - small, for a body of known length under SMALL_BODY (a chunk of a chunked upload; bodies
#   from direct.MIN_LENGTH on are taken from the socket instead): the application's
#   `read_bufsize`, reads of connections.RECEIVE_SMALL, blocks of BLOCK_SMALL. A burst of
#   hundreds of such uploads then costs about 100 KiB each, not the 3-4 MiB of large pieces
#   (docs/performance.md, "Memory under a burst of uploads");
# - large, for the others (streamed pushes of unknown length, Docker's and v1's), while the
#   worker reads fewer than LARGE_BODIES such: fewer pauses of the socket and fewer hand-offs
#   to the hashing threads, at 3-4 MiB each;
# - medium beyond them: reads of a quarter of the size, and, as the small ones, each piece
#   taken from aiohttp's buffer only with one of the worker's SHARES. A hundred streamed
#   pushes at once then hold SHARES pieces in hand and the rest in aiohttp's buffers and the
#   kernel, not a block being gathered and one being written each (docs/performance.md,
#   "Streamed bodies within the shares").
SMALL_BODY = 4 << 20
LARGE_BODIES = 8
BUFFER_SMALL = 16 << 10
BLOCK_SMALL = 32 << 10
BUFFER_MEDIUM = 64 << 10
BLOCK_MEDIUM = 256 << 10
BUFFER_LARGE = 1 << 20


class _Reading:
    """The worker's count of bodies being read through aiohttp's parser, and of the large
    ones among them."""

    def __init__(self) -> None:
        self.bodies = 0
        self.large = 0

    def done(self, transport: asyncio.BaseTransport | None, large: bool) -> None:
        self.bodies = max(0, self.bodies - 1)
        if large:
            self.large = max(0, self.large - 1)
        connections.set_receive_size(transport, connections.RECEIVE_SMALL)


READING = _Reading()


class Arriving:
    """A request body through aiohttp's parser, in the pieces the socket delivers, with the
    block size its consumer should group them into (`block_size`, see streams.pipelined).

    Its size of pieces is decided when it is made (just before it is read); it stops counting
    among the worker's bodies when it has been read, or dropped unread."""

    def __init__(self, request: web.Request) -> None:
        length = content_length(request)
        large = False
        if length is not None and length < SMALL_BODY:
            self.block_size = BLOCK_SMALL
        else:
            large = READING.large < LARGE_BODIES
            buffer, self.block_size = (
                (BUFFER_LARGE, streams.BLOCK_SIZE) if large else (BUFFER_MEDIUM, BLOCK_MEDIUM)
            )
            READING.large += large
            request.content.set_read_chunk_size(buffer)
            connections.set_receive_size(request.transport, connections.RECEIVE_LARGE)
        READING.bodies += 1
        self._request = request
        # Small and medium bodies are read within the worker's SHARES; large ones (at most
        # LARGE_BODIES) in blocks of their own.
        self._paced = not large
        self._release = weakref.finalize(self, READING.done, request.transport, large)
        self._pieces: AsyncIterator[bytes] | None = None

    def __aiter__(self) -> Arriving:
        return self

    async def __anext__(self) -> bytes:
        if self._pieces is None:
            self._pieces = _pieces(self._request, self._release)
        return await self._pieces.__anext__()

    def paced(self) -> _Paced | None:
        """For a small or a medium body, its pieces within the worker's SHARES (`_Paced`):
        each must be processed before the next is asked for. None for the large ones, and
        once the body is being read the other way."""
        if not self._paced or self._pieces is not None:
            return None
        self._pieces = pieces = _Paced(self._request, self._release)
        return pieces


async def _pieces(request: web.Request, release: Callable[[], object]) -> AsyncIterator[bytes]:
    try:
        async for chunk in request.content.iter_any():
            yield chunk
    finally:
        release()


class _Paced:
    """A body's pieces, each taken from aiohttp's buffer only while holding one of the
    worker's SHARES, which it keeps until the next piece is asked for (so until the piece has
    been hashed and written) and then passes on if another body waits. A body whose buffer is
    empty waits for its client without a share: a client that sends slowly, or stalls, keeps
    no other body from being read. `let_go` gives a share held back at once (a body taken over
    from the socket no longer needs one); asking for the next piece takes one again."""

    def __init__(self, request: web.Request, release: Callable[[], object]) -> None:
        self._content = request.content
        self._release = release
        self._holding = False
        self._over = False

    def __aiter__(self) -> _Paced:
        return self

    async def __anext__(self) -> bytes:
        if self._holding and SHARES.wanted():
            self.let_go()
        try:
            piece = await self._next()
        except BaseException:
            self._end()
            raise
        if not piece:
            self._end()
            raise StopAsyncIteration
        return piece

    async def _next(self) -> bytes:
        content = self._content
        if self._over:
            return b""
        if not self._holding:
            await SHARES.take()
            self._holding = True
        piece = content.read_nowait()
        if piece or content.at_eof():
            return piece
        self.let_go()
        piece = await content.readany()  # what arrives next, held while a share is taken:
        if piece:  # the buffer behind it refills to its limit at most
            await SHARES.take()
            self._holding = True
        return piece

    def let_go(self) -> None:
        if self._holding:
            self._holding = False
            SHARES.give()

    def _end(self) -> None:
        self._over = True
        self.let_go()
        self._release()

    async def aclose(self) -> None:
        self._end()


class Shares:
    """A count of shares handed out in the order they are asked for (an asyncio.Semaphore
    that binds to no event loop: the worker's one loop, or a test's loop after another's)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.held = 0
        self._waiting: deque[asyncio.Future[None]] = deque()

    def wanted(self) -> bool:
        return bool(self._waiting)

    async def take(self) -> None:
        if self.held < self.count and not self._waiting:
            self.held += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            await waiter  # give() hands its share over to this waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give()  # handed over just as this waiter was cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiting.remove(waiter)
            raise

    def give(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.held = max(0, self.held - 1)


# Small and medium bodies (known length under SMALL_BODY, above all the chunks of chunked
# uploads; streamed ones beyond the worker's LARGE_BODIES) whose consumer takes them piece by
# piece (streams.paced, or direct.ChunkedBody until it is taken over from the socket, which
# gives its share back): a piece taken from aiohttp's buffer holds
# one of these shares until it has been hashed and written. Bodies waiting for a share leave
# their bytes in aiohttp's buffer, which stops reading the socket at its limit, and in the
# kernel; so a burst of hundreds of uploads holds SHARES pieces in hand, not two or three
# blocks each (docs/performance.md, "Shares of small bodies"). More shares than the threads
# that hash and write (asyncio's default executor) keep those threads busy.
SHARES_PER_WORKER = 16
SHARES = Shares(SHARES_PER_WORKER)


async def read_limited(request: web.Request, limit: int) -> bytes:
    """The whole body, but never more than `limit` + 1 bytes (the caller checks the size)."""
    data = bytearray()
    while len(data) <= limit:
        chunk = await request.content.read(limit + 1 - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def content_length(request: web.Request) -> int | None:
    value = request.headers.get("Content-Length")
    return int(value) if value is not None and value.isdigit() else None


# nginx's "client closed request": the status a request whose client hung up is logged with
# (the access log shows it; no one receives it).
CLIENT_CLOSED = 499


def client_went_away(request: web.Request, exc: BaseException) -> bool:
    """Whether `exc` is the client hanging up (its connection is gone), not a fault of ours."""
    # ETIMEDOUT: the kernel dropped a client that stopped acknowledging (http.sendtimeout).
    if isinstance(exc, TimeoutError) and exc.errno == errno.ETIMEDOUT:
        return True
    if not isinstance(exc, ConnectionError):
        return False
    transport = request.transport
    return transport is None or transport.is_closing()


def went_away(request: web.Request, log: logging.Logger) -> web.Response:
    """Log a client that hung up mid-request (one info line) and end the request quietly."""
    log.info(
        "client went away method=%s path=%s request_id=%s",
        request.method,
        request.path,
        request_id(request),
        extra={"method": request.method, "path": request.path, "request_id": request_id(request)},
    )
    return web.Response(status=CLIENT_CLOSED)


def log_unexpected(request: web.Request, log: logging.Logger) -> None:
    """The one line (with the traceback) for a request that failed in a way nobody expected,
    naming it so that it can be traced."""
    rid = request_id(request)
    log.exception(
        "unexpected error method=%s path=%s request_id=%s",
        request.method,
        request.path,
        rid,
        extra={"method": request.method, "path": request.path, "request_id": rid},
    )


class Unsatisfiable(Exception):
    pass


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The one range of a `Range: bytes=...` header as (start, end inclusive), or None for the
    whole body (no header, several ranges, or a header we ignore as RFC 9110 allows).
    Raise Unsatisfiable when no byte of the range exists."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if not match:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise Unsatisfiable
        return max(0, size - suffix), size - 1
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise Unsatisfiable
    end = int(last) if last else size - 1
    return start, min(end, size - 1)


def if_range_holds(header: str | None, etag: str | None) -> bool:
    """Whether a `Range` may be honoured under `If-Range` (RFC 9110 §13.1.5): only when there
    is no If-Range, or it is exactly our current strong ETag. A weak tag never matches, and a
    date never does either (no date of ours is a strong validator): the whole body is sent."""
    if header is None:
        return True
    return etag is not None and not etag.startswith("W/") and header.strip() == etag


def etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate.startswith("W/"):
            candidate = candidate[2:]
        if candidate == "*" or candidate.strip('"') == etag:
            return True
    return False


async def send_file(
    request: web.Request,
    response: web.StreamResponse,
    path: Path,
    offset: int,
    count: int,
) -> web.StreamResponse:
    """Send `count` bytes of `path` from `offset`: a large body on a thread of its own
    (`moorage.api.sending`: `sendfile` or a copy, by `http.sendfile`), a small one with the
    loop's `sendfile`."""
    response.content_length = count
    if request.method == "HEAD" or count == 0:
        await response.prepare(request)
        await response.write_eof()
        return response
    file = await asyncio.to_thread(open, path, "rb")
    try:
        await response.prepare(request)
        await _send_from(request, response, file, offset, count)
        await response.write_eof()
        return response
    finally:
        file.close()


async def send_more(
    request: web.Request, response: web.StreamResponse, path: Path, offset: int, count: int
) -> None:
    """Send `count` bytes of `path` from `offset` as the rest of a body already begun, the way
    `send_file` sends a whole one. Only for a response of known length: the bytes go to the
    socket as they are, with no chunked framing."""
    assert response.prepared and response.content_length is not None
    file = await asyncio.to_thread(open, path, "rb")
    try:
        await _send_from(request, response, file, offset, count)
    finally:
        file.close()


async def _send_from(
    request: web.Request, response: web.StreamResponse, file: BinaryIO, offset: int, count: int
) -> None:
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("connection lost")
    await request.writer.drain()
    threaded = sending.eligible(transport, count)
    try:
        if threaded is not None:
            mode = request.config_dict.get(sending.MODE, "auto")
            await sending.send(threaded, file.fileno(), offset, count, mode=mode)
        else:
            await asyncio.get_running_loop().sendfile(transport, file, offset, count)
    except NotImplementedError:
        await asyncio.to_thread(file.seek, offset)
        remaining = count
        while remaining:
            chunk = await asyncio.to_thread(file.read, min(READ_SIZE, remaining))
            if not chunk:
                raise ConnectionResetError("file shorter than expected") from None
            await response.write(chunk)
            remaining -= len(chunk)


async def send_bytes(
    request: web.Request,
    headers: dict[str, str],
    size: int,
    path: Path | None,
    read: Callable[[int, int], AsyncIterator[bytes]],
) -> web.StreamResponse:
    """Answer a GET/HEAD for stored bytes: the whole body (200), one `Range` (206), or 416;
    zero-copy from `path` when the bytes are a local file, else streamed from `read`.

    The `Range` header is read here, never through aiohttp's `request.http_range` (which
    raises on a header of several ranges); `If-Range` is checked against `headers["ETag"]`."""
    wanted = request.headers.get("Range")
    if not if_range_holds(request.headers.get("If-Range"), headers.get("ETag")):
        wanted = None
    try:
        span = byte_range(wanted, size)
    except Unsatisfiable:
        headers["Content-Range"] = f"bytes */{size}"
        return web.Response(status=416, headers=headers)
    status, offset, count = 200, 0, size
    if span is not None:
        status, offset, count = 206, span[0], span[1] - span[0] + 1
        headers["Content-Range"] = f"bytes {span[0]}-{span[1]}/{size}"
    response = web.StreamResponse(status=status, headers=headers)
    if path is not None:
        return await send_file(request, response, path, offset, count)
    response.content_length = count
    await response.prepare(request)
    if request.method != "HEAD":
        async for chunk in read(offset, count):
            await response.write(chunk)
    await response.write_eof()
    return response
