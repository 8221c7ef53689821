"""The store's behaviour, one suite for SQLite and PostgreSQL: every public method."""

from __future__ import annotations

import asyncio
import time

import pytest

from moorage.auth.ratelimit import LoginLimiter
from moorage.metadata import (
    ActivityCount,
    BlobRow,
    LayerSums,
    LeaseTaken,
    ManifestRow,
    MetadataStore,
    gc,
)
from moorage.metadata.gc import GCRun


def digest(n: int | str) -> str:
    return "sha256:" + str(n).rjust(64, "0")


def blob(n: int | str, size: int = 10) -> BlobRow:
    return BlobRow(digest(n), f"key-{n}", size)


def manifest(n: int | str, **kw: object) -> ManifestRow:
    return ManifestRow(digest(f"m{n}"), "application/vnd.oci.image.manifest.v1+json", b"{}", **kw)  # type: ignore[arg-type]


async def test_repositories_exist_once_made_and_list_only_with_content(
    store: MetadataStore,
) -> None:
    assert not await store.repository_exists("a/empty")
    await store.ensure_repository("a/empty")
    await store.ensure_repository("a/empty")
    assert await store.repository_exists("a/empty")
    await store.link_blobs("b/one", [blob(1)])
    await store.put_manifest("c/two", manifest(1), [], "latest")
    assert await store.list_repositories(None, 10) == ["b/one", "c/two"]
    assert await store.list_repositories("b/one", 10) == ["c/two"]
    assert await store.list_repositories(None, 1) == ["b/one"]
    assert await store.count("repositories") == 3
    assert await store.search_repositories("ONE", 10) == ["b/one"]


async def test_list_repositories_matching_windows_and_globs(store: MetadataStore) -> None:
    names = [f"team/app{i:02}" for i in range(12)] + ["other/x", "zed"]
    for name in names:
        await store.link_blobs(name, [blob(1)])
    await store.ensure_repository("team/empty")
    found, after = await store.list_repositories_matching(None, 100, ["team/*"], 1000)
    assert found == sorted(n for n in names if n.startswith("team/")) and after is None
    found, after = await store.list_repositories_matching(None, 5, ["team/*"], 1000)
    assert found == [f"team/app{i:02}" for i in range(5)] and after == "team/app04"
    found, _ = await store.list_repositories_matching(None, 100, ["*"], 1000, contains="ZE")
    assert found == ["zed"]
    found, _ = await store.list_repositories_matching(
        None, 100, ["team/e*"], 1000, with_content=False
    )
    assert found == ["team/empty"]
    # a bounded window: at most `scan` names looked at, and where to go on from
    found, after = await store.list_repositories_matching(None, 100, ["*"], 3)
    assert len(found) <= 3 and after is not None


async def test_delete_repository_removes_its_rows_and_keeps_blobs(store: MetadataStore) -> None:
    await store.link_blobs("r", [blob(1)])
    await store.put_manifest("r", manifest(1), [digest(1)], "t")
    assert await store.delete_repository("r")
    assert not await store.delete_repository("r")
    assert not await store.repository_exists("r")
    for table in ("tags", "manifests", "manifest_references", "repository_blobs"):
        assert await store.count(table) == 0
    assert await store.blob(digest(1)) == blob(1)


async def test_blobs_link_unlink_and_keep_their_first_key(store: MetadataStore) -> None:
    await store.link_blobs("r1", [blob(1), blob(2), blob(1)])
    await store.link_blobs("r2", [BlobRow(digest(1), "another-key", 10)])
    assert await store.blob(digest(1)) == blob(1)
    assert await store.repository_blob("r2", digest(1)) == blob(1)
    assert await store.repository_blob("r2", digest(2)) is None
    assert await store.repositories_with_blob(digest(1)) == ["r1", "r2"]
    assert await store.linked_blobs("r1", [digest(1), digest(2), digest(3)]) == {
        digest(1),
        digest(2),
    }
    assert await store.linked_blobs("r1", []) == set()
    assert await store.unlink_blob("r1", digest(1))
    assert not await store.unlink_blob("r1", digest(1))
    assert not await store.unlink_blob("nope", digest(1))
    assert await store.repository_blob("r1", digest(1)) is None
    assert await store.blob(digest(1)) is not None  # the blob row stays for GC
    assert await store.blob(digest(9)) is None


