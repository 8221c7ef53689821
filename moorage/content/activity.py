"""Pushes and pulls per namespace and day, for the web interface's storage page, whether or not
webhooks are configured.

Counting must cost a request nothing it would notice, so no request writes to the database:
each worker adds to counters in memory (`count`) and `flush` adds them to the `activity` table
with one upsert per namespace and day (`MetadataStore.add_activity`), every `FLUSH_EVERY`
seconds and at shutdown. The upsert adds to what is there, so every worker of every node
flushes its own counts without coordination. A flush that fails keeps its counts for the
next one; what a worker counted since its last flush is lost only if it dies without
shutting down (a crash), at most a minute of counts.

What counts: a push is a manifest stored (`PUT /v2/.../manifests/...`, or a v1 tag set); a
pull is a manifest fetched (`GET`, not `HEAD`; a v1 client's read of a tag); bytes pulled
are blob bytes the registry sent itself (a redirected download, `storage.redirect`, sends
none through it and is not counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from moorage.metadata import ActivityCount, MetadataStore

log = logging.getLogger("moorage.activity")

FLUSH_EVERY = 60.0
DAY = 86400


def namespace_of(repository: str) -> str:
    """The first path component of a repository name (as the storage page groups usage)."""
    return repository.partition("/")[0]


class Activity:
    def __init__(self, metadata: MetadataStore) -> None:
        self.metadata = metadata
        # (day, namespace) -> [pushes, pulls, bytes pulled] since the last flush
        self._counts: dict[tuple[int, str], list[int]] = {}
        self._flushing: asyncio.Future[None] | None = None

    def count(self, repository: str, pushes: int = 0, pulls: int = 0, pulled: int = 0) -> None:
        key = (int(time.time() // DAY), namespace_of(repository))
        counts = self._counts.get(key)
        if counts is None:
            self._counts[key] = [pushes, pulls, pulled]
        else:
            counts[0] += pushes
            counts[1] += pulls
            counts[2] += pulled

    def after_v2(
        self, route: str, method: str, status: int, length: int | None, repository: str
    ) -> None:
        """Count a v2 request that was answered (`length`: the response's body length)."""
        if method == "GET":
            if route == "manifest" and status == 200:
                self.count(repository, pulls=1)
            elif route == "blob" and status in (200, 206) and length:
                self.count(repository, pulled=length)
        elif method == "PUT" and route == "manifest" and status == 201:
            self.count(repository, pushes=1)

    def after_v1(self, route: str, method: str, status: int, repository: str) -> None:
        """Count a v1 request that was answered: a tag set is a push, a tag read a pull."""
        if route == "tag" and status == 200:
            if method == "PUT":
                self.count(repository, pushes=1)
            elif method == "GET":
                self.count(repository, pulls=1)

    async def flush(self) -> None:
        """Add the counts since the last flush to the table; on failure keep them for the
        next flush (and raise)."""
        if not self._counts:
            return
        taken, self._counts = self._counts, {}
        rows = [
            ActivityCount(day, namespace, *counts)
            for (day, namespace), counts in sorted(taken.items())
        ]
        try:
            await self.metadata.add_activity(rows)
        except Exception:
            for key, (pushes, pulls, pulled) in taken.items():
                counts = self._counts.setdefault(key, [0, 0, 0])
                counts[0] += pushes
                counts[1] += pulls
                counts[2] += pulled
            raise

    async def run(self, writable: Callable[[], bool], every: float = FLUSH_EVERY) -> None:
        """Flush every `every` seconds while `writable()` (not in read-only mode), until
        cancelled. A flush under way is not cancelled with it (a write that went through
        must not have its counts kept too): `close` waits for it."""
        while True:
            await asyncio.sleep(every)
            if not writable():
                continue
            self._flushing = asyncio.ensure_future(self.flush())
            try:
                await asyncio.shield(self._flushing)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("could not record push and pull counts; kept for later", exc_info=True)

    async def close(self) -> None:
        """At shutdown, once `run` is cancelled: wait for its flush, then flush the rest."""
        if self._flushing is not None:
            with contextlib.suppress(Exception):
                await self._flushing
        try:
            await self.flush()
        except Exception:
            log.warning("could not record the last push and pull counts", exc_info=True)
