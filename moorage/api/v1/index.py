"""v1 index and repository endpoints: ping, users, search, push start/finish, image lists,
tags, repository delete. Moorage is always standalone: it is its own index."""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Any

from aiohttp import web

from moorage.api import http
from moorage.api.auth import authenticator, client_address
from moorage.api.context import V1, V1TOKENS
from moorage.api.proxy import external_base
from moorage.api.v1.access import CALLER, Caller, allowed, caller, readable
from moorage.api.v1.errors import (
    AccessDenied,
    BodyTooLarge,
    PasswordTooShort,
    UserNotFound,
    V1Unauthorized,
)
from moorage.auth.service import BadCredentials, parse_basic
from moorage.content import jsondoc
from moorage.content.registry import CatalogFilter
from moorage.content.v1 import BodyUndecodable, DataInvalid, check_tag, parse_image_list

BODY_LIMIT = 16 * 1024 * 1024
NO_CACHE = {"Cache-Control": "no-cache", "Pragma": "no-cache", "Expires": "-1"}


def _json(value: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(value, separators=(",", ":"), sort_keys=True).encode(),
        content_type="application/json",
        headers={**NO_CACHE, **(headers or {})},
    )


def _endpoint(request: web.Request) -> str:
    """host[:port] the client reached the registry at (v1 endpoints have no scheme)."""
    return external_base(request).split("://", 1)[-1]


def _index_headers(
    request: web.Request, who: Caller, repository: str, access: str, always: bool = False
) -> dict[str, str]:
    headers = {"X-Docker-Endpoints": _endpoint(request)}
    wants = request.headers.get("X-Docker-Token", "").lower() == "true"
    if wants or always:
        token = request.app[V1TOKENS].issue(repository, access, who.user)
        headers["X-Docker-Token"] = token
        headers["WWW-Authenticate"] = f"Token {token}"
    return headers


async def _body(request: web.Request) -> bytes:
    body = await http.read_limited(request, BODY_LIMIT)
    if len(body) > BODY_LIMIT:
        raise BodyTooLarge(len(body))
    return body


# -- ping, users, search -----------------------------------------------------------------


def _client_json(body: bytes) -> Any:
    """A JSON request body, nesting bounded (jsondoc); BodyUndecodable if it is not one."""
    try:
        return jsondoc.loads(body)
    except ValueError as exc:
        raise BodyUndecodable(str(exc)) from exc


