"""Serving: listening sockets, one or several worker processes, graceful shutdown.

The parent binds the listening socket(s), then either serves itself (one worker) or forks
workers, each accepting on its own socket of the same port (SO_REUSEPORT, see `bind`), and of
`metrics.listen` when set. No state
lives only in one worker (upload sessions are in metadata + storage), so any worker can take
any request.

SIGTERM first drains: `/readyz` fails at once while the node goes on serving for
`http.draintimeout` seconds, so a balancer takes it out before it stops. Then it stops
accepting and lets requests in flight finish (up to SHUTDOWN_TIMEOUT seconds). SIGINT (Ctrl-C),
or a second SIGTERM, skips what is left of the drain. The supervisor passes each signal on to
its workers as it came.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import gc
import ipaddress
import logging
import os
import resource
import signal
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from sqlalchemy.engine import make_url

from moorage import __version__, connections, metricsdir, preflight, supervisor
from moorage.api import metrics
from moorage.api.accesslog import AccessLogger
from moorage.api.health import HEALTH
from moorage.api.maintenance import MAINTENANCE
from moorage.app import IN_FLIGHT, InFlight, create_app, warm_up
from moorage.config import ConfigError, Settings, pack, split_listen
from moorage.connections import Guard, Limits, connection_cap
from moorage.content import sha256state
from moorage.metadata import migrations

log = logging.getLogger("moorage.server")

# Builds the settings again the way they were built at start (file, environment, flags).
Reload = Callable[[], Settings]

SHUTDOWN_TIMEOUT = 60.0
BACKLOG = 1024
TRIM_INTERVAL = 10.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h
# A port just given up (a killed server's workers still closing it) is tried for this long
# before it counts as taken.
BIND_GRACE = 1.0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _listener(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(BACKLOG)
    sock.set_inheritable(True)
    return sock


def bind(settings: Settings, count: int = 1) -> list[socket.socket]:
    """`count` listening sockets on the configured address, one per worker (see `bind_to`)."""
    return bind_to(settings.host, settings.port, count)


def bind_to(host: str, port: int, count: int) -> list[socket.socket]:
    """`count` listening sockets on `host`:`port`, one per worker.

    One socket shared by several workers balances badly: the worker that wakes first accepts
    every connection waiting (asyncio takes up to 100 per wake-up), so a burst of keep-alive
    connections (64 from wrk, a CI fleet starting pulls) can end up on one worker while the
    others idle. With SO_REUSEPORT each worker has its own socket on the same port and the
    kernel spreads new connections over them evenly. The parent binds them all before
    forking, so a taken port fails at once, and keeps them open: a restarted worker takes over
    its slot's socket with the connections queued on it."""
    reuse_port = count > 1 and hasattr(socket, "SO_REUSEPORT")
    deadline = time.monotonic() + BIND_GRACE
    while True:
        try:
            first = _listener(host, port, reuse_port=False)
            break
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    if not reuse_port:
        return [first] * count
    # The plain socket just bound proves nobody listens on the port: sockets with SO_REUSEPORT
    # alone would happily share it with another server started there by mistake.
    port = first.getsockname()[1]
    first.close()
    return [_listener(host, port, reuse_port=True) for _ in range(count)]


