"""Connection limits for one worker: timeouts for idle, slow and stalled connections, and a cap
on how many are open at once. It must not look at what a request asks for: HTTP only.

aiohttp has no timeout for receiving a request head (slowloris) or for a request body that
stops, and no cap on connections, so a few hundred idle sockets used up the worker's open files
and every other client hung. Each accepted connection is wrapped in a `Connection` protocol
that notes when bytes arrive and hands everything on to aiohttp's own handler unchanged; a
middleware marks when a request starts and when it is over (its task is done, response sent).
A sweep a few times per shortest timeout closes the connections past their deadline:

- head: a new connection's first request head, and any later head once its first byte came,
  must be complete within `headertimeout` seconds;
- idle: after a response, the next request must begin within `idletimeout` seconds;
- body: while a request's body is incomplete and reading is not paused by back-pressure, some
  bytes must arrive every `bodytimeout` seconds. Time spent paused (the server is slower than
  the client) is not counted: this bounds a stall, not a slow transfer.

At the cap a new connection sheds the oldest connection that has no request in progress (idle
ones first, then ones still sending a head); when every one is busy the newcomer gets a 503 and
is closed. The cap is kept below the open-file limit (see `connection_cap`), so descriptors do
not run out and accepting never stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from aiohttp import StreamReader, web
from aiohttp.typedefs import Handler

from moorage import chunked

log = logging.getLogger("moorage.connections")

# Descriptors kept free for everything but sockets: the metadata database, its journal, the
# listening socket, log files. Each connection may hold one more (a blob file it streams).
RESERVED_FDS = 64
# Sockets a worker may keep past their connection's end, in a lingering close after a body
# taken from the socket (moorage.api.direct): kept out of the connections' share too.
LINGERING_FDS = 32
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\n"
    b"Connection: close\r\n\r\n"
)


def _bound_unacknowledged(transport: asyncio.BaseTransport, seconds: float) -> None:
    """Have the kernel drop the connection when what we send stays unacknowledged, or the
    client's receive window stays shut (it stopped reading), for `seconds` (Linux's
    TCP_USER_TIMEOUT, which also bounds zero-window probing). A response, a blob sent with
    sendfile included, then cannot be held for ever by a client that stops reading: the
    handler's write fails and the request ends."""
    sock = transport.get_extra_info("socket")
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if sock is None or option is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, option, int(seconds * 1000))


# How much one read from a connection's socket may take. asyncio's selector transport reads up
# to 256 KiB at a time (`max_size`), and aiohttp's parser holds what was read until the body's
# reader takes it: hundreds of uploads in a burst each held a quarter of a MiB before their
# reading paused. Connections start with smaller reads; a body not of a known small length
# gets the default back while it is read (moorage.api.http.Arriving).
RECEIVE_SMALL = 32 << 10
RECEIVE_LARGE = 256 << 10


def set_receive_size(transport: asyncio.BaseTransport | None, size: int) -> None:
    """Have the transport read at most `size` bytes at a time, where it can (asyncio's socket
    transports read `max_size` bytes at a time; TLS ones have their own buffering)."""
    if transport is not None and isinstance(getattr(transport, "max_size", None), int):
        transport.max_size = size  # type: ignore[attr-defined]