async def ping(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
    return _json(True, headers={"X-Docker-Registry-Standalone": "true"})


async def register(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
    document = _client_json(await _body(request) or b"null")
    if not isinstance(document, dict):
        raise BodyUndecodable("user record is not an object")
    # Self-registration is off: 401 sends `docker login` on to the credential check.
    raise V1Unauthorized(f'Basic realm="{authenticator(request).realm}"')


async def login(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
    auth = authenticator(request)
    if not auth.enabled:
        return _json("OK")
    challenge = f'Basic realm="{auth.realm}"'
    header = request.headers.get("Authorization", "")
    try:
        credentials = parse_basic(header) if header else None
        if credentials is None:
            raise V1Unauthorized(challenge)
        await auth.login(credentials, client_address(request))
    except BadCredentials as exc:
        raise V1Unauthorized(challenge) from exc
    return _json("OK")


async def update_user(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
    """Index "update user": a user changes their own password (the e-mail is not kept)."""
    name = params["username"]
    auth = authenticator(request)
    challenge = f'Basic realm="{auth.realm}"'
    if not auth.enabled or auth.users is None:
        raise UserNotFound(name)
    header = request.headers.get("Authorization", "")
    try:
        credentials = parse_basic(header) if header else None
        if credentials is None:
            raise V1Unauthorized(challenge)
        user = await auth.login(credentials, client_address(request))
    except BadCredentials as exc:
        raise V1Unauthorized(challenge) from exc
    document = _client_json(await _body(request))
    if not isinstance(document, dict):
        raise DataInvalid("user record is not an object")
    if name not in auth.users.users():
        raise UserNotFound(name)
    if user != name:
        raise AccessDenied(name)
    password = document.get("password")
    if password is not None:
        if not isinstance(password, str) or len(password) < 5:
            raise PasswordTooShort(name)
        await asyncio.to_thread(auth.users.set_password, name, password)
    return web.Response(status=204)


async def search(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
    who = await caller(request, token_route=False)
    term = request.query.get("q", "")
    size = _number(request.query.get("n"), 25, 1, 100)
    page = _number(request.query.get("page"), 1, 1, 1_000_000)

    def visible(name: str) -> bool:
        return allowed(request, who, name, "read")

    globs = None if who.open_mode else authenticator(request).policy.pull_globs(who.user)
    only = None if globs is None else CatalogFilter(globs, visible)
    found = await request.app[V1].search(term, only)
    chunk = found[(page - 1) * size : page * size]
    results = [
        {
            "name": name,
            "description": "",
            "star_count": 0,
            "is_official": False,
            "is_trusted": False,
            "is_automated": False,
        }
        for name in chunk
    ]
    return _json(
        {
            "query": term,
            "num_results": len(found),
            "num_pages": math.ceil(len(found) / size),
            "page": page,
            "page_size": size,
            "results": results,
        }
    )


def _number(value: str | None, default: int, low: int, high: int) -> int:
    if value is None or not value.isdigit():
        return default
    return max(low, min(high, int(value)))


# -- index: pushes, image lists, repository delete -----------------------------------------


async def start_push(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
    repository, who = params["repository"], request[CALLER]
    entries = parse_image_list(await _body(request))
    service = request.app[V1]
    await service.ensure_repository(repository)
    await service.start_push(repository, who.user, entries)
    return _json("", headers=_index_headers(request, who, repository, "write", always=True))


async def finish_push(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
    repository, who = params["repository"], request[CALLER]
    entries = parse_image_list(await _body(request))
    await request.app[V1].finish_push(repository, who.user, entries)
    return web.Response(status=204, headers=_index_headers(request, who, repository, "write"))


async def list_images(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
    repository, who = params["repository"], request[CALLER]
    listed = await request.app[V1].images(repository)
    return _json(listed, headers=_index_headers(request, who, repository, "read"))


async def delete_images(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
    repository, who = params["repository"], request[CALLER]
    await request.app[V1].require_repository(repository)
    return web.Response(status=204, headers=_index_headers(request, who, repository, "delete"))


async def delete_repository(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
    repository, who = params["repository"], request[CALLER]
    await request.app[V1].delete_repository(repository)
    headers = {}
    if request.headers.get("X-Docker-Token", "").lower() == "true":
        headers = _index_headers(request, who, repository, "delete")
    return _json(True, headers=headers)


# -- tags --------------------------------------------------------------------------------


async def list_tags(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
    return _json(await request.app[V1].tags(params["repository"]))


async def get_tag(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
    return _json(await request.app[V1].tag(params["repository"], params["tag"]))


async def put_tag(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
    repository, tag, who = params["repository"], params["tag"], request[CALLER]
    check_tag(tag)
    try:
        image_id = jsondoc.loads(await _body(request))
    except ValueError as exc:
        raise DataInvalid(str(exc)) from exc
    if not isinstance(image_id, str):
        raise DataInvalid("tag target is not a string")
    await request.app[V1].set_tag(
        repository, tag, image_id, readable(request, who), _client_from(request)
    )
    return _json(True)


async def delete_tag(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
    await request.app[V1].delete_tag(params["repository"], params["tag"])
    return _json(True)


_UNKNOWN_CLIENT: dict[str, object] = {
    "last_update": None,
    "docker_version": None,
    "docker_go_version": None,
    "arch": "amd64",
    "os": "linux",
    "kernel": None,
}


def _client_from(request: web.Request) -> dict[str, object]:
    """Tag metadata from the pushing client's User-Agent (`docker/1.2.0 go/go1.3.1 ...`)."""
    words = dict(
        part.split("/", 1) for part in request.headers.get("User-Agent", "").split() if "/" in part
    )
    return {
        "last_update": int(time.time()),
        "docker_version": words.get("docker"),
        "docker_go_version": words.get("go"),
        "arch": (words.get("arch") or "amd64").lower(),
        "os": (words.get("os") or "linux").lower(),
        "kernel": words.get("kernel"),
    }


async def tag_json(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
    repository, tag = params["repository"], params["tag"]
    await request.app[V1].tag(repository, tag)
    return _json(await request.app[V1].tag_info(repository, tag) or _UNKNOWN_CLIENT)


async def repository_json(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
    repository = params["repository"]
    await request.app[V1].tags(repository)
    return _json(await request.app[V1].tag_info(repository, "latest") or _UNKNOWN_CLIENT)
