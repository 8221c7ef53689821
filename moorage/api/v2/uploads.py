"""Blob uploads: start (plain, single-POST, mount), PATCH, status, PUT, cancel."""

from __future__ import annotations

import re

from aiohttp import web

from moorage.api import http
from moorage.api.auth import authenticator, identify
from moorage.api.context import registry, settings
from moorage.api.v2.errors import upload_headers
from moorage.content import names
from moorage.content.blobs import UploadState
from moorage.errors import NameInvalid

_CONTENT_RANGE = re.compile(r"^([0-9]+)-([0-9]+)$")


def _created(name: str, digest: str) -> web.Response:
    return web.Response(
        status=201,
        headers={
            "Location": f"/v2/{name}/blobs/{digest}",
            "Docker-Content-Digest": digest,
            "Content-Length": "0",
        },
    )


def _accepted(name: str, state: UploadState, status: int = 202) -> web.Response:
    headers = upload_headers(name, state.id, state.offset)
    headers["Content-Length"] = "0"
    return web.Response(status=status, headers=headers)


async def start(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
    name, repository = params["name"], params["repository"]
    reg = registry(request)
    mount = request.query.get("mount")
    if mount is not None:
        source_name = request.query.get("from")
        source: str | None = None
        if source_name is not None:
            try:
                source = names.canonical_repository(source_name)
            except NameInvalid:
                source = None
        wanted = source_name is not None and source is not None
        automatic = source_name is None and settings(request).mount.automatic
        if wanted or automatic:
            # A source the caller cannot pull is treated like an absent blob: a plain 202
            # session, so nothing leaks about what other repositories hold.
            identity = await identify(request)
            auth = authenticator(request)

            def can_pull(other: str) -> bool:
                if automatic:
                    return auth.can_pull_by_rules(identity, other)
                return auth.can_pull(identity, other)

            if await reg.blobs.mount(repository, mount, source, can_pull):
                return _created(name, mount)
    digest = request.query.get("digest")
    if digest is not None:
        stored = await reg.blobs.upload(
            repository, digest, http.body_chunks(request), http.content_length(request)
        )
        return _created(name, stored)
    return _accepted(name, await reg.blobs.start(repository))


def _content_range(request: web.Request) -> tuple[int, int] | None:
    value = request.headers.get("Content-Range")
    if value is None:
        return None
    match = _CONTENT_RANGE.match(value.strip())
    if not match:
        return (-1, -1)  # never the current offset: answered 416
    return int(match.group(1)), int(match.group(2))


async def patch(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
    state = await registry(request).blobs.append(
        params["repository"],
        params["uuid"],
        http.body_chunks(request),
        _content_range(request),
        http.content_length(request),
    )
    return _accepted(params["name"], state)


async def put(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
    digest = await registry(request).blobs.finish(
        params["repository"],
        params["uuid"],
        request.query.getall("digest", []),
        http.body_chunks(request) if request.can_read_body else None,
        _content_range(request),
        http.content_length(request),
    )
    return _created(params["name"], digest)


async def status(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
    state = await registry(request).blobs.status(params["repository"], params["uuid"])
    return _accepted(params["name"], state, status=204)


async def cancel(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
    await registry(request).blobs.cancel(params["repository"], params["uuid"])
    return web.Response(status=204, headers={"Content-Length": "0"})
