"""Manifest GET/HEAD, PUT and DELETE."""

from __future__ import annotations

from aiohttp import web

from moorage.api import http
from moorage.api.context import IDENTITY, registry, settings


async def get(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
    manifest = await registry(request).get_manifest(
        params["repository"], params["reference"], request.headers.getall("Accept", [])
    )
    headers = {
        "Docker-Content-Digest": manifest.digest,
        "ETag": f'"{manifest.digest}"',
        "Content-Type": manifest.media_type,
    }
    if http.etag_matches(request.headers.get("If-None-Match"), manifest.digest):
        return web.Response(status=304, headers=headers)
    # Response.content_type would add a charset parameter; the stored type goes out as is.
    response = web.Response(body=manifest.content, headers=headers)
    return response


async def put(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
    limit = settings(request).manifests.maxsize
    content = await http.read_limited(request, limit)
    identity = request.get(IDENTITY)  # set by the auth check before every handler
    result = await registry(request).put_manifest(
        params["repository"],
        params["reference"],
        request.headers.get("Content-Type"),
        content,
        pusher=identity.name if identity is not None else None,
    )
    headers = {
        "Location": f"/v2/{params['name']}/manifests/{result.digest}",
        "Docker-Content-Digest": result.digest,
        "Content-Length": "0",
    }
    if result.subject:
        headers["OCI-Subject"] = result.subject
    return web.Response(status=201, headers=headers)


async def delete(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
    await registry(request).delete_manifest(params["repository"], params["reference"])
    return web.Response(status=202, headers={"Content-Length": "0"})