@dataclass(frozen=True)
class Listeners:
    """What one worker accepts on: its socket of the main port, and of `metrics.listen`."""

    main: socket.socket
    metrics: socket.socket | None = None

    def sockets(self) -> list[socket.socket]:
        return [self.main] if self.metrics is None else [self.main, self.metrics]


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    cert, key = settings.tls.certificate, settings.tls.key
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ValueError("TLS needs both a certificate and a key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def _reload_tls(settings: Settings, context: ssl.SSLContext) -> None:
    """Load the certificate and key again into the live context: new handshakes use the new
    pair, open connections go on. The pair is read once and tried on a scratch context first,
    so a half-replaced pair (a certificate without its key yet) keeps the old one in use."""
    assert settings.tls.certificate is not None and settings.tls.key is not None
    try:
        with tempfile.TemporaryDirectory() as scratch:
            cert = Path(scratch, "cert.pem")
            key = Path(scratch, "key.pem")
            cert.write_bytes(settings.tls.certificate.read_bytes())
            key.write_bytes(settings.tls.key.read_bytes())
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
            context.load_cert_chain(cert, key)
        log.info("reloaded TLS certificate %s", settings.tls.certificate)
    except (OSError, ssl.SSLError) as exc:
        log.error("TLS reload failed, keeping the old certificate: %s", exc)


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _reload(
    settings: Settings, reload: Reload | None, app: web.Application, context: ssl.SSLContext | None
) -> None:
    """SIGHUP: the TLS certificate and key again, and the configuration again, of which
    `maintenance.readonly` takes effect at once. Other changes wait for a restart, and are
    named; a configuration that no longer loads is logged and the running one kept."""
    if context is not None:
        _reload_tls(settings, context)
    _reload_config(settings, reload, app)


def _reload_config(settings: Settings, reload: Reload | None, app: web.Application) -> None:
    if reload is None:
        return
    try:
        fresh = reload()
    except ConfigError as exc:
        log.error("config reload failed, keeping the running settings: %s", exc)
        return
    app[MAINTENANCE].update(fresh)
    before = _flat(settings.model_dump(mode="json", exclude={"maintenance"}))
    after = _flat(fresh.model_dump(mode="json", exclude={"maintenance"}))
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if changed:
        log.warning("config reloaded; these changes need a restart: %s", ", ".join(changed))


async def _give_back_memory(in_flight: InFlight) -> None:
    """Every few seconds after requests were served, hand freed heap memory back to the system.

    Request bodies pass through in blocks of about 1 MiB, which glibc serves from its heap once
    its mmap threshold has adapted; freed, they stay with the process. In the benchmark, after
    200 concurrent chunked uploads the two workers kept ~190 MiB they no longer used (the tree
    stayed at 402 MiB; with this, 247). Serving those sizes with mmap instead (a fixed
    M_MMAP_THRESHOLD) gives the memory back at once but costs page faults on every block: it
    took ~40% off the speed of a 1 GiB push. `malloc_trim` once a burst is over costs nothing
    on the hot path."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return  # not glibc
    seen = in_flight.served
    while True:
        await asyncio.sleep(TRIM_INTERVAL)
        if in_flight.served != seen:
            seen = in_flight.served
            await asyncio.to_thread(trim, 0)


def _on_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Accept errors are one line, not a traceback: when descriptors run out, asyncio stops
    accepting for a second and retries, and says so on every try (rate-limited by logs)."""
    exc = context.get("exception")
    if context.get("message") == "socket.accept() out of system resource":
        log.warning("cannot accept connections, retrying: %s", exc)
        return
    loop.default_exception_handler(context)


def _limits(settings: Settings) -> Limits:
    open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    http = settings.http
    return Limits(
        idle=http.idletimeout,
        head=http.headertimeout,
        body=http.bodytimeout,
        connections=connection_cap(http.maxconnections, open_files),
        send=http.sendtimeout,
    )


async def _serve(
    settings: Settings, listeners: Listeners, reload: Reload | None, catch_up: bool = False
) -> None:
    """Serve on `listeners` until SIGTERM or SIGINT. `catch_up`: a replacement worker, which
    reads the configuration again as it starts, as the workers it joins did at their last
    SIGHUP."""
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_on_loop_error)
    app = create_app(settings)
    guard = Guard(_limits(settings), loop.time)
    connections.install(app, guard)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=logging.getLogger("moorage.access") if settings.log.accesslog else None,
        access_log_class=AccessLogger,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
    )
    await runner.setup()
    assert runner.server is not None
    context = tls_context(settings)
    server = await loop.create_server(
        guard.factory(runner.server),
        sock=listeners.main,
        ssl=context,
        backlog=BACKLOG,
        ssl_handshake_timeout=settings.http.headertimeout if context is not None else None,
    )
    stop = asyncio.Event()
    hurry = asyncio.Event()  # skip the drain
    health = app[HEALTH]
    stop_metrics = None
    if listeners.metrics is not None:
        stop_metrics = await metrics.serve(listeners.metrics, health)

    def terminate() -> None:
        if stop.is_set():
            hurry.set()
        health.draining = True  # here, not after stop.wait(): no probe may slip in between
        stop.set()

    def interrupt() -> None:
        hurry.set()
        health.draining = True
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, terminate)
    loop.add_signal_handler(signal.SIGINT, interrupt)
    loop.add_signal_handler(signal.SIGHUP, _reload, settings, reload, app, context)
    if catch_up:
        _reload_config(settings, reload, app)
    trimmer = asyncio.create_task(_give_back_memory(app[IN_FLIGHT]))
    sweeper = asyncio.create_task(guard.run())
    log.info(
        "serving on %s (pid %d, at most %d connections)",
        settings.listen,
        os.getpid(),
        guard.limits.connections,
    )
    await stop.wait()
    drain = settings.http.draintimeout
    if drain > 0 and not hurry.is_set():
        log.info("draining for %gs: /readyz answers 503 (pid %d)", drain, os.getpid())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hurry.wait(), drain)
    log.info("shutting down (pid %d)", os.getpid())
    trimmer.cancel()
    # Stop accepting first and let requests in flight (an upload still streaming its body)
    # finish; aiohttp's own shutdown would discard their remaining bytes. The sweep goes on:
    # a stalled body must not hold the shutdown for SHUTDOWN_TIMEOUT.
    server.close()
    in_flight = app[IN_FLIGHT]
    deadline = loop.time() + SHUTDOWN_TIMEOUT
    while in_flight.active and loop.time() < deadline:
        await asyncio.sleep(0.05)
    sweeper.cancel()
    if stop_metrics is not None:
        await stop_metrics()
    await runner.cleanup()


