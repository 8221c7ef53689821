"""Every /v1/ route, declared once, and the v1 error dialect (`{"error": "..."}`).

`/v1/repositories/...` paths are parsed from the end (contract section 3.3): the fixed suffix
order resolves ambiguous names deterministically.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from aiohttp import web
from aiohttp.typedefs import Handler as Middleware

from moorage.api.v1 import images, index
from moorage.api.v1.access import V1Unauthorized
from moorage.content.v1 import V1Error, check_image_id, repository_name
from moorage.errors import StorageFull

log = logging.getLogger("moorage.api.v1")

REGISTRY_VERSION = "0.9.1"
Handler = Callable[..., Awaitable[web.StreamResponse]]


def _handlers(**by_method: Handler) -> dict[str, Handler]:
    return dict(by_method)


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps({"error": message}).encode(),
        content_type="application/json",
        headers=headers,
    )


def _repository_route(segments: list[str]) -> tuple[str, dict[str, Handler], dict[str, str]]:
    """(name part, handlers by method, extra params) for /v1/repositories/<segments>."""
    k = len(segments)
    if k >= 4 and segments[-3] == "tags" and segments[-1] == "json":
        handlers = _handlers(GET=index.tag_json, HEAD=index.tag_json)
        return "/".join(segments[:-3]), handlers, {"tag": segments[-2]}
    if k >= 3 and segments[-2] == "tags":
        handlers = _handlers(
            GET=index.get_tag, HEAD=index.get_tag, PUT=index.put_tag, DELETE=index.delete_tag
        )
        return "/".join(segments[:-2]), handlers, {"tag": segments[-1]}
    if k >= 2 and segments[-1] == "tags":
        handlers = _handlers(
            GET=index.list_tags, HEAD=index.list_tags, DELETE=index.delete_repository
        )
        return "/".join(segments[:-1]), handlers, {}
    if k >= 2 and segments[-1] == "images":
        handlers = _handlers(
            GET=index.list_images,
            HEAD=index.list_images,
            PUT=index.finish_push,
            DELETE=index.delete_images,
        )
        return "/".join(segments[:-1]), handlers, {}
    if k >= 2 and segments[-1] == "json":
        handlers = _handlers(GET=index.repository_json, HEAD=index.repository_json)
        return "/".join(segments[:-1]), handlers, {}
    if k >= 2 and segments[-1] in ("properties", "auth"):
        return "/".join(segments[:-1]), {}, {}
    handlers = _handlers(PUT=index.start_push, DELETE=index.delete_repository)
    return "/".join(segments), handlers, {}


_IMAGE_ROUTES: dict[str, dict[str, Handler]] = {
    "json": _handlers(GET=images.get_json, HEAD=images.get_json, PUT=images.put_json),
    "layer": _handlers(GET=images.get_layer, HEAD=images.get_layer, PUT=images.put_layer),
    "checksum": _handlers(PUT=images.put_checksum),
    "ancestry": _handlers(GET=images.ancestry, HEAD=images.ancestry),
}
_PING = _handlers(GET=index.ping, HEAD=index.ping)
_USERS = _handlers(GET=index.login, HEAD=index.login, POST=index.register)
_USER = _handlers(PUT=index.update_user)
_SEARCH = _handlers(GET=index.search, HEAD=index.search)


def _method(handlers: dict[str, Handler], request: web.Request) -> Handler:
    handler = handlers.get(request.method)
    if handler is None:
        raise _MethodNotAllowed(sorted(handlers))
    return handler


class _MethodNotAllowed(Exception):
    def __init__(self, allow: list[str]) -> None:
        super().__init__("Method not allowed")
        self.allow = allow


async def dispatch(request: web.Request) -> web.StreamResponse:
    response: web.StreamResponse = await _dispatch(request)
    return response


async def _dispatch(request: web.Request) -> Any:
    path = request.path  # already percent-decoded once
    if path in ("/_ping", "/v1/_ping", "/v1/_ping/"):
        return await _method(_PING, request)(request)
    rest = path[len("/v1/") :]
    if rest in ("users", "users/"):
        return await _method(_USERS, request)(request)
    if rest.startswith("users/"):
        return await _method(_USER, request)(request, rest[6:].strip("/"))
    if rest in ("search", "search/"):
        return await _method(_SEARCH, request)(request)
    if rest.startswith("images/"):
        parts = rest[len("images/") :].split("/")
        if len(parts) != 2 or parts[1] not in _IMAGE_ROUTES:
            raise V1Error(404, "Not found")
        image_id = check_image_id(parts[0])
        return await _method(_IMAGE_ROUTES[parts[1]], request)(request, image_id)
    if rest.startswith("repositories/"):
        raw = request.raw_path.split("?", 1)[0][len("/v1/repositories/") :]
        raw_segments = raw.rstrip("/").split("/")
        if any("%2f" in s.lower() or "%00" in s for s in raw_segments):
            raise V1Error(400, "Invalid repository name")
        segments = [unquote(s) for s in raw_segments]
        if any(s in ("", ".", "..") or "\0" in s for s in segments):
            raise V1Error(400, "Invalid repository name")
        name, handlers, params = _repository_route(segments)
        repository = repository_name(name)
        if not handlers:
            raise V1Error(404, "Not found")
        return await _method(handlers, request)(request, repository, **params)
    raise V1Error(404, "Not found")


@web.middleware
async def errors_middleware(request: web.Request, handler: Middleware) -> web.StreamResponse:
    if not (request.path.startswith("/v1/") or request.path in ("/v1", "/_ping")):
        return await handler(request)
    try:
        return await handler(request)
    except V1Unauthorized as exc:
        return error_response(401, exc.message, {"WWW-Authenticate": exc.challenge})
    except V1Error as exc:
        return error_response(exc.status, exc.message)
    except StorageFull as exc:
        return error_response(exc.status, exc.message)
    except _MethodNotAllowed as exc:
        return error_response(405, "Method not allowed", {"Allow": ", ".join(exc.allow)})
    except web.HTTPException:
        raise
    except Exception:
        log.exception("unexpected error", extra={"path": request.path})
        return error_response(500, "Internal server error")


async def add_version_header(request: web.Request, response: web.StreamResponse) -> None:
    if request.path.startswith("/v1/") or request.path == "/_ping":
        response.headers["X-Docker-Registry-Version"] = REGISTRY_VERSION


def setup(app: web.Application) -> None:
    app.router.add_route("*", "/_ping", dispatch)
    app.router.add_route("*", "/v1/{tail:.*}", dispatch)
