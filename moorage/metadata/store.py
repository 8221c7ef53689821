"""Queries over the tables of `schema.py`, as one async store object.

SQLite (the default) runs in WAL mode; reads use plain deferred transactions and never block,
writes take the write lock up front (`BEGIN IMMEDIATE`) so that concurrent writers from
several worker processes queue on the busy timeout instead of failing half-way.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Executable,
    Result,
    and_,
    bindparam,
    create_engine,
    delete,
    event,
    exists,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from moorage.metadata import schema as t
from moorage.metadata.v1 import V1Queries


@dataclass(frozen=True, slots=True)
class BlobRow:
    digest: str
    storage_key: str
    size: int


@dataclass(frozen=True, slots=True)
class ManifestRow:
    digest: str
    media_type: str
    content: bytes
    subject: str | None = None
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class UploadRow:
    id: str
    repository: str
    offset: int
    created: float
    updated: float
    lease: str | None
    lease_until: float | None


def _sqlite_engine(url: str, immediate: bool) -> AsyncEngine:
    engine = create_async_engine(url, pool_size=8, max_overflow=8)

    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let SQLAlchemy's begin event issue BEGIN
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


# The hot lookups, built once (building a select and its cache key costs more than running it).
_REPOSITORY_BLOB = (
    select(t.blobs.c.digest, t.blobs.c.storage_key, t.blobs.c.size)
    .join(t.repository_blobs, t.repository_blobs.c.digest == t.blobs.c.digest)
    .join(t.repositories, t.repositories.c.id == t.repository_blobs.c.repository_id)
    .where(t.repositories.c.name == bindparam("repository"))
    .where(t.blobs.c.digest == bindparam("digest"))
)
_MANIFEST = (
    select(t.manifests.c.digest, t.manifests.c.media_type, t.manifests.c.content)
    .join(t.repositories, t.repositories.c.id == t.manifests.c.repository_id)
    .where(t.repositories.c.name == bindparam("repository"))
    .where(t.manifests.c.digest == bindparam("digest"))
)
_TAGGED_MANIFEST = (
    select(t.manifests.c.digest, t.manifests.c.media_type, t.manifests.c.content)
    .join(t.repositories, t.repositories.c.id == t.tags.c.repository_id)
    .join(
        t.manifests,
        and_(
            t.manifests.c.repository_id == t.tags.c.repository_id,
            t.manifests.c.digest == t.tags.c.digest,
        ),
    )
    .where(t.repositories.c.name == bindparam("repository"))
    .where(t.tags.c.name == bindparam("tag"))
)


def _sqlite_reader(url: str) -> Engine:
    """A synchronous engine for SQLite reads. An indexed SQLite read takes tens of
    microseconds, far less than a hop to aiosqlite's thread and back, so hot lookups (a
    manifest by tag, a blob's size) run inline on the event loop. In WAL mode readers never
    wait for writers."""
    engine = create_engine(url.replace("+aiosqlite", "", 1), pool_size=4, max_overflow=4)

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.execute("PRAGMA query_only=ON")
        cursor.close()

    return engine


class _InlineConnection:
    """The part of AsyncConnection the queries use, over a synchronous connection."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def execute(
        self, statement: Executable, parameters: dict[str, Any] | None = None
    ) -> Result[Any]:
        return self._conn.execute(statement, parameters)


