"""Events for webhooks, in CNCF Distribution's notification format, so that receivers written
for it work unchanged: an envelope `{"events": [...]}` of media type
`application/vnd.docker.distribution.events.v1+json`; each event has `id`, `timestamp`,
`action` (push, pull, delete, mount), `target` (mediaType, digest, size, length, repository,
url, tag, fromRepository), `request` (id, addr, host, method, useragent), `actor` (name) and
`source` (addr, instanceID).

Events are recorded in the metadata database in the order they happen (only when a
configured endpoint wants that action), and delivered from there (`moorage.api.notify`): at
least once, in order, whatever restarts in between."""

from __future__ import annotations

import fnmatch
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from moorage.config import EventEndpoint, NotificationSettings
from moorage.metadata import MetadataStore
from moorage.metadata.events import EventRow

ENVELOPE = "application/vnd.docker.distribution.events.v1+json"
INSTANCE_ID = str(uuid.uuid4())  # this process, as Distribution names an instance


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What an event says about the request that made it."""

    id: str
    addr: str
    host: str
    method: str
    useragent: str
    actor: str | None


@dataclass(frozen=True, slots=True)
class Target:
    repository: str
    digest: str | None = None
    media_type: str | None = None
    size: int | None = None
    tag: str | None = None
    url: str | None = None
    from_repository: str | None = None


class Events:
    def __init__(self, metadata: MetadataStore, settings: NotificationSettings, source: str):
        self.metadata = metadata
        self.endpoints = [e for e in settings.endpoints if not e.disabled]
        self.source = source
        self._actions = {
            a for e in self.endpoints for a in (e.actions or _ALL) if a not in e.ignore.actions
        }

    def wanted(self, action: str) -> bool:
        """Does any endpoint take events of this action? (Nothing is recorded otherwise.)"""
        return action in self._actions

    async def record(self, action: str, targets: list[Target], request: RequestInfo) -> None:
        if not self.wanted(action) or not targets:
            return
        now = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        rows = []
        for target in targets:
            event = {
                "id": str(uuid.uuid4()),
                "timestamp": now,
                "action": action,
                "target": _target(target),
                "request": {
                    "id": request.id,
                    "addr": request.addr,
                    "host": request.host,
                    "method": request.method,
                    "useragent": request.useragent,
                },
                "actor": {"name": request.actor} if request.actor else {},
                "source": {"addr": self.source, "instanceID": INSTANCE_ID},
            }
            rows.append((action, target.repository, target.media_type, json.dumps(event)))
        await self.metadata.record_events(rows)

    # -- delivery (moorage.api.notify sends; these keep the cursors) ----------------------

    async def take(self, endpoint: str, holder: str, seconds: float) -> int | None:
        """Hold delivery to `endpoint`; its cursor, or None if another process holds it."""
        return await self.metadata.take_endpoint(endpoint, holder, seconds)

    async def after(self, cursor: int, limit: int) -> list[EventRow]:
        return await self.metadata.events_after(cursor, limit)

    async def delivered(self, endpoint: str, holder: str, upto: int) -> bool:
        return await self.metadata.delivered(endpoint, holder, upto)

    async def prune(self) -> int:
        """Forget the events every configured endpoint has had."""
        return await self.metadata.prune_events([e.name for e in self.endpoints])


_ALL = ("push", "pull", "delete", "mount")


def _target(target: Target) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if target.media_type:
        found["mediaType"] = target.media_type
    if target.digest:
        found["digest"] = target.digest
    if target.size is not None:
        found["size"] = target.size
        found["length"] = target.size
    found["repository"] = target.repository
    if target.url:
        found["url"] = target.url
    if target.tag:
        found["tag"] = target.tag
    if target.from_repository:
        found["fromRepository"] = target.from_repository
    return found


def accepts(endpoint: EventEndpoint, row: EventRow) -> bool:
    """Does the endpoint's filter let this event through?"""
    if endpoint.actions and row.action not in endpoint.actions:
        return False
    if row.action in endpoint.ignore.actions:
        return False
    if endpoint.repositories and not any(
        fnmatch.fnmatchcase(row.repository, glob) for glob in endpoint.repositories
    ):
        return False
    media = row.media_type or ""
    if endpoint.mediatypes and media not in endpoint.mediatypes:
        return False
    ignored = (*endpoint.ignoredmediatypes, *endpoint.ignore.mediatypes)
    return not (media and media in ignored)
