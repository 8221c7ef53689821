"""A large request body taken straight from the socket into a few reused buffers.

Through aiohttp a body arrives in pieces of at most 256 KiB (asyncio's read size), each a new
bytes object that passes through the HTTP parser, aiohttp's StreamReader and a loop callback,
and is then joined into blocks for hashing and writing. On a 1 GiB push with the data on tmpfs
that path cost about a CPU-second per GiB beyond the hash itself (docs/performance.md, issue
14): allocation, page faults, copies, a callback per piece. For a large body of known length on
a plain TCP connection, the connection's protocol is swapped for a `BufferedProtocol` for the
rest of the body: the kernel copies the bytes straight into one of `POOL` buffers of `BLOCK`
bytes (recv_into), and the handler gets each buffer, full, as a memoryview. Reading pauses when
no buffer is free (back-pressure, as aiohttp's own), and resumes when the consumer is done with
one.

aiohttp's parser never sees those bytes, so it cannot go on parsing the connection: the
response says `Connection: close` (`closing_middleware`) and the connection ends after it. A
client sending a body this large opens a new connection for its next request at no noticeable
cost. When the response goes out before the client has sent all it meant to (an error in the
middle of a body, bytes past its end), the end is a lingering close (`_linger`): the server
shuts its side, then reads and drops what still comes for a bounded time, so that the client
reads the response rather than a reset.

Bodies that are small, content-encoded or on TLS take the ordinary path; so do chunked
ones, except that `ChunkedBody.drain` may take the rest of one over where the connection guard
followed its framing (see `ChunkedBody`, and docs/design/connections.md).

A block is valid until the consumer asks for the block after the next one: the consumer may
hold one block (hashing and writing it on threads) while it waits for the next, as
`moorage.content.streams.pipelined` does, but must not keep a reference beyond that.

A consumer that can do all its work on one thread (hash, then write to a local file) takes the
body with `DirectBody.drain` instead: one worker thread receives the rest of the body from a
duplicate of the socket (blocking `recv_into` into two reused blocks in turn) and hands each
block to the consumer on that same thread; a block is not written again until the call after
its own returns (a consumer that keeps no block past its call, `keep=False`, as an upload's
hash-and-write, gets one block, reused). The event loop is not involved per block: the hand-offs
between the loop and the hashing and writing threads, two per block, cost about 0.35 CPU
seconds per GiB, a third of the whole (docs/performance.md, issue 14). The loop only watches
the connection: when the guard closes a stalled one, or the client goes, the thread's socket is
shut down and the body fails as it would on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from aiohttp.typedefs import Handler

from moorage import chunked
from moorage.connections import LINGERING_FDS, Connection
from moorage.content import streams
from moorage.errors import BodyMalformed

BLOCK = 1 << 20  # as streams.BLOCK_SIZE: a block hashed and written while still in L2
POOL = 3
MIN_LENGTH = 8 << 20  # bodies from this size on are taken directly
_SCRATCH = 64 << 10
DIRECT = web.RequestKey("moorage.direct_body", bool)

# A lingering close (`_linger`): how long and how much the server reads and drops after the
# response, and how many connections one worker lets linger at once (past that, as before:
# closed at once; their descriptors are kept out of the connection cap's share).
LINGER_SECONDS = 5.0
LINGER_BYTES = 64 << 20
MAX_LINGERING = LINGERING_FDS
_lingering: set[asyncio.Task[None]] = set()


class BodyCut(ConnectionResetError):
    """The connection ended before the whole body arrived."""


class _Sink(asyncio.BufferedProtocol):
    """The connection's protocol while the body is taken: fills buffers, hands them over."""

    def __init__(
        self,
        owner: asyncio.BaseProtocol,
        transport: asyncio.Transport,
        remaining: int,
        progress: Callable[[], None] | None,
    ) -> None:
        self.owner = owner  # the protocol the transport had: still told of writes and loss
        self.transport = transport
        self.remaining = remaining
        self.progress = progress
        self.buffers: list[bytearray] = []
        self.free: deque[int] = deque()
        self.ready: deque[tuple[int, int]] = deque()  # (buffer, bytes in it), oldest first
        self.filling: int | None = None
        self.fill = 0
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.scratch: bytearray | None = None

    # -- the transport's side ---------------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.remaining <= 0:  # past the body (reading is paused then: only a safeguard)
            self.scratch = self.scratch or bytearray(_SCRATCH)
            return memoryview(self.scratch)
        if self.filling is None:
            if self.free:
                self.filling = self.free.popleft()
            else:  # fewer than POOL made so far; reading pauses before all are in use
                self.buffers.append(bytearray(min(BLOCK, self.remaining)))
                self.filling = len(self.buffers) - 1
            self.fill = 0
        buf = self.buffers[self.filling]
        end = min(len(buf), self.fill + self.remaining)
        return memoryview(buf)[self.fill : end]

    def buffer_updated(self, nbytes: int) -> None:
        if self.remaining <= 0 or self.filling is None:
            return
        self.fill += nbytes
        self.remaining -= nbytes
        if self.progress is not None:
            self.progress()
        if self.fill == len(self.buffers[self.filling]) or self.remaining == 0:
            self.ready.append((self.filling, self.fill))
            self.filling = None
            self._wake()
            if self.remaining == 0 or (not self.free and len(self.buffers) == POOL):
                self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        if self.remaining <= 0:
            return True  # a half-close after the whole body: the response still goes out
        self._fail(BodyCut("the client ended the connection before the body"))
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(BodyCut("the connection was lost before the body ended"))
        if _closed_by_us(exc, self.owner):
            _linger(self.transport, incomplete=self.remaining > 0)
        self.owner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.owner.pause_writing()

    def resume_writing(self) -> None:
        self.owner.resume_writing()

    def _fail(self, exc: BaseException) -> None:
        if self.remaining > 0 and self.error is None:
            self.error = exc
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    # -- the handler's side -----------------------------------------------------------

    def _release(self, index: int) -> None:
        self.free.append(index)
        if self.remaining > 0 and self.error is None and not self.transport.is_closing():
            self.transport.resume_reading()

    async def blocks(self) -> AsyncIterator[memoryview]:
        held: deque[int] = deque()  # buffers handed out, the consumer may still use the last
        while True:
            if held:
                # Asking for the next block: the consumer is done with all but the last one.
                while len(held) > 1:
                    self._release(held.popleft())
            while not self.ready:
                if self.error is not None:
                    raise self.error
                if self.remaining <= 0 and self.filling is None:
                    return
                self.waiter = asyncio.get_running_loop().create_future()
                try:
                    await self.waiter
                finally:
                    self.waiter = None
            index, size = self.ready.popleft()
            held.append(index)
            yield memoryview(self.buffers[index])[:size]


