"""Writes that race between nodes: 20 tasks, each with its own store on one database (20
nodes, or 20 workers), doing the same write at once. No error, one consistent result, on
SQLite and on PostgreSQL: what settles each race is the SQL, not a lock around it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import Connection, select

from moorage.metadata import BlobRow, LeaseTaken, ManifestRow, MetadataStore
from moorage.metadata import schema as t

NODES = 20


@pytest.fixture
async def stores(store: MetadataStore, url: str) -> AsyncIterator[list[MetadataStore]]:
    """`store` (it made the schema) and NODES - 1 more on the same database."""
    others = [MetadataStore(url) for _ in range(NODES - 1)]
    yield [store, *others]
    for other in others:
        await other.close()


async def each(
    stores: list[MetadataStore], call: Callable[[MetadataStore, int], Awaitable[Any]]
) -> list[Any]:
    return await asyncio.gather(*(call(s, i) for i, s in enumerate(stores)))


def blob(n: int) -> BlobRow:
    return BlobRow(f"sha256:{n:064}", f"key-{n}", 10)


def manifest(n: int) -> ManifestRow:
    return ManifestRow(f"sha256:{n:064x}", "application/vnd.oci.image.manifest.v1+json", b"{}")


async def test_linking_one_blob_into_one_new_repository(stores: list[MetadataStore]) -> None:
    await each(stores, lambda s, _: s.link_blobs("new/repo", [blob(2), blob(1)]))
    store = stores[0]
    assert await store.count("repositories") == 1
    assert await store.count("blobs") == 2
    assert await store.linked_blobs("new/repo", [blob(1).digest, blob(2).digest]) == {
        blob(1).digest,
        blob(2).digest,
    }
    # in opposite orders too (no deadlock between two pushes of the same layers)
    rows = [blob(n) for n in range(3, 8)]
    await each(stores, lambda s, i: s.link_blobs("new/two", rows if i % 2 else rows[::-1]))
    assert await store.count("repository_blobs") == 7


async def test_putting_one_manifest_with_one_tag(stores: list[MetadataStore]) -> None:
    m = manifest(1)
    await each(stores, lambda s, _: s.put_manifest("r", m, [blob(1).digest, blob(2).digest], "t"))
    store = stores[0]
    assert await store.manifest("r", m.digest) == m
    assert await store.tag_digests("r") == {"t": m.digest}
    assert await store.count("manifest_references") == 2


async def test_moving_one_tag_ends_on_one_of_the_manifests(stores: list[MetadataStore]) -> None:
    await each(stores, lambda s, i: s.put_manifest("r", manifest(i), [], "latest"))
    store = stores[0]
    tags = await store.tag_digests("r")
    assert tags is not None and tags["latest"] in {manifest(i).digest for i in range(NODES)}
    assert await store.count("tags") == 1
    assert await store.count("manifests") == NODES


async def test_v1_rows_made_at_once(stores: list[MetadataStore]) -> None:
    await stores[0].link_blobs("src", [blob(0), blob(1)])
    images = [
        {
            "id": f"img{n}",
            "json": b"{}",
            "parent": f"img{n - 1}" if n else None,
            "depth": n,
            "blob_digest": blob(n).digest,
        }
        for n in range(2)
    ]
    done = await each(stores, lambda s, _: s.v1_insert_complete(images, "r", manifest(1).digest))
    assert done == [True] * NODES
    store = stores[0]
    assert await store.count("v1_images") == 2
    assert await store.count("v1_links") == 2
    assert await store.v1_manifest_images("r", [manifest(1).digest]) == {manifest(1).digest: "img1"}
    # a new image's JSON sent by every node at once: each gets its own generation
    generations = await each(stores, lambda s, _: s.v1_put_json("new", b"{}", None, 0, None))
    assert sorted(generations) == list(range(1, NODES + 1))
    infos = await each(
        stores,
        lambda s, i: s.v1_tag("r", "t", "img1", manifest(2), [], [blob(1)], {"n": i}),
    )
    assert len(infos) == NODES
    assert (await store.v1_tag_info("r", "t") or {}).get("n") in range(NODES)
    await each(stores, lambda s, _: s.v1_start_proof("img1", "alice", time.time() + 60))
    assert await store.count("v1_proofs") == 1


async def test_repository_deleted_while_pushed_to(stores: list[MetadataStore]) -> None:
    """Half the nodes push into a repository, half delete it: every link left points at a
    repository that exists."""
    await stores[0].link_blobs("r", [blob(1)])

    async def call(s: MetadataStore, i: int) -> object:
        if i % 2:
            return await s.delete_repository("r")
        return await s.link_blobs("r", [blob(i)])

    await each(stores, call)

    def orphans(conn: Connection) -> int:
        rb, r = t.repository_blobs, t.repositories
        query = select(rb.c.digest).where(rb.c.repository_id.not_in(select(r.c.id)))
        return len(conn.execute(query).all())

    assert await stores[0]._read(orphans) == 0
    assert await stores[0].count("repositories") <= 1


async def test_one_lease_one_claim_and_every_failure_counted(
    stores: list[MetadataStore],
) -> None:
    await stores[0].create_upload("u", "r")
    until = time.time() + 60
    taken = await each(stores, lambda s, i: s.acquire_upload("u", 0, f"lease-{i}", until))
    assert taken.count(LeaseTaken.FREE) == 1 and taken.count(None) == NODES - 1
    claims = await each(stores, lambda s, _: s.claim("upload-expiry", 60))
    assert claims.count(True) == 1
    now = time.time()
    await each(stores, lambda s, _: s.login_failed(["k"], now, 60))
    assert await stores[0].login_failures(["k"], now - 60) == {"k": (now, NODES)}