def _worker(
    settings: Settings, listeners: Listeners, reload: Reload | None, catch_up: bool = False
) -> int:
    try:
        asyncio.run(_serve(settings, listeners, reload, catch_up))
    except Exception:
        log.exception("worker failed")
        return 1
    return 0


def _die_with(parent: int) -> None:
    """In a forked worker: have the kernel send SIGINT when the supervisor dies (even by
    SIGKILL), so no orphan goes on serving the port a restarted server needs. SIGINT, not
    SIGTERM: no drain, the port must be free within the second a restart waits for it (the
    requests in flight still finish). The supervisor may have died between the fork and the
    prctl; then the signal will never come, but the worker has a new parent already, and
    leaves at once."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGINT, 0, 0, 0) != 0:
            log.warning(
                "cannot tie the worker to its supervisor: %s", os.strerror(ctypes.get_errno())
            )
    if os.getppid() != parent:
        os._exit(1)


def _become_worker(parent: int) -> None:
    """The first steps of a worker, forked or started in place of one that exited: stopped at
    once by SIGTERM and SIGINT until its loop takes them (no KeyboardInterrupt traceback), a
    reload passed on before it can take one ignored, not fatal; tied to its supervisor; then
    the signals held back since before it started let through."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _die_with(parent)
    supervisor.release_signals()