class _Taker(asyncio.Protocol):
    """The connection's protocol while a worker thread takes the body from `sock`, a duplicate
    of the connection's socket: the transport does not read (paused), it only tells of the
    connection's end, which shuts `sock` down so that the thread's wait ends at once."""

    def __init__(
        self,
        owner: asyncio.BaseProtocol,
        sock: socket.socket,
        remaining: int,
        framing: chunked.Framing | None = None,
    ) -> None:
        self.owner = owner  # the protocol the transport had: still told of writes and loss
        self.sock = sock
        self.remaining = remaining  # bytes of a body of known length; unused when chunked
        self.framing = framing  # where a chunked body is in its framing
        self.received = 0
        self.conn = owner if isinstance(owner, Connection) else None
        self.lock = threading.Lock()  # shutdown (loop) never meets close (thread) on one fd
        self.stopped = False
        self.closed = False
        self.finished = False  # the thread is done with the socket
        self.transport: asyncio.Transport | None = None  # set when installed
        self.block = BLOCK  # bytes per block and per raw read (set when installed)
        self.turns = 2  # blocks used in turn: 1 when the consumer keeps none past its call

    @staticmethod
    def factory(
        remaining: int, framing: chunked.Framing | None = None
    ) -> Callable[[asyncio.BaseProtocol, socket.socket], _Taker]:
        return lambda owner, sock: _Taker(owner, sock, remaining, framing)

    def data_received(self, data: bytes) -> None:
        if not self.finished:  # reading is paused: bytes here would be missing from the body
            self.stop()
        # Past the body (a client that sends more than it announced): dropped.

    def eof_received(self) -> bool | None:
        if self.finished:
            return True  # a half-close after the body: the response still goes out
        self.stop()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.stop()
        if self.finished and self.transport is not None and _closed_by_us(exc, self.owner):
            framing = self.framing
            incomplete = self.remaining > 0 if framing is None else not framing.done
            _linger(self.transport, incomplete)
        self.owner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.owner.pause_writing()

    def resume_writing(self) -> None:
        self.owner.resume_writing()

    def stop(self) -> None:
        """End the body where it is (any thread): the thread's `recv_into` returns at once."""
        with self.lock:
            self.stopped = True
            if not self.closed:
                with contextlib.suppress(OSError):
                    self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.sock.close()  # the duplicate only: the transport still holds the connection

    def run(
        self,
        prefix: bytes,
        consume: Callable[[memoryview], None],
        loop: asyncio.AbstractEventLoop,
        done: asyncio.Future[int],
    ) -> None:
        """The worker thread: the whole body through `consume`, then `done` settled."""
        error: BaseException | None = None
        try:
            if prefix:
                consume(memoryview(prefix))
            if self.framing is not None:
                self._take_chunked(consume, self.framing)
            else:
                self._take(consume)
        except BaseException as exc:  # handed to the loop, raised there
            error = exc
        finally:
            self.close()
            self.finished = True
            if self.conn is not None:
                self.conn.body_waiting = False
        with contextlib.suppress(RuntimeError):  # a closed loop: no one is waiting any more
            loop.call_soon_threadsafe(_settle, done, len(prefix) + self.received, error)

    def _take(self, consume: Callable[[memoryview], None]) -> None:
        """The rest of a body of known length, received straight into two blocks in turn."""
        blocks = _Blocks(min(self.block, self.remaining), self.turns)
        view = blocks.next()
        fill = 0
        while self.remaining > 0:
            n = self._recv(view[fill : min(len(view), fill + self.remaining)])
            fill += n
            self.remaining -= n
            self.received += n
            if fill == len(view) or self.remaining == 0:
                self._consume(consume, view[:fill])
                if self.remaining > 0:
                    view = blocks.next()
                fill = 0

    def _consume(self, consume: Callable[[memoryview], None], block: memoryview) -> None:
        if self.conn is not None:
            # `consume`'s time is the server's: the guard does not time it as a stall.
            self.conn.body_waiting = False
        consume(block)

    def _recv(self, view: memoryview) -> int:
        """One `recv_into` of the body's next bytes; raises `BodyCut` when it ended early or
        was stopped. The guard times the wait as the client's (see `_take`)."""
        conn = self.conn
        while True:
            if self.stopped:
                raise BodyCut("the connection ended before the body")
            if conn is not None and not conn.body_waiting:
                conn.body_progress()
                conn.body_waiting = True
            try:
                n = self.sock.recv_into(view)
            except TimeoutError:
                continue  # only to look at `stopped` again; the guard decides what is a stall
            except OSError as exc:
                raise BodyCut("the connection was lost before the body ended") from exc
            if n == 0:
                raise BodyCut("the client ended the connection before the body")
            if conn is not None:
                conn.body_progress()
            return n

    def _take_chunked(
        self, consume: Callable[[memoryview], None], framing: chunked.Framing
    ) -> None:
        """The rest of a chunked body: its framing read from reads of `block` bytes (`_RAW`
        for a full-sized taker), from where the connection guard left it, and its data
        gathered into blocks of `block` bytes.
        Bytes past the body's end (a pipelined request) are dropped: the connection closes
        after the response."""
        size = self.block
        raw = memoryview(bytearray(_RAW if size == BLOCK else size))
        blocks = _Blocks(size, self.turns)
        block = blocks.next()
        fill = 0

        def flush(last: bool = False) -> None:
            nonlocal fill, block
            self._consume(consume, block[:fill])
            if not last:
                block = blocks.next()
            fill = 0

        def gather(piece: memoryview) -> None:
            nonlocal fill
            while piece:
                take = min(len(piece), size - fill)
                block[fill : fill + take] = piece[:take]
                fill += take
                piece = piece[take:]
                if fill == size:
                    flush()

        while not framing.done:
            n = self._recv(raw)
            before = framing.decoded
            try:
                framing.feed(raw[:n], gather)
            except chunked.FramingError as exc:
                raise BodyMalformed(str(exc)) from None
            finally:
                self.received += framing.decoded - before
        if fill:
            flush(last=True)


