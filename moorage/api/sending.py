"""A blob file sent to a client on a thread of its own, by `sendfile` or by copying.

On the event loop, a blob is sent with asyncio's `sendfile`: each call hands the socket as much
as its buffer takes, and the loop goes round its other connections between calls. Under many
pulls at once a worker's loop spent most of its time in those calls (docs/performance.md,
"The mixed load's tail"), and everything else the worker does waited behind them: under a
mix of 100 clients the pulls' p99 was 1.4-1.6x Distribution's while the pushes, received on
threads, were well ahead. Sent from a thread of its own, a large body no longer takes the
loop's time, and the kernel shares the cores between the sends, the uploads and the loop.

How the bytes go is `http.sendfile`:

- `on`: `sendfile`, zero-copy, the pages of the page cache handed to the socket;
- `off`: `pread` into a buffer of `BUFFER` bytes and `send`;
- `auto` (the default): `sendfile` to a client on another machine, a copy to one on this
  machine (a reverse proxy in front, as docs/deploy/nginx-site.conf sets up) while the worker
  copies fewer than `COPIES` bodies, `sendfile` beyond. Over loopback `sendfile` saves no copy
  (the receiver copies the bytes out of the same pages either way), and for one body it costs
  more: on the machines of these measurements a copy in 1 MiB pieces went 1.5x faster than
  `sendfile` at two thirds of the sender's CPU ("Pull one large blob: sendfile against a copy
  over loopback"). Many at once, `sendfile` costs the server less: 32 pulls of one blob took
  20-45% less of its CPU at about the same bytes a second (the receiving client took more), and
  a copy holds a buffer each (docs/performance.md, "Copies only for the first sends of a
  worker").

The thread writes to a duplicate of the connection's socket (the shared descriptor stays
non-blocking, as the loop needs), while the transport does not read; nothing else writes to
the connection meanwhile (aiohttp answers one request at a time). A client that stops reading
is dropped by the kernel after `http.sendtimeout` (TCP_USER_TIMEOUT, moorage.connections), and
the thread's `send` fails; a client that goes away fails it at once; either way the transport
is aborted then, as the connection can carry nothing more. A cancelled request (the worker
stopping) sets a flag the thread looks at every `_WAKE` seconds at most. Bodies under
`THREAD_FROM` (one call on the loop) and sends beyond `MAX_THREADS` in one worker stay on the
loop's `sendfile`, so the threads and their buffers stay bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import select
import socket
import threading

from aiohttp import web

from moorage.api import direct

MODE = web.AppKey("moorage.sendfile", str)

THREAD_FROM = 256 << 10  # smaller bodies go out in one sendfile call on the loop
MAX_THREADS = 64  # sends on threads at once, per worker
BUFFER = 256 << 10  # bytes per read and send when copying
COPIES = 4  # bodies copied at once to clients on this machine, per worker, in `auto`
_FLUSH_POLL = 0.005  # seconds between looks at a transport that still holds bytes
_WAKE = 0.5  # seconds: how often a thread waiting for the socket looks whether it was stopped

_threads = 0  # sends on threads now, in this worker (touched on the loop only)
_copying = 0  # of which copied


def eligible(transport: asyncio.BaseTransport | None, count: int) -> asyncio.Transport | None:
    """The transport, if a body of `count` bytes goes out on a thread: a plain TCP socket (not
    TLS, whose bytes the transport must encrypt), a large enough body, a thread to spare."""
    if count < THREAD_FROM or _threads >= MAX_THREADS:
        return None
    return direct.plain_socket(transport)


def copies(mode: str, transport: asyncio.BaseTransport) -> bool:
    """Whether the body is copied (`off`, or `auto` to a client on this machine while fewer
    than `COPIES` are) rather than handed over with `sendfile`."""
    if mode == "off":
        return True
    if mode == "on" or _copying >= COPIES:
        return False
    peer = transport.get_extra_info("peername")
    if not isinstance(peer, tuple) or not peer:
        return True  # a Unix socket: the client is on this machine
    try:
        address = ipaddress.ip_address(str(peer[0]).split("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


async def send(
    transport: asyncio.Transport, fd: int, offset: int, count: int, *, mode: str
) -> None:
    """Send `count` bytes of the file `fd` from `offset` on a thread of its own, copied or not
    as `mode` (`http.sendfile`) says. Raises what the sending raised (OSError: the client went
    away or was dropped); if cancelled, the thread is stopped and waited for first."""
    global _threads, _copying
    # What the transport still holds (the response's head, when the socket was full of the
    # response before it on a kept-alive connection) goes first: the thread writes past it.
    while transport.get_write_buffer_size():
        if transport.is_closing():
            raise ConnectionResetError("the connection closed before the body")
        await asyncio.sleep(_FLUSH_POLL)
    sock = transport.get_extra_info("socket").dup()
    sock.setblocking(False)
    stop = threading.Event()
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if not done.done():
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

    def run() -> None:
        error: BaseException | None = None
        try:
            (_copy if copy else _sendfile)(sock, fd, offset, count, stop)
        except BaseException as exc:  # handed to the loop, raised there
            error = exc
        loop.call_soon_threadsafe(settle, error)

    reading = transport.is_reading()
    transport.pause_reading()
    copy = copies(mode, transport)
    _threads += 1
    _copying += copy
    try:
        threading.Thread(target=run, name="moorage-send", daemon=True).start()
        try:
            await asyncio.shield(done)
        except OSError:
            # Part of the body may have gone out: the connection can carry nothing more. The
            # transport learns it now (the loop does not read or write it meanwhile), so a
            # client that went away is seen as one.
            transport.abort()
            raise
        except asyncio.CancelledError:
            stop.set()
            while not done.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait([done])
            with contextlib.suppress(BaseException):
                done.result()  # retrieved: the cancellation is what goes on
            raise
    finally:
        _threads -= 1
        _copying -= copy
        sock.close()
        if reading and not transport.is_closing():
            transport.resume_reading()


def _writable(sock: socket.socket, stop: threading.Event) -> None:
    """Wait until `sock` takes more bytes, for `_WAKE` seconds at most; raise if stopped."""
    if stop.is_set():
        raise ConnectionAbortedError("the request was cancelled")
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLOUT)
    poller.poll(int(_WAKE * 1000))


def _sendfile(sock: socket.socket, fd: int, offset: int, count: int, stop: threading.Event) -> None:
    at, left = offset, count
    while left:
        try:
            sent = os.sendfile(sock.fileno(), fd, at, left)
        except BlockingIOError:
            _writable(sock, stop)
            continue
        if not sent:
            raise ConnectionResetError("the file is shorter than expected")
        at += sent
        left -= sent
        if stop.is_set():
            raise ConnectionAbortedError("the request was cancelled")


def _copy(sock: socket.socket, fd: int, offset: int, count: int, stop: threading.Event) -> None:
    buffer = memoryview(bytearray(min(BUFFER, count)))
    at, left = offset, count
    while left:
        read = os.preadv(fd, [buffer[: min(left, len(buffer))]], at)
        if not read:
            raise ConnectionResetError("the file is shorter than expected")
        piece = buffer[:read]
        while piece:
            try:
                piece = piece[sock.send(piece) :]
            except BlockingIOError:
                _writable(sock, stop)
        at += read
        left -= read
        if stop.is_set():
            raise ConnectionAbortedError("the request was cancelled")
