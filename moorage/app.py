"""Wiring: builds storage, metadata and the content layer from the settings, and the routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.typedefs import Handler

from moorage import keys, ui
from moorage.api import direct, health, http, metrics, notify, requestid, sending
from moorage.api import token as token_endpoint
from moorage.api.context import AUTH, CURSORS, EVENTS, REGISTRY, SETTINGS, V1, V1TOKENS
from moorage.api.maintenance import MAINTENANCE, Maintenance
from moorage.api.mirror import MIRROR
from moorage.api.v1 import errors as v1_errors
from moorage.api.v1 import routes as v1_routes
from moorage.api.v2 import errors as v2_errors
from moorage.api.v2 import routes as v2_routes
from moorage.auth.service import Authenticator
from moorage.auth.v1tokens import V1Tokens, load_or_create_secret
from moorage.config import Settings
from moorage.content.events import Events
from moorage.content.registry import Registry
from moorage.content.v1 import V1Service
from moorage.metadata import MetadataStore
from moorage.mirror.cache import Mirror
from moorage.storage.fsobjects import FilesystemObjects
from moorage.storage.objects import ObjectDriver
from moorage.storage.timed import TimedObjects

if TYPE_CHECKING:
    from moorage.storage.s3 import S3Driver

log = logging.getLogger("moorage")

EXPIRY_INTERVAL = 300.0


class InFlight:
    """Counts requests being served (so a shutdown can wait for them to finish) and served."""

    def __init__(self) -> None:
        self.active = 0
        self.served = 0

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.active += 1
        try:
            return await handler(request)
        finally:
            self.active -= 1
            self.served += 1


IN_FLIGHT = web.AppKey("in_flight", InFlight)


async def _chores(registry: Registry, gc_interval: float, maintenance: Maintenance) -> None:
    """The deployment's housekeeping, each chore run by one worker of one node per period
    (every worker of every node asks for it): expiring abandoned upload sessions with their
    bytes, and garbage collection every `gc.interval` (0: never on its own). Nothing runs in
    read-only mode (read-only means nothing is written, these deletes included)."""
    chores = [("upload-expiry", EXPIRY_INTERVAL, _expire_uploads)]
    if gc_interval > 0:
        chores.append(("gc", gc_interval, _collect))
    tick = min(period for _, period, _ in chores)
    while True:
        await asyncio.sleep(tick)
        if maintenance.readonly:
            continue
        for name, period, run in chores:
            try:
                if await registry.metadata.claim(name, period * 0.9):
                    await run(registry)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s failed", name)


async def _expire_uploads(registry: Registry) -> None:
    dropped = await registry.blobs.expire()
    if dropped:
        log.info("expired upload sessions", extra={"count": dropped})


async def _collect(registry: Registry) -> None:
    await registry.collector.cycle()


def _s3_driver() -> type[S3Driver]:
    # Imported only when asked for: botocore costs a node on the filesystem default ~45 MiB
    # per process.
    from moorage.storage.s3 import S3Driver

    return S3Driver


async def open_storage(settings: Settings) -> ObjectDriver:
    """The blob storage driver the settings name (`storage.driver`)."""
    if settings.storage.driver == "s3":
        s3 = settings.storage.s3
        return await _s3_driver().open(
            s3.bucket,
            endpoint=s3.endpoint,
            region=s3.region,
            prefix=s3.prefix,
            accesskey=s3.accesskey,
            secretkey=s3.secretkey.get_secret_value() if s3.secretkey else None,
            # A part that takes longer than this is abandoned: well inside two thirds of the
            # lease, so a stalled part cannot land after another request took the session.
            part_timeout=min(30.0, settings.uploads.lease / 3),
        )
    return FilesystemObjects(settings.blob_root, settings.storage.directio)


def warm_up(settings: Settings) -> None:
    """Build, and drop, what `create_app` and its lifecycle build in each worker before any
    connection: the application (not started), the metadata store (its engines not
    connected, the PostgreSQL runner imported when configured) and the S3 driver's imports.
    A forking supervisor calls it once before it forks (server._supervise): what building
    them leaves behind (the imports; SQLAlchemy's and aiohttp's lazily made per-class state)
    is then in pages the workers share, where each worker made it in pages of its own (about
    5 MiB each, and as many of the supervisor's then private: the idle two-worker tree 91 ->
    82 MiB PSS, 167 -> 152 on PostgreSQL + S3; docs/performance.md, "Built before the
    fork"). The files the application makes when missing (the v1 secret, the token signing
    key) are the ones the first worker would have made."""
    if settings.storage.driver == "s3":
        _s3_driver()
    create_app(settings)
    MetadataStore(settings.metadata_url)


def create_app(settings: Settings) -> web.Application:
    in_flight = InFlight()
    # The metrics' middleware is outermost: the answers of the others count too.
    counting = [metrics.middleware] if settings.metrics.enabled else []
    app = web.Application(
        middlewares=[
            *counting,
            requestid.middleware,
            in_flight.middleware,
            direct.closing_middleware,
            v2_errors.errors_middleware,
            v1_errors.errors_middleware,
        ],
        # Request bodies are buffered in small pieces unless http.Arriving gives one larger
        # ones (a streamed push): bounded memory under a burst of uploads.
        handler_args={"read_bufsize": http.BUFFER_SMALL, **http.HEADER_LIMITS},
    )
    app[IN_FLIGHT] = in_flight
    app[SETTINGS] = settings
    app[sending.MODE] = settings.http.sendfile
    app[MAINTENANCE] = Maintenance(settings)
    app[AUTH] = Authenticator(settings)
    if settings.http.secret is not None:
        v1_secret = keys.derive_secret(settings.http.secret.get_secret_value(), keys.V1_TOKENS)
    else:
        v1_secret = load_or_create_secret(settings.datadir / "auth" / "v1-secret")
    app[V1TOKENS] = V1Tokens(v1_secret)
    # Same on every node sharing http.secret (the v1 secret is derived from it).
    app[CURSORS] = keys.Sealer(keys.derive_secret(v1_secret.hex(), keys.CURSORS))
    if app[AUTH].issues_tokens:
        token_endpoint.setup(app)
    app.on_response_prepare.append(requestid.add_header)
    app.on_response_prepare.append(v2_errors.add_version_header)
    app.on_response_prepare.append(v1_routes.add_version_header)
    probes = health.setup(app)
    metrics.setup(app, settings, probes)
    v2_routes.setup(app)
    v1_routes.setup(app)
    ui.setup(app, v1_secret)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        settings.datadir.mkdir(parents=True, exist_ok=True)
        storage = await open_storage(settings)
        if settings.metrics.enabled:
            storage = TimedObjects(storage)
        metadata = MetadataStore(settings.metadata_url)
        await metadata.open()
        if metadata.shared:
            app[AUTH].limiter.share(metadata)
        registry = Registry(settings, storage, metadata)
        app[REGISTRY] = registry
        app[V1] = V1Service(registry)
        if settings.proxy.upstreams:
            app[MIRROR] = Mirror(settings, registry)
        probes.watch({"metadata": registry.check_metadata, "storage": registry.check_storage})
        maintenance = app[MAINTENANCE]
        chores = asyncio.create_task(_chores(registry, settings.gc.interval, maintenance))
        flushing = asyncio.create_task(registry.activity.run(lambda: not maintenance.readonly))
        background = [chores, flushing]
        if settings.notifications.endpoints:
            events = Events(metadata, settings.notifications, settings.listen)
            app[EVENTS] = events
            background.append(asyncio.create_task(notify.Deliverer(events).run()))
        yield
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if not maintenance.readonly:  # read-only: nothing is written, these counts included
            await registry.activity.close()
        if MIRROR in app:
            await app[MIRROR].close()
        await registry.close()

    app.cleanup_ctx.append(lifecycle)
    return app