async def test_manifests_are_stored_once_and_deleted_with_their_tags(
    store: MetadataStore,
) -> None:
    m = manifest(1)
    await store.put_manifest("r", m, [digest(1), digest(2), digest(1)], "v1")
    await store.put_manifest("r", m, [digest(1), digest(2)], "v2")
    assert await store.manifest("r", m.digest) == m
    assert await store.tagged_manifest("r", "v2") == m
    assert await store.tagged_manifest("r", "v3") is None
    assert await store.manifest("other", m.digest) is None
    assert await store.existing_manifests("r", [m.digest, digest("x")]) == {m.digest}
    assert await store.existing_manifests("r", []) == set()
    assert await store.count("manifest_references") == 2
    assert await store.list_tags("r", None, 10) == ["v1", "v2"]
    assert await store.delete_manifest("r", m.digest)
    assert not await store.delete_manifest("r", m.digest)
    assert not await store.delete_manifest("nope", m.digest)
    assert await store.list_tags("r", None, 10) == []
    assert await store.count("manifest_references") == 0


async def test_tags_move_list_in_order_and_page(store: MetadataStore) -> None:
    assert await store.list_tags("r", None, 10) is None
    assert await store.tag_digests("r") is None
    await store.put_manifest("r", manifest(1), [], "latest")
    await store.put_manifest("r", manifest(2), [], "latest")
    assert await store.tag_digests("r") == {"latest": manifest(2).digest}
    for i in range(5):
        await store.put_manifest("r", manifest(1), [], f"t{i}")
    await store.put_manifest("r", manifest(1), [], None)
    assert await store.list_tags("r", None, 100) == ["latest", "t0", "t1", "t2", "t3", "t4"]
    assert await store.list_tags("r", None, 2) == ["latest", "t0"]
    assert await store.list_tags("r", "t0", 2) == ["t1", "t2"]
    assert await store.list_tags("r", "t4", 2) == []
    assert await store.delete_tag("r", "t0")
    assert not await store.delete_tag("r", "t0")
    assert not await store.delete_tag("nope", "t0")
    assert await store.count("tags") == 5


async def test_referrers_filter_by_subject_and_type_and_page(store: MetadataStore) -> None:
    subject = manifest("s").digest
    made = []
    for i in range(4):
        row = manifest(
            i,
            subject=subject,
            artifact_type="a/sig" if i % 2 else "a/sbom",
            annotations={"n": str(i)},
        )
        made.append(row)
        await store.put_manifest("r", row, [], None)
        await asyncio.sleep(0.002)  # distinct creation times
    await store.put_manifest("r", manifest(9), [], None)
    found = await store.referrers("r", subject, None, None, 10)
    assert [row for row, _ in found] == made
    assert found[0][0].annotations == {"n": "0"}
    sigs = await store.referrers("r", subject, "a/sig", None, 10)
    assert [row.digest for row, _ in sigs] == [made[1].digest, made[3].digest]
    first = await store.referrers("r", subject, None, None, 2)
    rest = await store.referrers("r", subject, None, (first[-1][1], first[-1][0].digest), 10)
    assert [row for row, _ in first + rest] == made
    assert await store.referrers("other", subject, None, None, 10) == []


async def test_upload_leases(store: MetadataStore) -> None:
    await store.create_upload("u1", "r")
    row = await store.upload("u1")
    assert row is not None and (row.repository, row.offset, row.lease) == ("r", 0, None)
    assert await store.upload("nope") is None
    later = time.time() + 60
    assert await store.acquire_upload("u1", 0, "a", later) is LeaseTaken.FREE
    assert await store.acquire_upload("u1", 0, "b", later) is None
    assert await store.renew_upload("u1", "a", later + 1)
    assert not await store.renew_upload("u1", "b", later + 1)
    assert not await store.release_upload("u1", "b", 5, b"state")
    assert await store.release_upload("u1", "a", 5, b"state")
    row = await store.upload("u1")
    assert row is not None and (row.offset, row.lease, row.hash_state) == (5, None, b"state")
    assert await store.acquire_upload("u1", 0, "b", later) is None  # wrong offset
    assert await store.acquire_upload("u1", 5, "b", time.time() - 1) is LeaseTaken.FREE
    # b's lease ran out: c takes it over
    assert await store.acquire_upload("u1", 5, "c", later) is LeaseTaken.EXPIRED
    assert await store.release_upload("u1", "c", None)
    row = await store.upload("u1")
    assert row is not None and (row.offset, row.hash_state) == (5, b"state")
    assert await store.acquire_upload("u1", 5, "d", later) is LeaseTaken.FREE
    assert not await store.steal_upload("u1", 5, "x", "e", later)
    assert await store.steal_upload("u1", 5, "d", "e", later)
    row = await store.upload("u1")
    assert row is not None and row.lease == "e"