class _Blocks:
    """`turns` buffers of `size` bytes (two, or one), handed out in turn (the second made when
    first needed): with two, a block handed to `consume` stays untouched until the call after
    it returns; with one, only until it returns."""

    def __init__(self, size: int, turns: int = 2) -> None:
        self.size = size
        self.turns = turns
        self.made: list[memoryview] = []
        self.turn = 0

    def next(self) -> memoryview:
        if len(self.made) < self.turns:
            self.made.append(memoryview(bytearray(self.size)))
        view = self.made[self.turn]
        self.turn = (self.turn + 1) % self.turns
        return view


def _closed_by_us(exc: Exception | None, owner: asyncio.BaseProtocol) -> bool:
    """Whether a connection's end is our ordinary close after its response (not a failure,
    not the connection guard's abort of a stalled or shed connection)."""
    return exc is None and not (isinstance(owner, Connection) and owner.aborted)


def _linger(transport: asyncio.Transport, incomplete: bool) -> None:
    """Called as `transport` is closed after the response to a request whose body was taken
    directly, before its socket is: when the client may still be sending (the body was not
    all received, or bytes wait unread), keep the connection open on a duplicate of the socket
    and end it with a lingering close (`_discard`). Closing a socket with unread bytes makes
    the kernel answer with a reset at once, and a client still writing its body then gets
    the reset instead of the response (an error in the middle of a body: 400, 507)."""
    if len(_lingering) >= MAX_LINGERING:
        return
    raw = transport.get_extra_info("socket")
    if raw is None:
        return
    try:
        sock = raw.dup()
    except OSError:
        return
    if not incomplete and not _unread(sock):
        sock.close()  # nothing more coming: the ordinary close is a clean one
        return
    task = asyncio.get_running_loop().create_task(_discard(sock))
    _lingering.add(task)
    task.add_done_callback(_lingering.discard)


