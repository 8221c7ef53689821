"""Events from requests, and their delivery to the configured endpoints (webhooks).

After a v2 or v1 request succeeded, `after_v2` / `after_v1` turn it into events (what
Distribution sends for the same request: a blob or manifest push, a pull, a delete, a
mount) and record them; a v1 tag push sends what a v2 push of that image would: a push of
each blob of its manifest, then of the manifest. Nothing is done, not even a lookup, when no
endpoint wants the action.

`Deliverer` runs in every worker; per endpoint, one of them in the whole deployment holds a
lease on its cursor and POSTs the events after it, in order, in envelopes of up to
`BATCH`; a refusal or an unreachable receiver is retried with a doubling pause, and nothing
is skipped: a receiver away for an hour gets everything when it returns."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, replace

import aiohttp
from aiohttp import web

from moorage.api.auth import client_address
from moorage.api.context import EVENTS, IDENTITY, REGISTRY, REQUEST_ID
from moorage.api.proxy import external_base
from moorage.api.v1.access import CALLER
from moorage.config import EventEndpoint
from moorage.content.events import ENVELOPE, Events, RequestInfo, Target, accepts

log = logging.getLogger("moorage.events")

BATCH = 100
LEASE = 30.0  # seconds a deliverer holds an endpoint without renewing
POLL = 0.5  # seconds between looks when there was nothing to send
PRUNE_EVERY = 60.0
BLOB = "application/octet-stream"


def _info(request: web.Request, actor: str | None) -> RequestInfo:
    return RequestInfo(
        id=request.get(REQUEST_ID, ""),
        addr=client_address(request),
        host=external_base(request).split("://", 1)[-1],
        method=request.method,
        useragent=request.headers.get("User-Agent", ""),
        actor=actor,
    )


def _url(request: web.Request, path: str) -> str:
    return external_base(request) + path


async def after_v2(
    request: web.Request, route: str, params: dict[str, str], response: web.StreamResponse
) -> None:
    events = request.app.get(EVENTS)
    if events is None:
        return
    action = _v2_action(route, request.method, "mount" in request.query, response.status)
    if action is None or not events.wanted(action):
        return
    identity = request.get(IDENTITY)
    info = _info(request, identity.name if identity else None)
    repo = params["repository"]
    digest = response.headers.get("Docker-Content-Digest") or params.get("digest")
    reference = params.get("reference", "")
    tag = reference if reference and ":" not in reference else None
    if route == "manifest" and digest is None and tag is None:
        digest = reference  # a delete by digest answers without the header
    if route == "manifest":
        media = (
            request.headers.get("Content-Type")
            if request.method == "PUT"
            else response.headers.get("Content-Type")
        )
        size = response.content_length if request.method == "GET" else request.content_length
        path = f"/v2/{params['name']}/manifests/{digest or reference}"
        target = Target(repo, digest, media, size, tag, _url(request, path))
    else:
        size = response.content_length if request.method == "GET" else None
        if action in ("push", "mount") and digest:
            blob = await request.app[REGISTRY].blobs.get(repo, digest)
            size = blob.size
        path = f"/v2/{params['name']}/blobs/{digest}"
        source = request.query.get("from") if action == "mount" else None
        target = Target(repo, digest, BLOB, size, None, _url(request, path), source)
    await events.record(action, [target], info)


def _v2_action(route: str, method: str, mount: bool, status: int) -> str | None:
    if route == "manifest":
        return {("PUT", 201): "push", ("GET", 200): "pull", ("DELETE", 202): "delete"}.get(
            (method, status)
        )
    if route == "blob":
        if method == "GET" and status in (200, 206, 307):
            return "pull"
        return "delete" if method == "DELETE" and status == 202 else None
    if route == "upload" and method == "PUT" and status == 201:
        return "push"
    if route == "uploads" and method == "POST" and status == 201:
        return "mount" if mount else "push"  # a mount, or a single-POST upload
    return None


async def after_v1(
    request: web.Request, route: str, params: dict[str, str], response: web.StreamResponse
) -> None:
    events = request.app.get(EVENTS)
    if events is None or response.status != 200:
        return
    if route == "tag" and request.method == "PUT":
        action = "push"
    elif route in ("tag", "tags", "repository") and request.method == "DELETE":
        action = "delete"
    else:
        return
    if not events.wanted(action):
        return
    caller = request.get(CALLER)
    info = _info(request, caller.user if caller else None)
    repo = params["repository"]
    tag = params.get("tag")
    if action == "delete":
        await events.record(action, [Target(repo, tag=tag)], info)
        return
    assert tag is not None
    stored = await request.app[REGISTRY].get_manifest(repo, tag)
    document = json.loads(stored.content)
    targets = [
        Target(repo, d["digest"], BLOB, d.get("size"), url=_url(request, f"/v2/{repo}/blobs/"))
        for d in [document.get("config"), *document.get("layers", [])]
        if isinstance(d, dict) and "digest" in d
    ]
    targets = [replace(t, url=f"{t.url}{t.digest}") for t in targets]
    url = _url(request, f"/v2/{repo}/manifests/{stored.digest}")
    targets.append(Target(repo, stored.digest, stored.media_type, len(stored.content), tag, url))
    await events.record(action, targets, info)


@dataclass
class _Backoff:
    failures: int = 0  # in a row
    pause: float = 0.0
    until: float = 0.0


class Deliverer:
    def __init__(self, events: Events) -> None:
        self.events = events
        self.holder = f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._backoff = {e.name: _Backoff() for e in events.endpoints}

    async def run(self) -> None:
        last_prune = 0.0
        connector = aiohttp.TCPConnector(limit_per_host=2)
        async with aiohttp.ClientSession(connector=connector) as session:
            while True:
                busy = False
                for endpoint in self.events.endpoints:
                    try:
                        busy |= await self._deliver(session, endpoint)
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        log.exception("event delivery failed", extra={"endpoint": endpoint.name})
                if time.monotonic() - last_prune > PRUNE_EVERY:
                    last_prune = time.monotonic()
                    try:
                        await self.events.prune()
                    except Exception:
                        log.exception("pruning delivered events failed")
                if not busy:
                    await asyncio.sleep(POLL)

    async def _deliver(self, session: aiohttp.ClientSession, endpoint: EventEndpoint) -> bool:
        """Send the next envelope to `endpoint` if this process holds it; whether it did."""
        backoff = self._backoff[endpoint.name]
        if time.monotonic() < backoff.until:
            return False
        cursor = await self.events.take(endpoint.name, self.holder, LEASE)
        if cursor is None:
            return False
        rows = await self.events.after(cursor, BATCH)
        if not rows:
            return False
        chosen = [row.payload for row in rows if accepts(endpoint, row)]
        if chosen and not await self._post(session, endpoint, chosen):
            backoff.failures += 1
            if backoff.failures > endpoint.threshold:
                backoff.pause = min(endpoint.maxbackoff, backoff.pause * 2 or endpoint.backoff)
                backoff.until = time.monotonic() + backoff.pause
            return False
        backoff.failures, backoff.pause = 0, 0.0
        await self.events.delivered(endpoint.name, self.holder, rows[-1].id)
        return True

    async def _post(
        self, session: aiohttp.ClientSession, endpoint: EventEndpoint, payloads: list[str]
    ) -> bool:
        body = ('{"events": [' + ",".join(payloads) + "]}").encode()
        headers: list[tuple[str, str]] = [("Content-Type", ENVELOPE)]
        for name, value in endpoint.headers.items():
            for one in [value] if isinstance(value, str) else value:
                headers.append((name, one))
        try:
            timeout = aiohttp.ClientTimeout(total=endpoint.timeout)
            post = session.post(endpoint.url, data=body, headers=headers, timeout=timeout)
            async with post as resp:
                await resp.read()
                if 200 <= resp.status < 300:
                    return True
                log.warning(
                    "event endpoint refused a delivery",
                    extra={"endpoint": endpoint.name, "status": resp.status},
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning(
                "event endpoint unreachable",
                extra={"endpoint": endpoint.name, "error": repr(exc)[:200]},
            )
        return False
