"""v1 image endpoints: json, layer, checksum, ancestry. Images carry no repository in their
path: readability comes from the repositories an image is linked to, uploads from the
caller's push sessions (contract section 9)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from moorage.api import http
from moorage.api.context import V1
from moorage.api.v1.access import CALLER, Caller, allowed, readable, require
from moorage.api.v1.errors import AccessDenied, NotInPush, V1Unauthorized
from moorage.content.v1 import ImageJSONTooLarge, ImageNotFound, V1ImageRow

JSON_LIMIT = 4 * 1024 * 1024
EPOCH = "Thu, 01 Jan 1970 00:00:00 GMT"


def _cache_headers(who: Caller) -> dict[str, str]:
    scope = "public" if who.open_mode or who.anonymous else "private"
    return {
        "Cache-Control": f"{scope}, max-age=31536000",
        "Expires": "Fri, 01 Jan 2100 00:00:00 GMT",
        "Last-Modified": EPOCH,
    }


async def _read(request: web.Request, image_id: str) -> tuple[Caller, V1ImageRow]:
    who = request[CALLER]
    service = request.app[V1]
    try:
        row = await service.readable_image(image_id, readable(request, who), who.user)
    except ImageNotFound as exc:
        raise _unseen(who, exc) from exc
    return who, row


def _unseen(who: Caller, exc: ImageNotFound) -> Exception:
    """An image the caller cannot see: 401 when it brought no credentials (section 4.4)."""
    if not who.open_mode and who.anonymous:
        return V1Unauthorized("Token")
    return exc


async def get_json(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
    who, row = await _read(request, params["image_id"])
    headers = _cache_headers(who)
    headers["X-Docker-Size"] = str(row.size or 0)
    if row.payload_checksum:
        headers["X-Docker-Checksum-Payload"] = row.payload_checksum
    checksum = row.client_checksum or row.tarsum
    if checksum:
        headers["X-Docker-Checksum"] = checksum
    if request.headers.get("If-Modified-Since"):
        return web.Response(status=304, headers=headers)
    return web.Response(body=row.json, content_type="application/json", headers=headers)


async def get_layer(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
    who, row = await _read(request, params["image_id"])
    service = request.app[V1]
    blob = await service.layer(row)
    headers = _cache_headers(who)
    headers["Accept-Ranges"] = "bytes"
    headers["Content-Type"] = "application/octet-stream"
    if request.headers.get("If-Modified-Since"):
        return web.Response(status=304, headers=headers)

    def read(offset: int, count: int) -> AsyncIterator[bytes]:
        return service.read(blob, offset, count)

    return await http.send_bytes(request, headers, blob.size, blob.path, read)


async def ancestry(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
    who = request[CALLER]
    try:
        ids = await request.app[V1].ancestry(params["image_id"], readable(request, who), who.user)
    except ImageNotFound as exc:
        raise _unseen(who, exc) from exc
    return web.json_response(ids, headers=_cache_headers(who))


async def _upload_context(request: web.Request, image_id: str) -> tuple[Caller, list[str]]:
    """The repositories this upload belongs to (for linking); 401/403/400 when the caller
    may not upload the image."""
    who = request[CALLER]
    service = request.app[V1]
    if who.open_mode:
        return who, await service.may_upload(image_id, None)
    if who.token is not None:
        require(request, who, who.token.repository, "write", token_route=True)
        sessions = await service.may_upload(image_id, who.user)
        return who, [r for r in sessions if r == who.token.repository]
    if who.anonymous:
        raise V1Unauthorized("Token")
    sessions = await service.may_upload(image_id, who.user)
    writable = [r for r in sessions if allowed(request, who, r, "write")]
    if sessions and not writable:
        raise AccessDenied(image_id)
    return who, writable


async def put_json(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
    image_id = params["image_id"]
    who, context = await _upload_context(request, image_id)
    body = await http.read_limited(request, JSON_LIMIT)
    if len(body) > JSON_LIMIT:
        raise ImageJSONTooLarge(image_id)
    if not who.open_mode and not context:
        raise NotInPush(image_id)
    await request.app[V1].put_json(image_id, body, who.user, readable(request, who))
    return web.json_response(True)


async def put_layer(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
    image_id = params["image_id"]
    who, context = await _upload_context(request, image_id)
    if not who.open_mode and not context:
        raise ImageNotFound(image_id)
    await request.app[V1].put_layer(image_id, http.body_chunks(request), who.user)
    return web.json_response(True)


async def put_checksum(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
    image_id = params["image_id"]
    who, context = await _upload_context(request, image_id)
    if not who.open_mode and not context:
        raise ImageNotFound(image_id)
    await request.app[V1].put_checksum(
        image_id,
        request.headers.get("X-Docker-Checksum-Payload"),
        request.headers.get("X-Docker-Checksum"),
        context[0] if context else None,
        who.user,
    )
    return web.json_response(True)
