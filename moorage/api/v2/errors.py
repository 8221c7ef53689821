"""Renders registry errors in the v2 dialect: `{"errors": [{"code", "message", "detail"}]}`.

One middleware for the whole `/v2/` tree: every response gets the API version header, every
RegistryError becomes its JSON body and status, anything unexpected becomes 500 UNKNOWN.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from moorage.api import http
from moorage.api.context import V2_NAME, request_id
from moorage.content.blobs import RangeMismatch
from moorage.errors import RegistryError, RegistryErrors

log = logging.getLogger("moorage.api.v2")

API_VERSION = ("Docker-Distribution-API-Version", "registry/2.0")


def error_response(error: RegistryError, headers: dict[str, str] | None = None) -> web.Response:
    entries = error.errors if isinstance(error, RegistryErrors) else [error]
    body: dict[str, Any] = {"errors": [e.as_dict() for e in entries]}
    return web.json_response(
        body, status=error.status, headers={**error.headers, **(headers or {})}
    )


def upload_headers(name: str, session_id: str, offset: int) -> dict[str, str]:
    return {
        "Location": f"/v2/{name}/blobs/uploads/{session_id}",
        "Range": f"0-{max(offset - 1, 0)}",
        "Docker-Upload-UUID": session_id,
    }


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/v2"):
        return await handler(request)
    try:
        response = await handler(request)
    except RangeMismatch as exc:
        name = request.get(V2_NAME, "")
        response = web.Response(
            status=416, headers=upload_headers(name, exc.state.id, exc.state.offset)
        )
    except RegistryError as exc:
        log.debug(
            "request failed",
            extra={"code": exc.code, "path": request.path, "request_id": request_id(request)},
        )
        response = error_response(exc)
    except web.HTTPException:
        raise
    except Exception as exc:
        if http.client_went_away(request, exc):
            return http.went_away(request, log)
        http.log_unexpected(request, log)
        response = error_response(RegistryError())
    return response


async def add_version_header(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare hook: every /v2/ response says which API it speaks."""
    if request.path.startswith("/v2"):
        response.headers[API_VERSION[0]] = API_VERSION[1]
