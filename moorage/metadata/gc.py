"""Queries for online garbage collection (docs/design/gc.md): find what nothing refers to any
more, then delete each candidate after checking again, under a row lock, that nothing refers
to it (in short transactions of up to `PER_TRANSACTION` candidates). A mixin of
`MetadataStore`.

The checks that decide "unreferenced" are one SQL expression per kind of row, used both to
find candidates (an anti-join over the whole table, in batches) and to check one candidate
again before deleting it, so the two can never disagree.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    delete,
    insert,
    literal,
    not_,
    or_,
    select,
    update,
)

from moorage.metadata import dialect
from moorage.metadata import schema as t

T = TypeVar("T")
BATCH = 500  # candidates found per query
# Candidates deleted per transaction, each checked again under its own row lock: fewer commits
# (one per candidate made 100,000 deletions take ~10 minutes on SQLite), short transactions.
PER_TRANSACTION = 100
REPORT_EVERY = 100  # candidates between two calls of a cycle's `progress`

Progress = Callable[[str, int], None]
"""`progress(stage, done)`: how many candidates a stage has looked at so far (see
`GCQueries.gc_collect`)."""


def silent(stage: str, done: int) -> None:
    """No progress shown (the server's own cycles)."""


@dataclass(frozen=True)
class Retention:
    """What retention deletes in one repository: tags beyond the newest `keep_last` (None:
    no count limit) that were pushed before `cutoff` (None: no age limit); tags matching a
    `keep` glob are never deleted and not counted."""

    keep_last: int | None
    cutoff: float | None
    keep: tuple[str, ...] = ()


@dataclass
class RepositoryFreed:
    tags: int = 0  # deleted by retention
    manifests: int = 0
    links: int = 0
    bytes: int = 0  # sizes of the blobs unlinked from the repository


@dataclass
class Collected:
    """What a collection cycle deleted (or, dry, would delete) from the metadata."""

    repositories: dict[str, RepositoryFreed] = field(default_factory=dict)
    v1_images: int = 0
    blobs: int = 0
    bytes: int = 0  # sizes of the stored objects no blob row names any more
    keys: list[str] = field(default_factory=list)  # their storage keys, queued for deletion

    def repository(self, name: str) -> RepositoryFreed:
        return self.repositories.setdefault(name, RepositoryFreed())

    @property
    def tags(self) -> int:
        return sum(r.tags for r in self.repositories.values())

    @property
    def manifests(self) -> int:
        return sum(r.manifests for r in self.repositories.values())

    @property
    def links(self) -> int:
        return sum(r.links for r in self.repositories.values())


@dataclass(frozen=True, slots=True)
class GCRun:
    """A collection cycle as the `gc_runs` table keeps it (the storage page lists them)."""

    started: float  # epoch seconds
    seconds: float
    dry_run: bool
    tags: int = 0
    manifests: int = 0
    links: int = 0
    v1_images: int = 0
    blobs: int = 0
    bytes: int = 0
    objects_deleted: int = 0
    error: str | None = None  # why it failed (None: it finished)


# Cycles `gc_runs` keeps: the newest, the older ones deleted as new ones are recorded.
RUNS_KEPT = 500


class _DryRun(Exception):
    """Rolls back a dry run's transaction, carrying what it found."""

    def __init__(self, collected: Collected) -> None:
        self.collected = collected


# -- what keeps what ------------------------------------------------------------------------

_m, _tg, _mr, _rb = t.manifests, t.tags, t.manifest_references, t.repository_blobs
_b, _i, _l, _mi = t.blobs, t.v1_images, t.v1_links, t.v1_manifest_images
# Core's anonymous aliases (what sqlalchemy.orm's `aliased` makes of a table, without the ORM).
_subject = t.manifests.alias()
_child = t.v1_images.alias()
_mapped = t.manifests.alias()


def _some(*conditions: ColumnElement[bool]) -> ColumnElement[bool]:
    """EXISTS (SELECT 1 ...): with SQLAlchemy's own `exists()`, a `SELECT *`, SQLite prefers
    an index that covers every column to one that matches every condition (a whole
    repository's manifest references scanned per blob link)."""
    return select(literal(1)).where(*conditions).exists()


def _manifest_kept() -> ColumnElement[bool]:
    """A manifest is kept by a tag, by an index that lists it, or by its subject."""
    return (
        _some(_tg.c.repository_id == _m.c.repository_id, _tg.c.digest == _m.c.digest)
        | _some(_mr.c.repository_id == _m.c.repository_id, _mr.c.child == _m.c.digest)
        | _some(_subject.c.repository_id == _m.c.repository_id, _subject.c.digest == _m.c.subject)
    )


def _link_kept() -> ColumnElement[bool]:
    """A link is kept by a manifest of its repository, or a v1 image linked to it, that
    references the blob."""
    # The v1 side nested, so that it starts from the images with that layer (an index) and
    # not from every image linked to the repository.
    linked_here = (
        select(literal(1))
        .where(_l.c.image_id == _i.c.id, _l.c.repository_id == _rb.c.repository_id)
        .correlate_except(_l)  # the link row two levels up, not a FROM of its own
        .exists()
    )
    in_v1 = _some(_i.c.blob_digest == _rb.c.digest, linked_here)
    return _some(_mr.c.repository_id == _rb.c.repository_id, _mr.c.child == _rb.c.digest) | in_v1


def _blob_kept() -> ColumnElement[bool]:
    """A blob is kept by any link, any manifest reference, any v1 image's layer."""
    return (
        _some(_rb.c.digest == _b.c.digest)
        | _some(_mr.c.child == _b.c.digest)
        | _some(_i.c.blob_digest == _b.c.digest)
    )


def _v1_image_kept() -> ColumnElement[bool]:
    """A v1 image is kept by a repository link, a child image, or a manifest shown as it."""
    return (
        _some(_l.c.image_id == _i.c.id)
        | _some(_child.c.parent == _i.c.id)
        | _some(
            _mi.c.image_id == _i.c.id,
            _mapped.c.repository_id == _mi.c.repository_id,
            _mapped.c.digest == _mi.c.manifest_digest,
        )
    )


# -- one candidate at a time, checked again under a lock ------------------------------------


def _delete_manifest(conn: Connection, repo_id: int, digest: str, cutoff: float) -> bool:
    row = conn.execute(
        select(_m.c.digest)
        .where(
            _m.c.repository_id == repo_id,
            _m.c.digest == digest,
            _m.c.touched < cutoff,
        )
        .with_for_update()
    ).first()
    if row is None:
        return False
    kept = conn.execute(
        select(_manifest_kept()).where(_m.c.repository_id == repo_id, _m.c.digest == digest)
    ).scalar()
    if kept:
        return False
    conn.execute(delete(_m).where(_m.c.repository_id == repo_id, _m.c.digest == digest))
    conn.execute(delete(_mr).where(_mr.c.repository_id == repo_id, _mr.c.digest == digest))
    conn.execute(delete(_mi).where(_mi.c.repository_id == repo_id, _mi.c.manifest_digest == digest))
    return True


def _delete_v1_image(conn: Connection, image_id: str, cutoff: float) -> bool:
    row = conn.execute(
        select(_i.c.id).where(_i.c.id == image_id, _i.c.updated < cutoff).with_for_update()
    ).first()
    if row is None or conn.execute(select(_v1_image_kept()).where(_i.c.id == image_id)).scalar():
        return False
    conn.execute(delete(t.v1_proofs).where(t.v1_proofs.c.image_id == image_id))
    conn.execute(delete(_i).where(_i.c.id == image_id))
    return True


def _retention_victims(
    conn: Connection, repo_id: int, rule: Retention
) -> list[tuple[str, str, float]]:
    """The tags `rule` deletes in the repository now: (name, digest, pushed)."""
    rows = conn.execute(
        select(_tg.c.name, _tg.c.digest, _tg.c.updated)
        .where(_tg.c.repository_id == repo_id)
        .order_by(_tg.c.updated.desc(), _tg.c.name)
    ).all()
    counted = [r for r in rows if not any(fnmatch.fnmatchcase(r[0], g) for g in rule.keep)]
    victims = counted if rule.keep_last is None else counted[rule.keep_last :]
    if rule.cutoff is not None:
        victims = [r for r in victims if r[2] < rule.cutoff]
    return [(str(n), str(d), float(u)) for n, d, u in victims]


def _retire_tag(
    conn: Connection, repo_id: int, victim: tuple[str, str, float], now: float
) -> tuple[bool, bool]:
    """Delete a tag retention chose, if it still points where it did when chosen (a push
    that moved it since made it new); then its manifest too, if nothing keeps it now. What
    the manifest referenced starts its grace period, as after a user's delete.
    (tag deleted, manifest deleted)."""
    name, digest, pushed = victim
    deleted = conn.execute(
        delete(_tg).where(
            _tg.c.repository_id == repo_id,
            _tg.c.name == name,
            _tg.c.digest == digest,
            _tg.c.updated == pushed,
        )
    ).rowcount
    if not deleted:
        return False, False
    row = conn.execute(
        select(_m.c.digest)
        .where(_m.c.repository_id == repo_id, _m.c.digest == digest)
        .with_for_update()
    ).first()
    if (
        row is None
        or conn.execute(
            select(_manifest_kept()).where(_m.c.repository_id == repo_id, _m.c.digest == digest)
        ).scalar()
    ):
        return True, False
    return True, drop_manifest(conn, repo_id, digest, now)


def drop_manifest(conn: Connection, repo_id: int, digest: str, now: float) -> bool:
    """Delete a manifest as a user's delete does (its tags are the caller's business): what
    it referenced in the repository (blob links, child manifests, its referrers) starts its
    grace period now. Whether there was such a manifest."""
    deleted = conn.execute(delete(_m).where(_m.c.repository_id == repo_id, _m.c.digest == digest))
    if not deleted.rowcount:
        return False
    children = select(_mr.c.child).where(_mr.c.repository_id == repo_id, _mr.c.digest == digest)
    conn.execute(
        update(_rb)
        .where(_rb.c.repository_id == repo_id, _rb.c.digest.in_(children))
        .values(touched=now)
    )
    conn.execute(
        update(_m)
        .where(
            _m.c.repository_id == repo_id,
            _m.c.digest.in_(children) | (_m.c.subject == digest),
        )
        .values(touched=now)
    )
    conn.execute(delete(_mr).where(_mr.c.repository_id == repo_id, _mr.c.digest == digest))
    conn.execute(delete(_mi).where(_mi.c.repository_id == repo_id, _mi.c.manifest_digest == digest))
    return True


def _count_retired(collected: Collected, name: str, done: tuple[bool, bool]) -> None:
    tag, manifest = done
    freed = collected.repository(name)
    freed.tags += tag
    freed.manifests += manifest


# -- candidates ----------------------------------------------------------------------------


def _manifest_candidates(cutoff: float, after: tuple[int, str] | None) -> Any:
    query = select(_m.c.repository_id, _m.c.digest).where(
        _m.c.touched < cutoff, not_(_manifest_kept())
    )
    if after is not None:
        query = query.where(
            (_m.c.repository_id > after[0])
            | and_(_m.c.repository_id == after[0], _m.c.digest > after[1])
        )
    return query.order_by(_m.c.repository_id, _m.c.digest).limit(BATCH)


def _link_candidates(cutoff: float, after: tuple[int, str] | None) -> Any:
    query = select(_rb.c.repository_id, _rb.c.digest).where(
        _rb.c.touched < cutoff, not_(_link_kept())
    )
    if after is not None:
        query = query.where(
            (_rb.c.repository_id > after[0])
            | and_(_rb.c.repository_id == after[0], _rb.c.digest > after[1])
        )
    return query.order_by(_rb.c.repository_id, _rb.c.digest).limit(BATCH)


def _blob_candidates(cutoff: float, after: str | None) -> Any:
    query = select(_b.c.digest).where(_b.c.touched < cutoff, not_(_blob_kept()))
    if after is not None:
        query = query.where(_b.c.digest > after)
    return query.order_by(_b.c.digest).limit(BATCH)


def _v1_candidates(cutoff: float, after: str | None) -> Any:
    query = select(_i.c.id).where(_i.c.updated < cutoff, not_(_v1_image_kept()))
    if after is not None:
        query = query.where(_i.c.id > after)
    return query.order_by(_i.c.id).limit(BATCH)


Stage = Literal["manifests", "v1", "links", "blobs"]
# Stages whose deletions can make more rows of the same kind unreferenced (an index's
# children, an image's parent): passed over again until a pass deletes nothing.
_CASCADING = ("manifests", "v1")


class GCQueries:
    if TYPE_CHECKING:  # provided by MetadataStore

        async def _read(self, work: Callable[[Connection], T]) -> T: ...
        async def _write(self, work: Callable[[Connection], T], frees: bool = False) -> T: ...

    async def gc_collect(
        self,
        cutoff: float,
        untagged: bool,
        dry_run: bool = False,
        pause: Any = None,
        retention: Callable[[str], Retention | None] | None = None,
        progress: Progress | None = None,
    ) -> Collected:
        """Delete the tags `retention(repository)` says to (first), then from the metadata
        what nothing has referred to since before `cutoff`: untagged manifests (with
        `untagged`), v1 images, blob links, blob rows; the objects of
        deleted blob rows are queued in `gc_deletions` (the caller deletes them). Deletions
        run in short transactions of up to `PER_TRANSACTION` candidates. A dry run does all
        of it in one transaction that is rolled back, so it reports exactly what a cycle
        would delete now (it holds the writer for its length: an operator's command, not the
        server's).

        `pause(stage, candidate)`, if given, is awaited for each candidate before the
        transaction that deletes it (tests use it to run a race at that exact point).

        `progress(stage, done)` is called as each stage ("retention", then those of `_stages`)
        starts, every REPORT_EVERY candidates and as it ends, with the candidates looked at
        so far (retention: tags). On a dry run it is called inside the transaction, on the
        thread that runs it (SQLite's writer): it must be quick and thread-safe. It may raise
        to stop the cycle: a dry run is rolled back as always; a real cycle stops between two
        transactions (each of up to PER_TRANSACTION deletions), so what it deleted stays
        deleted, whole, and the next cycle carries on (objects queued in `gc_deletions`
        included)."""
        progress = progress or silent
        if dry_run:

            def dry(conn: Connection) -> Collected:
                collected = Collected()
                names = _names(conn)
                if retention is not None:
                    _retain_in(conn, retention, collected, names, progress)
                for stage in _stages(untagged):
                    _run_stage_in(conn, stage, cutoff, collected, names, progress)
                raise _DryRun(collected)

            try:
                await self._write(dry)
            except _DryRun as done:
                return done.collected
            raise AssertionError("a dry run always rolls back")
        collected = Collected()
        names = await self._read(_names)
        if retention is not None:
            await self._retain(retention, collected, names, progress)
        for stage in _stages(untagged):
            await self._run_stage(stage, cutoff, collected, names, pause, progress)
        return collected

    async def _retain(
        self,
        retention: Callable[[str], Retention | None],
        collected: Collected,
        names: dict[int, str],
        progress: Progress,
    ) -> None:
        done = 0
        progress("retention", done)
        for repo_id, name in names.items():
            rule = retention(name)
            if rule is None:
                continue

            def choose(conn: Connection, r: int = repo_id, k: Retention = rule) -> Any:
                return _retention_victims(conn, r, k)

            for victim in await self._read(choose):

                def retire(conn: Connection, r: int = repo_id, v: Any = victim) -> Any:
                    return _retire_tag(conn, r, v, time.time())

                _count_retired(collected, name, await self._write(retire, frees=True))
                done = looked_at(progress, "retention", done)
        progress("retention", done)

    async def _run_stage(
        self,
        stage: Stage,
        cutoff: float,
        collected: Collected,
        names: dict[int, str],
        pause: Any,
        progress: Progress,
    ) -> None:
        after: Any = None
        deleted = False  # in this pass
        looked = 0
        progress(stage, looked)
        while True:
            query = _candidates(stage, cutoff, after)

            def find(conn: Connection, q: Any = query) -> list[Any]:
                return list(conn.execute(q).all())

            batch = await self._read(find)
            if not batch:
                if stage in _CASCADING and deleted:
                    after, deleted = None, False  # what the deleted ones kept: another pass
                    continue
                progress(stage, looked)
                return
            for first in range(0, len(batch), PER_TRANSACTION):
                chunk = [tuple(candidate) for candidate in batch[first : first + PER_TRANSACTION]]
                if pause is not None:
                    for candidate in chunk:
                        await pause(stage, candidate)

                def some(conn: Connection, cs: list[tuple[Any, ...]] = chunk) -> list[Any]:
                    return _delete_chunk(conn, stage, cs, cutoff)

                for candidate, done in zip(chunk, await self._write(some, frees=True), strict=True):
                    deleted |= _count(stage, candidate, done, collected, names)
                    looked = looked_at(progress, stage, looked)
            after = _position(stage, batch[-1])

    async def gc_record_run(self, run: GCRun) -> None:
        """Keep a cycle's record, and forget those older than the newest RUNS_KEPT."""
        r = t.gc_runs
        values = {
            "started": run.started,
            "seconds": run.seconds,
            "dry_run": run.dry_run,
            "tags": run.tags,
            "manifests": run.manifests,
            "links": run.links,
            "v1_images": run.v1_images,
            "blobs": run.blobs,
            "bytes": run.bytes,
            "objects_deleted": run.objects_deleted,
            "error": None if run.error is None else run.error[:300],
        }

        def work(conn: Connection) -> None:
            added = conn.execute(insert(r).values(**values).returning(r.c.id)).scalar_one()
            conn.execute(delete(r).where(r.c.id <= added - RUNS_KEPT))

        await self._write(work)

    async def gc_runs(self, limit: int) -> list[GCRun]:
        """The newest `limit` recorded cycles, newest first."""
        r = t.gc_runs
        query = (
            select(
                r.c.started,
                r.c.seconds,
                r.c.dry_run,
                r.c.tags,
                r.c.manifests,
                r.c.links,
                r.c.v1_images,
                r.c.blobs,
                r.c.bytes,
                r.c.objects_deleted,
                r.c.error,
            )
            .order_by(r.c.started.desc(), r.c.id.desc())
            .limit(limit)
        )
        rows = await self._read(lambda conn: conn.execute(query).all())
        return [GCRun(*row) for row in rows]

    async def gc_pending(self, limit: int = BATCH) -> list[str]:
        """Storage keys queued for deletion (by this cycle or one that was interrupted)."""
        g = t.gc_deletions
        query = select(g.c.storage_key).order_by(g.c.storage_key).limit(limit)
        return await self._read(lambda conn: list(conn.execute(query).scalars()))

    async def gc_deleted(self, keys: list[str]) -> int:
        """The objects at `keys` are gone from storage: forget them; how many this call
        forgot (fewer: another collector running at the same time did)."""
        g = t.gc_deletions

        def work(conn: Connection) -> int:
            return int(conn.execute(delete(g).where(g.c.storage_key.in_(keys))).rowcount)

        return await self._write(work, frees=True)


def _stages(untagged: bool) -> list[Stage]:
    later: list[Stage] = ["v1", "links", "blobs"]
    return ["manifests", *later] if untagged else later


def _names(conn: Connection) -> dict[int, str]:
    r = t.repositories
    return {int(i): str(n) for i, n in conn.execute(select(r.c.id, r.c.name))}


def _candidates(stage: Stage, cutoff: float, after: Any) -> Any:
    if stage == "manifests":
        return _manifest_candidates(cutoff, after)
    if stage == "links":
        return _link_candidates(cutoff, after)
    if stage == "blobs":
        return _blob_candidates(cutoff, after)
    return _v1_candidates(cutoff, after)


def _delete_links(conn: Connection, chunk: list[tuple[Any, ...]], cutoff: float) -> list[Any]:
    """`_delete_link` for many links in three statements: lock the ones still old enough,
    then (a new statement, so it sees what committed while it waited for the locks) find
    which of them are referenced now, then delete the others."""
    pairs = [(int(c[0]), str(c[1])) for c in chunk]
    locked = conn.execute(
        select(_rb.c.repository_id, _rb.c.digest)
        .where(_links_in(pairs), _rb.c.touched < cutoff)
        .order_by(_rb.c.repository_id, _rb.c.digest)
        .with_for_update()
    ).all()
    if not locked:
        return [None] * len(chunk)
    candidates = [(int(r), str(d)) for r, d in locked]
    kept = {
        (int(r), str(d))
        for r, d in conn.execute(
            select(_rb.c.repository_id, _rb.c.digest).where(_links_in(candidates), _link_kept())
        )
    }
    victims = [c for c in candidates if c not in kept]
    if victims:
        conn.execute(delete(_rb).where(_links_in(victims)))
    query = select(_b.c.digest, _b.c.size).where(_b.c.digest.in_({d for _, d in victims}))
    sizes = {str(d): int(z) for d, z in conn.execute(query).all()}
    gone = set(victims)
    return [int(sizes.get(d, 0)) if (r, d) in gone else None for r, d in pairs]


def _links_in(pairs: list[tuple[int, str]]) -> ColumnElement[bool]:
    """Links named by (repository id, digest), as `repository_id = R AND digest IN (...)` per
    repository: each an index seek (a row-value `IN` is a full scan on SQLite)."""
    by_repository: dict[int, list[str]] = {}
    for repo_id, digest in pairs:
        by_repository.setdefault(repo_id, []).append(digest)
    return or_(
        *(
            and_(_rb.c.repository_id == repo_id, _rb.c.digest.in_(digests))
            for repo_id, digests in by_repository.items()
        )
    )


def _delete_blobs(conn: Connection, chunk: list[tuple[Any, ...]], cutoff: float) -> list[Any]:
    """`_delete_blob` for many blobs, set by set in the same way as `_delete_links`."""
    digests = [str(c[0]) for c in chunk]
    locked = conn.execute(
        select(_b.c.digest, _b.c.storage_key, _b.c.size)
        .where(_b.c.digest.in_(digests), _b.c.touched < cutoff)
        .order_by(_b.c.digest)
        .with_for_update()
    ).all()
    if not locked:
        return [None] * len(chunk)
    rows = {str(d): (str(k), int(z)) for d, k, z in locked}
    kept = set(
        conn.execute(select(_b.c.digest).where(_b.c.digest.in_(list(rows)), _blob_kept())).scalars()
    )
    victims = [d for d in rows if d not in kept]
    if not victims:
        return [None] * len(chunk)
    conn.execute(delete(_b).where(_b.c.digest.in_(victims)))
    keys = {rows[d][0] for d in victims}
    named = set(conn.execute(select(_b.c.storage_key).where(_b.c.storage_key.in_(keys))).scalars())
    orphaned = keys - named  # another digest (sha512 of the same bytes) may still name one
    if orphaned:
        g = t.gc_deletions
        now = time.time()
        conn.execute(
            dialect.insert(conn, g).on_conflict_do_nothing(index_elements=["storage_key"]),
            [{"storage_key": k, "since": now} for k in sorted(orphaned)],
        )
    results: list[Any] = []
    queued: set[str] = set()
    for digest in digests:
        if digest not in victims:
            results.append(None)
            continue
        k, size = rows[digest]
        if k in orphaned and k not in queued:
            queued.add(k)
            results.append((k, size))
        else:
            results.append(True)
    return results


def _delete_chunk(
    conn: Connection, stage: Stage, chunk: list[tuple[Any, ...]], cutoff: float
) -> list[Any]:
    """Delete what is still unreferenced among `chunk`, in one transaction: a result per
    candidate, as `_count` takes them."""
    if stage == "links":
        return _delete_links(conn, chunk, cutoff)
    if stage == "blobs":
        return _delete_blobs(conn, chunk, cutoff)
    return [_delete_one(conn, stage, c, cutoff) for c in chunk]


def _delete_one(conn: Connection, stage: Stage, candidate: tuple[Any, ...], cutoff: float) -> Any:
    if stage == "manifests":
        return _delete_manifest(conn, candidate[0], candidate[1], cutoff)
    return _delete_v1_image(conn, candidate[0], cutoff)


def _count(
    stage: Stage,
    candidate: tuple[Any, ...],
    done: Any,
    collected: Collected,
    names: dict[int, str],
) -> bool:
    """Add one deletion's result to `collected`; whether something was deleted."""
    if done is None or done is False:
        return False
    if stage == "manifests":
        collected.repository(names.get(candidate[0], "?")).manifests += 1
    elif stage == "links":
        freed = collected.repository(names.get(candidate[0], "?"))
        freed.links += 1
        freed.bytes += int(done)
    elif stage == "blobs":
        collected.blobs += 1
        if done is not True:
            key, size = done
            collected.keys.append(key)
            collected.bytes += size
    else:
        collected.v1_images += 1
    return True


def _run_stage_in(
    conn: Connection,
    stage: Stage,
    cutoff: float,
    collected: Collected,
    names: dict[int, str],
    progress: Progress,
) -> None:
    """A stage inside one transaction (the dry run): the same candidates and checks, each
    deletion seen by the next query."""
    after: Any = None
    deleted = False
    looked = 0
    progress(stage, looked)
    while True:
        batch = list(conn.execute(_candidates(stage, cutoff, after)).all())
        if not batch:
            if stage in _CASCADING and deleted:
                after, deleted = None, False
                continue
            progress(stage, looked)
            return
        chunk = [tuple(candidate) for candidate in batch]
        for candidate, done in zip(chunk, _delete_chunk(conn, stage, chunk, cutoff), strict=True):
            deleted |= _count(stage, candidate, done, collected, names)
            looked = looked_at(progress, stage, looked)
        after = _position(stage, batch[-1])


def looked_at(progress: Progress, stage: str, looked: int) -> int:
    """One more candidate looked at: tell `progress` every REPORT_EVERY."""
    looked += 1
    if looked % REPORT_EVERY == 0:
        progress(stage, looked)
    return looked


def _position(stage: Stage, row: Any) -> Any:
    """Where the next batch of candidates starts (keyset pagination)."""
    return (row[0], row[1]) if stage in ("manifests", "links") else row[0]


def _retain_in(
    conn: Connection,
    retention: Callable[[str], Retention | None],
    collected: Collected,
    names: dict[int, str],
    progress: Progress,
) -> None:
    """Retention inside one transaction (the dry run)."""
    now = time.time()
    done = 0
    progress("retention", done)
    for repo_id, name in names.items():
        rule = retention(name)
        if rule is not None:
            for victim in _retention_victims(conn, repo_id, rule):
                _count_retired(collected, name, _retire_tag(conn, repo_id, victim, now))
                done = looked_at(progress, "retention", done)
    progress("retention", done)
