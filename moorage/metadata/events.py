"""Queries for events (webhooks): recorded in one ordered table; each endpoint has a cursor
(the last event it acknowledged) and a lease, so that one process of the deployment delivers
to it at a time, in order. A mixin of `MetadataStore`."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy import Connection, delete, func, insert, select, update

from moorage.metadata import dialect
from moorage.metadata import schema as t

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class EventRow:
    id: int
    action: str
    repository: str
    media_type: str | None
    payload: str


class EventQueries:
    if TYPE_CHECKING:  # provided by MetadataStore

        async def _read(self, work: Callable[[Connection], T]) -> T: ...
        async def _write(self, work: Callable[[Connection], T], frees: bool = False) -> T: ...

    async def record_events(self, events: Sequence[tuple[str, str, str | None, str]]) -> None:
        """Append (action, repository, media type, payload JSON) rows, in this order."""
        now = time.time()
        rows = [
            {"created": now, "action": a, "repository": r, "media_type": m, "payload": p}
            for a, r, m, p in events
        ]
        if rows:
            await self._write(lambda conn: conn.execute(insert(t.events), rows))

    async def take_endpoint(self, endpoint: str, holder: str, seconds: float) -> int | None:
        """Hold delivery to `endpoint` for `seconds` (taking it over if its holder let the
        lease run out, renewing it if `holder` has it); the cursor then, or None if another
        holds it. A new endpoint starts after the newest event: it gets what happens from
        now on, not the history."""
        now = time.time()
        c = t.event_cursors

        def work(conn: Connection) -> int | None:
            newest = conn.execute(select(func.coalesce(func.max(t.events.c.id), 0))).scalar()
            conn.execute(
                dialect.insert(conn, c)
                .values(endpoint=endpoint, delivered=int(newest or 0), holder=None, until=0.0)
                .on_conflict_do_nothing(index_elements=["endpoint"])
            )
            taken = conn.execute(
                update(c)
                .where(c.c.endpoint == endpoint, (c.c.until < now) | (c.c.holder == holder))
                .values(holder=holder, until=now + seconds)
                .returning(c.c.delivered)
            ).scalar()
            return None if taken is None else int(taken)

        return await self._write(work)

    async def events_after(self, delivered: int, limit: int) -> list[EventRow]:
        e = t.events
        query = (
            select(e.c.id, e.c.action, e.c.repository, e.c.media_type, e.c.payload)
            .where(e.c.id > delivered)
            .order_by(e.c.id)
            .limit(limit)
        )
        rows = await self._read(lambda conn: conn.execute(query).all())
        return [EventRow(int(r[0]), r[1], r[2], r[3], r[4]) for r in rows]

    async def delivered(self, endpoint: str, holder: str, upto: int) -> bool:
        """Move the endpoint's cursor to `upto` if `holder` still holds it (False: it lost
        the lease; whoever took it over delivers from the old cursor: at least once)."""
        c = t.event_cursors

        def work(conn: Connection) -> bool:
            moved = conn.execute(
                update(c)
                .where(c.c.endpoint == endpoint, c.c.holder == holder, c.c.delivered < upto)
                .values(delivered=upto)
            )
            return bool(moved.rowcount)

        return await self._write(work)

    async def prune_events(self, endpoints: Sequence[str]) -> int:
        """Delete events every configured endpoint has had (all of them, with none), and the
        cursors of endpoints no longer configured."""
        c, e = t.event_cursors, t.events

        def work(conn: Connection) -> int:
            conn.execute(delete(c).where(c.c.endpoint.not_in(list(endpoints))))
            if endpoints:
                rows = conn.execute(
                    select(c.c.delivered).where(c.c.endpoint.in_(list(endpoints)))
                ).scalars()
                cursors = list(rows)
                if len(cursors) < len(set(endpoints)):
                    return 0  # an endpoint not seen yet (it starts after the newest anyway)
                floor: int | None = min(cursors)
            else:
                floor = conn.execute(select(func.max(e.c.id))).scalar()
            if floor is None:
                return 0
            return int(conn.execute(delete(e).where(e.c.id <= floor)).rowcount)

        return await self._write(work, frees=True)
