"""Every /v1/ route (and `/_ping`), declared once: pattern, and per method the handler, the
access it needs and the challenge a 401 carries.

`/v1/repositories/...` paths are matched from the end (contract section 3.3): the routes are
tried in the table's order, the name is the greedy prefix before the known suffix, so
`/v1/repositories/foo/tags/images` is tag `images` of `library/foo`. The name is then checked
(one or two components, the OCI grammar) before anything else.

Access on a repository route is checked here, from the table, before the handler runs. Image
routes carry no repository: who may read or upload an image follows from its links and the
caller's push sessions (contract section 9), decided in `moorage.api.v1.images`.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote

from aiohttp import web

from moorage.api import mirror, notify
from moorage.api.context import EVENTS, REGISTRY
from moorage.api.maintenance import MAINTENANCE, READS, refusal
from moorage.api.metrics import routed
from moorage.api.v1 import images, index
from moorage.api.v1.access import caller, require
from moorage.api.v1.errors import (
    AccessDenied,
    EndpointNotFound,
    MethodNotAllowed,
    V1Unauthorized,
)
from moorage.content.v1 import RepositoryNameInvalid, check_image_id, repository_name

REGISTRY_VERSION = "0.9.1"

Handler = Callable[[web.Request, dict[str, str]], Awaitable[web.StreamResponse]]
# On the path's repository: read, write, delete, or delete-or-write (tag deletes, as quay).
# On an image: "image-read"/"image-write", decided by the handler (section 9). None: no check.
Access = Literal["read", "write", "delete", "tag-delete", "image-read", "image-write"]
Challenge = Literal["token", "basic"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    handler: Handler
    access: Access | None
    challenge: Challenge = "token"
    # A method other than GET/HEAD that changes nothing, so read-only mode lets it through.
    changes_nothing: bool = False


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    pattern: re.Pattern[str]
    methods: dict[str, Endpoint]


def _route(name: str, pattern: str, **methods: Endpoint) -> Route:
    """One route; a GET is also the route's HEAD (the same answer without a body)."""
    if "GET" in methods:
        methods.setdefault("HEAD", methods["GET"])
    return Route(name, re.compile(f"^{pattern}$"), methods)


_REPO = r"/repositories/(?P<name>.+)"
_IMAGE = r"/images/(?P<image_id>[^/]*)"
_PING = Endpoint(index.ping, None)
ROUTES: tuple[Route, ...] = (
    # -- ping, users, search (no repository) --
    _route("ping", r"/_ping/?", GET=_PING),
    _route(
        "users",
        r"/users/?",
        GET=Endpoint(index.login, None, "basic"),
        # Self-registration is off: it answers 401, which sends `docker login` on to GET.
        POST=Endpoint(index.register, None, "basic", changes_nothing=True),
    ),
    _route("user", r"/users/+(?P<username>.+?)/*", PUT=Endpoint(index.update_user, None, "basic")),
    _route(
        "search",
        r"/search/?",
        GET=Endpoint(index.search, None, "basic"),
    ),
    # -- images (global id namespace) --
    _route(
        "image_json",
        rf"{_IMAGE}/json",
        GET=Endpoint(images.get_json, "image-read"),
        PUT=Endpoint(images.put_json, "image-write"),
    ),
    _route(
        "image_layer",
        rf"{_IMAGE}/layer",
        GET=Endpoint(images.get_layer, "image-read"),
        PUT=Endpoint(images.put_layer, "image-write"),
    ),
    _route(
        "image_checksum", rf"{_IMAGE}/checksum", PUT=Endpoint(images.put_checksum, "image-write")
    ),
    _route(
        "image_ancestry",
        rf"{_IMAGE}/ancestry",
        GET=Endpoint(images.ancestry, "image-read"),
    ),
    # -- repositories, matched from the end in this order (section 3.3) --
    _route(
        "tag_json",
        rf"{_REPO}/tags/(?P<tag>[^/]+)/json",
        GET=Endpoint(index.tag_json, "read"),
    ),
    _route(
        "tag",
        rf"{_REPO}/tags/(?P<tag>[^/]+)",
        GET=Endpoint(index.get_tag, "read"),
        PUT=Endpoint(index.put_tag, "write"),
        DELETE=Endpoint(index.delete_tag, "tag-delete"),
    ),
    _route(
        "tags",
        rf"{_REPO}/tags",
        GET=Endpoint(index.list_tags, "read"),
        DELETE=Endpoint(index.delete_repository, "delete", "basic"),
    ),
    _route(
        "repository_images",
        rf"{_REPO}/images",
        GET=Endpoint(index.list_images, "read", "basic"),
        PUT=Endpoint(index.finish_push, "write", "basic"),
        DELETE=Endpoint(index.delete_images, "delete", "basic"),
    ),
    _route(
        "repository_json",
        rf"{_REPO}/json",
        GET=Endpoint(index.repository_json, "read"),
    ),
    # Optional in the contract (4.3.6, 4.5.6) and not offered: a valid name answers 404.
    _route("repository_extras", rf"{_REPO}/(?:properties|auth)"),
    _route(
        "repository",
        _REPO,
        PUT=Endpoint(index.start_push, "write", "basic"),
        DELETE=Endpoint(index.delete_repository, "delete", "basic"),
    ),
)


