"""The legacy v1 protocol's domain: images in a global id namespace, their layers and
checksums, tags shared with v2, and the translation between the two views.

An image is served only once complete (json, layer and a matching checksum). Layer bytes are
ordinary content-addressed blobs, so a v1 image and a v2 manifest share them. A v1 tag write
builds a Docker schema 2 manifest and sets the one tag both protocols read; a v2 manifest read
through v1 gets deterministic v1 ids, persisted on first use. See
docs/design/v1-v2-translation.md.

Access decisions (who may read or upload which image) are taken by the caller and passed in
as predicates; this module knows nothing of users or HTTP.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from moorage.content import blobs, jsondoc, layers, manifests, names, streams, translate
from moorage.content import digest as digests
from moorage.content.blobs import Blob
from moorage.content.layers import LayerAnalyzer
from moorage.content.registry import CatalogFilter, Registry
from moorage.errors import ManifestUnknown
from moorage.metadata import BlobRow, KeyPending, LayerSums, ManifestRow, TagFrozen, V1ImageRow
from moorage.storage import paths
from moorage.storage.objects import ObjectWriter

log = logging.getLogger("moorage.content.v1")

IMAGE_ID = re.compile(r"^[0-9a-f]{64}$")
MAX_JSON = 4 * 1024 * 1024
MAX_DEPTH = 1000
SESSION_SECONDS = 6 * 3600

Readable = Callable[[list[str]], bool]  # repositories an image is linked to -> may read?


class V1Error(Exception):
    """A v1 request the domain refuses. Each subclass is one reason; the API layer's table
    (`moorage.api.v1.errors`) gives it its wire status and message. `str()` is for logs."""


class ImageIdInvalid(V1Error):
    """Not 64 lowercase hex."""


class ImageNotFound(V1Error):
    """Unknown, or not readable by the caller (the two look the same)."""


class ImageExists(V1Error):
    """The image is complete: it never changes again."""


class ImageBeingUploaded(V1Error):
    """Not complete yet, and the caller may see that."""


class ImageJSONTooLarge(V1Error):
    pass


class ImageJSONInvalid(V1Error):
    """Not a UTF-8 JSON object (or nested too deep), or a bad `parent`/`created`."""


class ImageJSONMissingId(ImageJSONInvalid):
    pass


class ImageJSONWrongId(ImageJSONInvalid):
    pass


class ParentUnknown(V1Error):
    """The parent is unknown, incomplete, or the image itself."""


class ParentUnauthorized(V1Error):
    pass


class AncestryTooDeep(V1Error):
    pass


class ChecksumMissing(V1Error):
    pass


class ChecksumMismatch(V1Error):
    pass


class ChecksumAlreadySet(V1Error):
    """A checksum for an image that is already complete."""


class LayerNotUploaded(V1Error):
    pass


class UploadRestarted(V1Error):
    """A newer `PUT json` restarted the upload while this request ran."""


class BodyUndecodable(V1Error):
    """A request body (image list, tag target, user record) that is not JSON."""


class DataInvalid(V1Error):
    """A request body that is JSON of the wrong shape."""


class RepositoryNameInvalid(V1Error):
    pass


class RepositoryNotFound(V1Error):
    pass


class TagNameInvalid(V1Error):
    pass


class TagNotFound(V1Error):
    pass


class NotTaggable(V1Error):
    """The image's ancestry has no v2 form (the reason is the message)."""


__all__ = ["PushEntry", "V1Error", "V1ImageRow", "V1Service"]


def check_image_id(image_id: str) -> str:
    if not IMAGE_ID.match(image_id):
        raise ImageIdInvalid(image_id)
    return image_id


def repository_name(raw: str) -> str:
    """The v1 view of a name: one or two components, one-component names in `library/`."""
    parts = raw.strip("/").split("/")
    if not 1 <= len(parts) <= 2:
        raise RepositoryNameInvalid(raw)
    return names.canonical_repository("/".join(parts))  # NameInvalid: a RegistryError


def check_tag(tag: str) -> str:
    if not names.is_tag(tag):
        raise TagNameInvalid(tag)
    return tag