def connection_cap(configured: int, open_files: int) -> int:
    """Connections one worker may hold: the configured number, lowered so that every
    connection can have a second descriptor (a blob file) and some are left over, besides
    the sockets in a lingering close."""
    return max(1, min(configured, (open_files - RESERVED_FDS - LINGERING_FDS) // 2))


@dataclass(frozen=True)
class Limits:
    idle: float
    head: float
    body: float
    connections: int
    send: float = 60.0

    @property
    def tick(self) -> float:
        """How often the sweep looks: a deadline is overrun by at most a quarter of it."""
        return max(0.05, min(1.0, min(self.idle, self.head, self.body) / 4))


class Connection(asyncio.Protocol):
    """One accepted connection: aiohttp's handler plus the times the sweep needs."""

    def __init__(self, guard: Guard, inner: asyncio.Protocol) -> None:
        self.guard = guard
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        now = guard.now()
        self.busy = False  # a request is being handled (until its response is sent)
        self.idle_since: float | None = None  # None: waiting for a head (see head_since)
        self.head_since: float | None = now
        self.last_progress = now
        self.body: StreamReader | None = None
        # Set while a worker thread takes the body from the socket (moorage.api.direct), when
        # the transport does not read: whether that thread is waiting for the client's bytes.
        self.body_waiting: bool | None = None
        # A chunked request body's framing, followed as its bytes pass (moorage.chunked), and
        # the request line of the head it began after: a worker thread can then take the
        # rest of the body from the socket at any moment (moorage.api.direct).
        self.awaiting_head = True  # the next bytes should begin a request head
        self.request_line: bytes | None = None
        self.framing: chunked.Framing | None = None
        self.refused = False
        self.aborted = False  # closed by the guard (stalled, past the cap): no lingering close

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        _bound_unacknowledged(transport, self.guard.limits.send)
        set_receive_size(transport, RECEIVE_SMALL)
        if not self.guard.admit(self):
            self.refused = True
            self.transport.write(REFUSAL)
            self.transport.close()
            return
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        now = self.guard.now()
        self.last_progress = now
        if not self.busy and self.head_since is None:
            self.head_since = now
            self.idle_since = None
        if self.awaiting_head:
            self.awaiting_head = False
            found = chunked.follow(data)
            self.request_line, self.framing = found if found is not None else (None, None)
        elif self.framing is not None:
            try:
                self.framing.feed(data)
            except chunked.FramingError:  # aiohttp's parser refuses the request too
                self.framing = None
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return None if self.refused else self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.refused:
            return
        self.guard.lost(self)
        self.inner.connection_lost(exc)

    def request_started(self, body: StreamReader) -> None:
        self.busy = True
        self.head_since = self.idle_since = None
        self.body = body
        self.last_progress = self.guard.now()

    def body_progress(self) -> None:
        """Bytes of a request body arrived past `data_received` (moorage.api.direct; maybe on
        a worker thread)."""
        self.last_progress = self.guard.now()

    def request_finished(self, _task: object = None) -> None:
        self.busy = False
        self.body = None
        self.body_waiting = None
        self.awaiting_head = True
        self.request_line = self.framing = None
        self.idle_since = self.guard.now()

    def overdue(self, now: float, limits: Limits) -> str | None:
        """Why this connection must be closed now, or None."""
        if self.head_since is not None and now - self.head_since > limits.head:
            return "request head too slow"
        if self.idle_since is not None and now - self.idle_since > limits.idle:
            return "idle"
        if self.busy and self.body is not None and not self.body.is_eof():
            reading = self.body_waiting
            if reading is None:
                reading = self.transport is not None and self.transport.is_reading()
            if not reading:
                self.last_progress = now  # paused by back-pressure: the client is not late
            elif now - self.last_progress > limits.body:
                return "request body stalled"
        return None

    def abort(self) -> None:
        self.aborted = True
        if self.transport is not None:
            self.transport.abort()


class Guard:
    """The connections of one worker, their deadlines and their cap."""

    def __init__(self, limits: Limits, now: Callable[[], float]) -> None:
        self.limits = limits
        self.now = now
        self.open: dict[asyncio.Protocol, Connection] = {}  # aiohttp's handler -> ours

    def factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], Connection]:
        return lambda: Connection(self, inner())

    def admit(self, conn: Connection) -> bool:
        if len(self.open) >= self.limits.connections:
            victim = self._oldest_not_busy()
            if victim is None:
                log.warning("connection limit reached, every connection busy: refused one")
                return False
            log.warning("connection limit reached: closed the longest waiting connection")
            self.open.pop(victim.inner, None)
            victim.abort()
        self.open[conn.inner] = conn
        return True

    def _oldest_not_busy(self) -> Connection | None:
        def waited(conn: Connection) -> tuple[int, float]:
            if conn.idle_since is not None:
                return (0, conn.idle_since)
            return (1, conn.head_since if conn.head_since is not None else 0.0)

        candidates = [c for c in self.open.values() if not c.busy]
        return min(candidates, key=waited) if candidates else None

    def lost(self, conn: Connection) -> None:
        if self.open.get(conn.inner) is conn:
            del self.open[conn.inner]

    def sweep(self) -> None:
        now = self.now()
        for conn in list(self.open.values()):
            reason = conn.overdue(now, self.limits)
            if reason is None:
                continue
            if reason == "request body stalled":
                log.info("closed connection: request body stalled")
            else:
                log.debug("closed connection: %s", reason)
            self.open.pop(conn.inner, None)
            conn.abort()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.limits.tick)
            self.sweep()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        conn = self.open.get(request.protocol)
        task = asyncio.current_task()
        if conn is not None and task is not None:
            # The task also sends the response (aiohttp's finish_response), so the connection
            # stays busy until the last byte is handed to the transport.
            conn.request_started(request.content)
            task.add_done_callback(conn.request_finished)
        return await handler(request)


def install(app: web.Application, guard: Guard) -> None:
    """Put the guard's middleware first (before the app is frozen by its runner's setup), so
    a request is marked busy before anything else runs."""
    app.middlewares.insert(0, guard.middleware)