def match(target: str) -> tuple[Route, dict[str, str]] | None:
    for route in ROUTES:
        found = route.pattern.match(target)
        if found:
            return route, found.groupdict()
    return None


def target(request: web.Request) -> str:
    """The path to match, after `/v1` (`/_ping` stays itself). Repository paths are taken from
    the raw path so that an encoded `/` cannot split or join name components."""
    path = request.path  # percent-decoded once
    if path == "/_ping":
        return path
    tail = path[len("/v1") :]
    if not tail.startswith("/repositories/"):
        return tail
    raw = request.raw_path.split("?", 1)[0][len("/v1/repositories/") :]
    raw_segments = raw.rstrip("/").split("/")
    if any("%2f" in s.lower() or "%00" in s for s in raw_segments):
        raise RepositoryNameInvalid(raw)
    segments = [unquote(s) for s in raw_segments]
    if any(s in ("", ".", "..") or "\0" in s for s in segments):
        raise RepositoryNameInvalid(raw)
    return "/repositories/" + "/".join(segments)


async def dispatch(request: web.Request) -> web.StreamResponse:
    found = match(target(request))
    if found is None:
        raise EndpointNotFound(request.path)
    route, params = found
    routed(request, f"v1.{route.name}")
    if "name" in params:
        params["repository"] = repository_name(params.pop("name"))
    if "image_id" in params:
        check_image_id(params["image_id"])
    if not route.methods:
        raise EndpointNotFound(request.path)
    endpoint = route.methods.get(request.method)
    if endpoint is None:
        raise MethodNotAllowed(sorted(route.methods))
    await _authorize(request, endpoint, params.get("repository"))
    if (
        request.method not in READS
        and not endpoint.changes_nothing
        and request.app[MAINTENANCE].readonly
    ):
        raise refusal(route.methods)
    await mirror.before_v1(request, route.name, params)
    response = await endpoint.handler(request, params)
    if "repository" in params:
        request.app[REGISTRY].activity.after_v1(
            route.name, request.method, response.status, params["repository"]
        )
        if EVENTS in request.app:
            await notify.after_v1(request, route.name, params, response)
    return response


async def _authorize(request: web.Request, endpoint: Endpoint, repository: str | None) -> None:
    if endpoint.access is None:
        return
    token_route = endpoint.challenge == "token"
    who = await caller(request, token_route)  # 401 for bad credentials, on every route
    if repository is None:
        return  # an image route: its handler decides (section 9)
    if endpoint.access == "tag-delete":
        try:
            require(request, who, repository, "delete", token_route)
        except (AccessDenied, V1Unauthorized):
            # Deleting a tag also needs only write (as quay): a pusher may retract its tag.
            require(request, who, repository, "write", token_route)
        return
    require(request, who, repository, endpoint.access, token_route)


async def add_version_header(request: web.Request, response: web.StreamResponse) -> None:
    if request.path.startswith("/v1/") or request.path in ("/v1", "/_ping"):
        response.headers["X-Docker-Registry-Version"] = REGISTRY_VERSION


def setup(app: web.Application) -> None:
    app.router.add_route("*", "/_ping", dispatch)
    app.router.add_route("*", "/v1", dispatch)
    app.router.add_route("*", "/v1/{tail:.*}", dispatch)