@dataclass(frozen=True, slots=True)
class _TagTarget:
    """What a v1 tag write stores: the manifest, its references and the blobs to link."""

    manifest: ManifestRow
    references: list[str]
    blobs: list[BlobRow]


@dataclass(frozen=True, slots=True)
class PushEntry:
    id: str
    tag: str | None
    checksum: str | None


def parse_image_list(body: bytes) -> list[PushEntry]:
    """The JSON array of `PUT /v1/repositories/R/` and `.../images` bodies."""
    if not body.strip():
        return []
    try:
        document = jsondoc.loads(body)
    except ValueError as exc:
        raise BodyUndecodable(str(exc)) from exc
    if not isinstance(document, list):
        raise DataInvalid("image list is not an array")
    entries = []
    for item in document:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            raise DataInvalid("image list entry without an id")
        if not IMAGE_ID.match(item["id"]):
            raise DataInvalid("image list entry with an invalid id")
        tag, checksum = item.get("Tag"), item.get("checksum")
        if tag is not None and not isinstance(tag, str):
            raise DataInvalid("image list Tag is not a string")
        if checksum is not None and not isinstance(checksum, str):
            raise DataInvalid("image list checksum is not a string")
        entries.append(PushEntry(item["id"], tag, checksum))
    return entries


def _rfc3339(value: str) -> bool:
    text = value.strip()
    if not re.match(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}", text):
        return False
    text = re.sub(r"(\.\d{1,6})\d*", r"\1", text).replace("Z", "+00:00").replace("z", "+00:00")
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def parse_image_json(image_id: str, body: bytes) -> dict[str, Any]:
    if len(body) > MAX_JSON:
        raise ImageJSONTooLarge(f"{len(body)} bytes")
    try:
        document = jsondoc.loads(body.decode("utf-8"))
    except ValueError as exc:  # JSONInvalid: malformed, not UTF-8, or nested too deep
        raise ImageJSONInvalid(str(exc)) from exc
    if not isinstance(document, dict):
        raise ImageJSONInvalid("image JSON is not an object")
    if "id" not in document:
        raise ImageJSONMissingId(image_id)
    if document["id"] != image_id:
        raise ImageJSONWrongId(image_id)
    parent = document.get("parent")
    if "parent" in document and not (isinstance(parent, str) and IMAGE_ID.match(parent)):
        raise ImageJSONInvalid("parent is not an image id")
    created = document.get("created")
    if "created" in document and not (isinstance(created, str) and _rfc3339(created)):
        raise ImageJSONInvalid("created is not an RFC 3339 time")
    return document