class MetadataStore(V1Queries):
    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite:
            if parsed.database:
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self._read = _sqlite_engine(url, immediate=False)
            self._write = _sqlite_engine(url, immediate=True)
            self._inline: Engine | None = _sqlite_reader(url)
        else:
            self._read = self._write = create_async_engine(url, pool_size=10, max_overflow=10)
            self._inline = None

    async def open(self) -> None:
        async with self._write.begin() as conn:
            await conn.run_sync(t.metadata.create_all)
            version = (await conn.execute(select(t.schema_info.c.version))).scalar()
            if version is None:
                await conn.execute(insert(t.schema_info).values(version=t.SCHEMA_VERSION))
            elif version > t.SCHEMA_VERSION:
                raise RuntimeError(f"metadata schema {version} is newer than this Moorage")

    async def close(self) -> None:
        if self._inline is not None:
            self._inline.dispose()
        await self._read.dispose()
        if self._write is not self._read:
            await self._write.dispose()

    @asynccontextmanager
    async def _reading(self) -> AsyncIterator[AsyncConnection]:
        if self._inline is not None:
            with self._inline.connect() as conn:
                yield _InlineConnection(conn)  # type: ignore[misc]
            return
        async with self._read.connect() as conn:
            yield conn

    @asynccontextmanager
    async def _writing(self) -> AsyncIterator[AsyncConnection]:
        async with self._write.begin() as conn:
            yield conn

    # -- repositories ------------------------------------------------------------------

    async def _repository_id(self, conn: AsyncConnection, name: str, create: bool) -> int | None:
        query = select(t.repositories.c.id).where(t.repositories.c.name == name)
        found = (await conn.execute(query)).scalar()
        if found is not None or not create:
            return found
        result = await conn.execute(insert(t.repositories).values(name=name, created=time.time()))
        return int(result.inserted_primary_key[0])  # type: ignore[index]

    async def ensure_repository(self, name: str) -> None:
        async with self._writing() as conn:
            await self._repository_id(conn, name, create=True)

    async def repository_exists(self, name: str) -> bool:
        async with self._reading() as conn:
            return await self._repository_id(conn, name, create=False) is not None

    async def list_repositories(self, last: str | None, limit: int) -> list[str]:
        r = t.repositories
        has_content = exists().where(t.manifests.c.repository_id == r.c.id) | exists().where(
            t.repository_blobs.c.repository_id == r.c.id
        )
        query = select(r.c.name).where(has_content).order_by(r.c.name).limit(limit)
        if last is not None:
            query = query.where(r.c.name > last)
        async with self._reading() as conn:
            return list((await conn.execute(query)).scalars())

    # -- blobs ---------------------------------------------------------------------------

    async def repository_blob(self, repository: str, digest: str) -> BlobRow | None:
        """The blob `digest` if `repository` may serve it: one indexed query."""
        async with self._reading() as conn:
            params = {"repository": repository, "digest": digest}
            row = (await conn.execute(_REPOSITORY_BLOB, params)).first()
        return BlobRow(*row) if row else None

    async def blob(self, digest: str) -> BlobRow | None:
        query = select(t.blobs.c.digest, t.blobs.c.storage_key, t.blobs.c.size).where(
            t.blobs.c.digest == digest
        )
        async with self._reading() as conn:
            row = (await conn.execute(query)).first()
        return BlobRow(*row) if row else None

    async def link_blobs(self, repository: str, rows: Iterable[BlobRow]) -> None:
        """Record the blobs (if new) and link them into `repository`, in one transaction."""
        async with self._writing() as conn:
            await self._link(conn, repository, rows)

    async def _link(self, conn: AsyncConnection, repository: str, rows: Iterable[BlobRow]) -> None:
        now = time.time()
        repo_id = await self._repository_id(conn, repository, create=True)
        for row in rows:
            known = select(t.blobs.c.digest).where(t.blobs.c.digest == row.digest)
            if (await conn.execute(known)).first() is None:
                await conn.execute(
                    insert(t.blobs).values(
                        digest=row.digest,
                        storage_key=row.storage_key,
                        size=row.size,
                        created=now,
                    )
                )
            linked = select(t.repository_blobs.c.digest).where(
                t.repository_blobs.c.repository_id == repo_id,
                t.repository_blobs.c.digest == row.digest,
            )
            if (await conn.execute(linked)).first() is None:
                await conn.execute(
                    insert(t.repository_blobs).values(
                        repository_id=repo_id, digest=row.digest, created=now
                    )
                )

    async def unlink_blob(self, repository: str, digest: str) -> bool:
        async with self._writing() as conn:
            repo_id = await self._repository_id(conn, repository, create=False)
            if repo_id is None:
                return False
            result = await conn.execute(
                delete(t.repository_blobs).where(
                    t.repository_blobs.c.repository_id == repo_id,
                    t.repository_blobs.c.digest == digest,
                )
            )
            return bool(result.rowcount)

    async def repositories_with_blob(self, digest: str) -> list[str]:
        r, rb = t.repositories, t.repository_blobs
        query = (
            select(r.c.name)
            .join(rb, rb.c.repository_id == r.c.id)
            .where(rb.c.digest == digest)
            .order_by(r.c.name)
        )
        async with self._reading() as conn:
            return list((await conn.execute(query)).scalars())

    async def linked_blobs(self, repository: str, digests: Iterable[str]) -> set[str]:
        wanted = set(digests)
        if not wanted:
            return set()
        r, rb = t.repositories, t.repository_blobs
        query = (
            select(rb.c.digest)
            .join(r, r.c.id == rb.c.repository_id)
            .where(r.c.name == repository, rb.c.digest.in_(wanted))
        )
        async with self._reading() as conn:
            return set((await conn.execute(query)).scalars())

    # -- uploads -------------------------------------------------------------------------

    async def create_upload(self, upload_id: str, repository: str) -> None:
        now = time.time()
        async with self._writing() as conn:
            await conn.execute(
                insert(t.uploads).values(
                    id=upload_id, repository=repository, offset=0, created=now, updated=now
                )
            )

    async def upload(self, upload_id: str) -> UploadRow | None:
        u = t.uploads
        query = select(
            u.c.id,
            u.c.repository,
            u.c.offset,
            u.c.created,
            u.c.updated,
            u.c.lease,
            u.c.lease_until,
        ).where(u.c.id == upload_id)
        async with self._reading() as conn:
            row = (await conn.execute(query)).first()
        return UploadRow(*row) if row else None

    async def acquire_upload(self, upload_id: str, offset: int, lease: str, until: float) -> bool:
        """Take the session's write lease if it is at `offset` and nobody else holds it."""
        u = t.uploads
        now = time.time()
        free = (u.c.lease.is_(None)) | (u.c.lease_until < now)
        async with self._writing() as conn:
            result = await conn.execute(
                update(u)
                .where(u.c.id == upload_id, u.c.offset == offset, free)
                .values(lease=lease, lease_until=until, updated=now)
            )
            return bool(result.rowcount)

    async def release_upload(self, upload_id: str, lease: str, offset: int | None) -> bool:
        """Give the lease back, recording the new offset (None: unchanged)."""
        u = t.uploads
        values: dict[str, Any] = {"lease": None, "lease_until": None, "updated": time.time()}
        if offset is not None:
            values["offset"] = offset
        async with self._writing() as conn:
            result = await conn.execute(
                update(u).where(u.c.id == upload_id, u.c.lease == lease).values(**values)
            )
            return bool(result.rowcount)

    async def steal_upload(
        self, upload_id: str, offset: int, old: str, lease: str, until: float
    ) -> bool:
        """Take over a lease whose holder is known to be dead."""
        u = t.uploads
        async with self._writing() as conn:
            result = await conn.execute(
                update(u)
                .where(u.c.id == upload_id, u.c.offset == offset, u.c.lease == old)
                .values(lease=lease, lease_until=until, updated=time.time())
            )
            return bool(result.rowcount)

    async def renew_upload(self, upload_id: str, lease: str, until: float) -> bool:
        u = t.uploads
        async with self._writing() as conn:
            result = await conn.execute(
                update(u).where(u.c.id == upload_id, u.c.lease == lease).values(lease_until=until)
            )
            return bool(result.rowcount)

    async def finish_upload(self, upload_id: str, repository: str, rows: Iterable[BlobRow]) -> None:
        """End the session and link its blob, in one transaction."""
        async with self._writing() as conn:
            await self._link(conn, repository, rows)
            await conn.execute(delete(t.uploads).where(t.uploads.c.id == upload_id))

    async def delete_upload(self, upload_id: str) -> bool:
        async with self._writing() as conn:
            result = await conn.execute(delete(t.uploads).where(t.uploads.c.id == upload_id))
            return bool(result.rowcount)

    async def stale_uploads(self, idle_before: float, limit: int = 1000) -> list[str]:
        query = (
            select(t.uploads.c.id)
            .where(t.uploads.c.updated < idle_before)
            .order_by(t.uploads.c.updated)
            .limit(limit)
        )
        async with self._reading() as conn:
            return list((await conn.execute(query)).scalars())

    # -- manifests and tags --------------------------------------------------------------

    async def manifest(self, repository: str, digest: str) -> ManifestRow | None:
        async with self._reading() as conn:
            params = {"repository": repository, "digest": digest}
            row = (await conn.execute(_MANIFEST, params)).first()
        return ManifestRow(row[0], row[1], bytes(row[2])) if row else None

    async def tagged_manifest(self, repository: str, tag: str) -> ManifestRow | None:
        async with self._reading() as conn:
            params = {"repository": repository, "tag": tag}
            row = (await conn.execute(_TAGGED_MANIFEST, params)).first()
        return ManifestRow(row[0], row[1], bytes(row[2])) if row else None

    async def existing_manifests(self, repository: str, digests: Iterable[str]) -> set[str]:
        wanted = set(digests)
        if not wanted:
            return set()
        m, r = t.manifests, t.repositories
        query = (
            select(m.c.digest)
            .join(r, r.c.id == m.c.repository_id)
            .where(r.c.name == repository, m.c.digest.in_(wanted))
        )
        async with self._reading() as conn:
            return set((await conn.execute(query)).scalars())

    async def put_manifest(
        self,
        repository: str,
        row: ManifestRow,
        references: Iterable[str],
        tag: str | None,
    ) -> None:
        """Store a manifest (idempotent) and optionally point a tag at it, atomically."""
        now = time.time()
        async with self._writing() as conn:
            repo_id = await self._repository_id(conn, repository, create=True)
            m = t.manifests
            present = select(m.c.digest).where(
                m.c.repository_id == repo_id, m.c.digest == row.digest
            )
            if (await conn.execute(present)).first() is None:
                await conn.execute(
                    insert(m).values(
                        repository_id=repo_id,
                        digest=row.digest,
                        media_type=row.media_type,
                        content=row.content,
                        subject=row.subject,
                        artifact_type=row.artifact_type,
                        annotations=json.dumps(row.annotations) if row.annotations else None,
                        created=now,
                    )
                )
                children = sorted(set(references))
                if children:
                    await conn.execute(
                        insert(t.manifest_references),
                        [
                            {"repository_id": repo_id, "digest": row.digest, "child": child}
                            for child in children
                        ],
                    )
            if tag is not None:
                tg = t.tags
                moved = await conn.execute(
                    update(tg)
                    .where(tg.c.repository_id == repo_id, tg.c.name == tag)
                    .values(digest=row.digest, updated=now)
                )
                if not moved.rowcount:
                    await conn.execute(
                        insert(tg).values(
                            repository_id=repo_id, name=tag, digest=row.digest, updated=now
                        )
                    )

    async def delete_manifest(self, repository: str, digest: str) -> bool:
        """Delete a manifest and every tag pointing at it."""
        async with self._writing() as conn:
            repo_id = await self._repository_id(conn, repository, create=False)
            if repo_id is None:
                return False
            m = t.manifests
            result = await conn.execute(
                delete(m).where(m.c.repository_id == repo_id, m.c.digest == digest)
            )
            if not result.rowcount:
                return False
            await conn.execute(
                delete(t.tags).where(t.tags.c.repository_id == repo_id, t.tags.c.digest == digest)
            )
            mr = t.manifest_references
            await conn.execute(
                delete(mr).where(mr.c.repository_id == repo_id, mr.c.digest == digest)
            )
            return True

    async def delete_tag(self, repository: str, tag: str) -> bool:
        async with self._writing() as conn:
            repo_id = await self._repository_id(conn, repository, create=False)
            if repo_id is None:
                return False
            result = await conn.execute(
                delete(t.tags).where(t.tags.c.repository_id == repo_id, t.tags.c.name == tag)
            )
            return bool(result.rowcount)

    async def list_tags(self, repository: str, last: str | None, limit: int) -> list[str] | None:
        """Tags in byte order after `last`; None if the repository does not exist."""
        tg = t.tags
        async with self._reading() as conn:
            repo_id = await self._repository_id(conn, repository, create=False)
            if repo_id is None:
                return None
            query = select(tg.c.name).where(tg.c.repository_id == repo_id)
            if last is not None:
                query = query.where(tg.c.name > last)
            query = query.order_by(tg.c.name).limit(limit)
            return list((await conn.execute(query)).scalars())

    async def tags_of(self, repository: str, digest: str) -> list[str]:
        tg, r = t.tags, t.repositories
        query = (
            select(tg.c.name)
            .join(r, r.c.id == tg.c.repository_id)
            .where(r.c.name == repository, tg.c.digest == digest)
        )
        async with self._reading() as conn:
            return list((await conn.execute(query)).scalars())

    async def referrers(
        self,
        repository: str,
        subject: str,
        artifact_type: str | None,
        after: tuple[float, str] | None,
        limit: int,
    ) -> list[tuple[ManifestRow, float]]:
        """Manifests in `repository` whose subject is `subject`, oldest first."""
        m, r = t.manifests, t.repositories
        query = (
            select(
                m.c.digest,
                m.c.media_type,
                m.c.content,
                m.c.subject,
                m.c.artifact_type,
                m.c.annotations,
                m.c.created,
            )
            .join(r, r.c.id == m.c.repository_id)
            .where(r.c.name == repository, m.c.subject == subject)
            .order_by(m.c.created, m.c.digest)
            .limit(limit)
        )
        if artifact_type is not None:
            query = query.where(m.c.artifact_type == artifact_type)
        if after is not None:
            query = query.where(
                (m.c.created > after[0]) | ((m.c.created == after[0]) & (m.c.digest > after[1]))
            )
        async with self._reading() as conn:
            rows = (await conn.execute(query)).all()
        return [
            (
                ManifestRow(
                    row[0],
                    row[1],
                    bytes(row[2]),
                    row[3],
                    row[4],
                    json.loads(row[5]) if row[5] else None,
                ),
                row[6],
            )
            for row in rows
        ]

    async def count(self, table: str) -> int:
        """Row count of one table (for tests and diagnostics)."""
        async with self._reading() as conn:
            result = await conn.execute(select(func.count()).select_from(t.metadata.tables[table]))
            return int(result.scalar() or 0)


__all__ = ["BlobRow", "IntegrityError", "ManifestRow", "MetadataStore", "UploadRow"]