def _unread(sock: socket.socket) -> bool:
    """Whether bytes from the client wait unread on `sock` (not its end)."""
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:
        return False


async def _discard(sock: socket.socket) -> None:
    """The lingering close: shut our side (the client sees the response end), then read and
    drop what the client still sends until it ends its side, for at most `LINGER_SECONDS`
    and `LINGER_BYTES`; then close."""
    loop = asyncio.get_running_loop()
    scratch = bytearray(_SCRATCH)
    dropped = 0
    try:
        sock.setblocking(False)
        sock.shutdown(socket.SHUT_WR)
        async with asyncio.timeout(LINGER_SECONDS):
            while dropped < LINGER_BYTES:
                n = await loop.sock_recv_into(sock, scratch)
                if n == 0:
                    break
                dropped += n
    except (OSError, TimeoutError):
        pass
    finally:
        sock.close()


def _settle(done: asyncio.Future[int], received: int, error: BaseException | None) -> None:
    if done.done():
        return
    if error is not None:
        done.set_exception(error)
    else:
        done.set_result(received)


_WAKE = 1.0  # seconds: how often a thread waiting for bytes looks whether it was stopped
# One read of a chunked body's raw bytes. 1 MiB rather than asyncio's 256 KiB: a streamed 1 GiB
# push took 0.08 CPU s less (sys time, fewer reads), docs/performance.md.
_RAW = 1 << 20