class V1Service:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.metadata = registry.metadata
        self.storage = registry.blobs.storage

    # -- reading images ------------------------------------------------------------------

    async def readable_image(
        self, image_id: str, readable: Readable, uploader: str | None = None
    ) -> V1ImageRow:
        """A complete image the caller may read; 404 otherwise (unknown and unreadable look
        the same), or 400 while uploading for callers who may see the upload: everyone in
        open mode, else the callers whose live push session declared the image."""
        check_image_id(image_id)
        row = await self.metadata.v1_image(image_id)
        if row is None:
            raise ImageNotFound(image_id)
        if row.state != "complete":
            visible = readable([]) or (
                uploader is not None and bool(await self.may_upload(image_id, uploader))
            )
            raise ImageBeingUploaded(image_id) if visible else ImageNotFound(image_id)
        if not readable(await self.metadata.v1_repositories_of(image_id)):
            raise ImageNotFound(image_id)
        return row

    async def ancestry(
        self, image_id: str, readable: Readable, uploader: str | None = None
    ) -> list[str]:
        await self.readable_image(image_id, readable, uploader)
        return [row.id for row in await self.metadata.v1_ancestry(image_id)]

    async def layer(self, row: V1ImageRow) -> Blob:
        assert row.blob_digest is not None and row.size is not None
        blob = await self.metadata.blob(row.blob_digest)
        if blob is None:
            raise ImageNotFound(row.id)
        path = self.storage.local_path(blob.storage_key)
        return Blob(blob.digest, blob.size, path, blob.storage_key)

    def read(self, blob: Blob, offset: int, length: int) -> AsyncIterator[bytes]:
        return self.storage.reader(blob.storage_key, offset, length)

    # -- uploading images ----------------------------------------------------------------

    async def put_json(
        self, image_id: str, body: bytes, uploader: str | None, readable: Readable
    ) -> None:
        check_image_id(image_id)
        document = parse_image_json(image_id, body)
        parent_id = document.get("parent")
        depth = 1
        if parent_id is not None:
            parent = await self.metadata.v1_image(parent_id)
            if parent is None or parent_id == image_id or parent.state != "complete":
                raise ParentUnknown(parent_id)
            if not readable(await self.metadata.v1_repositories_of(parent_id)):
                raise ParentUnauthorized(parent_id)
            depth = parent.depth + 1
            if depth > MAX_DEPTH:
                raise AncestryTooDeep(image_id)
        existing = await self.metadata.v1_image(image_id)
        if (
            existing is not None
            and existing.state == "complete"
            and uploader is not None
            and not readable(await self.metadata.v1_repositories_of(image_id))
        ):
            # Someone else's image: answering 409 would reveal it and let the caller tag what
            # it never proved to have. A shadow upload must reproduce the exact bytes instead.
            if body != existing.json:
                raise ChecksumMismatch(image_id)
            await self.metadata.v1_start_proof(image_id, uploader, time.time() + SESSION_SECONDS)
            return
        generation = await self.metadata.v1_put_json(image_id, body, parent_id, depth, uploader)
        if generation is None:
            raise ImageExists(image_id)

    async def put_layer(
        self, image_id: str, body: AsyncIterator[bytes], uploader: str | None = None
    ) -> None:
        """Stream a layer in, computing every checksum on the way; the bytes land at their
        content-addressed key only once whole, and the image records them only if no newer
        `PUT json` restarted the upload meanwhile."""
        check_image_id(image_id)
        row = await self.metadata.v1_image(image_id)
        if row is None:
            raise ImageNotFound(image_id)
        if row.state == "complete":
            if uploader is not None and (await self.metadata.v1_proof(image_id, uploader))[0]:
                await self._prove_layer(row, body, uploader)
                return
            raise ImageExists(image_id)
        staging = paths.upload(str(uuid.uuid4()))
        writer = await self.storage.writer(staging)
        try:
            sums = await self._receive(writer, row.json, body)
            key = await writer.commit()
        except BaseException:
            await asyncio.shield(writer.cancel())
            raise
        committed = False
        try:
            key = await blobs.place(self.storage, self.metadata, key, sums.blob_digest)
            committed = True
            recorded = await self.metadata.v1_layer_uploaded(
                image_id,
                row.generation,
                LayerSums(
                    sums.blob_digest,
                    key,
                    sums.diff_id,
                    sums.payload_checksum,
                    sums.tarsum,
                    sums.size,
                    sums.compressed,
                ),
            )
        except KeyPending:
            # The layer's content-addressed key got a deletion queued after `place` looked
            # (a grace period near zero): the bytes there are about to go. Push again.
            raise UploadRestarted(image_id) from None
        finally:
            if not committed:
                await asyncio.shield(self.storage.delete(key))
        # A known layer keeps its first copy (its blob row); ours, if it is another, goes.
        await blobs.drop_if_unused(self.storage, self.metadata, key, sums.blob_digest)
        if not recorded:
            raise UploadRestarted(image_id)

    async def _prove_layer(
        self, row: V1ImageRow, body: AsyncIterator[bytes], uploader: str
    ) -> None:
        """Hash a shadow upload without keeping it: only its payload checksum matters."""
        analyzer = LayerAnalyzer(row.json, tarsum=False)
        async for chunk in body:
            await asyncio.to_thread(analyzer.update, chunk)
        sums = await asyncio.to_thread(analyzer.finish)  # LayerInvalid: refused
        await self.metadata.v1_set_proof(row.id, uploader, sums.payload_checksum)

    async def _receive(
        self, writer: ObjectWriter, image_json: bytes, body: AsyncIterator[bytes]
    ) -> layers.LayerSums:
        # No TarSum: it would hash the decompressed content a second time, for clients older
        # than Docker 0.10 only; `put_checksum` computes it from the stored layer when one
        # asks (docs/contracts/v1-protocol.md section 5.3).
        analyzer = LayerAnalyzer(image_json, tarsum=False)

        async def process(block: bytes) -> None:
            # The body's two digests on one thread, gunzip + diff_id + the tar's checks on
            # another, the write on a third: about as much work each side, on two cores twice
            # as fast.
            await asyncio.gather(
                asyncio.to_thread(analyzer.hash_body, block),
                asyncio.to_thread(analyzer.read_content, block),
                writer.write(block),
            )

        blocking = writer.blocking_write()
        if blocking is not None and isinstance(body, streams.Drainable):
            # Received on one worker thread (a body taken from the socket): each block is
            # written there while the two halves of the analysis run beside it on two more,
            # with no hand-off through the event loop.
            analysis = _Analysis(analyzer, blocking)
            try:
                await body.drain(analysis)
            finally:
                await asyncio.shield(asyncio.to_thread(analysis.wait))
            return await asyncio.to_thread(analyzer.finish)
        # In 1 MiB blocks whatever pieces the body asks for: each block costs three hand-offs.
        await streams.pipelined(body, process, streams.BLOCK_SIZE)  # LayerInvalid: refused
        return await asyncio.to_thread(analyzer.finish)

    async def put_checksum(
        self,
        image_id: str,
        payload: str | None,
        tarsum: str | None,
        repository: str | None,
        uploader: str | None = None,
    ) -> None:
        """Confirm the layer against the client's checksums; completes the image and links
        it (with its ancestors) into `repository`."""
        check_image_id(image_id)
        if not payload and not tarsum:
            raise ChecksumMissing(image_id)
        row = await self.metadata.v1_image(image_id)
        if row is None:
            raise ImageNotFound(image_id)
        if row.state == "complete" and uploader is not None:
            exists, proved = await self.metadata.v1_proof(image_id, uploader)
            if exists:
                await self._finish_proof(row, proved, payload, uploader, repository)
                return
        if row.state == "complete":
            raise ChecksumAlreadySet(image_id)
        if row.state != "uploaded" or row.payload_checksum is None:
            raise LayerNotUploaded(image_id)
        computed = row.payload_checksum.lower()
        if payload:
            ok = payload.strip().lower() == computed
        else:
            assert tarsum is not None
            claimed = tarsum.strip().lower()
            ok = claimed == computed or claimed == (await self._tarsum_of(row)).lower()
        if not ok:
            raise ChecksumMismatch(image_id)
        if not await self.metadata.v1_complete(image_id, row.generation, tarsum, repository):
            raise UploadRestarted(image_id)

    async def _tarsum_of(self, row: V1ImageRow) -> str:
        """The uploaded layer's TarSum v0 (with its JSON as prefix): computed from the stored
        bytes when the upload did not (a second read, for clients older than Docker 0.10, the
        only ones that send no payload checksum)."""
        if row.tarsum is not None:
            return row.tarsum
        blob = await self.layer(row)
        analyzer = LayerAnalyzer(row.json)
        async for block in streams.blocks(self.read(blob, 0, blob.size)):
            await asyncio.to_thread(analyzer.read_content, block)
        sums = await asyncio.to_thread(analyzer.finish)
        assert sums.tarsum is not None
        return sums.tarsum

    async def _finish_proof(
        self,
        row: V1ImageRow,
        proved: str | None,
        payload: str | None,
        uploader: str,
        repository: str | None,
    ) -> None:
        if proved is None:
            raise LayerNotUploaded(row.id)
        claimed = (payload or "").strip().lower()
        if proved != row.payload_checksum or (claimed and claimed != proved):
            raise ChecksumMismatch(row.id)
        await self.metadata.v1_end_proof(row.id, uploader)
        if repository is not None:
            await self.metadata.v1_link(repository, [row.id])

    # -- repositories and tags -----------------------------------------------------------

    async def start_push(
        self, repository: str, principal: str | None, entries: list[PushEntry]
    ) -> None:
        await self.metadata.v1_open_session(
            uuid.uuid4().hex,
            repository,
            principal,
            [e.id for e in entries],
            time.time() + SESSION_SECONDS,
        )

    async def may_upload(self, image_id: str, principal: str | None) -> list[str]:
        """Repositories of the principal's live push sessions that declared the image."""
        return await self.metadata.v1_session_repositories(image_id, principal)

    async def require_repository(self, repository: str) -> None:
        if not await self.metadata.repository_exists(repository):
            raise RepositoryNotFound(repository)

    async def finish_push(
        self, repository: str, principal: str | None, entries: list[PushEntry]
    ) -> None:
        await self.require_repository(repository)
        checksums = {e.id: e.checksum for e in entries if e.checksum}
        await self.metadata.v1_record_checksums(repository, checksums)
        await self.metadata.v1_close_sessions(repository, principal)

    async def ensure_repository(self, repository: str) -> None:
        await self.metadata.ensure_repository(repository)

    async def images(self, repository: str) -> list[dict[str, str]]:
        await self.require_repository(repository)
        await self.tags(repository)  # derives v1 views of v2-pushed tags
        listed = []
        for image_id, checksum in await self.metadata.v1_images_of(repository):
            entry = {"id": image_id}
            if checksum:
                entry["checksum"] = checksum
            listed.append(entry)
        return listed

    async def tags(self, repository: str) -> dict[str, str]:
        """tag -> v1 image id, for every tag whose manifest has a v1 view."""
        found = await self.metadata.tag_digests(repository)
        if found is None:
            raise RepositoryNotFound(repository)
        mapped = await self.metadata.v1_manifest_images(repository, sorted(set(found.values())))
        result = {}
        for tag, manifest_digest in sorted(found.items()):
            image_id = mapped.get(manifest_digest)
            if image_id is None:
                image_id = await self._derive(repository, manifest_digest)
                if image_id is None:
                    continue
                mapped[manifest_digest] = image_id
            result[tag] = image_id
        return result

    async def tag(self, repository: str, tag: str) -> str:
        check_tag(tag)
        try:
            tags = await self.tags(repository)
        except RepositoryNotFound as exc:
            raise TagNotFound(tag) from exc
        if tag not in tags:
            raise TagNotFound(tag)
        return tags[tag]

    async def set_tag(
        self,
        repository: str,
        tag: str,
        image_id: str,
        readable: Readable,
        info: dict[str, Any],
    ) -> None:
        """Point a tag (shared with v2) at a complete image: build its v2 manifest from the
        ancestry (or reuse the v2 manifest it came from), then in one metadata transaction link
        image and layers, store the manifest, move the tag, map the manifest to this image id
        and record the tag's client `info`."""
        check_tag(tag)
        if not IMAGE_ID.match(image_id):
            raise ImageNotFound(image_id)
        row = await self.metadata.v1_image(image_id)
        if row is None:
            raise ImageNotFound(image_id)
        if row.state != "complete":
            raise ImageBeingUploaded(image_id)
        if not readable(await self.metadata.v1_repositories_of(image_id)):
            raise ImageNotFound(image_id)
        target = await self._v2_manifest_of(image_id) or await self._build_manifest(image_id)
        policy = self.registry.policy
        await self.registry.admit_many(repository, {b.digest: b.size for b in target.blobs})
        try:
            await self.metadata.v1_tag(
                repository,
                tag,
                image_id,
                target.manifest,
                target.references,
                target.blobs,
                info,
                frozen=policy.is_immutable(repository, tag),
            )
        except TagFrozen:
            raise policy.refuse_tag(repository, tag, "moved to another image") from None

    async def _build_manifest(self, image_id: str) -> _TagTarget:
        """A Docker schema 2 manifest for the image's ancestry; its config blob is stored (as
        content-addressed bytes, harmless if the tag is never written)."""
        ancestry = list(reversed(await self.metadata.v1_ancestry(image_id)))
        try:
            built = translate.v1_to_v2(
                [
                    translate.V1Layer(
                        r.id,
                        r.json,
                        r.blob_digest or "",
                        r.size or 0,
                        r.diff_id or "",
                        bool(r.compressed),
                    )
                    for r in ancestry
                ]
            )
        except translate.TranslationError as exc:
            raise NotTaggable(str(exc)) from exc
        config_key = paths.blob(built.config_digest.partition(":")[2])
        await self.storage.put(config_key, built.config)
        parsed = manifests.parse(built.manifest, None, MAX_JSON, schema1=False)
        return _TagTarget(
            ManifestRow(built.manifest_digest, parsed.media_type, built.manifest),
            list(parsed.references),
            [BlobRow(built.config_digest, config_key, len(built.config))],
        )

    async def _v2_manifest_of(self, image_id: str) -> _TagTarget | None:
        """The v2 manifest whose v1 view the image is, with its blobs: tagging the image
        reuses that very manifest (same digest) rather than a rebuilt one."""
        for source, digest in await self.metadata.v1_manifests_of_image(image_id):
            try:
                stored = await self.registry.get_manifest(source, digest)
            except ManifestUnknown:
                continue
            parsed = manifests.parse(stored.content, stored.media_type, MAX_JSON, schema1=True)
            rows = [await self.metadata.blob(d) for d in parsed.blobs]
            if any(row is None for row in rows) or parsed.manifests:
                continue
            return _TagTarget(
                ManifestRow(digest, stored.media_type, stored.content),
                list(parsed.references),
                [r for r in rows if r is not None],
            )
        return None

    async def tag_info(self, repository: str, tag: str) -> dict[str, Any] | None:
        return await self.metadata.v1_tag_info(repository, tag)

    async def delete_tag(self, repository: str, tag: str) -> None:
        check_tag(tag)
        if self.registry.policy.is_immutable(repository, tag):
            raise self.registry.policy.refuse_tag(repository, tag, "deleted")
        if not await self.metadata.delete_tag(repository, tag):
            raise TagNotFound(tag)

    async def delete_repository(self, repository: str) -> None:
        policy = self.registry.policy
        if policy.frozen_tags(repository):
            for tag in await self.metadata.list_tags(repository, None, 1_000_000) or []:
                if policy.is_immutable(repository, tag):
                    raise policy.refuse_tag(repository, tag, "deleted with its repository")
        if not await self.metadata.delete_repository(repository):
            raise RepositoryNotFound(repository)

    async def search(self, term: str, only: CatalogFilter | None) -> list[str]:
        if only is not None:  # filtered in the query, in bounded steps (see Registry.catalog)
            return await self.registry.search(term, only, 100_000)
        return await self.metadata.search_repositories(term, 100_000)

    # -- the v1 view of v2 content -------------------------------------------------------

    async def _derive(self, repository: str, manifest_digest: str) -> str | None:
        """Give a v2-pushed manifest its v1 images (deterministic ids), persist them and the
        mapping; None when the manifest has no v1 form (artifacts, schema 1)."""
        try:
            stored = await self.registry.get_manifest(repository, manifest_digest)
        except ManifestUnknown:
            return None
        if stored.media_type in manifests.INDEX_TYPES:
            child = platform_child(jsondoc.loads(stored.content))
            if child is None:
                return None
            try:
                stored = await self.registry.get_manifest(repository, child)
            except ManifestUnknown:
                return None
        if stored.media_type not in manifests.IMAGE_TYPES:
            return None
        document = jsondoc.loads(stored.content)
        config_digest = document.get("config", {}).get("digest")
        if not isinstance(config_digest, str) or not digests.is_valid(config_digest):
            return None
        config_row = await self.metadata.blob(config_digest)
        if config_row is None:
            return None
        config = await self.storage.get(config_row.storage_key)
        try:
            derived = translate.v2_to_v1(document, config)
        except (ValueError, KeyError, TypeError):
            return None
        if not derived:
            return None
        diff_ids = jsondoc.loads(config).get("rootfs", {}).get("diff_ids") or []
        layer_types = [str(layer.get("mediaType", "")) for layer in document.get("layers", [])]
        consistent = await self.metadata.v1_insert_complete(
            [
                {
                    "id": image.id,
                    "json": image.json,
                    "parent": image.parent,
                    "depth": depth,
                    "blob_digest": image.blob_digest,
                    "size": image.size,
                    "diff_id": diff_ids[depth - 1] if depth <= len(diff_ids) else None,
                    "compressed": int(
                        depth <= len(layer_types) and layer_types[depth - 1].endswith("gzip")
                    ),
                }
                for depth, image in enumerate(derived, 1)
            ],
            repository,
            manifest_digest,
        )
        if not consistent:
            log.warning("v1 id already used by other content", extra={"manifest": manifest_digest})
            return None
        return derived[-1].id


