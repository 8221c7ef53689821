"""The base endpoint, tag listing, the catalog and the referrers API."""

from __future__ import annotations

import json
from urllib.parse import urlencode

from aiohttp import web

from moorage.api.auth import authenticator, identify
from moorage.api.context import CURSORS, registry, settings
from moorage.content import manifests
from moorage.content.registry import CatalogFilter
from moorage.errors import PaginationNumberInvalid

CATALOG_CURSOR = b"catalog"  # what a sealed `last` of the catalog is for


async def base(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
    return web.json_response({})


ALL = 1 << 62


def _page_size(request: web.Request, default: int, maximum: int) -> int:
    value = request.query.get("n")
    if value is None or value == "":
        return default
    if not value.isdigit():
        raise PaginationNumberInvalid(detail={"n": value})
    return min(int(value), maximum)


def _link(path: str, query: dict[str, str]) -> str:
    return f'<{path}?{urlencode(query)}>; rel="next"'


async def tags(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
    # Without `n` the whole list comes back (clients such as skopeo expect that).
    limit = _page_size(request, ALL, settings(request).pagination.tagsmax)
    last = request.query.get("last")
    page = await registry(request).tags(params["repository"], last, limit)
    headers = {}
    if page.more and page.items:
        path = f"/v2/{params['name']}/tags/list"
        headers["Link"] = _link(path, {"n": str(limit), "last": page.items[-1]})
    return web.json_response({"name": params["name"], "tags": page.items}, headers=headers)


async def catalog(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
    pagination = settings(request).pagination
    limit = _page_size(request, pagination.catalogdefault, pagination.catalogmax)
    identity = await identify(request)
    auth = authenticator(request)
    globs = auth.catalog_globs(identity)

    def visible(repository: str) -> bool:
        return auth.may_list(identity, repository)

    only = None if globs is None else CatalogFilter(globs, visible)
    last = request.query.get("last")
    if last is not None:
        last = request.app[CURSORS].open(last, CATALOG_CURSOR) or last
    page = await registry(request).catalog(last, limit, only)
    headers = {}
    if page.next_last is not None:
        following = page.next_last
        if page.resume is not None:
            # A page the time bound ended stops at the last name it looked at, which the
            # caller may not be allowed to see: the Link carries it sealed.
            following = request.app[CURSORS].seal(page.resume, CATALOG_CURSOR)
        headers["Link"] = _link("/v2/_catalog", {"n": str(limit), "last": following})
    return web.json_response({"repositories": page.items}, headers=headers)


async def referrers(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
    artifact_type = request.query.get("artifactType")
    page = await registry(request).referrers(
        params["repository"], params["digest"], artifact_type, request.query.get("next")
    )
    headers = {"Content-Type": manifests.OCI_INDEX}
    if artifact_type is not None:
        headers["OCI-Filters-Applied"] = "artifactType"
    if page.next_cursor is not None:
        query = {"next": page.next_cursor}
        if artifact_type is not None:
            query["artifactType"] = artifact_type
        headers["Link"] = _link(f"/v2/{params['name']}/referrers/{params['digest']}", query)
    body = {"schemaVersion": 2, "mediaType": manifests.OCI_INDEX, "manifests": page.descriptors}
    return web.Response(body=json.dumps(body).encode(), headers=headers)
