"""Read-only mode (`maintenance.readonly.enabled`): every write is refused, reads go on.

What a write is comes from the route tables, so that a new route cannot be forgotten: every
method of a /v2/ or /v1/ route but GET and HEAD, except a v1 endpoint marked as changing
nothing (`Endpoint.changes_nothing`: the v1 "register" POST, which only answers 401 and sends
`docker login` on to the credential check). The check runs after authentication, as in CNCF
Distribution, and before the handler: an upload in flight when the mode goes on gets the
refusal on its next PATCH or PUT (its session stays, and may continue once the mode is off);
a request already running goes to its end.

The answer: 405, as Distribution's, with `Allow` naming the route's read methods; where
Distribution's body is a bare "Method not allowed", Moorage's says why, in each protocol's
dialect: v2 `{"errors": [{"code": "UNSUPPORTED", "message": "registry is in read-only
mode"}]}`, v1 `{"error": "registry is in read-only mode"}`. Clients print that message.

The mode is switched without a restart: on SIGHUP each worker reads the configuration again
(moorage.server) and calls `Maintenance.update`. While it is on, the background sweep of
expired uploads pauses too. Reads still write two things to the metadata database: failed-login
counters, and the v1 view of a v2-pushed image, derived the first time a v1 client asks for it
(a cache of what is there, not new content).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from aiohttp import web

from moorage.config import Settings
from moorage.errors import ReadOnly

log = logging.getLogger("moorage.maintenance")

READS = frozenset({"GET", "HEAD"})


class Maintenance:
    """The live maintenance mode of one worker."""

    def __init__(self, settings: Settings) -> None:
        self.readonly = settings.maintenance.readonly.enabled
        if self.readonly:
            log.warning("read-only mode: every write is refused")

    def update(self, settings: Settings) -> None:
        """Take the mode from settings read again (SIGHUP)."""
        readonly = settings.maintenance.readonly.enabled
        if readonly == self.readonly:
            log.info("read-only mode stays %s", "on" if readonly else "off")
            return
        self.readonly = readonly
        if readonly:
            log.warning("read-only mode on: every write is refused")
        else:
            log.warning("read-only mode off: writes are accepted again")


MAINTENANCE = web.AppKey("maintenance", Maintenance)


def refusal(methods: Iterable[str]) -> ReadOnly:
    """The error for a write in read-only mode on a route that has `methods`."""
    error = ReadOnly()
    error.headers["Allow"] = ", ".join(sorted(READS.intersection(methods)))
    return error