def _fork(settings: Settings, slots: list[Listeners], slot: int, reload: Reload | None) -> int:
    parent = os.getpid()
    # libcrypto for the resumable SHA-256, found and self-tested once here: finding it runs
    # ldconfig in a child process, which a worker should not fork in the middle of its first
    # upload (a thread-holding process forking, a stray child in its tree).
    sha256state.available()
    # Everything imported so far goes to the collector's permanent generation: a worker's
    # collections then never walk (and so never write to) the pages it shares with the
    # supervisor, which would otherwise be copied into each worker one by one.
    gc.freeze()
    pid = os.fork()
    if pid == 0:
        _become_worker(parent)
        mine = slots[slot].sockets()
        for other in {sock for listeners in slots for sock in listeners.sockets()}:
            if all(other is not sock for sock in mine):
                other.close()
        os._exit(_worker(settings, slots[slot], reload))
    return pid


def _supervise(settings: Settings, slots: list[Listeners], reload: Reload | None) -> int:
    """Fork the workers from this process, with everything built once to be shared, then
    hand their supervision to a small process (`moorage.supervisor`)."""
    try:
        warm_up(settings)  # what each worker builds as it starts, once, to be shared
        gc.collect()  # what it dropped goes now, not into the frozen generation
    except Exception as exc:  # what every worker would fail on as it starts: once, at once
        log.exception("cannot start the workers: %s", exc)
        return 1
    packed = pack(settings)  # for a replacement worker; before any fork, should it fail
    code = supervisor.Code.loaded()  # what a replacement must still find on disk
    supervisor.hold_signals()  # until the supervisor can take them (a worker: its handlers)
    children = {_fork(settings, slots, slot, reload): slot for slot in range(settings.workers)}
    state = supervisor.State(
        children,
        _detach(slots),
        # What a replacement worker runs: this command line, under this interpreter.
        [sys.executable, *sys.orig_argv[1:]],
        packed,
        os.environ.get(metricsdir.ENV),
        settings.log.level,
        settings.log.format,
        code,
    )
    return supervisor.take_over(state)


def _detach(slots: list[Listeners]) -> list[list[int | None]]:
    """Each slot's listening sockets as descriptors the supervisor owns from now on (one
    socket may serve every slot: `bind_to` without SO_REUSEPORT)."""
    owned: dict[int, int] = {}

    def fd(sock: socket.socket | None) -> int | None:
        if sock is None:
            return None
        if id(sock) not in owned:
            owned[id(sock)] = sock.detach()
        return owned[id(sock)]

    return [[fd(listeners.main), fd(listeners.metrics)] for listeners in slots]


def _replacement(settings: Settings, worker: supervisor.Worker, reload: Reload | None) -> int:
    """A worker the supervisor started in place of one that exited, by running the server's
    command line again: it serves the sockets it was handed, as the one it replaces did."""
    _become_worker(worker.parent)
    _raise_open_file_limit()
    _limit_malloc_arenas()

    def adopt(fd: int) -> socket.socket:
        sock = socket.socket(fileno=fd)
        sock.set_inheritable(False)
        return sock

    metrics_socket = None if worker.metrics is None else adopt(worker.metrics)
    return _worker(settings, Listeners(adopt(worker.main), metrics_socket), reload, catch_up=True)


