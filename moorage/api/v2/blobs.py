"""Blob GET/HEAD (zero-copy, with Range) and DELETE."""

from __future__ import annotations

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
    try:
        span = http.byte_range(request.headers.get("Range"), blob.size)
    except http.Unsatisfiable:
        headers["Content-Range"] = f"bytes */{blob.size}"
        return web.Response(status=416, headers=headers)
    status, offset, count = 200, 0, blob.size
    if span is not None:
        status, offset, count = 206, span[0], span[1] - span[0] + 1
        headers["Content-Range"] = f"bytes {span[0]}-{span[1]}/{blob.size}"
    response = web.StreamResponse(status=status, headers=headers)
    if blob.path is not None:
        return await http.send_file(request, response, blob.path, offset, count)
    response.content_length = count
    await response.prepare(request)
    if request.method != "HEAD":
        async for chunk in registry(request).blobs.read(blob, offset, count):
            await response.write(chunk)
    await response.write_eof()
    return response


async def delete(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
    await registry(request).delete_blob(params["repository"], params["digest"])
    return web.Response(status=202, headers={"Content-Length": "0"})