class DirectBody:
    """A large body of known length taken from the socket: iterated on the loop in reused
    blocks (see the module doc), or `drain`ed whole on one worker thread."""

    def __init__(self, request: web.Request, transport: asyncio.Transport, length: int) -> None:
        global _bodies
        self.request = request
        self.transport = transport
        self.length = length
        self._blocks: AsyncIterator[bytes] | None = None
        self._drained = False
        # A place among the worker's MAX_BODIES, given back when the body has been read or
        # failed, or else when it is dropped unread.
        _bodies += 1
        self._place = weakref.finalize(self, _body_dropped)

    def __aiter__(self) -> DirectBody:
        return self

    async def __anext__(self) -> bytes:
        if self._blocks is None:
            if self._drained:
                raise RuntimeError("the body was drained")
            self._blocks = body(self.request, self.transport, self.length)
        try:
            return await anext(self._blocks)
        except BaseException:  # its end, or its failure: the body holds nothing more
            self._place()
            raise

    async def drain(self, consume: Callable[[memoryview], None], keep: bool = True) -> int:
        """Call `consume` with each block of the whole body, in order, all on one worker thread
        (a block stays valid until the next call returns: work on it may go on beside the
        receiving of the next; with `keep` False only until its own call returns, and the
        body holds one block instead of two); returns the body's size. An error of
        `consume` stops the body and is raised here; so is `BodyCut`. If this is cancelled,
        the thread is stopped and waited for: `consume` is never called after this returns."""
        if self._blocks is not None or self._drained:
            raise RuntimeError("the body is being read already")
        self._drained = True
        request, transport = self.request, self.transport
        payload = request.content
        try:
            prefix = payload.read_nowait()
            if len(prefix) >= self.length or payload.is_eof():
                if prefix:  # aiohttp had all of it: the connection stays usable
                    await asyncio.to_thread(consume, memoryview(prefix))
                return len(prefix)
            # As in `body`, no await from reading what aiohttp holds to taking the socket over.
            return await _drain_rest(
                request,
                transport,
                prefix,
                consume,
                _Taker.factory(self.length - len(prefix)),
                keep,
            )
        finally:
            self._place()


class ChunkedBody:
    """A request body in chunked transfer-encoding: iterated through aiohttp (`arriving`, the
    ordinary path), or `drain`ed whole on one worker thread, which takes the rest from the
    socket where the connection guard's `Framing` says the body is. Nothing is taken over
    until `drain` is called, and only when that framing provably matches what aiohttp parsed
    (`_position`); otherwise `drain` reads through aiohttp too."""

    def __init__(self, request: web.Request, arriving: AsyncIterator[bytes]) -> None:
        self.request = request
        self.arriving = arriving
        self.block_size: int = getattr(arriving, "block_size", BLOCK)
        self._used = False

    def __aiter__(self) -> ChunkedBody:
        return self

    async def __anext__(self) -> bytes:
        self._used = True
        return await anext(self.arriving)

    def paced(self) -> streams.Paced | None:
        """The body's pieces within the worker's shares when its budget gave it those
        (`http.Arriving.paced`), for a consumer that does not drain it (an upload to object
        storage); None for a large one, and once it is being read."""
        if self._used:
            return None
        pieces = streams.paced(self.arriving)
        self._used = pieces is not None
        return pieces

    async def drain(self, consume: Callable[[memoryview], None], keep: bool = True) -> int:
        """As `DirectBody.drain`. While a worker drains `MAX_DRAINING_CHUNKED` bodies already,
        this one goes through aiohttp, each block (or, paced, each piece) handed to a thread,
        and is taken over from the socket after any of them once a place is free."""
        if self._used:
            raise RuntimeError("the body is being read already")
        self._used = True
        global _draining
        request = self.request
        received = 0  # what `consume` had, all of the body up to here
        # Beyond the worker's first large bodies (`http.Arriving`), pieces taken within its
        # shares: a body waiting for one leaves its bytes in aiohttp's buffer and the kernel.
        # The large ones in blocks, each yielded with all that was gathered for it: between
        # blocks, nothing of the body is held but in aiohttp's buffer.
        paced = streams.paced(self.arriving)
        source = paced if paced is not None else streams.blocks(self.arriving, self.block_size)
        async with contextlib.aclosing(source) as pieces:
            while True:
                transport = request.transport
                framing = _position(request) if _draining < MAX_DRAINING_CHUNKED else None
                if framing is not None and isinstance(transport, asyncio.Transport):
                    if paced is not None:
                        paced.let_go()  # the thread reads from the socket, not the shares
                    # What aiohttp holds: the body from `received` on, unless something else
                    # read from it (the count is then off, and it goes on through aiohttp).
                    held = request.content.read_nowait()
                    if received + len(held) == framing.decoded:
                        _draining += 1
                        try:
                            return received + await _drain_rest(
                                request,
                                transport,
                                held,
                                consume,
                                _Taker.factory(0, framing),
                                keep,
                            )
                        finally:
                            _draining -= 1
                    if held:
                        await asyncio.to_thread(consume, memoryview(held))
                        received += len(held)
                    del held  # consumed: not held while the next block is waited for
                piece = await anext(pieces, None)
                if piece is None:
                    return received
                await asyncio.to_thread(consume, memoryview(piece))
                received += len(piece)
                del piece  # as `held`


