"""The content layer's front door: what protocol handlers call.

`Registry` owns the blob service (blobs and uploads) and the manifest, tag, catalog and
referrers operations. Repository names arrive canonical (see `names.canonical_repository`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from moorage import keys
from moorage.config import Settings
from moorage.content import digest as digests
from moorage.content import jsondoc, manifests, names, schema1, translate
from moorage.content.activity import Activity
from moorage.content.blobs import BlobService
from moorage.content.gc import Collector
from moorage.content.policy import Policy, QuotaExceeded
from moorage.errors import (
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    RegistryErrors,
    TagInvalid,
    Unsupported,
)
from moorage.keys import load_or_create_ec_key
from moorage.metadata import BlobRow, ManifestRow, MetadataStore, ReferencesGone, TagFrozen
from moorage.storage import paths
from moorage.storage.objects import ObjectDriver


@dataclass(frozen=True, slots=True)
class StoredManifest:
    digest: str
    media_type: str
    content: bytes


@dataclass(frozen=True, slots=True)
class PutResult:
    digest: str
    subject: str | None


@dataclass(frozen=True, slots=True)
class Page:
    items: list[str]
    more: bool
    # Where the next page starts (after this name), when not after the last item.
    resume: str | None = None

    @property
    def next_last(self) -> str | None:
        """The `last` of the next page; None when there is none."""
        if not self.more:
            return None
        if self.resume is not None:
            return self.resume
        return self.items[-1] if self.items else None


@dataclass(frozen=True, slots=True)
class CatalogFilter:
    """The repositories a caller may see: names that match one of `globs` (fnmatch syntax,
    as access rules write them) and that `visible` accepts (the exact check)."""

    globs: tuple[str, ...]
    visible: Callable[[str], bool]
    # Only names that contain this (ignoring case); and repositories without content too.
    contains: str = ""
    with_content: bool = True


# Names one catalog query looks at, at most (a few milliseconds of SQLite).
CATALOG_WINDOW = 2000


@dataclass(frozen=True, slots=True)
class ReferrersPage:
    descriptors: list[dict[str, Any]]
    next_cursor: str | None


class Registry:
    def __init__(self, settings: Settings, storage: ObjectDriver, metadata: MetadataStore):
        self.settings = settings
        self.metadata = metadata
        self.blobs = BlobService(storage, metadata, settings.uploads.ttl, settings.uploads.lease)
        self.policy = Policy(settings)
        self.collector = Collector(metadata, storage, settings.gc, self.policy)
        self.activity = Activity(metadata)
        if settings.quotas:
            self.blobs.admit = self.admit
        self._signing_key: ec.EllipticCurvePrivateKey | None = None

    async def close(self) -> None:
        await self.metadata.close()
        await self.blobs.storage.close()

    # -- quotas --------------------------------------------------------------------------

    async def admit(self, repository: str, digest: str, size: int) -> None:
        """Refuse a blob that would take its namespace over quota (QuotaExceeded, DENIED).
        One already linked anywhere in the namespace costs nothing. Checked before the blob
        is linked, outside its transaction: pushes that run at the same instant may together
        overshoot by what they add (docs/operations.md)."""
        await self.admit_many(repository, {digest: size})

    async def admit_many(self, repository: str, sizes: dict[str, int]) -> None:
        quota = self.policy.quota(repository)
        if quota is None:
            return
        namespace = quota.namespace.strip("/")
        needed = 0
        for digest, size in sizes.items():
            if not await self.metadata.namespace_has_blob(namespace, digest):
                needed += size
        if not needed:
            return
        used, _ = await self.metadata.namespace_usage(namespace)
        if used + needed > quota.bytes:
            raise QuotaExceeded(
                f"storage quota of namespace {namespace} exceeded: {used} bytes used of "
                f"{quota.bytes}, this push needs {needed} more",
                {"namespace": namespace, "used": used, "quota": quota.bytes, "needed": needed},
            )

    # -- readiness (/readyz): each raises when its side does not answer --------------------

    async def check_metadata(self) -> None:
        await self.metadata.ping()

    async def check_storage(self) -> None:
        await self.blobs.storage.check()

    # -- manifests -----------------------------------------------------------------------

    async def get_manifest(
        self, repository: str, reference: str, accept: list[str] | None = None
    ) -> StoredManifest:
        """The manifest by tag or digest, bytes as pushed. A client that takes only schema 1
        (Docker 1.6-1.9, docker-registry-client: its `accept` names schema 1 and nothing
        newer) gets an image manifest fetched by tag converted to a signed schema 1, as
        Distribution 2.x does; every other client gets the stored manifest."""
        stored = await self._stored_manifest(repository, reference)
        if accept and ":" not in reference and _schema1_only(accept):
            converted = await self._schema1_view(repository, reference, stored)
            if converted is not None:
                return converted
        return stored

    async def _stored_manifest(self, repository: str, reference: str) -> StoredManifest:
        if ":" in reference:
            digests.parse(reference)
            row = await self.metadata.manifest(repository, reference)
        elif names.is_tag(reference):
            row = await self.metadata.tagged_manifest(repository, reference)
        else:
            row = None
        if row is None:
            raise ManifestUnknown(detail={"reference": reference})
        return StoredManifest(row.digest, row.media_type, row.content)

    async def _schema1_view(
        self, repository: str, tag: str, stored: StoredManifest
    ) -> StoredManifest | None:
        if stored.media_type not in manifests.IMAGE_TYPES:
            return None
        document = jsondoc.loads(stored.content)
        config_digest = (document.get("config") or {}).get("digest")
        row = await self.metadata.blob(config_digest) if isinstance(config_digest, str) else None
        if row is None:
            return None
        config = await self.blobs.storage.get(row.storage_key)
        try:
            payload = translate.schema1_from_v2(repository, tag, document, config)
        except translate.TranslationError:
            return None
        if translate.EMPTY_LAYER_DIGEST.encode() in payload:
            await self._ensure_empty_layer(repository)
        signed = schema1.sign(payload, self._schema1_key())
        return StoredManifest(digests.of(payload), manifests.SCHEMA1_SIGNED, signed)

    def sign_schema1(self, payload: bytes) -> bytes:
        """A schema 1 manifest's payload signed with this registry's key (the digest stays
        that of `payload`), as Distribution signs the unsigned ones it keeps when serving them."""
        return schema1.sign(payload, self._schema1_key())

    def _schema1_key(self) -> ec.EllipticCurvePrivateKey:
        if self._signing_key is None:
            shared = self.settings.http.secret
            if shared is not None:  # every node signs with the same key
                key = keys.derive_ec_key(shared.get_secret_value(), keys.SCHEMA1_SIGNING)
            else:
                key = load_or_create_ec_key(self.settings.datadir / "auth" / "schema1-key.pem")
            self._signing_key = key
        return self._signing_key

    async def _ensure_empty_layer(self, repository: str) -> None:
        """The empty gzip'ed tar that schema 1 uses for layerless history entries must be
        pullable from the repository (Distribution writes it in the same way)."""
        digest = translate.EMPTY_LAYER_DIGEST
        key = paths.blob(digest.partition(":")[2])
        if await self.blobs.storage.stat(key) is None:
            await self.blobs.storage.put(key, translate.EMPTY_LAYER)
        await self.metadata.link_blobs(
            repository, [BlobRow(digest, key, len(translate.EMPTY_LAYER))]
        )

    async def put_manifest(
        self,
        repository: str,
        reference: str,
        content_type: str | None,
        content: bytes,
        pusher: str | None = None,
    ) -> PutResult:
        """Store a pushed manifest, and move the tag when `reference` is one; `pusher` (the
        signed-in user, if any) is recorded with the tag."""
        by_digest = ":" in reference
        wanted = digests.parse(reference) if by_digest else None
        if not by_digest:
            names.check_tag(reference)
        manifest = manifests.parse(
            content,
            content_type,
            self.settings.manifests.maxsize,
            self.settings.manifests.schema1,
        )
        if manifest.schema1_name is not None:
            self._check_schema1_names(repository, reference if not by_digest else None, manifest)
        digest = manifest.digest(wanted.algorithm if wanted else "sha256")
        if wanted is not None and digest != str(wanted):
            raise DigestInvalid(detail={"expected": str(wanted), "computed": digest})
        await self._check_references(repository, manifest)
        row = ManifestRow(
            digest,
            manifest.media_type,
            manifest.content,
            manifest.subject,
            manifest.artifact_type,
            manifest.annotations,
        )
        tag = None if by_digest else reference
        try:
            await self.metadata.put_manifest(
                repository,
                row,
                manifest.references,
                tag,
                blobs=manifest.blobs,
                manifests=manifest.manifests,
                frozen=tag is not None and self.policy.is_immutable(repository, tag),
                pusher=pusher,
            )
        except ReferencesGone as exc:  # collected since _check_references looked
            raise RegistryErrors(
                [ManifestBlobUnknown(detail={"digest": d}) for d in exc.digests]
            ) from None
        except TagFrozen as exc:
            raise self.policy.refuse_tag(repository, exc.tag, "moved to another manifest") from None
        return PutResult(digest, manifest.subject)

    @staticmethod
    def _check_schema1_names(
        repository: str, tag: str | None, manifest: manifests.Manifest
    ) -> None:
        name = manifest.schema1_name or ""
        try:
            same = names.canonical_repository(name) == repository
        except NameInvalid:
            same = False
        if not same:
            raise NameInvalid("manifest name does not match the repository", {"name": name})
        if tag is not None and manifest.schema1_tag != tag:
            raise TagInvalid(detail={"tag": manifest.schema1_tag})

    async def _check_references(self, repository: str, manifest: manifests.Manifest) -> None:
        missing: list[str] = []
        if manifest.blobs:
            linked = await self.blobs.linked(repository, manifest.blobs)
            missing += [d for d in manifest.blobs if d not in linked]
        if manifest.manifests:
            present = await self.metadata.existing_manifests(repository, manifest.manifests)
            missing += [d for d in manifest.manifests if d not in present]
        if missing:
            raise RegistryErrors([ManifestBlobUnknown(detail={"digest": d}) for d in missing])

    async def delete_manifest(self, repository: str, reference: str) -> None:
        if not self.settings.deletes.enabled:
            raise Unsupported("deletes are disabled")
        if ":" in reference:
            digests.parse(reference)
            try:
                deleted = await self.metadata.delete_manifest(
                    repository, reference, self.policy.frozen_tags(repository)
                )
            except TagFrozen as exc:
                raise self.policy.refuse_tag(repository, exc.tag, "deleted") from None
        else:
            if names.is_tag(reference) and self.policy.is_immutable(repository, reference):
                raise self.policy.refuse_tag(repository, reference, "deleted")
            deleted = names.is_tag(reference) and await self.metadata.delete_tag(
                repository, reference
            )
        if not deleted:
            if not await self.metadata.repository_exists(repository):
                raise NameUnknown(detail={"name": repository})
            raise ManifestUnknown(detail={"reference": reference})

    async def delete_blob(self, repository: str, digest: str) -> None:
        if not self.settings.deletes.enabled:
            raise Unsupported("deletes are disabled")
        await self.blobs.delete(repository, digest)

    # -- discovery -----------------------------------------------------------------------

    async def tags(self, repository: str, last: str | None, limit: int) -> Page:
        found = await self.metadata.list_tags(repository, last, limit + 1)
        if found is None:
            raise NameUnknown(detail={"name": repository})
        return Page(found[:limit], len(found) > limit)

    async def catalog(
        self,
        last: str | None,
        limit: int,
        only: CatalogFilter | None = None,
        deadline: float | None = None,
    ) -> Page:
        """Repositories with content, in byte order after `last`; only those `only` accepts
        when given. A filtered page is found in the metadata query, window by window (each
        one a bounded read, the event loop free in between), and takes at most
        `pagination.catalogtime` seconds (or until the monotonic `deadline`): past that it
        ends early, with `resume` set to the last name it looked at."""
        if only is None or (
            only.with_content
            and not only.contains
            and any(set(glob) == {"*"} for glob in only.globs)
        ):
            found = await self.metadata.list_repositories(last, limit + 1)
            return Page(found[:limit], len(found) > limit)
        if limit == 0 or not only.globs:
            return Page([], False)
        if deadline is None:
            deadline = time.monotonic() + self.settings.pagination.catalogtime
        page: list[str] = []
        needle = only.contains.lower()
        while True:
            found, last = await self.metadata.list_repositories_matching(
                last,
                limit + 1 - len(page),
                only.globs,
                CATALOG_WINDOW,
                only.contains,
                only.with_content,
            )
            page += [n for n in found if needle in n.lower() and only.visible(n)]
            if len(page) > limit:
                return Page(page[:limit], True)
            if last is None:
                return Page(page, False)
            if time.monotonic() >= deadline:
                return Page(page, True, resume=last)
            await asyncio.sleep(0)

    async def search(self, term: str, only: CatalogFilter, most: int) -> list[str]:
        """Up to `most` repositories (with content or not) whose names contain `term`
        (ignoring case) and that `only` accepts, found page by page within one
        `pagination.catalogtime`: a search that runs out of time answers what it found."""
        deadline = time.monotonic() + self.settings.pagination.catalogtime
        wanted = replace(only, contains=term, with_content=False)
        found: list[str] = []
        last: str | None = None
        while len(found) < most:
            page = await self.catalog(last, min(most - len(found), 1000), wanted, deadline)
            found += page.items
            last = page.next_last
            if last is None or time.monotonic() >= deadline:
                break
        return found

    async def referrers(
        self, repository: str, subject: str, artifact_type: str | None, cursor: str | None
    ) -> ReferrersPage:
        parsed = digests.parse(subject)
        limit = self.settings.pagination.referrersmax
        after = _decode_cursor(cursor)
        rows = await self.metadata.referrers(repository, subject, artifact_type, after, limit + 1)
        descriptors = [
            manifests.referrer_descriptor(
                row.media_type, row.digest, len(row.content), row.artifact_type, row.annotations
            )
            for row, _ in rows[:limit]
        ]
        next_cursor = None
        if len(rows) > limit:
            last_row, created = rows[limit - 1]
            next_cursor = f"{created!r}_{last_row.digest}"
        elif after is None:
            extra = await self._fallback_referrers(repository, parsed, descriptors)
            if artifact_type is not None:
                extra = [d for d in extra if d.get("artifactType") == artifact_type]
            descriptors += extra
        return ReferrersPage(descriptors, next_cursor)

    async def _fallback_referrers(
        self, repository: str, subject: digests.Digest, known: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Entries of a pre-existing `<alg>-<hex>` fallback tag (clients that predate the
        referrers API keep an index of referrers there)."""
        row = await self.metadata.tagged_manifest(repository, f"{subject.algorithm}-{subject.hex}")
        if row is None or row.media_type not in manifests.INDEX_TYPES:
            return []
        seen = {d["digest"] for d in known}
        try:
            entries = jsondoc.loads(row.content).get("manifests") or []
        except ValueError:
            return []
        extra = []
        for entry in entries:
            if isinstance(entry, dict) and entry.get("digest") not in seen:
                seen.add(entry.get("digest"))
                extra.append(entry)
        return extra


_NEWER = manifests.IMAGE_TYPES | manifests.INDEX_TYPES


def _schema1_only(accept: list[str]) -> bool:
    types = {a.split(";", 1)[0].strip().lower() for item in accept for a in item.split(",")}
    return bool(types & manifests.SCHEMA1_TYPES) and not types & _NEWER


def _decode_cursor(cursor: str | None) -> tuple[float, str] | None:
    if not cursor:
        return None
    created, _, digest = cursor.partition("_")
    try:
        return float(created), digest
    except ValueError:
        return None
