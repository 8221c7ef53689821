"""Liveness and readiness for balancers and orchestrators: `/healthz` and `/readyz`.

- `/healthz` answers 200 whenever the worker's event loop runs. It checks nothing else, so a
  database outage never gets a node restarted by a liveness probe (a restart would not bring
  the database back).
- `/readyz` answers 200 when the metadata database answers a query and the blob storage a
  stat, each within PROBE_TIMEOUT; else 503, with a JSON body naming the check that failed.
  What went wrong is logged, not told: both paths need no credentials, and an error text
  names hosts and paths.
- Draining: on SIGTERM `moorage.server` sets `Health.draining`. From then on `/readyz`
  answers 503 at once, while the node goes on serving every request for `http.draintimeout`
  seconds before it stops accepting, so a balancer's check takes it out before it goes. While
  draining, every response says `Connection: close`: a client (or a balancer's kept-alive
  connection) then opens its next connection, which the balancer sends elsewhere.

A check that hangs (an unreachable NFS mount, a database that accepts and never answers) is
not started again while it still runs: the next probes wait on the same one, so a balancer
checking every second cannot pile up stuck threads or connections.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from moorage import metrics

log = logging.getLogger("moorage.health")

PROBE_TIMEOUT = 2.0  # seconds each readiness check may take

Check = Callable[[], Awaitable[None]]


class _Probe:
    """One readiness check, run at most once at a time."""

    def __init__(self, name: str, check: Check) -> None:
        self.name = name
        self.check = check
        self.task: asyncio.Task[None] | None = None

    async def result(self) -> str:
        """One of ok, failed and timeout."""
        task = self.task
        if task is None or task.done():
            task = self.task = asyncio.ensure_future(self.check())
            task.add_done_callback(self._seen)
        done, _ = await asyncio.wait({task}, timeout=PROBE_TIMEOUT)
        if not done:
            log.warning(
                "readiness check %s: no answer within %gs",
                self.name,
                PROBE_TIMEOUT,
                extra={"check": self.name},
            )
            return "timeout"
        error = task.exception()
        if error is not None:
            log.warning(
                "readiness check %s failed: %r", self.name, error, extra={"check": self.name}
            )
            return "failed"
        return "ok"

    @staticmethod
    def _seen(task: asyncio.Task[None]) -> None:
        # A check that failed after its waiter gave up must not be reported as never retrieved.
        if not task.cancelled():
            task.exception()


class Health:
    """A worker's readiness: its checks (set once storage and metadata are open) and whether
    it is draining."""

    def __init__(self) -> None:
        self.draining = False
        self._probes: list[_Probe] = []

    def watch(self, checks: dict[str, Check]) -> None:
        self._probes = [_Probe(name, check) for name, check in checks.items()]

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether the node should get traffic, and the body that says why (not)."""
        if self.draining:
            metrics.READY.set(0)
            return False, {"status": "draining"}
        results = await asyncio.gather(*(probe.result() for probe in self._probes))
        checks = {probe.name: result for probe, result in zip(self._probes, results, strict=True)}
        ready = all(result == "ok" for result in results)
        metrics.READY.set(1 if ready else 0)
        return ready, {"status": "ready" if ready else "unavailable", "checks": checks}

    async def close_when_draining(self, request: web.Request, response: web.StreamResponse) -> None:
        """on_response_prepare hook: while draining, no connection is kept alive."""
        if self.draining:
            response.force_close()
            response.headers["Connection"] = "close"  # the headers are made before this hook


HEALTH = web.AppKey("health", Health)
_NO_STORE = {"Cache-Control": "no-store"}


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"}, headers=_NO_STORE)


async def readyz(request: web.Request) -> web.Response:
    ready, body = await request.app[HEALTH].readiness()
    return web.json_response(body, status=200 if ready else 503, headers=_NO_STORE)


def setup(app: web.Application) -> Health:
    health = Health()
    app[HEALTH] = health
    app.router.add_get("/healthz", healthz, name="healthz")
    app.router.add_get("/readyz", readyz, name="readyz")
    app.on_response_prepare.append(health.close_when_draining)
    return health
