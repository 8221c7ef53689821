"""One log line per request (`log.accesslog`, on by default), in the logs' format: the request
id (as sent back in `X-Request-Id`), method, path, status, bytes sent, seconds, user,
repository, client address and user agent, as fields (`moorage.logs` escapes what clients
wrote)."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from moorage.api.auth import client_address
from moorage.api.context import IDENTITY, REQUEST_ID, V2_NAME
from moorage.api.v1.access import CALLER


class AccessLogger(AbstractAccessLogger):
    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        identity = request.get(IDENTITY)
        caller = request.get(CALLER)
        user = identity.name if identity else (caller.user if caller else None)
        if request.method == "HEAD":
            sent = 0
        elif response.content_length is not None:
            sent = response.content_length
        else:  # chunked: what was written, headers included
            sent = response.body_length
        self.logger.info(
            "%s %s %d",
            request.method,
            request.path,
            response.status,
            extra={
                "request_id": request.get(REQUEST_ID, ""),
                "status": response.status,
                "bytes": sent,
                "seconds": round(time, 4),
                "user": user or "",
                "repository": request.get(V2_NAME, ""),
                "remote": client_address(request),  # type: ignore[arg-type]
                "useragent": request.headers.get("User-Agent", ""),
            },
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