async def test_uploads_expire_only_when_idle_and_unleased(store: MetadataStore) -> None:
    for name in ("idle", "leased", "fresh"):
        await store.create_upload(name, "r")
    await store.acquire_upload("leased", 0, "a", time.time() + 60)
    cutoff = time.time() + 1  # everything so far counts as idle
    assert sorted(await store.stale_uploads(cutoff)) == ["fresh", "idle"]
    assert await store.stale_uploads(cutoff, limit=1) in (["idle"], ["fresh"])
    assert not await store.expire_upload("leased", cutoff)
    assert not await store.expire_upload("idle", time.time() - 60)  # active since
    assert await store.expire_upload("idle", cutoff)
    assert await store.upload("idle") is None
    assert await store.delete_upload("fresh")
    assert not await store.delete_upload("fresh")


async def test_finish_upload_links_the_blob_and_ends_the_session(store: MetadataStore) -> None:
    await store.create_upload("u", "r")
    await store.finish_upload("u", "r", [blob(1)])
    assert await store.upload("u") is None
    assert await store.repository_blob("r", digest(1)) == blob(1)


def sums(n: int) -> LayerSums:
    return LayerSums(digest(n), f"key-{n}", f"diff-{n}", f"payload-{n}", f"tarsum-{n}", 10, True)


async def test_v1_images_upload_complete_and_link(store: MetadataStore) -> None:
    assert await store.v1_put_json("p", b'{"id":"p"}', None, 0, "alice") == 1
    assert await store.v1_put_json("p", b'{"id":"p"}', None, 0, "alice") == 2
    assert not await store.v1_layer_uploaded("p", 1, sums(1))  # restarted since
    assert await store.v1_layer_uploaded("p", 2, sums(1))
    assert not await store.v1_complete("p", 1, None, "r")
    assert await store.v1_complete("p", 2, "client-sum", "r")
    assert await store.v1_put_json("p", b"{}", None, 0, None) is None  # complete: immutable
    assert await store.v1_put_json("c", b'{"id":"c"}', "p", 1, None) == 1
    assert await store.v1_layer_uploaded("c", 1, sums(2))
    assert await store.v1_complete("c", 1, None, None)
    image = await store.v1_image("p")
    assert image is not None and image.state == "complete" and image.compressed is True
    assert image.client_checksum == "client-sum" and image.blob_digest == digest(1)
    assert [i.id for i in await store.v1_ancestry("c")] == ["c", "p"]
    assert await store.v1_image("nope") is None
    await store.v1_link("r2", ["c"])
    await store.v1_link("r2", ["c"])
    assert await store.v1_repositories_of("p") == ["r", "r2"]
    assert await store.v1_repositories_of("c") == ["r2"]
    assert await store.linked_blobs("r2", [digest(1), digest(2)]) == {digest(1), digest(2)}
    await store.v1_record_checksums("r2", {"c": "sum-c", "unlinked": "x"})
    assert await store.v1_images_of("r2") == [("c", "sum-c"), ("p", "client-sum")]


