"""What the pull-through cache (moorage/mirror/) keeps: manifests fetched from an upstream,
stored and tagged as if pushed, so that tags lists, the catalog, v1 translation, garbage
collection and retention treat them like any other.

A mirrored manifest is stored before its blobs (they are fetched when first pulled), so the
references check of a push is not made; the references are recorded all the same, which keeps
the blobs of a cached manifest from being collected once they are there.
"""

from __future__ import annotations

import time

from moorage.content import manifests
from moorage.content.registry import Registry
from moorage.errors import DigestInvalid
from moorage.metadata import ManifestRow


async def store_manifest(
    registry: Registry,
    repository: str,
    tag: str | None,
    content: bytes,
    content_type: str | None,
    expected: str | None,
) -> str:
    """Store an upstream's manifest (and point `tag` at it); its digest. `expected`: the digest
    it must have (the one asked for, or the upstream's Docker-Content-Digest): DigestInvalid,
    and nothing stored, when it does not."""
    manifest = manifests.parse(content, content_type, registry.settings.manifests.maxsize, True)
    algorithm = expected.partition(":")[0] if expected else "sha256"
    digest = manifest.digest(algorithm)
    if expected is not None and digest != expected:
        raise DigestInvalid(detail={"expected": expected, "computed": digest})
    row = ManifestRow(
        digest,
        manifest.media_type,
        manifest.content,
        manifest.subject,
        manifest.artifact_type,
        manifest.annotations,
    )
    frozen = tag is not None and registry.policy.is_immutable(repository, tag)
    await registry.metadata.put_manifest(repository, row, manifest.references, tag, frozen=frozen)
    return digest


async def tag_age(registry: Registry, repository: str, tag: str) -> float | None:
    """Seconds since the tag was stored or last confirmed upstream; None when not cached."""
    updated = await registry.metadata.tag_updated(repository, tag)
    return None if updated is None else max(0.0, time.time() - updated)


async def confirm_tag(registry: Registry, repository: str, tag: str, row: ManifestRow) -> None:
    """The upstream still has `tag` at the cached manifest: its age starts again."""
    limit = registry.settings.manifests.maxsize
    manifest = manifests.parse(row.content, row.media_type, limit, True)
    await registry.metadata.put_manifest(
        repository,
        row,
        manifest.references,
        tag,
        frozen=registry.policy.is_immutable(repository, tag),
    )