class _Lane:
    """One function called with each block in order, one call at a time, on the shared helper
    threads: a block queued while the one before is still in work waits its turn in the lane,
    not on a thread."""

    def __init__(self, fn: Callable[[memoryview], None]) -> None:
        self.fn = fn
        self.queued: deque[memoryview] = deque()
        self.outstanding = 0  # blocks queued or in work
        self.running = False
        self.error: BaseException | None = None
        self.changed = threading.Condition()

    def put(self, block: memoryview) -> None:
        with self.changed:
            if self.error is not None:
                raise self.error
            self.queued.append(block)
            self.outstanding += 1
            if self.running:
                return
            self.running = True
        try:
            _pool().submit(self._run)
        except BaseException as exc:  # no thread to run it (the interpreter shutting down)
            self._stop(exc)
            raise

    def _stop(self, exc: BaseException) -> None:
        """The lane fails with `exc`: what is queued is dropped, and waiters are woken."""
        with self.changed:
            self.error = exc
            self.queued.clear()
            self.outstanding = 0
            self.running = False
            self.changed.notify_all()

    def _run(self) -> None:
        while True:
            with self.changed:
                if not self.queued:
                    self.running = False
                    return
                block = self.queued.popleft()
            try:
                self.fn(block)
            except BaseException as exc:
                self._stop(exc)
                return
            with self.changed:
                self.outstanding -= 1
                self.changed.notify_all()

    def wait(self, most: int = 0) -> None:
        """Until at most `most` blocks are left in the lane; its error raised."""
        with self.changed:
            while self.outstanding > most and self.error is None:
                self.changed.wait()
            if self.error is not None:
                raise self.error