def _raise_open_file_limit() -> None:
    """Raise the soft open-file limit to the hard one: the usual soft 1,024 is a few hundred
    idle clients. The connection cap is then taken below whatever the limit is."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open-file limit from %d: %s", soft, exc)


def _address(settings: Settings) -> str:
    scheme = "https" if settings.tls.certificate is not None else "http"
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"Moorage {__version__} at {scheme}://{host}:{settings.port}"


def _where(settings: Settings) -> str:
    """Where what it serves is kept, for the start-up line: a new user's first question after
    "where is it?" (the data directory is relative to where it was started)."""
    parts = [f"data in {settings.datadir.resolve()}"]
    if settings.storage.driver == "s3":
        s3 = settings.storage.s3
        parts.append(f"blobs in S3 bucket {s3.bucket} at {s3.endpoint or 'AWS'}")
    elif settings.storage.rootdirectory is not None:
        parts.append(f"blobs in {settings.storage.rootdirectory.resolve()}")
    if settings.metadata.url is not None:
        url = make_url(settings.metadata.url)
        parts.append(f"metadata in {url.render_as_string(hide_password=True)}")
    return ", ".join(parts)


# glibc's mallopt parameter for the most malloc arenas a process makes.
M_ARENA_MAX = -8
MALLOC_ARENAS = 2


def _limit_malloc_arenas() -> None:
    """At most MALLOC_ARENAS malloc arenas per process (inherited by the workers). glibc gives
    threads arenas of their own, up to eight per core, and each keeps what was freed in it:
    the threads that hash and write uploads and mirror fetches left a worker holding memory it
    no longer used (16 concurrent cold pulls through the mirror: peak PSS of the two-worker
    tree 278 MiB by default, 161 MiB with two arenas). Not glibc (musl): nothing to do."""
    if not sys.platform.startswith("linux"):
        return
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None and not mallopt(M_ARENA_MAX, MALLOC_ARENAS):
        log.warning("cannot limit malloc arenas")


def _migrate(settings: Settings) -> bool:
    """Bring an embedded SQLite schema to head in a child process that exits when done (which
    says why it could not, if so); whether it is at head.

    The store would do it when it opens (`MetadataStore.open`), but then Alembic (with Mako and
    Pygments) stays imported in the worker that got there first: ~15 MiB private to that
    worker for as long as it lives, a tenth of the tree. Forked here, the supervisor and the
    workers never import it; the workers' stores then find the schema at head. Other databases
    are never migrated by the server (`moorage db upgrade`)."""
    url = settings.metadata_url
    if migrations.sqlite_path(url) is None:
        return True
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            before, after = migrations.run(url, migrations.upgrade)
            if before != after:
                log.info("metadata schema upgraded: %s -> %s", before.name(), after.name())
            code = 0
        except migrations.SchemaError as exc:
            # worded as the refusals of `moorage serve` before the server starts
            print(f"Error: cannot start: {exc}", file=sys.stderr, flush=True)
        except Exception:
            log.exception("metadata schema upgrade failed")
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def run(
    settings: Settings, reload: Reload | None = None, worker: supervisor.Worker | None = None
) -> int:
    """Serve until stopped. `reload` builds the settings again on SIGHUP (in each worker:
    the supervisor only passes the signal on). `worker`: this process replaces a worker that
    exited (`supervisor.respawned`)."""
    if worker is not None:
        return _replacement(settings, worker, reload)
    if settings.auth.mode == "none" and not _is_loopback(settings.host):
        print(
            "\n*** WARNING: Moorage is listening on "
            f"{settings.listen} with NO AUTHENTICATION: anyone who can reach this address can "
            "push, overwrite and delete images. ***\n",
            file=sys.stderr,
            flush=True,
        )
    settings.datadir.mkdir(parents=True, exist_ok=True)
    tls_context(settings)  # fail before forking when the certificate or key is unusable
    _raise_open_file_limit()
    _limit_malloc_arenas()
    address = settings.listen
    try:
        sockets = bind(settings, settings.workers)
        metrics_sockets: list[socket.socket | None] = [None] * settings.workers
        if settings.metrics.enabled and settings.metrics.listen is not None:
            address = settings.metrics.listen
            host, port = split_listen(address)
            metrics_sockets = [*bind_to(host, port, settings.workers)]
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            host, port = split_listen(address)
            reason = preflight.taken_port(host, port)
        else:
            reason = f"cannot listen on {address}: {exc.strerror or exc}"
        print(f"moorage: {reason}", file=sys.stderr)
        return 1
    slots = [Listeners(*pair) for pair in zip(sockets, metrics_sockets, strict=True)]
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until a reload handler is installed
    # After binding: a second server started on a port in use by mistake touches no data.
    if not _migrate(settings):
        return 1
    log.info("%s; %s", _address(settings), _where(settings))
    if settings.workers == 1:
        return _worker(settings, slots[0], reload)
    return _supervise(settings, slots, reload)
