"""Queries for `moorage fsck` (moorage/content/fsck.py): the stored objects the blob rows name,
what names a listed object, and the queueing of an orphan for deletion under the same rule
garbage collection follows (docs/design/gc.md): a blob row never names a key listed in
`gc_deletions`. A mixin of `MetadataStore`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy import Connection, delete, func, select

from moorage.metadata import dialect
from moorage.metadata import schema as t

T = TypeVar("T")
BATCH = 500


@dataclass(frozen=True, slots=True)
class NamedObject:
    """A stored object and the blob rows that name it: (digest, size) each."""

    key: str
    rows: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class Known:
    """What the metadata says of some listed objects, right now."""

    named: set[str]  # keys some blob row names
    pending: set[str]  # keys queued in gc_deletions (the collector deletes them)
    uploads: set[str]  # ids of upload sessions that exist


class FsckQueries:
    if TYPE_CHECKING:  # provided by MetadataStore

        async def _read(self, work: Callable[[Connection], T]) -> T: ...
        async def _write(self, work: Callable[[Connection], T], frees: bool = False) -> T: ...

    async def fsck_totals(self) -> tuple[int, int]:
        """How many distinct objects the blob rows name, and their bytes."""
        b = t.blobs
        per_key = select(b.c.storage_key, func.max(b.c.size).label("size")).group_by(
            b.c.storage_key
        )
        sub = per_key.subquery()
        query = select(func.count(), func.coalesce(func.sum(sub.c.size), 0)).select_from(sub)
        row = await self._read(lambda conn: conn.execute(query).one())
        return int(row[0]), int(row[1])

    async def fsck_named(self, after: str | None, limit: int = BATCH) -> list[NamedObject]:
        """The next `limit` objects that blob rows name, by key, after `after`."""
        b = t.blobs
        keys = select(b.c.storage_key).distinct().order_by(b.c.storage_key).limit(limit)
        if after is not None:
            keys = keys.where(b.c.storage_key > after)

        def work(conn: Connection) -> list[NamedObject]:
            wanted = list(conn.execute(keys).scalars())
            if not wanted:
                return []
            rows: dict[str, list[tuple[str, int]]] = {key: [] for key in wanted}
            query = (
                select(b.c.storage_key, b.c.digest, b.c.size)
                .where(b.c.storage_key.in_(wanted))
                .order_by(b.c.storage_key, b.c.digest)
            )
            for key, digest, size in conn.execute(query):
                rows[key].append((str(digest), int(size)))
            return [NamedObject(key, tuple(found)) for key, found in rows.items() if found]

        return await self._read(work)

    async def fsck_still_named(self, key: str) -> NamedObject | None:
        """The rows that name `key` now, or None if none does or its deletion is queued (the
        collector deleted the rows and is deleting the object: nothing is wrong)."""
        b, g = t.blobs, t.gc_deletions

        def work(conn: Connection) -> NamedObject | None:
            if conn.execute(select(g.c.storage_key).where(g.c.storage_key == key)).first():
                return None
            query = select(b.c.digest, b.c.size).where(b.c.storage_key == key)
            rows = tuple((str(d), int(s)) for d, s in conn.execute(query.order_by(b.c.digest)))
            return NamedObject(key, rows) if rows else None

        return await self._read(work)

    async def fsck_known(self, keys: Sequence[str], upload_ids: Sequence[str]) -> Known:
        """Which of `keys` a blob row names or the collector is deleting, and which of
        `upload_ids` are live sessions. Sessions are read first: a session that ends by
        committing its blob has recorded the row by then, which the second read sees."""
        b, g, u = t.blobs, t.gc_deletions, t.uploads

        def work(conn: Connection) -> Known:
            uploads: set[str] = set()
            if upload_ids:
                found = conn.execute(select(u.c.id).where(u.c.id.in_(upload_ids)))
                uploads = set(found.scalars())
            named = set(conn.execute(select(b.c.storage_key).where(b.c.storage_key.in_(keys))))
            pending = conn.execute(select(g.c.storage_key).where(g.c.storage_key.in_(keys)))
            return Known({str(k[0]) for k in named}, set(pending.scalars()), uploads)

        return await self._read(work)

    async def fsck_queue(self, key: str, upload_id: str | None, digest: str | None) -> bool:
        """Queue the object at `key` for deletion as an orphan, unless something names it now:
        a live upload session `upload_id` (the session's own object), a blob row, or a
        queued deletion. True if queued; the caller then deletes the object and the queue row
        (`gc_deleted`), or, if it stops first, the collector does.

        From the moment this commits, no blob row can name `key`: a transaction recording one
        looks at `gc_deletions` after its insert and gives up (`KeyPending`). `digest` is the
        one blob row that could name this object without a live session (the sha256 of a
        content-addressed key, written by `put` beside a stored copy): it is claimed first, so
        on PostgreSQL a transaction inserting that row at the same moment waits for this one,
        or this one for it and then sees its row. The claim is never committed."""
        b, g, u = t.blobs, t.gc_deletions, t.uploads

        def queue(conn: Connection) -> bool:
            if (
                upload_id is not None
                and conn.execute(select(u.c.id).where(u.c.id == upload_id)).first()
            ):
                return False
            if conn.execute(select(b.c.digest).where(b.c.storage_key == key).limit(1)).first():
                return False
            queued = dialect.insert(conn, g).values(storage_key=key, since=time.time())
            # Nothing inserted: the collector or another fsck is deleting it already.
            return bool(
                conn.execute(queued.on_conflict_do_nothing(index_elements=["storage_key"])).rowcount
            )

        def work(conn: Connection) -> bool:
            if digest is None:
                return queue(conn)
            claim = dialect.insert(conn, b).values(
                digest=digest, storage_key="", size=0, created=0.0, touched=0.0
            )
            claim = claim.on_conflict_do_nothing(index_elements=["digest"])
            claimed = bool(conn.execute(claim).rowcount)
            queued = queue(conn)
            if claimed:
                conn.execute(delete(b).where(b.c.digest == digest))
            return queued

        return await self._write(work, frees=True)
