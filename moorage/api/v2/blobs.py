"""Blob GET/HEAD (zero-copy, with Range) and DELETE."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from moorage.api import http
from moorage.api.context import registry, settings

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
    if request.method == "GET" and settings(request).storage.redirect:
        # The client fetches the bytes from the object store directly (a presigned URL), as
        # Distribution's `redirect` does; HEAD is answered here.
        url = await blobs.redirect(blob)
        if url is not None:
            return web.Response(status=307, headers={**headers, "Location": url})

    def read(offset: int, count: int) -> AsyncIterator[bytes]:
        return blobs.read(blob, offset, count)

    return await http.send_bytes(request, headers, blob.size, blob.path, read)


async def delete(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
    await registry(request).delete_blob(params["repository"], params["digest"])
    return web.Response(status=202, headers={"Content-Length": "0"})
