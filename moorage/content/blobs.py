"""Blobs and upload sessions.

A blob becomes visible only after its digest is verified and its bytes are committed
atomically (linked into place at the content-addressed key, then one metadata transaction that
links it into the repository and ends the session). Sessions live in metadata + storage,
never only in a process's memory, so any worker or node can continue one. See
docs/design/uploads.md for the races.

Hashing: the running SHA-256 state is exported (content/sha256state.py) and saved with the
session each time a write releases its lease, so a write that lands on another worker or node
continues from it without reading back bytes it did not receive. Each process also keeps the
hashers of the sessions it last wrote, with the byte count each has seen, and uses whichever
has seen more; a hasher behind the session's offset first hashes the stored bytes it has not
seen. Bytes below a session's offset never change, so a hasher behind it is still a hasher of
its prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from moorage.content import digest as digests
from moorage.content import sha256state, streams
from moorage.content.digest import Hasher
from moorage.errors import (
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    Denied,
    DigestInvalid,
    RangeInvalid,
    SizeInvalid,
)
from moorage.metadata import BlobGone, BlobRow, KeyPending, LeaseTaken, MetadataStore, UploadRow
from moorage.storage import StorageError, paths
from moorage.storage.base import StorageFull
from moorage.storage.objects import ObjectDriver, ObjectWriter

LEASE_SECONDS = 90.0
HASHER_CACHE = 4096
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

Body = AsyncIterator[bytes]
T = TypeVar("T")


def _process_start(pid: int) -> str | None:
    """The kernel's start time of a process (field 22 of /proc/PID/stat), None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


# A lease names its holder: host, pid and the pid's start time, so a server restarted on the
# same host can tell that a lease left by a killed process is dead without waiting it out. The
# pid is the worker's own, found when the lease is made: a module-level value would be the
# supervisor's (workers are forked after import), which outlives a killed worker.
_HOST = socket.gethostname()
_holder: tuple[int, str] | None = None


def _new_lease() -> str:
    global _holder
    pid = os.getpid()
    if _holder is None or _holder[0] != pid:
        _holder = (pid, f"{_HOST}/{pid}/{_process_start(pid)}")
    return f"{_holder[1]}/{uuid.uuid4().hex}"


def _holder_dead(lease: str) -> bool:
    host, _, rest = lease.partition("/")
    pid, _, rest = rest.partition("/")
    started, _, _ = rest.partition("/")
    if host != _HOST or not pid.isdigit():
        return False  # another node: only expiry can tell
    return _process_start(int(pid)) != started


CanPull = Callable[[str], bool]


@dataclass(frozen=True, slots=True)
class Blob:
    digest: str
    size: int
    path: Path | None
    storage_key: str


@dataclass(slots=True)
class _Lease:
    token: str
    offset: int | None
    renewed: float  # time.monotonic() when the lease was last taken or renewed (or just before)
    saved: bytes | None = None  # the session's stored hash state (of its bytes up to `start`)
    writer: bytes | None = None  # the session's storage writer state (of those bytes)
    written: bytes | None = None  # the writer state after this request's bytes
    handle: ObjectWriter | None = None  # the storage writer this request holds open
    ended: bool = False  # the session was committed: no row left to release


class LeaseLost(Exception):
    """A writer found, before writing, that its lease ran out and was taken over."""


@dataclass(frozen=True, slots=True)
class UploadState:
    id: str
    repository: str
    offset: int


class RangeMismatch(RangeInvalid):
    """An upload write that does not start at the session's offset (416)."""

    def __init__(self, state: UploadState) -> None:
        super().__init__(detail={"offset": state.offset})
        self.state = state


async def placement(storage: ObjectDriver, metadata: MetadataStore, sha256: str) -> str | None:
    """The content-addressed key an object of content `sha256` may be linked to: on a
    filesystem (free), unless a deletion of that key is pending; None on an object store
    (moving an object there would copy it). docs/design/gc.md says why a blob row never names a
    key being deleted."""
    target = paths.blob(sha256.partition(":")[2])
    if storage.local_path(target) is None or await metadata.deletion_pending(target):
        return None
    return target


async def place(storage: ObjectDriver, metadata: MetadataStore, key: str, sha256: str) -> str:
    """Where a committed object of content `sha256` is to live: moved to its `placement`
    unless a file is there already (a copy garbage collection is deleting, or one left over),
    else at its own key."""
    target = await placement(storage, metadata, sha256)
    if target is None:
        return key
    return target if await storage.move(key, target) else key


