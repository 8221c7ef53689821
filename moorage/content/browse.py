"""What the web interface (moorage/ui) shows, a page at a time: its views handle the request
(session, access rules, template) and ask here, as the API's handlers ask `Registry`, so that
no page reaches the metadata store past the content layer.

The queries are the metadata store's (moorage/metadata/browse.py: a bounded number of
statements per page, however long). What is not SQL is here: the catalog filter that a search
and the visitor's access make, the keyset position as the pages' links write it, an index's
platforms read from its bytes, an image's layers, history and labels read from its manifest
and config, and the sums the pages show. Whatever a manifest or config supplies comes from
whoever pushed it, so it is cut to what a page shows (LIST_LIMIT rows, TEXT_LIMIT characters).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from moorage.config import Upstream
from moorage.content import jsondoc, manifests
from moorage.content.registry import CatalogFilter, Registry
from moorage.errors import RegistryError
from moorage.metadata.browse import (
    RepositorySummary,
    StorageStatus,
    TagOrder,
    TagSummary,
    V1Origin,
)
from moorage.metadata.gc import GCRun

# Garbage collection cycles listed on the storage page, newest first.
GC_RUNS_SHOWN = 10
# What a page shows of a long list or document, at most: every page stays well under 200 KB.
RAW_LIMIT = 64 * 1024
CONFIG_LIMIT = 1 << 20
# Rows of a list on a page (layers, platforms, history, referrers, labels), and characters of
# a string a manifest or config supplies (a command, a label's value).
LIST_LIMIT = 100
TEXT_LIMIT = 300
# Platforms named in a row of the tags (the manifest's page lists them all).
ROW_PLATFORMS = 8

KINDS = {
    manifests.OCI_MANIFEST: "OCI image",
    manifests.OCI_INDEX: "OCI index",
    manifests.DOCKER_MANIFEST: "Docker image",
    manifests.DOCKER_LIST: "Docker manifest list",
    manifests.SCHEMA1_SIGNED: "Docker schema 1",
    manifests.SCHEMA1: "Docker schema 1",
}
# What an image manifest's artifact type is when it is no artifact: its config's media type.
IMAGE_CONFIGS = frozenset(
    {"application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"}
)


def kind(media_type: str, artifact_type: str | None) -> str:
    """What a manifest is, in words: an artifact's type, else the kind of image or index."""
    if artifact_type and artifact_type not in IMAGE_CONFIGS:
        return artifact_type
    return KINDS.get(media_type, media_type)


@dataclass(frozen=True, slots=True)
class RepositoryPage:
    rows: list[RepositorySummary]
    # The name the next page starts after; None on the last page.
    following: str | None


@dataclass(frozen=True, slots=True)
class TagRow:
    tag: TagSummary
    kind: str
    # The first ROW_PLATFORMS platforms of an index, and how many more it has.
    platforms: list[str]
    more_platforms: int
    # The v1 image the manifest shows as, if it has one in the repository.
    v1: V1Origin | None


@dataclass(frozen=True, slots=True)
class TagPage:
    rows: list[TagRow]
    order: TagOrder
    # The keyset position of the next page as its link writes it; None on the last page.
    following: str | None


@dataclass(frozen=True, slots=True)
class DeletePreview:
    """What deleting a tag or manifest takes with it, for the page that asks to confirm."""

    digest: str
    # Every tag pointing at the manifest (the one named included).
    tags: list[str]
    referrers: list[dict[str, Any]]
    # Manifests an index names (0: not an index).
    children: int


@dataclass(frozen=True, slots=True)
class StorageUsage:
    status: StorageStatus
    runs: list[GCRun]
    # Bytes of each namespace's quota, by namespace.
    quotas: dict[str, int]
    # All namespaces' bytes, and the largest's (at least 1: a meter's maximum).
    total: int
    largest: int
    upstreams: list[dict[str, Any]]


