"""BlobService upload sessions continued by several processes (two services over one store)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import update

from moorage.content.blobs import BlobService
from moorage.errors import BlobUploadInvalid, RangeInvalid
from moorage.metadata import MetadataStore
from moorage.metadata import schema as t
from moorage.storage import paths
from moorage.storage.fsobjects import FilesystemObjects as FilesystemDriver


class RecordingDriver(FilesystemDriver):
    """The filesystem driver, noting which upload bytes are read back (for hashing)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.upload_reads: list[tuple[int, int | None]] = []

    def reader(self, key: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        if key.startswith(paths.upload("")):
            self.upload_reads.append((offset, length))
        return super().reader(key, offset, length)


def _upload_files(root: Path, session_id: str) -> list[Path]:
    """The files that hold an upload's bytes (its writer's data file, or the committed one)."""
    folder = root / paths.upload(session_id).rpartition("/")[0]
    return sorted(folder.glob(f"*{session_id}*"))


async def _body(data: bytes) -> AsyncIterator[bytes]:
    yield data


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[MetadataStore]:
    metadata = MetadataStore(f"sqlite:///{tmp_path / 'metadata.db'}")
    await metadata.open()
    yield metadata
    await metadata.close()


async def test_workers_catch_up_on_bytes_they_have_not_seen(
    tmp_path: Path, store: MetadataStore
) -> None:
    storage = RecordingDriver(tmp_path / "blobs")
    a = BlobService(storage, store, upload_ttl=3600)  # two worker processes
    b = BlobService(FilesystemDriver(tmp_path / "blobs"), store, upload_ttl=3600)
    chunks = [bytes([i]) * (1000 + i) for i in range(5)]
    blob = b"".join(chunks)
    state = await a.start("repo")
    offset = 0
    for writer, chunk in zip((a, b, b, a, a), chunks, strict=True):
        end = offset + len(chunk) - 1
        result = await writer.append("repo", state.id, _body(chunk), (offset, end), len(chunk))
        offset = end + 1
        assert result.offset == offset
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    assert await a.finish("repo", state.id, [digest], None, None, None) == digest
    # The hash state travels with the session: `a` never reads back what `b` wrote.
    assert storage.upload_reads == []
    found = await a.get("repo", digest)
    assert found.size == len(blob)
    assert b"".join([c async for c in a.read(found, 0, found.size)]) == blob


async def test_a_restarted_worker_continues_from_the_saved_hash_state(
    tmp_path: Path, store: MetadataStore
) -> None:
    first = BlobService(FilesystemDriver(tmp_path / "blobs"), store, upload_ttl=3600)
    state = await first.start("repo")
    await first.append("repo", state.id, _body(b"x" * 5000), (0, 4999), 5000)
    row = await store.upload(state.id)
    assert row is not None and row.hash_state is not None
    storage = RecordingDriver(tmp_path / "blobs")
    restarted = BlobService(storage, store, upload_ttl=3600)
    digest = "sha256:" + hashlib.sha256(b"x" * 5000 + b"y" * 10).hexdigest()
    done = await restarted.finish("repo", state.id, [digest], _body(b"y" * 10), (5000, 5009), 10)
    assert done == digest
    assert storage.upload_reads == []


async def test_without_a_saved_state_a_restarted_worker_hashes_the_whole_prefix(
    tmp_path: Path, store: MetadataStore
) -> None:
    first = BlobService(FilesystemDriver(tmp_path / "blobs"), store, upload_ttl=3600)
    state = await first.start("repo")
    await first.append("repo", state.id, _body(b"x" * 5000), (0, 4999), 5000)
    # A state that cannot be used (written where it could not be exported, or damaged).
    forget = update(t.uploads).values(hash_state=b"\x01not a state")
    await store._write(lambda conn: conn.execute(forget))
    storage = RecordingDriver(tmp_path / "blobs")
    restarted = BlobService(storage, store, upload_ttl=3600)
    digest = "sha256:" + hashlib.sha256(b"x" * 5000 + b"y" * 10).hexdigest()
    done = await restarted.finish("repo", state.id, [digest], _body(b"y" * 10), (5000, 5009), 10)
    assert done == digest
    # No hasher covered the bytes: the committed object was hashed whole, once.
    assert storage.upload_reads == [(0, 5010)]
    assert await store.upload(state.id) is None
    assert _upload_files(tmp_path / "blobs", state.id) == []


async def test_a_final_put_without_body_drops_a_failed_writes_leftovers(
    tmp_path: Path, store: MetadataStore
) -> None:
    """A writer that died mid-chunk left bytes past the session's offset; a PUT with no body
    commits exactly the bytes below the offset."""
    service = BlobService(FilesystemDriver(tmp_path / "blobs"), store, upload_ttl=3600)
    state = await service.start("repo")
    await service.append("repo", state.id, _body(b"kept" * 100), (0, 399), 400)
    [data] = _upload_files(tmp_path / "blobs", state.id)
    with open(data, "ab") as f:
        f.write(b"half of a chunk that never completed")
    digest = "sha256:" + hashlib.sha256(b"kept" * 100).hexdigest()
    assert await service.finish("repo", state.id, [digest], None, None, None) == digest
    blob = await service.get("repo", digest)
    assert blob.size == 400
    assert b"".join([c async for c in service.read(blob, 0, 1000)]) == b"kept" * 100


async def test_a_final_put_whose_upload_data_is_gone_is_upload_invalid(
    tmp_path: Path, store: MetadataStore
) -> None:
    """The session row outlived its bytes (a crash between the rename and the metadata
    commit): the PUT answers BLOB_UPLOAD_INVALID, whether or not this worker hashed them."""
    for fresh_worker in (False, True):
        service = BlobService(FilesystemDriver(tmp_path / "blobs"), store, upload_ttl=3600)
        state = await service.start("repo")
        await service.append("repo", state.id, _body(b"z" * 100), (0, 99), 100)
        for data in _upload_files(tmp_path / "blobs", state.id):
            data.unlink()
        if fresh_worker:
            service = BlobService(FilesystemDriver(tmp_path / "blobs"), store, upload_ttl=3600)
        digest = "sha256:" + hashlib.sha256(b"z" * 100).hexdigest()
        with pytest.raises(BlobUploadInvalid):
            await service.finish("repo", state.id, [digest], None, None, None)


async def _slow_body(pieces: int, size: int, every: float) -> AsyncIterator[bytes]:
    for _ in range(pieces):
        await asyncio.sleep(every)
        yield b"s" * size


async def test_expiry_never_drops_a_session_being_written(
    tmp_path: Path, store: MetadataStore
) -> None:
    """Issue 9 item 3: a TTL shorter than one slow PATCH. The body trickles in (far less than
    a block, so nothing is written for seconds) while the expiry sweep runs again and again;
    the session survives and commits. Renewing the lease is activity."""
    service = BlobService(
        FilesystemDriver(tmp_path / "blobs"), store, upload_ttl=1, lease_seconds=1
    )
    state = await service.start("repo")
    sweeps = 0

    async def sweep() -> None:
        nonlocal sweeps
        while True:
            assert await service.expire() == 0
            sweeps += 1
            await asyncio.sleep(0.1)

    sweeper = asyncio.create_task(sweep())
    try:
        result = await service.append("repo", state.id, _slow_body(16, 100, 0.2), None, None)
    finally:
        sweeper.cancel()
    assert result.offset == 1600
    assert sweeps > 20
    digest = "sha256:" + hashlib.sha256(b"s" * 1600).hexdigest()
    assert await service.finish("repo", state.id, [digest], None, None, None) == digest


async def test_an_idle_session_still_expires(tmp_path: Path, store: MetadataStore) -> None:
    storage = FilesystemDriver(tmp_path / "blobs")
    service = BlobService(storage, store, upload_ttl=1, lease_seconds=1)
    state = await service.start("repo")
    await service.append("repo", state.id, _body(b"x" * 10), None, None)
    await asyncio.sleep(1.2)
    assert await service.expire() == 1
    assert await store.upload(state.id) is None
    assert _upload_files(tmp_path / "blobs", state.id) == []


async def test_a_stalled_body_stops_renewing_and_loses_the_session(
    tmp_path: Path, store: MetadataStore
) -> None:
    """The lease is kept by progress, not by the request existing: a body that stops keeps
    nothing alive, and the stalled writer writes nothing after another took over."""
    storage = FilesystemDriver(tmp_path / "blobs")
    service = BlobService(storage, store, upload_ttl=3600, lease_seconds=1)
    state = await service.start("repo")
    resume = asyncio.Event()

    async def stalling() -> AsyncIterator[bytes]:
        yield b"a" * 100
        await resume.wait()
        yield b"b" * 100

    stalled = asyncio.create_task(service.append("repo", state.id, stalling(), None, None))
    await asyncio.sleep(2)
    other = BlobService(storage, store, upload_ttl=3600, lease_seconds=1)
    done = await other.append("repo", state.id, _body(b"c" * 10), (0, 9), 10)
    assert done.offset == 10
    resume.set()
    with pytest.raises(RangeInvalid):
        await stalled
    digest = "sha256:" + hashlib.sha256(b"c" * 10).hexdigest()
    assert await other.finish("repo", state.id, [digest], None, None, None) == digest
    blob = await other.get("repo", digest)
    assert b"".join([c async for c in other.read(blob, 0, 100)]) == b"c" * 10
