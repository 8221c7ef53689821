"""The queries of `moorage fsck` (moorage/metadata/fsck.py), on SQLite and PostgreSQL: what
names a stored object, and queueing an orphan for deletion, which must refuse anything some row
or live session names and, once done, keep any new row from naming the object."""

from __future__ import annotations

import pytest

from moorage.metadata import BlobRow, KeyPending, MetadataStore
from moorage.metadata.fsck import NamedObject

SHA = "sha256:" + "ab" * 32
SHA512 = "sha512:" + "cd" * 64


async def test_named_objects_in_batches_with_their_rows(store: MetadataStore) -> None:
    await store.link_blobs("r", [BlobRow(SHA, "k/1", 10), BlobRow(SHA512, "k/1", 10)])
    await store.link_blobs("r", [BlobRow("sha256:" + "01" * 32, "k/2", 20)])
    await store.link_blobs("r", [BlobRow("sha256:" + "02" * 32, "k/3", 30)])
    assert await store.fsck_totals() == (3, 60)  # k/1 counted once
    first = await store.fsck_named(None, limit=2)
    assert first == [
        NamedObject("k/1", ((SHA, 10), (SHA512, 10))),
        NamedObject("k/2", (("sha256:" + "01" * 32, 20),)),
    ]
    assert [n.key for n in await store.fsck_named("k/2", limit=2)] == ["k/3"]
    assert await store.fsck_named("k/3") == []
    assert await store.fsck_still_named("k/2") == first[1]
    assert await store.fsck_still_named("k/none") is None


async def test_known_reads_rows_queue_and_sessions(store: MetadataStore) -> None:
    await store.link_blobs("r", [BlobRow(SHA, "k/named", 10)])
    await store.create_upload("live", "r")
    assert await store.fsck_queue("k/orphan", None, None)
    known = await store.fsck_known(["k/named", "k/orphan", "k/other"], ["live", "dead"])
    assert known.named == {"k/named"}
    assert known.pending == {"k/orphan"}
    assert known.uploads == {"live"}


async def test_queue_refuses_what_something_names(store: MetadataStore) -> None:
    await store.link_blobs("r", [BlobRow(SHA, "k/named", 10)])
    await store.create_upload("live", "r")
    assert not await store.fsck_queue("k/named", None, None)  # a blob row names it
    assert not await store.fsck_queue("blobs/uploads/live", "live", None)  # a live session
    assert await store.fsck_queue("k/orphan", None, None)
    assert not await store.fsck_queue("k/orphan", None, None)  # queued already
    assert await store.gc_pending() == ["k/orphan"]
    assert await store.gc_deleted(["k/orphan"]) == 1
    assert await store.gc_pending() == []


async def test_a_queued_orphan_is_never_named_by_a_new_row(store: MetadataStore) -> None:
    """The claim of the orphan's digest leaves no row behind, and an existing row of that
    digest (naming another object) is untouched."""
    digest = "sha256:" + "ef" * 32
    assert await store.fsck_queue("k/orphan", None, digest)
    assert await store.blob(digest) is None
    with pytest.raises(KeyPending):
        await store.link_blobs("r", [BlobRow(digest, "k/orphan", 5)])
    assert await store.blob(digest) is None  # nothing recorded

    await store.link_blobs("r", [BlobRow(SHA, "k/kept", 7)])
    assert await store.fsck_queue("k/other", None, SHA)
    assert await store.blob(SHA) == BlobRow(SHA, "k/kept", 7)