async def test_v1_tag_and_tag_info(store: MetadataStore) -> None:
    await store.v1_put_json("i", b"{}", None, 0, None)
    await store.v1_layer_uploaded("i", 1, sums(1))
    await store.v1_complete("i", 1, None, None)
    m = manifest(1)
    for info in ({"ua": "one"}, {"ua": "two"}):
        await store.v1_tag("r", "latest", "i", m, [digest(1)], [blob(1)], info)
    assert await store.v1_tag_info("r", "latest") == {"ua": "two"}
    assert await store.v1_tag_info("r", "other") is None
    assert await store.tag_digests("r") == {"latest": m.digest}
    assert await store.v1_manifest_images("r", [m.digest]) == {m.digest: "i"}
    assert await store.v1_manifest_images("r", []) == {}
    assert await store.v1_manifests_of_image("i") == [("r", m.digest)]
    assert await store.v1_repositories_of("i") == ["r"]


def derived(n: int, json: bytes = b"{}") -> dict[str, object]:
    return {
        "id": f"img{n}",
        "json": json,
        "parent": f"img{n - 1}" if n else None,
        "depth": n,
        "blob_digest": digest(n),
    }


async def test_v1_insert_complete_refuses_other_content_under_a_known_id(
    store: MetadataStore,
) -> None:
    await store.link_blobs("src", [blob(0), blob(1)])
    images = [derived(0), derived(1)]
    assert await store.v1_insert_complete(images, "r", digest("m"))
    assert await store.v1_insert_complete(images, "r", digest("m"))
    assert await store.count("v1_images") == 2
    assert not await store.v1_insert_complete([derived(1, b'{"x":1}'), derived(2)], "q", "m2")
    assert await store.v1_image("img2") is None and not await store.repository_exists("q")
    assert await store.v1_insert_complete([], "r", digest("m"))


async def test_v1_proofs_and_sessions(store: MetadataStore) -> None:
    later = time.time() + 60
    await store.v1_start_proof("i", "alice", later)
    assert await store.v1_proof("i", "alice") == (True, None)
    await store.v1_set_proof("i", "alice", "payload")
    assert await store.v1_proof("i", "alice") == (True, "payload")
    await store.v1_start_proof("i", "alice", later)  # a restart forgets the checksum
    assert await store.v1_proof("i", "alice") == (True, None)
    await store.v1_end_proof("i", "alice")
    assert await store.v1_proof("i", "alice") == (False, None)
    await store.v1_open_session("s1", "r", "alice", ["a", "b", "a"], later)
    await store.v1_open_session("s2", "q", None, ["a"], later)
    await store.v1_open_session("old", "z", "alice", ["a"], time.time() - 1)
    assert await store.v1_session_repositories("a", "alice") == ["r"]
    assert await store.v1_session_repositories("a", None) == ["q"]
    await store.v1_close_sessions("r", "alice")
    assert await store.v1_session_repositories("a", "alice") == []
    await store.v1_open_session("s3", "r", "bob", [], later)  # drops expired sessions
    assert await store.count("v1_sessions") == 2


async def test_a_chore_is_claimed_once_per_period(store: MetadataStore) -> None:
    assert await store.claim("sweep", 0.2)
    assert not await store.claim("sweep", 0.2)
    assert await store.claim("other", 0.2)
    deadline = time.time() + 5
    while not await store.claim("sweep", 0.2):
        assert time.time() < deadline
        await asyncio.sleep(0.05)


async def test_login_failures_count_in_a_window(store: MetadataStore) -> None:
    now = time.time()
    for _ in range(3):
        await store.login_failed(["k1", "k2"], now, 60)
    assert await store.login_failures(["k1", "k3"], now - 60) == {"k1": (now, 3)}
    await store.login_failed(["k1"], now + 61, 60)  # the window has passed: a new one
    assert await store.login_failures(["k1"], now) == {"k1": (now + 61, 1)}
    limiter = LoginLimiter(per_pair=2, per_address=100, window=60)
    limiter.share(store)
    await limiter.failed("alice", "192.0.2.1")
    assert await limiter.retry_after("alice", "192.0.2.1") == 0
    await limiter.failed("alice", "192.0.2.1")
    assert 0 < await limiter.retry_after("alice", "192.0.2.1") <= 61
    assert await limiter.retry_after("bob", "192.0.2.1") == 0
    assert await limiter.retry_after("alice", "192.0.2.2") == 0