# Chunked bodies drained at once in one worker; more go through aiohttp (each drained one holds
# a thread, two blocks and a read buffer, about 3 MiB: a burst of hundreds must not).
MAX_DRAINING_CHUNKED = 8
_draining = 0

# Bodies taken over by a thread (both kinds) in one worker now, and how many of them get blocks
# (and, chunked, raw reads) of BLOCK bytes; the others get SMALL_BLOCK ones: 0.5-0.75 MiB a body
# instead of 2-3. One large push, or a few, keeps the size its CPU figure was measured at; under
# a hundred streamed pushes at once the per-block work is a small part of each block's hashing
# and writing, and a worker's blocks were 24 MiB of its peak (docs/performance.md, "The mixed
# load's memory").
FULL_BLOCK_BODIES = 4
SMALL_BLOCK = 256 << 10
_taken = 0


def _position(request: web.Request) -> chunked.Framing | None:
    """The framing of `request`'s chunked body where aiohttp's parser is now, when the
    connection guard followed it from this very request's head (its request line) to exactly
    as many body bytes as aiohttp has received, and the body is not over; else None."""
    transport = request.transport
    if transport is None:
        return None
    conn = transport.get_protocol()
    if not isinstance(conn, Connection) or conn.framing is None or conn.request_line is None:
        return None
    framing, payload = conn.framing, request.content
    if framing.done or payload.is_eof() or payload.exception() is not None:
        return None
    target = request.raw_path.encode("utf-8", "surrogateescape")
    if conn.request_line != request.method.encode() + b" " + target + b" HTTP/1.1":
        return None
    if framing.decoded != payload.total_bytes:
        return None
    return framing


def chunked_eligible(request: web.Request) -> bool:
    """Whether `request`'s body is chunked (and only that) on a plain TCP connection: a
    `ChunkedBody` may then take it over."""
    headers = request.headers
    if headers.get("Transfer-Encoding", "").strip().lower() != "chunked":
        return False
    if "Content-Length" in headers:
        return False
    if headers.get("Content-Encoding", "identity").strip().lower() != "identity":
        return False
    transport = request.transport
    if not isinstance(transport, asyncio.Transport) or transport.is_closing():
        return False
    if transport.get_extra_info("sslcontext") is not None:
        return False
    return transport.get_extra_info("socket") is not None


async def _drain_rest(
    request: web.Request,
    transport: asyncio.Transport,
    prefix: bytes,
    consume: Callable[[memoryview], None],
    make_taker: Callable[[asyncio.BaseProtocol, socket.socket], _Taker],
    keep: bool,
) -> int:
    """`DirectBody.drain` and `ChunkedBody.drain` from the takeover on: `prefix`, what aiohttp
    held, then the rest from the socket on a worker thread. Called with no await since
    `prefix` was read."""
    global _taken
    payload = request.content
    sock = transport.get_extra_info("socket").dup()
    sock.settimeout(_WAKE)  # keeps the shared descriptor non-blocking, as the loop needs
    taker = make_taker(transport.get_protocol(), sock)
    taker.transport = transport
    request[DIRECT] = True
    request.protocol.close()  # aiohttp ends the connection once the response is sent
    transport.pause_reading()  # the loop no longer reads this socket: the thread does
    transport.set_protocol(taker)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()
    thread = threading.Thread(
        target=taker.run, args=(prefix, consume, loop, done), name="moorage-body", daemon=True
    )
    taker.block = BLOCK if _taken < FULL_BLOCK_BODIES else SMALL_BLOCK
    taker.turns = 2 if keep else 1
    _taken += 1
    try:
        try:
            thread.start()
        except BaseException:
            taker.stop()
            taker.close()
            raise
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            taker.stop()
            while not done.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait([done])
            done.exception()  # retrieved: the cancellation is what goes on
            raise
    finally:
        _taken -= 1
        payload.total_bytes += taker.received  # for the metrics
        payload.feed_eof()  # aiohttp must not wait for the rest after the response
        # feed_eof resumes reading (aiohttp's flow control): the loop need not read what
        # a client sends past its body, and must not take a vanished client's end for
        # anything but the response's failure.
        if not transport.is_closing():
            transport.pause_reading()


