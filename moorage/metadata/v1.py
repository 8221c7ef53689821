"""Queries for the legacy v1 protocol: images, their links to repositories, push sessions.

A mixin of `MetadataStore` (it uses the store's engines); kept apart so each file stays about
one thing. State changes that race (a re-sent image JSON against a streaming layer) are
compare-and-set on the image's `generation`; rows two pushes may create at once are inserted
with `ON CONFLICT` (see `store.py`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from sqlalchemy import Connection, Select, delete, insert, literal, select, update

from moorage.metadata import dialect
from moorage.metadata import schema as t

if TYPE_CHECKING:
    from moorage.metadata.store import BlobRow, ManifestRow

V1State = Literal["uploading", "uploaded", "complete"]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class V1ImageRow:
    id: str
    json: bytes
    parent: str | None
    state: str
    generation: int
    depth: int
    blob_digest: str | None
    diff_id: str | None
    payload_checksum: str | None
    tarsum: str | None
    client_checksum: str | None
    size: int | None
    compressed: bool | None
    uploader: str | None


@dataclass(frozen=True, slots=True)
class LayerSums:
    blob_digest: str
    storage_key: str
    diff_id: str
    payload_checksum: str
    tarsum: str | None  # None: not computed at upload (only pre-0.10 clients check it)
    size: int
    compressed: bool


_IMAGE_COLUMNS = (
    t.v1_images.c.id,
    t.v1_images.c.json,
    t.v1_images.c.parent,
    t.v1_images.c.state,
    t.v1_images.c.generation,
    t.v1_images.c.depth,
    t.v1_images.c.blob_digest,
    t.v1_images.c.diff_id,
    t.v1_images.c.payload_checksum,
    t.v1_images.c.tarsum,
    t.v1_images.c.client_checksum,
    t.v1_images.c.size,
    t.v1_images.c.compressed,
    t.v1_images.c.uploader,
)


def _row(row: Any) -> V1ImageRow:
    values = list(row)
    values[1] = bytes(values[1])
    values[12] = None if values[12] is None else bool(values[12])
    return V1ImageRow(*values)


class V1Queries:
    if TYPE_CHECKING:  # provided by MetadataStore

        async def _read(self, work: Callable[[Connection], T]) -> T: ...
        async def _write(self, work: Callable[[Connection], T]) -> T: ...
        async def _column(self, query: Select[Any]) -> list[Any]: ...
        @staticmethod
        def _repository_id(conn: Connection, name: str, create: bool) -> int | None: ...
        def _link(
            self, conn: Connection, repository: str, rows: Iterable[Any], existing: bool = False
        ) -> None: ...
        @staticmethod
        def _record_blobs(conn: Connection, rows: Sequence[BlobRow], now: float) -> None: ...
        def _put_manifest(
            self,
            conn: Connection,
            repository: str,
            row: ManifestRow,
            references: Iterable[str],
            tag: str | None,
            blobs: Iterable[str] = (),
            manifests: Iterable[str] = (),
            frozen: bool = False,
        ) -> None: ...

    # -- images --------------------------------------------------------------------------

    async def v1_image(self, image_id: str) -> V1ImageRow | None:
        query = select(*_IMAGE_COLUMNS).where(t.v1_images.c.id == image_id)
        row = await self._read(lambda conn: conn.execute(query).first())
        return _row(row) if row else None

    async def v1_ancestry(self, image_id: str) -> list[V1ImageRow]:
        """The image and its ancestors, self first, in one recursive query."""
        i = t.v1_images
        chain = select(*_IMAGE_COLUMNS, literal(0).label("step")).where(i.c.id == image_id)
        chain_cte = chain.cte("chain", recursive=True)
        parent = i.alias("parent_image")
        parent_columns = [parent.c[c.name] for c in _IMAGE_COLUMNS]
        chain_cte = chain_cte.union_all(
            select(*parent_columns, (chain_cte.c.step + 1).label("step"))
            .join(chain_cte, parent.c.id == chain_cte.c.parent)
            .where(chain_cte.c.step < 2000)
        )
        query = select(*[chain_cte.c[c.name] for c in _IMAGE_COLUMNS]).order_by(chain_cte.c.step)
        rows = await self._read(lambda conn: conn.execute(query).all())
        return [_row(r) for r in rows]

    async def v1_put_json(
        self, image_id: str, body: bytes, parent: str | None, depth: int, uploader: str | None
    ) -> int | None:
        """Start (or restart) an image upload; returns its generation, or None if the image
        is already complete (complete images never change)."""
        i = t.v1_images
        now = time.time()

        def work(conn: Connection) -> int | None:
            values: dict[str, Any] = {
                "json": body,
                "parent": parent,
                "state": "uploading",
                "depth": depth,
                "blob_digest": None,
                "diff_id": None,
                "payload_checksum": None,
                "tarsum": None,
                "client_checksum": None,
                "size": None,
                "compressed": None,
                "uploader": uploader,
                "updated": now,
            }
            # One statement: a new image starts at generation 1, an incomplete one is reset
            # and its generation bumped, a complete one is left alone (no row comes back).
            upsert = dialect.insert(conn, i).values(id=image_id, generation=1, **values)
            upsert = upsert.on_conflict_do_update(
                index_elements=["id"],
                set_={"generation": i.c.generation + 1, **values},
                where=i.c.state != "complete",
            )
            generation = conn.execute(upsert.returning(i.c.generation)).scalar()
            return None if generation is None else int(generation)

        return await self._write(work)

    async def v1_layer_uploaded(self, image_id: str, generation: int, sums: LayerSums) -> bool:
        """Record a fully received layer, unless the upload was restarted meanwhile. The
        layer blob is recorded too (it is not linked to any repository yet)."""
        i = t.v1_images

        def work(conn: Connection) -> bool:
            result = conn.execute(
                update(i)
                .where(
                    i.c.id == image_id,
                    i.c.generation == generation,
                    i.c.state.in_(("uploading", "uploaded")),
                )
                .values(
                    state="uploaded",
                    blob_digest=sums.blob_digest,
                    diff_id=sums.diff_id,
                    payload_checksum=sums.payload_checksum,
                    tarsum=sums.tarsum,
                    size=sums.size,
                    compressed=int(sums.compressed),
                    updated=time.time(),
                )
            )
            if not result.rowcount:
                return False
            from moorage.metadata.store import BlobRow  # a cycle at import time

            row = BlobRow(sums.blob_digest, sums.storage_key, sums.size)
            self._record_blobs(conn, [row], time.time())  # KeyPending: nothing recorded
            return True

        return await self._write(work)

    async def v1_complete(
        self, image_id: str, generation: int, client_checksum: str | None, repository: str | None
    ) -> bool:
        """Make an uploaded image complete and link it (and its ancestors) into
        `repository`, in one transaction."""
        i = t.v1_images

        def work(conn: Connection) -> bool:
            result = conn.execute(
                update(i)
                .where(i.c.id == image_id, i.c.generation == generation, i.c.state == "uploaded")
                .values(state="complete", client_checksum=client_checksum, updated=time.time())
            )
            if not result.rowcount:
                return False
            if repository is not None:
                self._v1_link(conn, repository, [image_id])
            return True

        return await self._write(work)

    def _v1_link(self, conn: Connection, repository: str, ids: list[str]) -> None:
        """Link images and their ancestors into a repository (v1 links and layer blobs)."""
        repo_id = self._repository_id(conn, repository, create=True)
        i = t.v1_images
        seen: set[str] = set()
        pending = list(ids)
        blobs: list[str] = []
        while pending:
            image_id = pending.pop()
            if image_id in seen:
                continue
            seen.add(image_id)
            row = conn.execute(
                select(i.c.parent, i.c.blob_digest).where(i.c.id == image_id)
            ).first()
            if row is None:
                continue
            if row[1]:
                blobs.append(row[1])
            if row[0]:
                pending.append(row[0])
        conn.execute(
            dialect.insert(conn, t.v1_links).on_conflict_do_nothing(
                index_elements=["image_id", "repository_id"]
            ),
            [{"image_id": x, "repository_id": repo_id} for x in sorted(seen)],
        )
        if blobs:
            rows = conn.execute(
                select(t.blobs.c.digest, t.blobs.c.storage_key, t.blobs.c.size).where(
                    t.blobs.c.digest.in_(blobs)
                )
            ).all()
            self._link(conn, repository, [_BlobLike(*r) for r in rows])

    async def v1_link(self, repository: str, ids: list[str]) -> None:
        await self._write(lambda conn: self._v1_link(conn, repository, ids))

    async def v1_record_checksums(self, repository: str, checksums: dict[str, str]) -> None:
        """Remember the checksums a client reported in its final image list, for complete
        images linked to the repository (informational: served back in image lists)."""
        if not checksums:
            return
        i, link = t.v1_images, t.v1_links

        def work(conn: Connection) -> None:
            repo_id = self._repository_id(conn, repository, create=False)
            if repo_id is None:
                return
            linked = set(
                conn.execute(
                    select(link.c.image_id).where(
                        link.c.repository_id == repo_id, link.c.image_id.in_(checksums)
                    )
                ).scalars()
            )
            for image_id in sorted(linked):
                conn.execute(
                    update(i)
                    .where(i.c.id == image_id, i.c.state == "complete")
                    .values(client_checksum=checksums[image_id])
                )

        await self._write(work)

    def _v1_set_tag_info(
        self, conn: Connection, repository: str, tag: str, info: dict[str, Any]
    ) -> None:
        ti = t.v1_tag_info
        repo_id = self._repository_id(conn, repository, create=True)
        upsert = dialect.insert(conn, ti).values(
            repository_id=repo_id, tag=tag, info=json.dumps(info)
        )
        conn.execute(
            upsert.on_conflict_do_update(
                index_elements=["repository_id", "tag"], set_={"info": upsert.excluded.info}
            )
        )

    async def v1_tag(
        self,
        repository: str,
        tag: str,
        image_id: str,
        manifest: ManifestRow,
        references: Iterable[str],
        blobs: Iterable[BlobRow],
        info: dict[str, Any],
        frozen: bool = False,
    ) -> None:
        """Point a tag at a v1 image, in one transaction: link the manifest's blobs and the
        image (with its ancestors), store the manifest and move the tag (never a `frozen`
        one: TagFrozen), map the manifest to the image id the client pushed, and record the
        tag's client metadata. A failure anywhere leaves none of it (else the tag would later
        get freshly derived v1 ids)."""

        def work(conn: Connection) -> None:
            self._link(conn, repository, blobs)
            self._v1_link(conn, repository, [image_id])
            self._put_manifest(conn, repository, manifest, references, tag, frozen=frozen)
            self._v1_set_manifest_image(conn, repository, manifest.digest, image_id)
            self._v1_set_tag_info(conn, repository, tag, info)

        await self._write(work)

    async def v1_tag_info(self, repository: str, tag: str) -> dict[str, Any] | None:
        ti, r = t.v1_tag_info, t.repositories
        query = (
            select(ti.c.info)
            .join(r, r.c.id == ti.c.repository_id)
            .where(r.c.name == repository, ti.c.tag == tag)
        )
        row = await self._read(lambda conn: conn.execute(query).first())
        info: dict[str, Any] | None = json.loads(row[0]) if row else None
        return info

    async def v1_repositories_of(self, image_id: str) -> list[str]:
        r, link = t.repositories, t.v1_links
        query = (
            select(r.c.name)
            .join(link, link.c.repository_id == r.c.id)
            .where(link.c.image_id == image_id)
            .order_by(r.c.name)
        )
        return await self._column(query)

    async def v1_images_of(self, repository: str) -> list[tuple[str, str | None]]:
        """(id, checksum) of the complete images linked to a repository."""
        r, link, i = t.repositories, t.v1_links, t.v1_images
        query = (
            select(i.c.id, i.c.client_checksum, i.c.payload_checksum)
            .join(link, link.c.image_id == i.c.id)
            .join(r, r.c.id == link.c.repository_id)
            .where(r.c.name == repository, i.c.state == "complete")
            .order_by(i.c.id)
        )
        rows = await self._read(lambda conn: conn.execute(query).all())
        return [(row[0], row[1] or row[2]) for row in rows]

    async def v1_insert_complete(
        self, images: list[dict[str, Any]], repository: str, manifest_digest: str
    ) -> bool:
        """Record complete images derived from v2 content (root first), link the top one into
        `repository` and map the manifest to it, in one transaction. An id already known must
        hold the very same JSON and layer (else someone pushed other content under a
        predictable id first): then nothing is written and False comes back."""
        if not images:
            return True
        i = t.v1_images
        ids = [x["id"] for x in images]

        def work(conn: Connection) -> bool:
            # Insert what is missing (a concurrent insert of the same ids waits here), then
            # check every row, ours or not (complete rows never change); any mismatch undoes
            # it all.
            now = time.time()
            conn.execute(
                dialect.insert(conn, i).on_conflict_do_nothing(index_elements=["id"]),
                [
                    {"state": "complete", "generation": 1, "updated": now, **image}
                    for image in sorted(images, key=lambda x: str(x["id"]))
                ],
            )
            rows = conn.execute(
                select(i.c.id, i.c.json, i.c.blob_digest, i.c.state).where(i.c.id.in_(ids))
            ).all()
            known = {row[0]: row for row in rows}
            for image in images:
                row = known.get(image["id"])
                if row is None or (
                    bytes(row[1]) != image["json"]
                    or row[2] != image["blob_digest"]
                    or row[3] != "complete"
                ):
                    raise _Mismatch()
            top = images[-1]["id"]
            self._v1_link(conn, repository, [top])
            self._v1_set_manifest_image(conn, repository, manifest_digest, top)
            return True

        try:
            return await self._write(work)
        except _Mismatch:
            return False

    # -- proof-of-possession uploads -----------------------------------------------------

    async def v1_start_proof(self, image_id: str, principal: str, expires: float) -> None:
        p = t.v1_proofs

        def work(conn: Connection) -> None:
            upsert = dialect.insert(conn, p).values(
                image_id=image_id, principal=principal, expires=expires
            )
            conn.execute(
                upsert.on_conflict_do_update(
                    index_elements=["image_id", "principal"],
                    set_={"payload_checksum": None, "expires": expires},
                )
            )

        await self._write(work)

    async def v1_proof(self, image_id: str, principal: str) -> tuple[bool, str | None]:
        """(a live proof upload exists, the payload checksum its layer produced)."""
        p = t.v1_proofs
        query = select(p.c.payload_checksum).where(
            p.c.image_id == image_id, p.c.principal == principal, p.c.expires >= time.time()
        )
        row = await self._read(lambda conn: conn.execute(query).first())
        return (row is not None, row[0] if row else None)

    async def v1_set_proof(self, image_id: str, principal: str, payload: str) -> None:
        p = t.v1_proofs
        statement = (
            update(p)
            .where(p.c.image_id == image_id, p.c.principal == principal)
            .values(payload_checksum=payload)
        )
        await self._write(lambda conn: conn.execute(statement))

    async def v1_end_proof(self, image_id: str, principal: str) -> None:
        p = t.v1_proofs
        statement = delete(p).where(p.c.image_id == image_id, p.c.principal == principal)
        await self._write(lambda conn: conn.execute(statement))

    # -- the v2 view of v1 images --------------------------------------------------------

    async def v1_manifest_images(self, repository: str, digests: list[str]) -> dict[str, str]:
        m, r = t.v1_manifest_images, t.repositories
        if not digests:
            return {}
        query = (
            select(m.c.manifest_digest, m.c.image_id)
            .join(r, r.c.id == m.c.repository_id)
            .where(r.c.name == repository, m.c.manifest_digest.in_(digests))
        )
        rows = await self._read(lambda conn: conn.execute(query).all())
        return {row[0]: row[1] for row in rows}

    async def v1_manifests_of_image(self, image_id: str) -> list[tuple[str, str]]:
        """(repository, manifest digest) of the manifests whose v1 view is this image."""
        m, r = t.v1_manifest_images, t.repositories
        query = (
            select(r.c.name, m.c.manifest_digest)
            .join(r, r.c.id == m.c.repository_id)
            .where(m.c.image_id == image_id)
            .order_by(r.c.name)
        )
        rows = await self._read(lambda conn: conn.execute(query).all())
        return [(row[0], row[1]) for row in rows]

    def _v1_set_manifest_image(
        self, conn: Connection, repository: str, manifest_digest: str, image_id: str
    ) -> None:
        m = t.v1_manifest_images
        repo_id = self._repository_id(conn, repository, create=True)
        conn.execute(
            dialect.insert(conn, m)
            .values(repository_id=repo_id, manifest_digest=manifest_digest, image_id=image_id)
            .on_conflict_do_nothing(index_elements=["repository_id", "manifest_digest"])
        )

    # -- push sessions -------------------------------------------------------------------

    async def v1_open_session(
        self,
        session_id: str,
        repository: str,
        principal: str | None,
        images: list[str],
        expires: float,
    ) -> None:
        def work(conn: Connection) -> None:
            conn.execute(delete(t.v1_sessions).where(t.v1_sessions.c.expires < time.time()))
            conn.execute(
                insert(t.v1_sessions).values(
                    id=session_id,
                    repository=repository,
                    principal=principal,
                    images=json.dumps(sorted(set(images))),
                    expires=expires,
                )
            )

        await self._write(work)

    async def v1_session_repositories(self, image_id: str, principal: str | None) -> list[str]:
        """Repositories of the principal's live push sessions that declared `image_id`."""
        s = t.v1_sessions
        query = select(s.c.repository, s.c.images).where(s.c.expires >= time.time())
        query = query.where(
            s.c.principal.is_(None) if principal is None else s.c.principal == principal
        )
        rows = await self._read(lambda conn: conn.execute(query).all())
        return sorted({row[0] for row in rows if image_id in json.loads(row[1])})

    async def v1_close_sessions(self, repository: str, principal: str | None) -> None:
        s = t.v1_sessions
        who = s.c.principal.is_(None) if principal is None else s.c.principal == principal
        statement = delete(s).where(s.c.repository == repository, who)
        await self._write(lambda conn: conn.execute(statement))

    # -- repositories --------------------------------------------------------------------

    async def tag_digests(self, repository: str) -> dict[str, str] | None:
        """tag -> manifest digest; None if the repository does not exist."""
        tg = t.tags

        def work(conn: Connection) -> dict[str, str] | None:
            repo_id = self._repository_id(conn, repository, create=False)
            if repo_id is None:
                return None
            query = select(tg.c.name, tg.c.digest).where(tg.c.repository_id == repo_id)
            return {row[0]: row[1] for row in conn.execute(query).all()}

        return await self._read(work)

    async def delete_repository(self, repository: str) -> bool:
        """Remove a repository with its tags, manifests, links and sessions. Blob bytes and
        v1 images stay for garbage collection (other repositories may share them)."""

        def work(conn: Connection) -> bool:
            r = t.repositories
            # Locked: a write that holds the repository (see `_repository_id`) ends first.
            repo_id = conn.execute(
                select(r.c.id).where(r.c.name == repository).with_for_update()
            ).scalar()
            if repo_id is None:
                return False
            for table in (
                t.tags,
                t.manifests,
                t.manifest_references,
                t.repository_blobs,
                t.v1_links,
                t.v1_manifest_images,
                t.v1_tag_info,
            ):
                conn.execute(delete(table).where(table.c.repository_id == repo_id))
            conn.execute(delete(t.v1_sessions).where(t.v1_sessions.c.repository == repository))
            conn.execute(delete(t.repositories).where(t.repositories.c.id == repo_id))
            return True

        return await self._write(work)

    async def search_repositories(self, term: str, limit: int) -> list[str]:
        """Repositories with content whose name contains `term` (case-insensitive)."""
        r = t.repositories
        query = select(r.c.name).where(r.c.name.ilike(f"%{_escape_like(term)}%", escape="\\"))
        query = query.order_by(r.c.name).limit(limit)
        return await self._column(query)


class _Mismatch(Exception):
    """An image id is taken by other content: roll the whole transaction back."""


@dataclass(frozen=True, slots=True)
class _BlobLike:
    digest: str
    storage_key: str
    size: int


def _escape_like(term: str) -> str:
    return term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


__all__ = ["LayerSums", "V1ImageRow", "V1Queries", "V1State"]
