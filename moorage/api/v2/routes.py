"""Every /v2/ route, declared once.

Repository names contain slashes, so routing matches the known suffix of the path and takes
what stands before it as the name, which is then checked against the grammar. Each route says
which access each method needs; the auth layer reads that table.

Routing reads the path as sent (still percent-encoded) and decodes each part after the match:
an encoded `/` (`%2F`) inside a reference, digest or upload id stays inside that part, so
`manifests/sha256:..%2F..%2Fblobs%2Fx` is a manifest reference (400 DIGEST_INVALID), never a
different route.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import unquote

from aiohttp import web

from moorage.api import mirror, notify
from moorage.api.auth import authorize
from moorage.api.context import EVENTS, REGISTRY, V2_NAME
from moorage.api.maintenance import MAINTENANCE, READS, refusal
from moorage.api.metrics import routed
from moorage.api.v2 import blobs, discovery, manifests, uploads
from moorage.auth.access import Scope
from moorage.content import names
from moorage.errors import RegistryError, Unsupported

Handler = Callable[[web.Request, dict[str, str]], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    name: str
    pattern: re.Pattern[str]
    methods: dict[str, tuple[Handler, str | None]]  # method -> (handler, access needed)


def _route(name: str, pattern: str, **methods: tuple[Handler, str | None]) -> Route:
    return Route(name, re.compile(f"^{pattern}$"), methods)


_NAME = r"(?P<name>.+)"
ROUTES: tuple[Route, ...] = (
    _route("base", r"/?", GET=(discovery.base, None), HEAD=(discovery.base, None)),
    _route("catalog", r"/_catalog", GET=(discovery.catalog, "catalog")),
    _route(
        "upload",
        rf"/{_NAME}/blobs/uploads/(?P<uuid>[^/]+)",
        GET=(uploads.status, "pull"),
        PATCH=(uploads.patch, "push"),
        PUT=(uploads.put, "push"),
        # Cancelling needs push only: containers/image cancels unused sessions with a
        # push-only token after a mount attempt answered 202.
        DELETE=(uploads.cancel, "push-only"),
    ),
    _route("uploads", rf"/{_NAME}/blobs/uploads/?", POST=(uploads.start, "push")),
    _route(
        "blob",
        rf"/{_NAME}/blobs/(?P<digest>[^/]+)",
        GET=(blobs.get, "pull"),
        HEAD=(blobs.get, "pull"),
        DELETE=(blobs.delete, "delete"),
    ),
    _route(
        "manifest",
        rf"/{_NAME}/manifests/(?P<reference>[^/]+)",
        GET=(manifests.get, "pull"),
        HEAD=(manifests.get, "pull"),
        PUT=(manifests.put, "push"),
        DELETE=(manifests.delete, "delete"),
    ),
    _route("tags", rf"/{_NAME}/tags/list", GET=(discovery.tags, "pull")),
    _route(
        "referrers",
        rf"/{_NAME}/referrers/(?P<digest>[^/]+)",
        GET=(discovery.referrers, "pull"),
    ),
)


def match(raw_path: str) -> tuple[Route, dict[str, str]] | None:
    """The route of a path after `/v2`, as sent (percent-encoded), and its decoded parts."""
    for route in ROUTES:
        found = route.pattern.match(raw_path)
        if found:
            return route, {key: unquote(value) for key, value in found.groupdict().items()}
    return None


async def dispatch(request: web.Request) -> web.StreamResponse:
    tail = request.rel_url.raw_path[len("/v2") :]
    found = match(tail)
    if found is None:
        raise _NotFound()
    route, params = found
    routed(request, f"v2.{route.name}")
    entry = route.methods.get(request.method)
    if entry is None:
        allowed = ", ".join(sorted(route.methods))
        error = Unsupported("method not allowed", {"method": request.method})
        error.headers["Allow"] = allowed
        raise error
    handler, access = entry
    if "name" in params:
        request[V2_NAME] = params["name"]
        params["repository"] = names.canonical_repository(params["name"])
    await authorize(
        request, _scopes(access, params.get("repository")), _scopes(access, params.get("name"))
    )
    if request.method not in READS and request.app[MAINTENANCE].readonly:
        raise refusal(route.methods)
    response = await mirror.handle(request, route.name, handler, params)
    if "repository" in params:
        request.app[REGISTRY].activity.after_v2(
            route.name,
            request.method,
            response.status,
            response.content_length,
            params["repository"],
        )
        if EVENTS in request.app:
            await notify.after_v2(request, route.name, params, response)
    return response


# What each access name needs, as Distribution maps it: writing needs pull and push.
_ACTIONS = {
    "pull": frozenset({"pull"}),
    "push": frozenset({"pull", "push"}),
    "push-only": frozenset({"push"}),
    "delete": frozenset({"delete"}),
}


def _scopes(access: str | None, repository: str | None) -> list[Scope]:
    if access is None:
        return []
    if access == "catalog":
        return [Scope("registry", "catalog", frozenset({"*"}))]
    assert repository is not None
    return [Scope("repository", repository, _ACTIONS[access])]


class _NotFound(RegistryError):
    code, status, default_message = "NAME_UNKNOWN", 404, "no such endpoint"


def setup(app: web.Application) -> None:
    app.router.add_route("*", "/v2", dispatch)
    app.router.add_route("*", "/v2/{tail:.*}", dispatch)