# Bodies of known length taken from the socket in one worker at once (`DirectBody`s alive: each
# holds a thread and its blocks, or the loop's buffers, 0.5-3 MiB). Past it, a body goes the
# ordinary path, within the budget of bodies read through aiohttp (http.Arriving): a thousand
# connections each sending a large body, slowly, must not make a thousand threads.
MAX_BODIES = 64
_bodies = 0


def _body_dropped() -> None:
    global _bodies
    _bodies = max(0, _bodies - 1)


def eligible(request: web.Request, length: int | None) -> asyncio.Transport | None:
    """The transport to take `request`'s body from directly, or None for the ordinary path
    (a small body, or the worker taking MAX_BODIES already)."""
    if length is None or length < MIN_LENGTH or _bodies >= MAX_BODIES:
        return None
    headers = request.headers
    if "Transfer-Encoding" in headers:
        return None
    if headers.get("Content-Encoding", "identity").strip().lower() != "identity":
        return None  # aiohttp decompresses such bodies: their length is another one
    transport = plain_socket(request.transport)
    if transport is None:
        return None
    if request.content.is_eof() or request.content.exception() is not None:
        return None
    return transport


def plain_socket(transport: asyncio.BaseTransport | None) -> asyncio.Transport | None:
    """`transport` if it is an open plain TCP one whose socket a thread may use directly (not
    TLS, whose bytes the transport itself must encrypt and decrypt), else None."""
    if not isinstance(transport, asyncio.Transport) or transport.is_closing():
        return None
    if transport.get_extra_info("sslcontext") is not None:
        return None
    if transport.get_extra_info("socket") is None:
        return None
    return transport


async def body(
    request: web.Request, transport: asyncio.Transport, length: int
) -> AsyncIterator[bytes]:
    """The body of `request` (`length` bytes in all): first what aiohttp already holds, then
    blocks taken from the socket. The connection closes after the response."""
    payload = request.content
    prefix = payload.read_nowait()
    received = len(prefix)
    if prefix:
        yield prefix
    if received >= length or payload.is_eof():
        return  # aiohttp had all of it: nothing to take, the connection stays usable
    # No await between reading what aiohttp holds and swapping the protocol: nothing else can
    # reach aiohttp's parser in between.
    owner = transport.get_protocol()
    # The connection guard (moorage.connections) times a stalled body by the bytes it sees.
    progress = owner.body_progress if isinstance(owner, Connection) else None
    sink = _Sink(owner, transport, length - received, progress)
    request[DIRECT] = True
    request.protocol.close()  # aiohttp ends the connection once the response is sent
    transport.set_protocol(sink)
    transport.resume_reading()
    try:
        async for block in sink.blocks():
            received += len(block)
            yield block  # type: ignore[misc]  # a memoryview: bytes-like, see the module doc
    finally:
        payload.total_bytes = received  # what the metrics count as the body's size
        payload.feed_eof()  # aiohttp must not wait for the rest after the response


@web.middleware
async def closing_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A response to a request whose body was taken directly says `Connection: close`; and
    aiohttp is told the body is over even when the handler stopped reading it part way (its
    iterator is closed only when collected), or aiohttp would wait for the rest before closing.
    """
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if request.get(DIRECT):
            exc.force_close()
        raise
    finally:
        if request.get(DIRECT):
            request.content.feed_eof()
    if request.get(DIRECT):
        response.force_close()
    return response
