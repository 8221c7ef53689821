"""Blob GET/HEAD (zero-copy, with Range) and DELETE."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from moorage.api import http
from moorage.api.context import registry

IMMUTABLE = "max-age=31536000"


async def get(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
    blob = await registry(request).blobs.get(params["repository"], params["digest"])
    headers = {
        "Docker-Content-Digest": blob.digest,
        "ETag": f'"{blob.digest}"',
        "Accept-Ranges": "bytes",
        "Cache-Control": IMMUTABLE,
        "Content-Type": "application/octet-stream",
    }
    if http.etag_matches(request.headers.get("If-None-Match"), blob.digest):
        return web.Response(status=304, headers=headers)
    blobs = registry(request).blobs

    def read(offset: int, count: int) -> AsyncIterator[bytes]:
        return blobs.read(blob, offset, count)

    return await http.send_bytes(request, headers, blob.size, blob.path, read)


async def delete(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
    await registry(request).delete_blob(params["repository"], params["digest"])
    return web.Response(status=202, headers={"Content-Length": "0"})
