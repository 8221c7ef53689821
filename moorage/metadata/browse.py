"""Queries for the web interface (moorage/ui, through moorage/content/browse.py): what its
pages list, a page at a time. A mixin of `MetadataStore`.

Every page is a bounded number of statements whatever its length (no query per row): the
caller names the rows of the page (repository names from the catalog, or a keyset position in
a repository's tags) and each figure of those rows comes from one grouped or correlated query
over indexed columns.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    Integer,
    and_,
    case,
    func,
    literal,
    null,
    or_,
    select,
    true,
)

from moorage.metadata import dialect, globs
from moorage.metadata import schema as t

T = TypeVar("T")

TagOrder = Literal["name", "pushed"]


@dataclass(frozen=True, slots=True)
class RepositorySummary:
    name: str
    tags: int
    # Bytes of the distinct blobs linked into the repository.
    size: int
    # When a manifest was last stored or a tag last set (None: neither ever happened).
    pushed: float | None


@dataclass(frozen=True, slots=True)
class TagSummary:
    name: str
    digest: str
    media_type: str
    artifact_type: str | None
    # The manifest's bytes plus what it references: its config and layers, or for an index
    # its children with theirs (a layer two platforms share counts twice).
    size: int
    pushed: float
    # The signed-in user who set the tag through the v2 API; None when not known.
    pushed_by: str | None
    # The manifest itself when the caller asked for its media type (the platforms of an
    # index are read from it); else None.
    content: bytes | None


@dataclass(frozen=True, slots=True)
class TagPush:
    """A tag of a manifest: when it was set, and by whom where known."""

    name: str
    pushed: float
    pushed_by: str | None


@dataclass(frozen=True, slots=True)
class V1Origin:
    """The v1 image a manifest shows as (its top layer), and who pushed it through v1."""

    image_id: str
    uploader: str | None


@dataclass(frozen=True, slots=True)
class NamespaceUsage:
    namespace: str
    repositories: int
    # Bytes of the distinct stored objects linked anywhere in the namespace.
    size: int
    blobs: int


@dataclass(frozen=True, slots=True)
class EndpointStatus:
    endpoint: str
    delivered: int
    # Events recorded after the endpoint's cursor: waiting to be delivered.
    pending: int
    holder: str | None


@dataclass(frozen=True, slots=True)
class ActivityCount:
    """Pushes, pulls and blob bytes pulled in one namespace on one day (days since the epoch,
    UTC), as a worker counted them since its last flush (moorage/content/activity.py)."""

    day: int
    namespace: str
    pushes: int
    pulls: int
    pulled_bytes: int


@dataclass(frozen=True, slots=True)
class Day:
    """What happened on one UTC day (`start`: its first second, epoch seconds)."""

    start: float
    # Bytes of the blobs first stored that day (still stored), and the total stored by its end.
    added: int
    stored: int
    manifests: int
    # Counted by every worker (the `activity` table): manifests pushed and pulled, blob bytes
    # sent.
    pushes: int
    pulls: int
    pulled_bytes: int


@dataclass(frozen=True, slots=True)
class StorageStatus:
    namespaces: list[NamespaceUsage]
    # Stored objects garbage collection is deleting (rows of gc_deletions).
    deletions_pending: int
    # When each cluster-wide chore (upload expiry, gc) may next run, by name.
    chores: dict[str, float]
    endpoints: list[EndpointStatus]
    # The last `days` days, oldest first.
    days: list[Day]
    # Per namespace, the sums of those days' activity (namespaces with none are left out).
    activity: dict[str, ActivityCount]


DAY = 86400


def _day(conn: Connection, column: ColumnElement[float]) -> ColumnElement[int]:
    """The day number (days since the epoch, UTC) of a time in epoch seconds, in SQL."""
    if conn.dialect.name == "postgresql":
        return func.floor(column / DAY).cast(Integer)
    return (column / DAY).cast(Integer)  # SQLite truncates: times are positive


def _namespace(conn: Connection, name: ColumnElement[str]) -> ColumnElement[str]:
    """The first path component of a repository name, in SQL."""
    if conn.dialect.name == "postgresql":
        return func.split_part(name, "/", 1)
    slash = func.instr(name, "/")
    return case((slash > 0, func.substr(name, 1, slash - 1)), else_=name)


class BrowseQueries:
    if TYPE_CHECKING:  # provided by MetadataStore

        async def _read(self, work: Callable[[Connection], T]) -> T: ...
        async def _write(self, work: Callable[[Connection], T], frees: bool = False) -> T: ...

    async def add_activity(self, counts: Sequence[ActivityCount]) -> None:
        """Add counts to the `activity` rows of their namespace and day, in one transaction:
        an upsert that adds, so that workers and nodes flushing at once all count. Rows are
        written in key order (no deadlock between two flushes)."""
        if not counts:
            return
        a = t.activity
        rows = [
            {
                "day": c.day,
                "namespace": c.namespace,
                "pushes": c.pushes,
                "pulls": c.pulls,
                "pulled_bytes": c.pulled_bytes,
            }
            for c in sorted(counts, key=lambda c: (c.day, c.namespace))
        ]

        def work(conn: Connection) -> None:
            added = dialect.insert(conn, a)
            conn.execute(
                added.on_conflict_do_update(
                    index_elements=["day", "namespace"],
                    set_={
                        "pushes": a.c.pushes + added.excluded.pushes,
                        "pulls": a.c.pulls + added.excluded.pulls,
                        "pulled_bytes": a.c.pulled_bytes + added.excluded.pulled_bytes,
                    },
                ),
                rows,
            )

        await self._write(work)

    async def repository_summaries(self, names: Sequence[str]) -> list[RepositorySummary]:
        """Tag count, size and last push of each repository named, in the order named (names
        that do not exist are left out): one statement whose per-repository figures are
        correlated subqueries on primary keys."""
        if not names:
            return []
        r, tg, m, rb, b = t.repositories, t.tags, t.manifests, t.repository_blobs, t.blobs
        tag_count = select(func.count()).where(tg.c.repository_id == r.c.id).scalar_subquery()
        tag_moved = select(func.max(tg.c.updated)).where(tg.c.repository_id == r.c.id)
        stored = select(func.max(m.c.created)).where(m.c.repository_id == r.c.id)
        size = (
            select(func.coalesce(func.sum(b.c.size), 0))
            .select_from(rb.join(b, b.c.digest == rb.c.digest))
            .where(rb.c.repository_id == r.c.id)
            .scalar_subquery()
        )
        query = select(
            r.c.name,
            tag_count,
            size,
            tag_moved.scalar_subquery(),
            stored.scalar_subquery(),
        ).where(r.c.name.in_(list(names)))
        rows = await self._read(lambda conn: conn.execute(query).all())
        found = {}
        for name, tags, total, moved, created in rows:
            times = [x for x in (moved, created) if x is not None]
            found[name] = RepositorySummary(
                name, int(tags), int(total), max(times) if times else None
            )
        return [found[n] for n in names if n in found]

    async def tag_page(
        self,
        repository: str,
        order: TagOrder,
        after: tuple[float, str] | str | None,
        limit: int,
        expand: Collection[str] = (),
    ) -> list[TagSummary] | None:
        """Up to `limit` tags of `repository` after the keyset position `after`: by name (the
        name after which to go on), or newest push first (`(pushed, name)` of the last row
        shown). `expand`: media types whose manifest bytes come along. None if the
        repository does not exist. Five statements, however long the page."""
        tg, m = t.tags, t.manifests
        expanded = list(expand)

        def work(conn: Connection) -> list[TagSummary] | None:
            repo = conn.execute(
                select(t.repositories.c.id).where(t.repositories.c.name == repository)
            ).scalar()
            if repo is None:
                return None
            content = (
                case((m.c.media_type.in_(expanded), m.c.content), else_=null())
                if expanded
                else literal(None)
            )
            query = (
                select(
                    tg.c.name,
                    tg.c.digest,
                    tg.c.updated,
                    tg.c.pushed_by,
                    m.c.media_type,
                    m.c.artifact_type,
                    func.length(m.c.content),
                    content,
                )
                .select_from(
                    tg.join(
                        m, and_(m.c.repository_id == tg.c.repository_id, m.c.digest == tg.c.digest)
                    )
                )
                .where(tg.c.repository_id == repo)
            )
            if order == "name":
                if isinstance(after, str):
                    query = query.where(tg.c.name > after)
                query = query.order_by(tg.c.name)
            else:
                if isinstance(after, tuple):
                    pushed, name = after
                    query = query.where(
                        or_(tg.c.updated < pushed, and_(tg.c.updated == pushed, tg.c.name > name))
                    )
                query = query.order_by(tg.c.updated.desc(), tg.c.name)
            rows = conn.execute(query.limit(limit)).all()
            sizes = _referenced_sizes(conn, repo, sorted({row[1] for row in rows}))
            return [
                TagSummary(
                    name=row[0],
                    digest=row[1],
                    media_type=row[4],
                    artifact_type=row[5],
                    size=int(row[6] or 0) + sizes.get(row[1], 0),
                    pushed=float(row[2]),
                    pushed_by=row[3],
                    content=bytes(row[7]) if row[7] is not None else None,
                )
                for row in rows
            ]

        return await self._read(work)

    async def referenced_sizes(self, repository: str, digests: Sequence[str]) -> dict[str, int]:
        """For each manifest of `digests` in `repository`: the bytes it references (config and
        layers; an index: its children's bytes and theirs). Two statements."""

        def work(conn: Connection) -> dict[str, int]:
            repo = conn.execute(
                select(t.repositories.c.id).where(t.repositories.c.name == repository)
            ).scalar()
            if repo is None:
                return {}
            return _referenced_sizes(conn, repo, list(digests))

        return await self._read(work)

    async def v1_origins(self, repository: str, digests: Sequence[str]) -> dict[str, V1Origin]:
        """For the manifests of `digests` that have a v1 image in `repository` (pushed through
        v1, or given v1 ids when pulled through it): that image and its uploader. One
        statement."""
        if not digests:
            return {}
        mi, r, i = t.v1_manifest_images, t.repositories, t.v1_images
        query = (
            select(mi.c.manifest_digest, mi.c.image_id, i.c.uploader)
            .join(r, r.c.id == mi.c.repository_id)
            .outerjoin(i, i.c.id == mi.c.image_id)
            .where(r.c.name == repository, mi.c.manifest_digest.in_(list(digests)))
        )
        rows = await self._read(lambda conn: conn.execute(query).all())
        return {digest: V1Origin(image, uploader) for digest, image, uploader in rows}

    async def tags_of(self, repository: str, digest: str) -> list[str]:
        """The tags of `repository` pointing at `digest` (index tags_digest)."""
        r, tg = t.repositories, t.tags
        query = (
            select(tg.c.name)
            .join(r, r.c.id == tg.c.repository_id)
            .where(r.c.name == repository, tg.c.digest == digest)
            .order_by(tg.c.name)
        )
        return await self._read(lambda conn: list(conn.execute(query).scalars()))

    async def tag_pushes(self, repository: str, digest: str) -> list[TagPush]:
        """The tags of `repository` pointing at `digest`, with when and by whom each was set
        (index tags_digest)."""
        r, tg = t.repositories, t.tags
        query = (
            select(tg.c.name, tg.c.updated, tg.c.pushed_by)
            .join(r, r.c.id == tg.c.repository_id)
            .where(r.c.name == repository, tg.c.digest == digest)
            .order_by(tg.c.name)
        )
        rows = await self._read(lambda conn: conn.execute(query).all())
        return [TagPush(name, float(updated), by) for name, updated, by in rows]

    async def usage_under(
        self, prefixes: Sequence[str], default: Sequence[str] | None, library: bool = False
    ) -> dict[str, tuple[int, int]]:
        """Repositories and bytes (each stored object once) under each of `prefixes` (names
        starting `prefix/`; the longest prefix wins), and under "" those under none of them
        whose upstream name matches one of the `default` globs (all when empty; None: none).
        The upstream name is the name, or with `library` (Docker Hub) `library/<name>` for a
        name of one component. The globs are their SQL form (`globs.py`: a superset,
        ignoring case on SQLite). Two grouped statements over the repositories and their
        links."""
        r, rb, b = t.repositories, t.repository_blobs, t.blobs
        whens: list[tuple[ColumnElement[bool], str]] = []
        for prefix in sorted(prefixes, key=len, reverse=True):
            span = globs.parse(prefix + "/*").span(r.c.name)
            assert span is not None
            whens.append((span, prefix))
        if default is not None:
            parsed = [globs.parse(g) for g in default]
            allowed = globs.condition(r.c.name, parsed) if parsed else true()
            if parsed and library:
                flat = ~r.c.name.contains("/")
                folded = globs.condition(literal("library/") + r.c.name, parsed)
                allowed = or_(and_(~flat, allowed), and_(flat, folded))
            whens.append((allowed, ""))
        if not whens:
            return {}
        label = case(*whens, else_=null()).label("owner")

        def work(conn: Connection) -> dict[str, tuple[int, int]]:
            owned = select(r.c.id, label).subquery()
            counts = {
                owner: int(n)
                for owner, n in conn.execute(
                    select(owned.c.owner, func.count())
                    .where(owned.c.owner.is_not(None))
                    .group_by(owned.c.owner)
                ).all()
            }
            objects = (
                select(owned.c.owner, b.c.storage_key, func.max(b.c.size).label("size"))
                .select_from(
                    owned.join(rb, rb.c.repository_id == owned.c.id).join(
                        b, b.c.digest == rb.c.digest
                    )
                )
                .where(owned.c.owner.is_not(None))
                .group_by(owned.c.owner, b.c.storage_key)
                .subquery()
            )
            sizes = {
                owner: int(total or 0)
                for owner, total in conn.execute(
                    select(objects.c.owner, func.sum(objects.c.size)).group_by(objects.c.owner)
                ).all()
            }
            return {owner: (n, sizes.get(owner, 0)) for owner, n in counts.items()}

        return await self._read(work)

    async def storage_status(self, days: int = 30) -> StorageStatus:
        """Usage per namespace (each stored object counted once in a namespace however many of
        its repositories link it), garbage collection's pending deletions, the chores' next
        runs, each event endpoint's backlog, and the last `days` days: bytes first stored,
        manifests stored, pushes, pulls and bytes pulled, per day, and per namespace over
        those days. A handful of grouped
        statements: the whole linked set is read once, so its cost grows with the store (an
        operator's page, not a hot one)."""
        r, rb, b = t.repositories, t.repository_blobs, t.blobs

        def work(conn: Connection) -> StorageStatus:
            ns = _namespace(conn, r.c.name).label("ns")
            repo_counts = {
                n: c for n, c in conn.execute(select(ns, func.count()).group_by(ns)).all()
            }
            objects = (
                select(ns, b.c.storage_key, func.max(b.c.size).label("size"))
                .select_from(
                    r.join(rb, rb.c.repository_id == r.c.id).join(b, b.c.digest == rb.c.digest)
                )
                .group_by(ns, b.c.storage_key)
                .subquery()
            )
            usage = {
                name: (int(total or 0), int(count))
                for name, total, count in conn.execute(
                    select(objects.c.ns, func.sum(objects.c.size), func.count()).group_by(
                        objects.c.ns
                    )
                ).all()
            }
            namespaces = [
                NamespaceUsage(name, int(repos), *usage.get(name, (0, 0)))
                for name, repos in sorted(repo_counts.items())
            ]
            pending = conn.execute(select(func.count()).select_from(t.gc_deletions)).scalar()
            chores = {
                n: u for n, u in conn.execute(select(t.chores.c.name, t.chores.c.until)).all()
            }
            c, e = t.event_cursors, t.events
            backlog = select(func.count()).where(e.c.id > c.c.delivered).scalar_subquery()
            endpoints = [
                EndpointStatus(endpoint, int(delivered), int(waiting), holder)
                for endpoint, delivered, waiting, holder in conn.execute(
                    select(c.c.endpoint, c.c.delivered, backlog, c.c.holder).order_by(c.c.endpoint)
                ).all()
            ]
            first = int(time.time() // DAY) - days + 1
            return StorageStatus(
                namespaces,
                int(pending or 0),
                chores,
                endpoints,
                _days(conn, first, days),
                _namespace_activity(conn, first),
            )

        return await self._read(work)


def _days(conn: Connection, first: int, count: int) -> list[Day]:
    """Per day of the `count` from day number `first` on: three grouped statements over the
    window, and one sum of what was stored before it."""
    b, m, a = t.blobs, t.manifests, t.activity
    today = first + count - 1
    since = first * DAY
    before = conn.execute(
        select(func.coalesce(func.sum(b.c.size), 0)).where(b.c.created < since)
    ).scalar()
    bday, mday = _day(conn, b.c.created), _day(conn, m.c.created)
    added: dict[int, int] = {
        day: int(n or 0)
        for day, n in conn.execute(
            select(bday, func.sum(b.c.size)).where(b.c.created >= since).group_by(bday)
        ).all()
    }
    stored: dict[int, int] = {
        day: int(n)
        for day, n in conn.execute(
            select(mday, func.count()).where(m.c.created >= since).group_by(mday)
        ).all()
    }
    activity: dict[int, tuple[int, int, int]] = {
        day: (int(pushes), int(pulls), int(pulled))
        for day, pushes, pulls, pulled in conn.execute(
            select(a.c.day, func.sum(a.c.pushes), func.sum(a.c.pulls), func.sum(a.c.pulled_bytes))
            .where(a.c.day >= first)
            .group_by(a.c.day)
        ).all()
    }
    total = int(before or 0)
    found = []
    for day in range(first, today + 1):
        total += int(added.get(day) or 0)
        pushes, pulls, pulled = activity.get(day, (0, 0, 0))
        found.append(
            Day(
                start=float(day * DAY),
                added=int(added.get(day) or 0),
                stored=total,
                manifests=int(stored.get(day) or 0),
                pushes=pushes,
                pulls=pulls,
                pulled_bytes=pulled,
            )
        )
    return found


def _namespace_activity(conn: Connection, first: int) -> dict[str, ActivityCount]:
    """Each namespace's activity from day number `first` on, summed (one grouped statement)."""
    a = t.activity
    rows = conn.execute(
        select(a.c.namespace, func.sum(a.c.pushes), func.sum(a.c.pulls), func.sum(a.c.pulled_bytes))
        .where(a.c.day >= first)
        .group_by(a.c.namespace)
    ).all()
    return {
        namespace: ActivityCount(first, namespace, int(pushes), int(pulls), int(pulled))
        for namespace, pushes, pulls, pulled in rows
    }


def _referenced_sizes(conn: Connection, repo: int, digests: list[str]) -> dict[str, int]:
    """Bytes referenced by each manifest of `digests`: blobs it names directly, plus, for the
    manifests it names (an index's children), their bytes and the blobs they name."""
    if not digests:
        return {}
    mr, b, m = t.manifest_references, t.blobs, t.manifests
    sizes: dict[str, int] = dict.fromkeys(digests, 0)
    direct = (
        select(mr.c.digest, func.sum(b.c.size))
        .join(b, b.c.digest == mr.c.child)
        .where(mr.c.repository_id == repo, mr.c.digest.in_(digests))
        .group_by(mr.c.digest)
    )
    for digest, total in conn.execute(direct).all():
        sizes[digest] += int(total or 0)
    child = mr.alias()  # Core, not sqlalchemy.orm: the ORM is never imported (memory)
    # An index's children name blobs in turn.
    nested = (
        select(mr.c.digest, func.sum(b.c.size))
        .select_from(
            mr.join(
                child,
                and_(child.c.repository_id == mr.c.repository_id, child.c.digest == mr.c.child),
            ).join(b, b.c.digest == child.c.child)
        )
        .where(mr.c.repository_id == repo, mr.c.digest.in_(digests))
        .group_by(mr.c.digest)
    )
    for digest, total in conn.execute(nested).all():
        sizes[digest] += int(total or 0)
    # And are manifests, whose bytes count too.
    own = (
        select(mr.c.digest, func.sum(func.length(m.c.content)))
        .join(m, and_(m.c.repository_id == mr.c.repository_id, m.c.digest == mr.c.child))
        .where(mr.c.repository_id == repo, mr.c.digest.in_(digests))
        .group_by(mr.c.digest)
    )
    for digest, total in conn.execute(own).all():
        sizes[digest] += int(total or 0)
    return sizes
