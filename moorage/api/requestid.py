"""Every request gets an id: it is sent back in `X-Request-Id` and named in the logs.

A sane `X-Request-Id` from the client (or a proxy in front) is kept, so one id follows a
request through every hop; anything else is replaced by a fresh one. The id is stored on the
request under `context.REQUEST_ID` for the protocols' error middlewares to log.

This middleware is the outermost one: a client that hung up mid-request and was not already
handled by a protocol's middleware is logged here as one info line, never as a 500.
"""

from __future__ import annotations

import logging
import os
import re

from aiohttp import web
from aiohttp.typedefs import Handler

from moorage.api import http
from moorage.api.context import REQUEST_ID

log = logging.getLogger("moorage.api")

HEADER = "X-Request-Id"
_SANE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+/=-]{0,127}")


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    incoming = request.headers.get(HEADER, "")
    # 128 random bits in hex, as uuid4().hex has them (a fifth of its cost: no UUID object).
    request[REQUEST_ID] = incoming if _SANE.fullmatch(incoming) else os.urandom(16).hex()
    try:
        return await handler(request)
    except ConnectionError as exc:
        if not http.client_went_away(request, exc):
            raise
        return http.went_away(request, log)


async def add_header(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare hook: every response names its request."""
    rid = request.get(REQUEST_ID)
    if rid is not None:
        response.headers[HEADER] = rid
