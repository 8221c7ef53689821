"""`moorage fsck`: does the storage hold what the metadata says, and nothing else?

Two passes, both safe beside a running server (docs/design/gc.md, "Checking the storage"):

1. Every object a blob row names (several rows may name one: the sha256 and sha512 digests of
   the same bytes) exists with the rows' size, and with `verify` its bytes hash to each row's
   digest. A problem is only reported after looking again: the collector may have deleted the
   row and the object meanwhile.
2. Every object under `blobs/` that no blob row names, that is not queued for deletion by the
   collector, that is not a live upload session's own object, and that is older than
   `gc.grace` is an orphan. An upload commits its object before its row ("object first, row
   second"), so an object put in place just now has no row yet: the grace covers that moment
   (`ObjectDriver.walk` gives the time the object was put in place, not when its bytes were
   written). With `delete`, each orphan is listed again, then queued for deletion in
   `gc_deletions` under the same check in one transaction (`MetadataStore.fsck_queue`), then
   deleted, then forgotten, like the collector's own deletions: from the moment it is queued,
   no upload can record a row naming it.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from moorage.content.digest import Hasher
from moorage.metadata import MetadataStore
from moorage.metadata.fsck import NamedObject
from moorage.storage import paths
from moorage.storage.objects import Listed, ObjectDriver

BATCH = 500  # listed objects judged per metadata query
CONCURRENCY = 8  # objects checked at once (S3: requests in flight)
SAVE_EVERY = 5.0  # seconds between two checkpoints handed to `save`

Kind = Literal["missing", "wrong size", "wrong digest", "orphan"]


@dataclass(frozen=True, slots=True)
class Finding:
    kind: Kind
    key: str  # the stored object
    digest: str | None  # the blob row concerned (None for an orphan)
    detail: str  # what was expected and what was found


@dataclass
class Report:
    objects: int = 0  # stored objects that blob rows name, checked
    blobs: int = 0  # blob rows checked
    bytes: int = 0  # of the objects checked
    missing: int = 0  # blob rows whose object is absent
    wrong_size: int = 0
    wrong_digest: int = 0
    listed: int = 0  # objects found in storage
    orphans: int = 0
    orphan_bytes: int = 0
    deleted: int = 0  # orphans removed (with delete)
    deleted_bytes: int = 0
    recent: int = 0  # objects no row names yet, younger than the grace: not judged
    uploads: int = 0  # objects of live upload sessions
    pending: int = 0  # objects the collector is deleting
    interrupted: bool = False
    findings: list[Finding] = field(default_factory=list)

    @property
    def problems(self) -> int:
        return self.missing + self.wrong_size + self.wrong_digest + self.orphans

    def counts(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.type == "int"}

    @classmethod
    def resumed(cls, counts: dict[str, int]) -> Report:
        """A report that goes on from `counts` (a checkpoint's; names it does not know are
        ignored)."""
        report = cls()
        for name in report.counts().keys() & counts.keys():
            setattr(report, name, int(counts[name]))
        return report


@dataclass(frozen=True)
class Checkpoint:
    """How far a check got, so that another run can go on from there (`moorage fsck
    --resume`): the pass, the last key of it whose object is judged along with every key
    before it (both passes go in key order), and the report's counts so far. What changes
    before the keys already judged is not seen by the resumed run; the next whole run sees
    it."""

    phase: Literal["blobs", "orphans"]
    after: str | None
    counts: dict[str, int]


class Progress(Protocol):
    """Where fsck says how far it got and what it found as it finds it (moorage/progress.py
    shows it, cli_fsck.py says how a finding reads)."""

    def phase(self, name: str, items: int | None = None, nbytes: int = 0) -> None:
        """A pass begins: how many objects (None: unknown) and bytes it expects."""

    def advance(self, items: int = 0, nbytes: int = 0) -> None: ...

    def found(self, finding: Finding) -> None: ...


class Silent:
    def phase(self, name: str, items: int | None = None, nbytes: int = 0) -> None:
        pass

    def advance(self, items: int = 0, nbytes: int = 0) -> None:
        pass

    def found(self, finding: Finding) -> None:
        pass


def upload_id(key: str) -> str | None:
    """The upload session whose own object `key` is, if it is one."""
    head, _, session = key.rpartition("/")
    return session if f"{head}/" == paths.upload("") and session else None


def blob_digest(key: str) -> str | None:
    """The sha256 digest whose content-addressed key `key` is, if it is one."""
    _, _, hex_ = key.rpartition("/")
    return f"sha256:{hex_}" if len(hex_) == 64 and paths.blob(hex_) == key else None


class Fsck:
    def __init__(
        self,
        metadata: MetadataStore,
        storage: ObjectDriver,
        grace: float,
        *,
        verify: bool = False,
        delete: bool = False,
        progress: Progress | None = None,
        stop: threading.Event | None = None,
        resume: Checkpoint | None = None,
        save: Callable[[Checkpoint], None] | None = None,
    ) -> None:
        self.metadata = metadata
        self.storage = storage
        self.grace = grace
        self.verify = verify
        self.delete = delete
        self.progress = progress or Silent()
        self.stop = stop or threading.Event()
        self.report = Report.resumed(resume.counts) if resume else Report()
        self.phase: Literal["blobs", "orphans"] = resume.phase if resume else "blobs"
        self.after = resume.after if resume else None
        self.save = save
        self.saved = time.monotonic()

    async def run(self) -> Report:
        """Both passes (from the checkpoint it resumes, if any); stops early
        (`report.interrupted`) once `stop` is set, never in the middle of a deletion. Hands a
        checkpoint to `save` every `SAVE_EVERY` seconds and when it stops unfinished,
        interrupted or failing."""
        finished = False
        try:
            if self.phase == "blobs":
                await self.check_named()
                if not self.stop.is_set():
                    self.phase, self.after = "orphans", None
            if not self.stop.is_set():
                await self.find_orphans()
            finished = not self.stop.is_set()
        finally:
            if not finished and self.save is not None:
                self.save(self.checkpoint())
        self.report.interrupted = not finished
        return self.report

    def checkpoint(self) -> Checkpoint:
        return Checkpoint(self.phase, self.after, self.report.counts())

    def _judged(self, key: str) -> None:
        """Every key up to `key` of the current pass is judged."""
        self.after = key
        if self.save is not None and time.monotonic() - self.saved >= SAVE_EVERY:
            self.saved = time.monotonic()
            self.save(self.checkpoint())

    def _found(self, finding: Finding) -> None:
        self.report.findings.append(finding)
        self.progress.found(finding)

    # -- 1. what the blob rows name --------------------------------------------------------

    async def check_named(self) -> None:
        objects, nbytes = await self.metadata.fsck_totals()
        self.progress.phase("blobs", objects, nbytes)
        self.progress.advance(self.report.objects, self.report.bytes)  # before a resume
        limit = asyncio.Semaphore(CONCURRENCY)
        # Objects are checked several at once and finish in any order: the checkpoint moves
        # to a key once it and every key dispatched before it are judged.
        dispatched: collections.deque[str] = collections.deque()
        judged: set[str] = set()

        async def check(named: NamedObject) -> None:
            try:
                if await self._check_one(named):
                    judged.add(named.key)
                    while dispatched and dispatched[0] in judged:
                        judged.discard(key := dispatched.popleft())
                        self._judged(key)
            finally:
                limit.release()

        after = self.after
        async with asyncio.TaskGroup() as tasks:  # a failure cancels the others, then raises
            while not self.stop.is_set():
                batch = await self.metadata.fsck_named(after)
                if not batch:
                    break
                for named in batch:
                    await limit.acquire()
                    if self.stop.is_set():
                        limit.release()
                        break
                    dispatched.append(named.key)
                    tasks.create_task(check(named))
                after = batch[-1].key

    async def _check_one(self, named: NamedObject) -> bool:
        """Judge one object; False if interrupted before it was judged."""
        findings, size = await self._examine(named, count=True)
        if self.stop.is_set():
            return False
        r = self.report
        r.objects += 1
        r.blobs += len(named.rows)
        r.bytes += size or 0
        if not self.verify:
            self.progress.advance(1, size or 0)
        else:
            self.progress.advance(1, 0)  # the bytes were counted as they were read
        if not findings:
            return True
        # Look again: the collector may have deleted the rows (and is deleting the object),
        # or deleted them and a new upload stored the same content again.
        now = await self.metadata.fsck_still_named(named.key)
        if now is None:
            return True
        findings, _ = await self._examine(now, count=False)
        for finding in findings:
            if finding.kind == "missing":
                r.missing += 1
            elif finding.kind == "wrong size":
                r.wrong_size += 1
            else:
                r.wrong_digest += 1
            self._found(finding)
        return True

    async def _examine(self, named: NamedObject, count: bool) -> tuple[list[Finding], int | None]:
        """What is wrong with the object of `named` (and its size, None if absent). `count`:
        report the bytes read to the progress."""
        key = named.key
        size = await self.storage.stat(key)
        if size is None:
            return [
                Finding("missing", key, digest, f"{rows} bytes expected, no object")
                for digest, rows in named.rows
            ], None
        findings = [
            Finding("wrong size", key, digest, f"{rows} bytes expected, {size} stored")
            for digest, rows in named.rows
            if rows != size
        ]
        right = [digest for digest, rows in named.rows if rows == size]
        if not self.verify or not right:
            return findings, size
        algorithms = tuple(sorted({d.partition(":")[0] for d in right}))
        hasher = Hasher(algorithms)
        async for chunk in self.storage.reader(key):
            if self.stop.is_set():  # interrupted: this object is left unjudged
                return [], None
            await asyncio.to_thread(hasher.update, chunk)
            if count:
                self.progress.advance(0, len(chunk))
        if hasher.size != size:  # changed while being read: it is not what the rows say
            findings += [
                Finding("wrong size", key, d, f"{size} bytes expected, {hasher.size} read")
                for d in right
            ]
            return findings, size
        findings += [
            Finding("wrong digest", key, d, f"content hashes to {hasher.digest(d.split(':')[0])}")
            for d in right
            if hasher.digest(d.partition(":")[0]) != d
        ]
        return findings, size

    # -- 2. what nothing names -------------------------------------------------------------

    async def find_orphans(self) -> None:
        self.progress.phase("orphans", self.report.objects or None)
        self.progress.advance(self.report.listed)  # before a resume
        batch: list[Listed] = []
        async for listed in self.storage.walk(paths.BLOBS, self.after):
            batch.append(listed)
            if len(batch) >= BATCH:
                await self._judge(batch)
                batch = []
            if self.stop.is_set():
                return
        if batch:
            await self._judge(batch)

    async def _judge(self, batch: list[Listed]) -> None:
        sessions = {found.key: upload_id(found.key) for found in batch}
        known = await self.metadata.fsck_known(
            [found.key for found in batch], [s for s in sessions.values() if s]
        )
        r = self.report
        for found in batch:
            if self.stop.is_set():
                return
            r.listed += 1
            self.progress.advance(1, found.size)
            if found.key in known.named:
                pass
            elif found.key in known.pending:
                r.pending += 1
            elif sessions[found.key] in known.uploads:
                r.uploads += 1
            elif found.modified > time.time() - self.grace:
                r.recent += 1
            else:
                await self._orphan(found)
            self._judged(found.key)

    async def _orphan(self, found: Listed) -> None:
        """An object nothing named when the batch was judged, and old: list it again (it may
        have been deleted by the collector since, and its key taken by a new upload)."""
        now = await self._relist(found.key)
        if now is None:
            return
        if now.modified > time.time() - self.grace:
            self.report.recent += 1
            return
        r = self.report
        r.orphans += 1
        r.orphan_bytes += now.size
        age = time.time() - now.modified
        self._found(Finding("orphan", now.key, None, f"{now.size} bytes, {age / 3600:.1f} h old"))
        if self.delete and await self.metadata.fsck_queue(
            now.key, upload_id(now.key), blob_digest(now.key)
        ):
            await self.storage.delete(now.key)
            await self.metadata.gc_deleted([now.key])
            r.deleted += 1
            r.deleted_bytes += now.size

    async def _relist(self, key: str) -> Listed | None:
        again = None
        async for found in self.storage.walk(key):  # to its end: one object, or a few on S3
            if found.key == key:
                again = found
        return again