async def test_a_tag_records_who_set_it_last(store: MetadataStore) -> None:
    await store.put_manifest("r", manifest(1), [], "t", pusher="alice")
    await store.put_manifest("r", manifest(1), [], "u")
    pushes = await store.tag_pushes("r", digest("m1"))
    assert [(p.name, p.pushed_by) for p in pushes] == [("t", "alice"), ("u", None)]
    # moved by someone else, then by nobody known: each move says who moved it
    await store.put_manifest("r", manifest(2), [], "t", pusher="bob")
    assert [(p.name, p.pushed_by) for p in await store.tag_pushes("r", digest("m2"))] == [
        ("t", "bob")
    ]
    page = await store.tag_page("r", "name", None, 10)
    assert page is not None and [(x.name, x.pushed_by) for x in page] == [
        ("t", "bob"),
        ("u", None),
    ]
    await store.put_manifest("r", manifest(2), [], "t")
    assert [p.pushed_by for p in await store.tag_pushes("r", digest("m2"))] == [None]


async def test_activity_counts_add_up_across_flushes(store: MetadataStore) -> None:
    today = int(time.time() // 86400)
    await store.put_manifest("team/app", manifest(1), [], "t")
    # two workers flush their counts of the same day and namespace: both count
    await store.add_activity([ActivityCount(today, "team", 1, 2, 300)])
    await store.add_activity(
        [ActivityCount(today, "team", 0, 5, 20), ActivityCount(today - 1, "other", 4, 0, 0)]
    )
    await store.add_activity([ActivityCount(today - 40, "team", 9, 9, 9)])  # outside the window
    status = await store.storage_status(days=30)
    assert [(d.pushes, d.pulls, d.pulled_bytes) for d in status.days[-2:]] == [
        (4, 0, 0),
        (1, 7, 320),
    ]
    assert sum(d.pushes for d in status.days) == 5
    assert status.activity == {
        "team": ActivityCount(today - 29, "team", 1, 7, 320),
        "other": ActivityCount(today - 29, "other", 4, 0, 0),
    }
    assert await store.count("activity") == 3


async def test_gc_runs_are_kept_newest_first_and_pruned(
    store: MetadataStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gc, "RUNS_KEPT", 3)
    for n in range(5):
        await store.gc_record_run(GCRun(1000.0 + n, 0.5, n % 2 == 1, blobs=n, bytes=n << 40))
    await store.gc_record_run(GCRun(2000.0, 1.0, False, error="x" * 400))
    runs = await store.gc_runs(10)
    assert [(r.started, r.dry_run, r.blobs, r.bytes) for r in runs[1:]] == [
        (1004.0, False, 4, 4 << 40),
        (1003.0, True, 3, 3 << 40),
    ]
    assert runs[0].error == "x" * 300 and runs[0].blobs == 0
    assert [r.started for r in await store.gc_runs(1)] == [2000.0]


async def test_usage_under_mirror_prefixes(store: MetadataStore) -> None:
    await store.link_blobs("hub/library/alpine", [blob(1, 100), blob(2, 20)])
    await store.link_blobs("hub/team/app", [blob(1, 100)])
    await store.link_blobs("hub/x/deep/er", [blob(3, 5)])
    await store.link_blobs("hubble/app", [blob(4, 7)])
    await store.link_blobs("alpine", [blob(5, 1)])
    await store.link_blobs("team/local", [blob(6, 1000)])
    # each object once per owner; the longest prefix wins; `hubble/` is not under `hub/`
    assert await store.usage_under(["hub", "hub/x"], None) == {
        "hub": (2, 120),
        "hub/x": (1, 5),
    }
    # the default upstream: names under no prefix, all of them or those its globs select
    assert await store.usage_under(["hub"], []) == {"hub": (3, 125), "": (3, 1008)}
    assert await store.usage_under(["hub"], ["alpine", "hubble/*"]) == {
        "hub": (3, 125),
        "": (2, 8),
    }
    assert await store.usage_under([], None) == {}
    # Docker Hub: `alpine` is `library/alpine` there; `team/local` is no official image
    assert await store.usage_under(["hub"], ["library/*"], library=True) == {
        "hub": (3, 125),
        "": (1, 1),
    }
    assert await store.usage_under(["hub"], ["library/*"]) == {"hub": (3, 125)}
