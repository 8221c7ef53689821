"""The pull-through cache in the v2 routes (docs/mirror.md): manifest and blob GET/HEAD of a
mirrored repository are made servable from the cache first (moorage/mirror/cache.py); a blob
being fetched is streamed to the client as it arrives; pushes into a mirror are refused.

Everything else (tags lists, the catalog, referrers, deletes) works on what is cached, as on
any repository.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from moorage.api import http
from moorage.api.context import registry
from moorage.api.maintenance import MAINTENANCE
from moorage.errors import BlobUnknown, Denied, ManifestUnknown, NameUnknown, Unavailable
from moorage.mirror.cache import BlobFetch, LeftBehind, Mirror, Reader, Target

log = logging.getLogger("moorage.mirror")

MIRROR = web.AppKey("mirror", Mirror)

Handler = Callable[[web.Request, dict[str, str]], Awaitable[web.StreamResponse]]
# Routes and methods that write into a repository.
_PUSHES = {("upload", "PATCH"), ("upload", "PUT"), ("uploads", "POST"), ("manifest", "PUT")}
IMMUTABLE = "max-age=31536000"
# v1 routes that write into a repository, and those that read a repository's tags.
_V1_PUSHES = {("repository", "PUT"), ("repository_images", "PUT"), ("tag", "PUT")}
_V1_READS = {"tags", "tag", "tag_json", "repository_images", "repository_json"}


async def handle(
    request: web.Request, route: str, handler: Handler, params: dict[str, str]
) -> web.StreamResponse:
    """Answer a v2 request: through the cache when its repository is mirrored."""
    mirror = request.app.get(MIRROR)
    target = None
    if mirror is not None and "repository" in params:
        target = mirror.target(params["repository"])
    if mirror is None or target is None:
        return await handler(request, params)
    if (route, request.method) in _PUSHES:
        raise _refuse(params["repository"], target)
    if request.app[MAINTENANCE].readonly:
        return await handler(request, params)  # nothing is written, the cache included
    if route == "manifest" and request.method in ("GET", "HEAD"):
        await mirror.manifest(target, params["repository"], params["reference"])
    if route == "blob" and request.method in ("GET", "HEAD"):
        try:
            return await handler(request, params)
        except BlobUnknown:
            return await _blob(request, handler, params, mirror, target)
    return await handler(request, params)


def _refuse(repository: str, target: Target) -> Denied:
    return Denied(
        f"{repository} is a mirror of {target.source}: pushes are refused",
        {"name": repository, "upstream": target.source},
    )


async def before_v1(request: web.Request, route: str, params: dict[str, str]) -> None:
    """For a mirrored repository on the v1 protocol: refuse pushes; before its tags are
    read, cache the whole image of the tag asked for (`latest` for the lists, the tag a
    Docker 1.x pull asks for by default), so that v1 translation finds it. What cannot be
    fetched is left to the handler, which answers from what is cached."""
    mirror = request.app.get(MIRROR)
    if mirror is None or "repository" not in params:
        return
    repository = params["repository"]
    target = mirror.target(repository)
    if target is None:
        return
    if (route, request.method) in _V1_PUSHES:
        raise _refuse(repository, target)
    read_only = request.app[MAINTENANCE].readonly
    if route in _V1_READS and request.method in ("GET", "HEAD") and not read_only:
        tag = params.get("tag", "latest")
        try:
            await mirror.image(target, repository, tag)
        except (ManifestUnknown, NameUnknown, Unavailable) as exc:
            log.info(
                "mirrored v1 image not fetched",
                extra={"repository": repository, "tag": tag, "error": str(exc)},
            )


async def _stream(
    request: web.Request,
    response: web.StreamResponse,
    fetch: BlobFetch,
    reader: Reader,
    params: dict[str, str],
) -> None:
    try:
        try:
            async for chunk in fetch.read(reader):
                await response.write(chunk)
        except LeftBehind as behind:
            # Too slow to be kept up with in memory: the rest comes from storage once there.
            await fetch.wait()
            blobs = registry(request).blobs
            blob = await blobs.get(params["repository"], params["digest"])
            rest = blob.size - behind.offset
            if blob.path is not None and response.content_length is not None:
                # As a pull of a stored blob goes: from the file, not through this loop.
                await http.send_more(request, response, blob.path, behind.offset, rest)
            else:
                async for chunk in blobs.read(blob, behind.offset, rest):
                    await response.write(chunk)
    except Exception as exc:
        if http.client_went_away(request, exc):
            raise
        # The answer has begun: the only way left to say it failed is to cut the connection
        # (the client sees fewer bytes than Content-Length).
        log.warning(
            "mirrored blob broken off",
            extra={
                "repository": params["repository"],
                "digest": params["digest"],
                "error": str(exc),
            },
        )
        if request.transport is not None:
            request.transport.abort()
        raise ConnectionResetError("upstream fetch failed") from exc


async def _blob(
    request: web.Request, handler: Handler, params: dict[str, str], mirror: Mirror, target: Target
) -> web.StreamResponse:
    """A blob not cached yet: the bytes as the upstream fetch receives them (a `Range` is
    not honoured on this first pull: the whole blob is sent, which HTTP allows)."""
    digest = params["digest"]
    fetch = await mirror.blob(target, params["repository"], digest)
    if fetch is None:  # stored already under another repository, now linked to this one
        return await handler(request, params)
    reader = fetch.open() if request.method == "GET" else None
    try:
        size = await fetch.started()
        if fetch.elsewhere or (request.method == "GET" and reader is None):
            # Stored by another worker or node; or joined late (the first bytes are gone
            # from memory): served from storage once there.
            await fetch.wait()
            return await handler(request, params)
        headers = {
            "Docker-Content-Digest": digest,
            "ETag": f'"{digest}"',
            "Cache-Control": IMMUTABLE,
            "Content-Type": "application/octet-stream",
        }
        response = web.StreamResponse(status=200, headers=headers)
        if size is not None:
            response.content_length = size
        await response.prepare(request)
        if reader is not None:
            await _stream(request, response, fetch, reader, params)
    finally:
        if reader is not None:
            fetch.close(reader)
    await response.write_eof()
    return response