class Browse:
    """The pages' questions to one registry (cheap to make: one per request)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.metadata = registry.metadata

    async def repositories(
        self,
        after: str | None,
        limit: int,
        term: str,
        globs: tuple[str, ...] | None,
        visible: Callable[[str], bool],
    ) -> RepositoryPage:
        """A page of repositories with content after `after`, with their tag count, size and
        last push; only names containing `term` (ignoring case) when given. `globs`: those
        of the access rules that let the visitor pull, None when they see everything;
        `visible`: the exact check, as for the API's catalog."""
        only = None
        if globs is not None or term:
            only = CatalogFilter(globs if globs is not None else ("*",), visible, contains=term)
        page = await self.registry.catalog(after, limit, only)
        rows = await self.metadata.repository_summaries(page.items)
        return RepositoryPage(rows, page.next_last)

    async def tags(
        self, repository: str, sort: str | None, after: str | None, limit: int
    ) -> TagPage | None:
        """A page of the tags of `repository` with their size, pusher, kind and platforms,
        by name or newest first (`sort` "pushed"), after the position `after` a previous
        page's link carried. None if the repository does not exist."""
        order: TagOrder = "pushed" if sort == "pushed" else "name"
        tags = await self.metadata.tag_page(
            repository, order, parse_after(after, order), limit + 1, expand=manifests.INDEX_TYPES
        )
        if tags is None:
            return None
        more = len(tags) > limit
        tags = tags[:limit]
        following = format_after(tags[-1], order) if more and tags else None
        origins = await self.metadata.v1_origins(repository, [t.digest for t in tags])
        rows = []
        for tag in tags:
            platforms = _platforms(tag.content)
            shown = platforms[:ROW_PLATFORMS]
            rows.append(
                TagRow(
                    tag=tag,
                    kind=kind(tag.media_type, tag.artifact_type),
                    platforms=shown,
                    more_platforms=len(platforms) - len(shown),
                    v1=origins.get(tag.digest),
                )
            )
        return TagPage(rows, order, following)

    async def manifest(self, repository: str, digest: str) -> dict[str, Any]:
        """What the manifest's page shows: its descriptors (an index's children with what
        each references, an image's layers, config and history paired with the layers they
        made), its referrers, tags and v1 image, and the document itself. RegistryError if
        the repository has no such manifest."""
        registry = self.registry
        stored = await registry.get_manifest(repository, digest)
        try:
            document = jsondoc.loads(stored.content)
        except ValueError:
            document = {}
        if not isinstance(document, dict):
            document = {}
        context: dict[str, Any] = {
            "name": repository,
            "digest": stored.digest,
            "media_type": stored.media_type,
            "size": len(stored.content),
            "annotations": _strings(document.get("annotations")),
            "subject": _descriptor(document.get("subject")),
            "artifact_type": _text(document.get("artifactType")),
            "children": [],
            "layers": [],
            "layers_total": 0,
            "history": [],
            "labels": {},
            "hidden": {},
        }
        hidden = context["hidden"]
        if stored.media_type in manifests.INDEX_TYPES:
            children = [d for d in map(_descriptor, _list(document.get("manifests"))) if d]
            hidden["children"] = max(0, len(children) - LIST_LIMIT)
            children = children[:LIST_LIMIT]
            sizes = await self.metadata.referenced_sizes(
                repository, [c["digest"] for c in children]
            )
            for child in children:
                child["total"] = child["size"] + sizes.get(child["digest"], 0)
            context["children"] = children
        elif stored.media_type in manifests.IMAGE_TYPES:
            layers = [d for d in map(_descriptor, _list(document.get("layers"))) if d]
            context["layers"] = layers[:LIST_LIMIT]
            context["layers_total"] = sum(layer["size"] for layer in layers)
            hidden["layers"] = max(0, len(layers) - LIST_LIMIT)
            config = _descriptor(document.get("config"))
            if config is not None:
                details = await self._config(repository, config)
                context.update(details)
                _pair_history(context["history"], layers)
                hidden["history"] = max(0, details.get("history_count", 0) - LIST_LIMIT)
                context["history"] = context["history"][:LIST_LIMIT]
        referrers = await registry.referrers(repository, stored.digest, None, None)
        found = [d for d in map(_descriptor, referrers.descriptors) if d]
        context["referrers"] = found[:LIST_LIMIT]
        hidden["referrers"] = max(0, len(found) - LIST_LIMIT)
        tags = await self.metadata.tag_pushes(repository, stored.digest)
        hidden["tags"] = max(0, len(tags) - LIST_LIMIT)
        context["tags"] = tags[:LIST_LIMIT]
        origins = await self.metadata.v1_origins(repository, [stored.digest])
        context["v1"] = origins.get(stored.digest)
        context["raw"], context["raw_truncated"] = _raw(stored.content)
        return context

    async def _config(self, repository: str, config: dict[str, Any]) -> dict[str, Any]:
        """History, labels and platform from an image's config blob (if not too large to
        read)."""
        if config["size"] > CONFIG_LIMIT or not config["media_type"].endswith("json"):
            return {}
        blobs = self.registry.blobs
        try:
            blob = await blobs.get(repository, config["digest"])
            data = b"".join([chunk async for chunk in blobs.read(blob, 0, blob.size)])
            document = jsondoc.loads(data)
        except (RegistryError, ValueError, OSError):
            return {}
        if not isinstance(document, dict):
            return {}
        found = document.get("config")
        inner: dict[str, Any] = found if isinstance(found, dict) else {}
        entries = [h for h in _list(document.get("history")) if isinstance(h, dict)]
        history = [
            {
                "created": _text(h.get("created")),
                "created_by": _text(h.get("created_by")),
                "empty": bool(h.get("empty_layer")),
                "comment": _text(h.get("comment")),
                "layer": None,
            }
            for h in entries
        ]
        command = [*_list(inner.get("Entrypoint")), *_list(inner.get("Cmd"))]
        return {
            "history": history,
            "history_count": len(history),
            "labels": _strings(inner.get("Labels")),
            "platform": _text(_platform_name(document)),
            "command": _text(" ".join(str(c) for c in command)),
            "created": _text(document.get("created")),
        }

    async def v1_image(self, repository: str, image_id: str) -> list[dict[str, Any]] | None:
        """The v1 image and its ancestry (self first, up to LIST_LIMIT): what each layer ran,
        its size and uploader. None if the image is not one of `repository`'s."""
        if repository not in await self.metadata.v1_repositories_of(image_id):
            return None
        chain = []
        for row in (await self.metadata.v1_ancestry(image_id))[:LIST_LIMIT]:
            try:
                document = jsondoc.loads(row.json)
            except ValueError:
                document = {}
            run = document.get("container_config") if isinstance(document, dict) else None
            command = run.get("Cmd") if isinstance(run, dict) else None
            chain.append(
                {
                    "id": row.id,
                    "created": _text(document.get("created")) if isinstance(document, dict) else "",
                    "command": _text(" ".join(map(str, _list(command)))),
                    "size": row.size,
                    "uploader": row.uploader,
                }
            )
        return chain

    async def delete_preview(self, repository: str, reference: str) -> DeletePreview:
        """What deleting the tag or manifest `reference` would take with it. RegistryError if
        there is no such tag or manifest."""
        stored = await self.registry.get_manifest(repository, reference)
        tags = await self.metadata.tags_of(repository, stored.digest)
        referrers = await self.registry.referrers(repository, stored.digest, None, None)
        children = 0
        if stored.media_type in manifests.INDEX_TYPES:
            try:
                children = len(jsondoc.loads(stored.content).get("manifests") or [])
            except ValueError:
                children = 0
        found = [d for d in map(_descriptor, referrers.descriptors) if d]
        return DeletePreview(stored.digest, tags, found, children)

    async def storage(self, hub: Collection[str]) -> StorageUsage:
        """Usage per namespace with the quotas, activity, the collector's last cycles and
        each mirrored upstream with what is cached under it. `hub`: the hosts that are Docker
        Hub (moorage/mirror/client.py, a layer above this one), whose one-component names are
        `library/<name>` upstream."""
        status = await self.metadata.storage_status()
        runs = await self.metadata.gc_runs(GC_RUNS_SHOWN)
        settings = self.registry.settings
        quotas = {q.namespace.strip("/"): q.bytes for q in settings.quotas}
        largest = max((n.size for n in status.namespaces), default=0)
        return StorageUsage(
            status=status,
            runs=runs,
            quotas=quotas,
            total=sum(n.size for n in status.namespaces),
            largest=max(largest, 1),
            upstreams=await self._upstreams(settings.proxy.upstreams, hub),
        )

    async def _upstreams(
        self, upstreams: list[Upstream], hub: Collection[str]
    ) -> list[dict[str, Any]]:
        """Each mirrored upstream with the repositories and bytes cached under its prefix (the
        default upstream's: the names under no other prefix that its `repositories` allow)."""
        if not upstreams:
            return []
        default = next((u for u in upstreams if not u.prefix), None)
        cached = await self.metadata.usage_under(
            [u.prefix for u in upstreams if u.prefix],
            None if default is None else default.repositories,
            # Docker Hub's `library/x` is `x` here (moorage/mirror/client.py).
            library=default is not None and (urlsplit(default.url).hostname or "") in hub,
        )
        return [
            {
                "prefix": u.prefix,
                "url": u.url,
                "ttl": u.ttl,
                "repositories": u.repositories,
                "cached": cached.get(u.prefix, (0, 0)),
            }
            for u in sorted(upstreams, key=lambda u: u.prefix)
        ]


