"""Online garbage collection (docs/design/gc.md): one cycle deletes from the metadata what
nothing has referred to for the grace period (`MetadataStore.gc_collect`), then deletes the
stored objects the deleted blob rows named. The server runs a cycle every `gc.interval` in one
worker of the deployment; `moorage gc` runs one now. Every cycle, dry runs and failures too,
is recorded in `gc_runs` for the web interface's storage page."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from moorage import metrics
from moorage.config import GCSettings
from moorage.content.policy import Policy
from moorage.metadata import MetadataStore
from moorage.metadata.gc import Collected, GCRun, Progress, Retention, looked_at, silent
from moorage.storage.objects import ObjectDriver

log = logging.getLogger("moorage.gc")

DELETES_AT_ONCE = 16


@dataclass
class Cycle:
    collected: Collected
    objects_deleted: int
    seconds: float
    dry_run: bool

    def summary(self) -> dict[str, Any]:
        c = self.collected
        return {
            "dry_run": self.dry_run,
            "tags": c.tags,
            "manifests": c.manifests,
            "links": c.links,
            "v1_images": c.v1_images,
            "blobs": c.blobs,
            "bytes": c.bytes,
            "objects_deleted": self.objects_deleted,
            "seconds": round(self.seconds, 3),
        }

    def run(self, started: float) -> GCRun:
        """The cycle as `gc_runs` records it (`started`: epoch seconds)."""
        c = self.collected
        return GCRun(
            started,
            self.seconds,
            self.dry_run,
            tags=c.tags,
            manifests=c.manifests,
            links=c.links,
            v1_images=c.v1_images,
            blobs=c.blobs,
            bytes=c.bytes,
            objects_deleted=self.objects_deleted,
        )


class Collector:
    def __init__(
        self,
        metadata: MetadataStore,
        storage: ObjectDriver,
        settings: GCSettings,
        policy: Policy | None = None,
    ):
        self.metadata = metadata
        self.storage = storage
        self.settings = settings
        self.policy = policy

    def _retention(self, repository: str) -> Retention | None:
        """What the configured retention rules delete in `repository` (immutable tags are
        kept like protected ones)."""
        assert self.policy is not None
        rule = self.policy.retention_rule(repository)
        if rule is None:
            return None
        cutoff = None if rule.older_than is None else time.time() - rule.older_than
        keep = (*rule.protect, *self.policy.frozen_tags(repository))
        return Retention(rule.keep_last, cutoff, keep)

    async def cycle(
        self,
        grace: float | None = None,
        dry_run: bool = False,
        pause: Any = None,
        progress: Progress | None = None,
    ) -> Cycle:
        """One collection. `grace` overrides `gc.grace`; a dry run changes nothing and
        reports what a cycle would delete now. `pause` is for tests; `progress` is told how
        far each stage is and may raise to stop the cycle safely (`gc_collect`), the last
        stage being "objects" (stored objects deleted)."""
        started, began = time.monotonic(), time.time()
        cutoff = began - (self.settings.grace if grace is None else grace)
        retention = self._retention if self.policy and self.policy.retention else None
        try:
            collected = await self.metadata.gc_collect(
                cutoff,
                self.settings.untagged == "collect",
                dry_run=dry_run,
                pause=pause,
                retention=retention,
                progress=progress,
            )
            deleted = 0 if dry_run else await self.delete_objects(progress)
        except Exception as exc:
            if not dry_run:
                metrics.GC_FAILURES.inc()
            failed = GCRun(began, time.monotonic() - started, dry_run, error=str(exc) or repr(exc))
            await self._record(failed)
            raise
        cycle = Cycle(collected, deleted, time.monotonic() - started, dry_run)
        if not dry_run:
            log.info("garbage collection cycle", extra=cycle.summary())
            _count(cycle)
        await self._record(cycle.run(began))
        return cycle

    async def _record(self, run: GCRun) -> None:
        """Keep the cycle's record for the storage page; a cycle is not failed for want of
        one (the database may be what failed)."""
        try:
            await self.metadata.gc_record_run(run)
        except Exception:
            log.warning("could not record the garbage collection cycle", exc_info=True)

    async def delete_objects(self, progress: Progress | None = None) -> int:
        """Delete every stored object queued for deletion, this cycle's and any an
        interrupted cycle left; each is forgotten only once it is gone from storage (so
        stopping between two, `progress` raising, leaves the rest queued)."""
        report = progress or silent
        deleted = looked = 0
        report("objects", looked)
        while keys := await self.metadata.gc_pending():
            # Several at once: each is a round trip (a thread hop, an S3 request); the rows are
            # forgotten per group, only once the group is gone from storage.
            for first in range(0, len(keys), DELETES_AT_ONCE):
                group = keys[first : first + DELETES_AT_ONCE]
                await asyncio.gather(*(self.storage.delete(key) for key in group))
                deleted += await self.metadata.gc_deleted(group)
                for _ in group:
                    looked = looked_at(report, "objects", looked)
        report("objects", looked)
        return deleted


def _count(cycle: Cycle) -> None:
    c = cycle.collected
    metrics.GC_CYCLES.inc()
    metrics.GC_TAGS.inc(amount=c.tags)
    metrics.GC_MANIFESTS.inc(amount=c.manifests)
    metrics.GC_BLOBS.inc(amount=c.blobs)
    metrics.GC_BYTES.inc(amount=c.bytes)
    metrics.GC_LAST.set(time.time())