_helpers: concurrent.futures.ThreadPoolExecutor | None = None
_helpers_lock = threading.Lock()


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    global _helpers
    with _helpers_lock:
        if _helpers is None:
            # Two lanes per upload; uploads beyond two at once wait their turn for them.
            _helpers = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="moorage-v1")
        return _helpers


class _Analysis:
    """A layer's blocks as a drained body hands them over, on its thread: each block written
    there, its two halves of the analysis in two lanes on helper threads, which go on while
    the next block is received. A call returns once each lane is at most `HOLDS` block behind
    (the one just handed over): a drained body reuses a block after the call after its own
    returns, and a refusal of one block is raised by the call of the next."""

    HOLDS = 1

    def __init__(self, analyzer: LayerAnalyzer, write: Callable[[memoryview], None]) -> None:
        self.write = write
        self.lanes = (_Lane(analyzer.hash_body), _Lane(analyzer.read_content))

    def __call__(self, block: memoryview) -> None:
        for lane in self.lanes:
            lane.put(block)
        self.write(block)
        for lane in self.lanes:
            lane.wait(self.HOLDS)

    def wait(self) -> None:
        """Until every block is through both halves (neither is still at work on a block when
        this returns); the first error (LayerInvalid: refused) raised."""
        errors: list[BaseException] = []
        for lane in self.lanes:
            try:
                lane.wait()
            except BaseException as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


def platform_child(index: dict[str, Any]) -> str | None:
    """The linux/amd64 manifest of an index: the one image v1 clients are shown."""
    children = [c for c in index.get("manifests") or [] if isinstance(c, dict)]
    for child in children:
        platform = child.get("platform") or {}
        if platform.get("os") == "linux" and platform.get("architecture") == "amd64":
            return str(child.get("digest"))
    return None