def parse_after(value: str | None, order: TagOrder) -> tuple[float, str] | str | None:
    """A keyset position as the web interface writes it into its links: a tag name, or
    `<pushed>:<name>` newest-first (tag names have no colon)."""
    if not value:
        return None
    if order == "name":
        return value
    pushed, sep, name = value.partition(":")
    try:
        return (float(pushed), name) if sep else None
    except ValueError:
        return None


def format_after(tag: TagSummary, order: TagOrder) -> str:
    return tag.name if order == "name" else f"{tag.pushed!r}:{tag.name}"


def _platforms(content: bytes | None) -> list[str]:
    if content is None:
        return []
    try:
        document = jsondoc.loads(content)
    except ValueError:
        return []
    entries = document.get("manifests") if isinstance(document, dict) else None
    found = []
    for entry in _list(entries)[:LIST_LIMIT]:
        platform = entry.get("platform") if isinstance(entry, dict) else None
        if isinstance(platform, dict) and platform.get("os"):
            found.append(_text(_platform_name(platform))[:60])
    return found


def _platform_name(platform: dict[str, Any]) -> str:
    parts = [platform.get("os"), platform.get("architecture"), platform.get("variant")]
    return "/".join(str(p) for p in parts if p)


def _text(value: Any) -> str:
    """A string from a document, cut to what a page shows."""
    text = "" if value is None else str(value)
    return text if len(text) <= TEXT_LIMIT else text[:TEXT_LIMIT] + "…"


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _strings(value: Any) -> dict[str, str]:
    """The first LIST_LIMIT entries of a map of strings (labels, annotations), cut to size."""
    if not isinstance(value, dict):
        return {}
    return {_text(k): _text(v) for k, v in list(value.items())[:LIST_LIMIT]}


def _descriptor(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, dict) or not isinstance(value.get("digest"), str):
        return None
    size = value.get("size")
    platform = value.get("platform")
    return {
        "digest": _text(value["digest"]),
        "media_type": _text(value.get("mediaType")),
        "size": size if isinstance(size, int) else 0,
        "artifact_type": _text(value.get("artifactType")),
        "platform": _platform_name(platform) if isinstance(platform, dict) else "",
        "annotations": _strings(value.get("annotations")),
    }


def _pair_history(history: list[dict[str, Any]], layers: list[dict[str, Any]]) -> None:
    """Each history entry that made a layer gets that layer (they come in the same order)."""
    made = iter(layers)
    for entry in history:
        if not entry["empty"]:
            entry["layer"] = next(made, None)


def _raw(content: bytes) -> tuple[str, bool]:
    try:
        text = json.dumps(json.loads(content), indent=2)
    except ValueError:
        text = content.decode("utf-8", "replace")
    if len(text) > RAW_LIMIT:
        return text[:RAW_LIMIT], True
    return text, False