async def drop_if_unused(
    storage: ObjectDriver, metadata: MetadataStore, key: str, sha256: str
) -> None:
    """After recording an object as blob `sha256`: another upload of the same content may have
    committed at the same moment and its row won (a blob row is written once); then no row
    names our copy, drop it."""
    stored = await metadata.blob(sha256)
    if stored is not None and stored.storage_key != key and not await metadata.key_in_use(key):
        await storage.delete(key)


class BlobService:
    def __init__(
        self,
        storage: ObjectDriver,
        metadata: MetadataStore,
        upload_ttl: int,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        self.storage = storage
        self.metadata = metadata
        self.upload_ttl = upload_ttl
        self.lease_seconds = lease_seconds
        self.renew_seconds = lease_seconds / 3
        self._hashers: OrderedDict[str, Hasher] = OrderedDict()
        # Called before a blob is committed into a repository (repository, digest, size);
        # raises to refuse it (the storage quotas of `Registry`).
        self.admit: Callable[[str, str, int], Awaitable[None]] | None = None

    # -- reading -------------------------------------------------------------------------

    async def get(self, repository: str, digest: str) -> Blob:
        digests.parse(digest)
        row = await self.metadata.repository_blob(repository, digest)
        if row is None:
            raise BlobUnknown(detail={"digest": digest})
        return Blob(row.digest, row.size, self.storage.local_path(row.storage_key), row.storage_key)

    def read(self, blob: Blob, offset: int, length: int) -> AsyncIterator[bytes]:
        return self.storage.reader(blob.storage_key, offset, length)

    async def redirect(self, blob: Blob) -> str | None:
        """A presigned URL the client may fetch the blob from directly (object stores)."""
        return await self.storage.redirect_url(blob.storage_key)

    async def delete(self, repository: str, digest: str) -> None:
        digests.parse(digest)
        if not await self.metadata.unlink_blob(repository, digest):
            raise BlobUnknown(detail={"digest": digest})

    async def mount(
        self, repository: str, digest: str, source: str | None, can_pull: CanPull
    ) -> bool:
        """Link `digest` from `source` (or, with source None, from any repository the caller
        may pull) into `repository`. False when that cannot be done, whatever the reason."""
        if not digests.is_valid(digest):
            return False
        if source is not None:
            candidates = [source]
        else:
            candidates = await self.metadata.repositories_with_blob(digest)
        for name in candidates:
            if not can_pull(name):
                continue
            row = await self.metadata.repository_blob(name, digest)
            if row is None:
                continue
            if self.admit is not None:
                try:
                    await self.admit(repository, digest, row.size)
                except Denied:  # over quota: the client uploads, and is refused then
                    return False
            try:
                await self.metadata.link_blobs(repository, [row], existing=True)
            except BlobGone:  # collected since it was looked up: the client uploads it
                return False
            return True
        return False

    # -- upload sessions -----------------------------------------------------------------

    async def start(self, repository: str) -> UploadState:
        session_id = str(uuid.uuid4())
        await self.metadata.create_upload(session_id, repository)
        return UploadState(session_id, repository, 0)

    async def _session(self, repository: str, session_id: str) -> UploadRow:
        if not _UUID.match(session_id):
            raise BlobUploadUnknown(detail={"uuid": session_id})
        row = await self.metadata.upload(session_id)
        if row is None or row.repository != repository:
            raise BlobUploadUnknown(detail={"uuid": session_id})
        # Idle past the TTL, unless a write holds its lease (a long chunk on a slow link).
        if row.updated < time.time() - self.upload_ttl and await self._expire(session_id):
            raise BlobUploadUnknown(detail={"uuid": session_id})
        return row

    async def status(self, repository: str, session_id: str) -> UploadState:
        row = await self._session(repository, session_id)
        return UploadState(row.id, row.repository, row.offset)

    async def cancel(self, repository: str, session_id: str) -> None:
        await self._session(repository, session_id)
        await self._drop(session_id)

    async def _drop(self, session_id: str) -> None:
        self._hashers.pop(session_id, None)
        await self.metadata.delete_upload(session_id)
        await self.storage.delete(paths.upload(session_id))

    async def expire(self) -> int:
        """Drop sessions idle past the TTL; returns how many. A session being written to is
        not idle: its writer holds a live lease, and renewing it counts as activity."""
        stale = await self.metadata.stale_uploads(time.time() - self.upload_ttl)
        dropped = 0
        for session_id in stale:
            dropped += await self._expire(session_id)
        return dropped

    async def _expire(self, session_id: str) -> bool:
        """Drop one session if it is still idle and unleased when the delete runs."""
        if not await self.metadata.expire_upload(session_id, time.time() - self.upload_ttl):
            return False
        self._hashers.pop(session_id, None)
        await self.storage.delete(paths.upload(session_id))
        return True

    async def append(
        self,
        repository: str,
        session_id: str,
        body: Body,
        content_range: tuple[int, int] | None,
        content_length: int | None,
    ) -> UploadState:
        """PATCH: append a chunk (or, with no range, the whole body) at the session's offset."""
        row = await self._session(repository, session_id)
        state = UploadState(row.id, row.repository, row.offset)
        start = self._check_range(state, content_range, content_length)
        try:
            async with self._lease(state, start, row.hash_state, row.writer_state) as lease:
                offset = await self._stream(state.id, start, body, content_range, lease)
                if lease.handle is not None:
                    lease.written = await self._save(state.id, lease.handle)
                lease.offset = offset
        except LeaseLost:
            raise await self._lost(state) from None
        return UploadState(row.id, row.repository, lease.offset)

    async def finish(
        self,
        repository: str,
        session_id: str,
        expected: list[str],
        body: Body | None,
        content_range: tuple[int, int] | None,
        content_length: int | None,
    ) -> str:
        """PUT: take the optional last chunk, verify every expected digest, commit the blob.

        Returns the digest to address the blob by (the first expected one). A digest that does
        not match ends the session."""
        row = await self._session(repository, session_id)
        state = UploadState(row.id, row.repository, row.offset)
        if not expected:
            raise DigestInvalid("digest missing")
        parsed = [digests.parse(d) for d in expected]
        start = self._check_range(state, content_range, content_length)
        try:
            async with self._lease(state, start, row.hash_state, row.writer_state) as lease:
                lease.offset = await self._stream(state.id, start, body, content_range, lease)
                try:
                    digest = await self._commit(state.id, repository, lease, parsed)
                except (DigestInvalid, Denied):  # a wrong digest, over quota: the session ends
                    await self._drop(session_id)
                    raise
                lease.ended = True
                return digest
        except LeaseLost:
            raise await self._lost(state) from None

    async def _lost(self, state: UploadState) -> Exception:
        """What a writer whose lease was taken over answers: the session's offset now (416),
        or that the session is gone (the request that took over committed it)."""
        current = await self.metadata.upload(state.id)
        if current is None:
            return BlobUploadUnknown(detail={"uuid": state.id})
        return RangeMismatch(UploadState(state.id, state.repository, current.offset))

    async def upload(self, repository: str, digest: str, body: Body, length: int | None) -> str:
        """Single-POST upload: the whole blob in one request; nothing stays on failure."""
        expected = digests.parse(digest)
        state = await self.start(repository)
        try:
            async with self._lease(state, 0) as lease:
                size = await self._stream(state.id, 0, body, None, lease)
                if length is not None and size != length:
                    raise SizeInvalid(detail={"expected": length, "received": size})
                lease.offset = size
                digest = await self._commit(state.id, repository, lease, [expected])
                lease.ended = True
                return digest
        except BaseException:
            await asyncio.shield(self._drop(state.id))
            raise

    @staticmethod
    def _check_range(
        state: UploadState, content_range: tuple[int, int] | None, content_length: int | None
    ) -> int:
        if content_range is None:
            return state.offset
        start, end = content_range
        if start != state.offset or start > end:
            raise RangeMismatch(state)
        if content_length is not None and content_length != end - start + 1:
            raise SizeInvalid(detail={"range": f"{start}-{end}", "length": content_length})
        return start

    @asynccontextmanager
    async def _lease(
        self,
        state: UploadState,
        start: int,
        saved: bytes | None = None,
        writer: bytes | None = None,
    ) -> AsyncIterator[_Lease]:
        """Hold the session's write lease: one writer at a time, at the expected offset.

        On exit the lease is released with `lease.offset` as the new offset (None: unchanged),
        unless the session was committed inside (`lease.ended`: no row is left)."""
        lease = _Lease(_new_lease(), start, time.monotonic(), saved, writer)
        until = time.time() + self.lease_seconds
        acquire = self.metadata.acquire_upload(state.id, start, lease.token, until)
        taken = await self._settle(state.id, lease.token, acquire)
        if taken is None:
            current = await self.metadata.upload(state.id)
            if current is None:
                raise BlobUploadUnknown(detail={"uuid": state.id})
            stolen = (
                current.offset == start
                and current.lease is not None
                and _holder_dead(current.lease)
                and await self._settle(
                    state.id,
                    lease.token,
                    self.metadata.steal_upload(state.id, start, current.lease, lease.token, until),
                )
            )
            if not stolen:
                raise RangeMismatch(UploadState(state.id, state.repository, current.offset))
        lease.offset = None
        try:
            if taken is LeaseTaken.EXPIRED:
                # The last holder ran out of time without releasing: it may be stalled and
                # write again when it wakes up. Its bytes cannot reach what this lease commits:
                # the storage writer resumed from the saved state leaves a writer that still
                # holds the data alone (docs/design/storage-drivers.md). What this process
                # hashed for the session may be the stalled writer's: forget it.
                self._hashers.pop(state.id, None)
            yield lease
        except BaseException:
            self._hashers.pop(state.id, None)
            lease.offset = None
            raise
        finally:
            if lease.handle is not None:
                # Bytes past the last saved state are dropped: the offset does not move.
                with contextlib.suppress(StorageError):
                    await asyncio.shield(lease.handle.close())
                lease.handle = None
            if not lease.ended:
                hash_state = self._state_at(state.id, lease.offset)
                writer_state = lease.written
                if lease.offset == start:  # nothing written: what was saved still holds
                    hash_state = hash_state or lease.saved
                    writer_state = writer_state or lease.writer
                released = self.metadata.release_upload(
                    state.id, lease.token, lease.offset, hash_state, writer_state
                )
                if not await asyncio.shield(released) and lease.offset is not None:
                    # The lease was lost (expired and taken over): what this writer hashed may
                    # not be what the session holds.
                    self._hashers.pop(state.id, None)

    async def _settle(self, session_id: str, token: str, take: Awaitable[T]) -> T:
        """Await a lease-taking write. If the request is cancelled meanwhile (the client hung
        up), the write still lands: wait for it and give the lease back, so that a lease is
        never left held by a request that is gone."""
        taking = asyncio.ensure_future(take)
        try:
            return await asyncio.shield(taking)
        except asyncio.CancelledError:

            async def give_back() -> None:
                with contextlib.suppress(Exception):
                    if await taking not in (None, False):
                        await self.metadata.release_upload(session_id, token, None)

            await asyncio.shield(give_back())
            raise

    async def _stream(
        self,
        session_id: str,
        start: int,
        body: Body | None,
        content_range: tuple[int, int] | None,
        lease: _Lease,
    ) -> int:
        """Append `body` at `start`, hashing as it goes; returns the new offset. The storage
        writer stays open in `lease.handle` (for the commit, or to save its state). With no
        body nothing is touched."""
        received = 0 if body is None else await self._append(session_id, start, body, lease)
        if content_range is not None and received != content_range[1] - content_range[0] + 1:
            span = f"{content_range[0]}-{content_range[1]}"
            raise SizeInvalid(detail={"range": span, "received": received})
        return start + received

    def _state_at(self, session_id: str, offset: int | None) -> bytes | None:
        """The exported hash state of this process's hasher if it covers exactly `offset`."""
        hasher = self._hashers.get(session_id)
        if offset is None or hasher is None or hasher.size != offset:
            return None
        return hasher.export_sha256()

    async def _save(self, session_id: str, writer: ObjectWriter) -> bytes:
        """Make what the writer holds resumable (on any node) and return its state."""
        try:
            return await writer.state()
        except StorageFull:
            raise
        except StorageError as exc:
            raise BlobUploadInvalid("upload data lost", {"uuid": session_id}) from exc

    async def _open(self, session_id: str, start: int, state: bytes | None) -> ObjectWriter:
        """The session's storage writer, resumed from its saved state, at `start` bytes."""
        try:
            writer = await self.storage.writer(paths.upload(session_id), state)
        except StorageFull:
            raise
        except StorageError as exc:
            raise BlobUploadInvalid("upload data lost", {"uuid": session_id}) from exc
        if writer.size != start:
            await writer.close()
            raise BlobUploadInvalid("upload data lost", {"uuid": session_id})
        return writer

    async def _append(self, session_id: str, start: int, body: Body, lease: _Lease) -> int:
        hasher = self._hasher(session_id, start, saved=lease.saved)
        if hasher is None and start == 0:
            hasher = Hasher()
        # No hasher covers the bytes so far (a state that could not be saved): the commit
        # hashes the committed object instead.
        writer = lease.handle = await self._open(session_id, start, lease.writer)
        length = streams.declared_length(body)
        if length is not None:
            writer.expect(start + length)
        arrived = 0  # bytes of the body received so far

        async def counted(source: Body) -> Body:
            nonlocal arrived
            try:
                async for chunk in source:
                    arrived += len(chunk)
                    yield chunk
                    del chunk  # not held while the next one is waited for
            finally:
                # Closed here, not at a garbage collection: paced pieces hold a share.
                aclose = getattr(source, "aclose", None)
                if aclose is not None:
                    await aclose()

        async def renew() -> None:
            renewing = time.monotonic()
            until = time.time() + self.lease_seconds
            if not await self.metadata.renew_upload(session_id, lease.token, until):
                raise LeaseLost(session_id)
            lease.renewed = renewing

        async def keep_alive() -> None:
            """While the body makes progress, keep the lease (and so the session) alive, even
            when a block takes longer than the lease to arrive (a slow link). A body that
            stops making progress stops renewing: its lease runs out."""
            seen = 0
            while True:
                await asyncio.sleep(self.renew_seconds)
                if arrived != seen:
                    seen = arrived
                    await renew()

        async def process(block: bytes) -> None:
            # Before a byte is written, the lease must have time left: a writer that was
            # stalled (a client that stopped sending) renews first, and stops if the lease
            # has been taken over meanwhile. Renewing at a third of the lease leaves the
            # write two thirds of it to land before anyone else may take the session.
            if time.monotonic() - lease.renewed > self.renew_seconds:
                await renew()
            if hasher is None:
                await writer.write(block)
            elif one_thread is not None and len(block) < streams.BLOCK_SIZE:
                # A small block (a body read under the worker's memory budget): hashing and
                # writing it on one thread is one hand-off instead of two, which saves more
                # than running them side by side gains.
                await asyncio.to_thread(hash_and_write, block)
            else:
                # Hash and write side by side on two threads (hashlib releases the GIL).
                await asyncio.gather(asyncio.to_thread(hasher.update, block), writer.write(block))

        one_thread = writer.blocking_write()

        def hash_and_write(block: bytes) -> None:
            assert hasher is not None and one_thread is not None
            hasher.update(block)
            one_thread(memoryview(block))

        # A body that can be drained on one thread, into a writer that can write there too:
        # receive, hash and write each block on that thread, with no per-block hand-off.
        blocking = one_thread if isinstance(body, streams.Drainable) else None
        loop = asyncio.get_running_loop()

        def consume(block: memoryview) -> None:
            nonlocal arrived
            arrived += len(block)
            # As in `process`: the lease must have time left before a byte is written.
            if time.monotonic() - lease.renewed > self.renew_seconds:
                asyncio.run_coroutine_threadsafe(renew(), loop).result(self.lease_seconds)
            if hasher is not None:
                hasher.update(block)
            assert blocking is not None
            blocking(block)

        renewer = asyncio.create_task(keep_alive())
        try:
            if blocking is not None and isinstance(body, streams.Drainable):
                # `consume` hashes and writes each block before it returns (a direct write
                # copies it into its own stage): one block for the body is enough.
                received = await body.drain(consume, keep=False)
            elif (pieces := streams.paced(body)) is not None:
                received = await streams.each(counted(pieces), process)
            else:
                received = await streams.pipelined(counted(body), process, streams.block_size(body))
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError, LeaseLost):
                await renewer
        if hasher is not None:
            self._remember(session_id, hasher)
        return received

    def _remember(self, session_id: str, hasher: Hasher) -> None:
        self._hashers[session_id] = hasher
        self._hashers.move_to_end(session_id)
        while len(self._hashers) > HASHER_CACHE:
            self._hashers.popitem(last=False)

    def _hasher(
        self,
        session_id: str,
        offset: int,
        algorithms: tuple[str, ...] = (),
        saved: bytes | None = None,
    ) -> Hasher | None:
        """A hasher of exactly the session's bytes [0, offset): this process's cached one, or
        the one saved with the session (another worker or node wrote last); None if neither."""
        hasher = self._hashers.pop(session_id, None)
        if hasher is not None and (hasher.size != offset or not all(map(hasher.has, algorithms))):
            hasher = None
        if hasher is None and saved is not None:
            try:
                restored = Hasher.restore_sha256(saved)
            except (ValueError, sha256state.Unavailable):
                restored = None
            if (
                restored is not None
                and restored.size == offset
                and all(map(restored.has, algorithms))
            ):
                hasher = restored
        if hasher is None and offset == 0:
            hasher = Hasher(algorithms)
        return hasher

    async def _commit(
        self, session_id: str, repository: str, lease: _Lease, expected: list[digests.Digest]
    ) -> str:
        """Verify and commit the session's object as a blob. With a hasher of its bytes the
        digests are checked before anything is committed; without one (a state that could not
        be saved, or a digest algorithm the saved state does not have) the committed object is
        hashed, and removed again if it does not match."""
        assert lease.offset is not None
        size = lease.offset
        if self.admit is not None:
            await self.admit(repository, str(expected[0]), size)
        algorithms = tuple(sorted({d.algorithm for d in expected} | {"sha256"}))
        hasher = self._hasher(session_id, size, algorithms, saved=lease.saved)
        self._hashers.pop(session_id, None)
        if hasher is not None:
            self._verify(hasher, expected)
        writer = lease.handle or await self._open(session_id, size, lease.writer)
        lease.handle = writer
        if hasher is not None:
            sha256 = hasher.digest("sha256")
            existing = await self.metadata.blob(sha256)
            if existing is not None and existing.size == size:
                # Stored already (the same content, pushed before): link that copy, and drop
                # ours only once the link committed (garbage collection may be taking that
                # copy meanwhile: then ours is committed below instead).
                rows = {str(d): BlobRow(str(d), existing.storage_key, size) for d in expected}
                rows.setdefault(sha256, BlobRow(sha256, existing.storage_key, size))
                try:
                    await self.metadata.finish_upload(
                        session_id, repository, rows.values(), existing=True
                    )
                except BlobGone:
                    pass
                else:
                    await writer.cancel()
                    lease.handle = None
                    return str(expected[0])
        # With the digest verified, the object is committed straight to its content-addressed
        # key where it can be (one sync of one directory, where a commit and then `place`
        # took two, and a step on a thread more).
        verified = hasher is not None
        target = await placement(self.storage, self.metadata, sha256) if verified else None
        try:
            key = await writer.commit(target)
        except StorageFull:
            raise
        except StorageError as exc:
            raise BlobUploadInvalid("upload data lost", {"uuid": session_id}) from exc
        lease.handle = None
        if hasher is None:
            hasher = Hasher(algorithms)
            try:
                async for chunk in self.storage.reader(key, 0, size):
                    await asyncio.to_thread(hasher.update, chunk)
                if hasher.size != size:
                    raise BlobUploadInvalid("upload data lost", {"uuid": session_id})
                self._verify(hasher, expected)
            except BaseException:
                await asyncio.shield(self.storage.delete(key))
                raise
        sha256 = hasher.digest("sha256")
        if not verified:  # else its placement was decided, and taken if free, by the commit
            key = await place(self.storage, self.metadata, key, sha256)
        rows = {str(d): BlobRow(str(d), key, size) for d in expected}
        rows.setdefault(sha256, BlobRow(sha256, key, size))
        try:
            await self.metadata.finish_upload(session_id, repository, rows.values())
        except KeyPending as exc:
            # The content-addressed key we linked to got a deletion queued after `place`
            # looked (possible only with a grace period near zero): our bytes are at that
            # key alone, which is about to go. The client pushes again.
            raise BlobUploadInvalid("upload data lost, push again", {"uuid": session_id}) from exc
        await drop_if_unused(self.storage, self.metadata, key, sha256)
        return str(expected[0])

    @staticmethod
    def _verify(hasher: Hasher, expected: list[digests.Digest]) -> None:
        for want in expected:
            got = hasher.digest(want.algorithm)
            if got != str(want):
                raise DigestInvalid(detail={"expected": str(want), "computed": got})

    async def linked(self, repository: str, wanted: Iterable[str]) -> set[str]:
        return await self.metadata.linked_blobs(repository, wanted)
