"""`/metrics`: what `moorage.metrics` recorded, in Prometheus' text format, summed over the
workers of the node.

With several workers, prometheus_client runs in its multiprocess mode (the directory is
chosen by `moorage.metricsdir` before this module is imported): each worker's values live in
its own memory-mapped files, and the worker that answers a scrape adds up everyone's. A
worker moves what it recorded in memory into the library's families once a second
(`FLUSH_INTERVAL`), before it answers a scrape, and when it stops; see `moorage.metrics` for
why. Only `moorage_*` families are exported, the same with one worker or several.

Requests are counted by route name, never by path: the v2 and v1 dispatchers name the route
of their table that matched (`routed`), other paths their aiohttp route name, anything else
is `unmatched`. Methods outside the usual ones are `other`. So the label sets stay few
whatever clients send.

`/metrics` asks for no credentials. It is served on the main port unless `metrics.listen`
names an address of its own (then only there), and not at all with `metrics.enabled: false`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge as PromGauge
from prometheus_client import Histogram as PromHistogram
from prometheus_client.multiprocess import MultiProcessCollector

from moorage import metrics, metricsdir
from moorage.api.health import Health
from moorage.config import Settings

log = logging.getLogger("moorage.metrics")

FLUSH_INTERVAL = 1.0  # seconds

# Decided by prometheus_client at its import, from the same variable.
MULTIPROCESS = metricsdir.ENV in os.environ

# `_created` series exist only in single-process mode: leave them out in both.
disable_created_metrics()  # type: ignore[no-untyped-call]
_REGISTRY = CollectorRegistry()

_REQUESTS = PromCounter(
    "moorage_http_requests_total",
    "HTTP requests answered, by route name, method and status code.",
    ("route", "method", "status"),
    registry=_REGISTRY,
)
_DURATION = PromHistogram(
    "moorage_http_request_duration_seconds",
    "Time from a request's head to its handler's end (for a streamed body, to its last byte "
    "written), by route name and method.",
    ("route", "method"),
    buckets=metrics.LATENCY_BUCKETS,
    registry=_REGISTRY,
)
_RECEIVED = PromCounter(
    "moorage_http_received_bytes_total",
    "Bytes of request bodies received, by route name.",
    ("route",),
    registry=_REGISTRY,
)
_SENT = PromCounter(
    "moorage_http_sent_bytes_total",
    "Bytes of response bodies (their Content-Length) of requests answered, by route name.",
    ("route",),
    registry=_REGISTRY,
)
_COUNTERS = [
    (spec, PromCounter(spec.name, spec.help, spec.labels, registry=_REGISTRY))
    for spec in metrics.COUNTERS
]
_HISTOGRAMS = [
    (
        spec,
        PromHistogram(spec.name, spec.help, spec.labels, buckets=spec.buckets, registry=_REGISTRY),
    )
    for spec in metrics.HISTOGRAMS
]
_GAUGES = [
    (
        spec,
        PromGauge(
            spec.name, spec.help, spec.labels, multiprocess_mode=spec.mode, registry=_REGISTRY
        ),
    )
    for spec in metrics.GAUGES
]


def _child(family: PromCounter | PromGauge | PromHistogram, labels: tuple[str, ...]) -> Any:
    return family.labels(*labels) if labels else family


def _add_observations(histogram: PromHistogram, total: float, counts: Iterable[float]) -> None:
    """Add many observations at once: their sum, and how many fell in each bucket.
    prometheus_client has no call for it; its histogram keeps the sum and one count per
    bucket (not cumulative), which this adds to (tests/test_metrics.py compares the result
    with the library's own `observe`)."""
    histogram._sum.inc(total)
    for bucket, count in zip(histogram._buckets, counts, strict=True):
        if count:
            bucket.inc(count)


def flush() -> None:
    """Move what this worker recorded since the last flush into the families."""
    for (route, method, status), row in metrics.REQUESTS.drain().items():
        _REQUESTS.labels(route, method, str(status)).inc(row[0])
        if row[1]:
            _RECEIVED.labels(route).inc(row[1])
        if row[2]:
            _SENT.labels(route).inc(row[2])
        _add_observations(_DURATION.labels(route, method), row[3], row[4:])
    for counter, family in _COUNTERS:
        for labels, amount in counter.drain().items():
            _child(family, labels).inc(amount)
    for histogram, hfamily in _HISTOGRAMS:
        for labels, row in histogram.drain().items():
            _add_observations(_child(hfamily, labels), row[0], row[1:])
    for gauge, gfamily in _GAUGES:
        for labels, value in gauge.drain().items():
            _child(gfamily, labels).set(value)


def exposition() -> bytes:
    """Every worker's metrics, in the text format (flush first, on the event loop)."""
    if not MULTIPROCESS:
        return generate_latest(_REGISTRY)
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


# -- requests ----------------------------------------------------------------------------

ROUTE = web.RequestKey("metrics_route", str)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Routes and methods whose requests carry blob data into the registry.
_UPLOADS = frozenset(
    {
        ("v2.uploads", "POST"),
        ("v2.upload", "PATCH"),
        ("v2.upload", "PUT"),
        ("v1.image_layer", "PUT"),
    }
)


def routed(request: web.Request, route: str) -> None:
    """Name the route a request took; a protocol's dispatcher calls this once it matched.
    Nothing happens to a request the middleware does not count (metrics off)."""
    if ROUTE not in request:
        return
    request[ROUTE] = route
    method = request.method
    if method != "GET" and (route, method) in _UPLOADS:
        metrics.UPLOADS_IN_FLIGHT.inc()


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count each request (outermost, so that the answers of the other middlewares count).
    What runs for every request is kept to a few attribute reads and one `record`: the route
    key is set at once, as a look-up of a key the request does not have costs a raised
    KeyError."""
    started = time.perf_counter()
    request[ROUTE] = ""
    status = 500
    sent = 0
    try:
        response = await handler(request)
        status = response.status
        if request.method != "HEAD":
            sent = response.content_length or 0
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = 499  # the connection went away (moorage.api.http.CLIENT_CLOSED)
        raise
    finally:
        method = request.method
        route = request[ROUTE]
        if not route:
            route = request.match_info.route.name or "unmatched"
        elif method != "GET" and (route, method) in _UPLOADS:
            metrics.UPLOADS_IN_FLIGHT.inc(-1)
        metrics.REQUESTS.record(
            route,
            method if method in _METHODS else "other",
            status,
            time.perf_counter() - started,
            request.content.total_bytes,
            sent,
        )


# -- serving -----------------------------------------------------------------------------


def _endpoint(health: Health) -> Callable[[web.Request], Any]:
    async def serve(request: web.Request) -> web.Response:
        await health.readiness()  # the node's readiness as of this scrape
        flush()
        body = await asyncio.to_thread(exposition)
        return web.Response(
            body=body, headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"}
        )

    return serve


async def _flushing(app: web.Application) -> AsyncIterator[None]:
    async def every_second() -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            flush()

    task = asyncio.create_task(every_second())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    flush()


def setup(app: web.Application, settings: Settings, health: Health) -> None:
    """Flush once a second while the worker serves, and serve `/metrics` on the main port
    unless it has an address of its own. Only with metrics on."""
    if not settings.metrics.enabled:
        return
    app.cleanup_ctx.append(_flushing)
    if settings.metrics.listen is None:
        app.router.add_get("/metrics", _endpoint(health), name="metrics")


async def serve(sock: socket.socket, health: Health) -> Callable[[], Awaitable[None]]:
    """Serve `/metrics` alone on `sock` (`metrics.listen`, plain HTTP, like Distribution's
    debug server); returns what stops it."""
    app = web.Application()
    app.router.add_get("/metrics", _endpoint(health), name="metrics")
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    assert runner.server is not None
    server = await asyncio.get_running_loop().create_server(runner.server, sock=sock)
    host, port = sock.getsockname()[:2]
    log.info("metrics on %s:%d (pid %d)", host, port, os.getpid())

    async def stop() -> None:
        server.close()
        await runner.cleanup()

    return stop
