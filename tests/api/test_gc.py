"""Online garbage collection (docs/design/gc.md) through the API: what a cycle frees, what it
keeps, and each race of the design note, run at the racy point with the collector paused
there (`pause`), on the embedded default and (MOORAGE_TEST_BACKEND=scaleout) on PostgreSQL +
S3. Rule under test: an acknowledged push never loses a byte."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from moorage.api.context import REGISTRY
from moorage.content.gc import Cycle
from tests.api.helpers import (
    OCI_CONFIG,
    OCI_INDEX,
    Client,
    Image,
    assert_error,
    descriptor,
    encode,
    make_config,
    make_oci_index,
    make_oci_manifest,
    push_artifact,
    push_blob,
    push_image,
    push_manifest,
    put_manifest,
    random_bytes,
    sha256,
    stored_copies,
)

MakeClient = Callable[..., Awaitable[Client]]


@pytest.fixture
def auth_mode() -> str:
    return "none"


class pause_at:
    """A pause that runs `during` once, when the collector is about to delete `digest` (or
    the first of a set) at `stage`: found unreferenced, not yet locked and checked again."""

    def __init__(
        self, stage: str, digest: str | set[str], during: Callable[[], Awaitable[None]]
    ) -> None:
        self.stage, self.during = stage, during
        self.digests = {digest} if isinstance(digest, str) else digest
        self.ran = False

    async def __call__(self, stage: str, candidate: tuple[Any, ...]) -> None:
        if stage == self.stage and self.digests & set(candidate) and not self.ran:
            self.ran = True
            await self.during()


async def registry(make_client: MakeClient, untagged: str = "keep") -> Client:
    # interval 0: no cycle of the server's own; each test runs them.
    return await make_client(gc={"grace": "1h", "interval": 0, "untagged": untagged})


async def collect(client: Client, grace: float = 0, pause: pause_at | None = None) -> Cycle:
    return await client.app[REGISTRY].collector.cycle(grace=grace, pause=pause)


async def pullable(client: Client, repo: str, image: Image) -> None:
    resp = await client.get(f"/v2/{repo}/manifests/{image.digest}")
    assert resp.status == 200 and await resp.read() == image.body
    for blob in [image.config, *image.layers]:
        resp = await client.get(f"/v2/{repo}/blobs/{sha256(blob)}")
        assert resp.status == 200, sha256(blob)
        assert await resp.read() == blob


async def test_a_deleted_image_is_freed(make_client: MakeClient) -> None:
    client = await registry(make_client)
    image = await push_image(client, "gc/app", "v1", layers=2)
    kept = await push_image(client, "gc/app", "v2", layers=1)
    assert (await client.delete(f"/v2/gc/app/manifests/{image.digest}")).status == 202
    cycle = await collect(client)
    assert cycle.collected.links == 3 and cycle.collected.blobs == 3
    assert cycle.objects_deleted == 3
    assert cycle.collected.bytes == sum(len(b) for b in [image.config, *image.layers])
    for blob in [image.config, *image.layers]:
        assert await stored_copies(client, blob) == 0
        resp = await client.get(f"/v2/gc/app/blobs/{sha256(blob)}")
        await assert_error(resp, 404, "BLOB_UNKNOWN")
    await pullable(client, "gc/app", kept)
    # A second cycle finds nothing left.
    again = await collect(client)
    assert (again.collected.blobs, again.objects_deleted) == (0, 0)


async def test_nothing_is_freed_inside_the_grace_period(make_client: MakeClient) -> None:
    client = await registry(make_client)
    image = await push_image(client, "gc/app", "v1")
    orphan = random_bytes(300)
    await push_blob(client, "gc/app", orphan)  # uploaded, never referenced
    assert (await client.delete(f"/v2/gc/app/manifests/{image.digest}")).status == 202
    cycle = await collect(client, grace=3600)
    assert (cycle.collected.links, cycle.collected.blobs) == (0, 0)
    assert await stored_copies(client, orphan) == 1
    assert await stored_copies(client, image.layers[0]) == 1
    cycle = await collect(client)
    assert cycle.collected.blobs == 3  # config, layer, orphan
    assert await stored_copies(client, orphan) == 0


async def test_a_layer_shared_with_another_repository_stays(make_client: MakeClient) -> None:
    client = await registry(make_client)
    shared = random_bytes(500)
    images = []
    for repo in ("gc/one", "gc/two"):
        config = make_config()
        await push_blob(client, repo, config)
        await push_blob(client, repo, shared)
        body = encode(make_oci_manifest(descriptor(config, OCI_CONFIG), [descriptor(shared)]))
        digest = await push_manifest(client, repo, "latest", body)
        images.append(Image(digest, body, config, [shared]))
    assert (await client.delete(f"/v2/gc/one/manifests/{images[0].digest}")).status == 202
    cycle = await collect(client)
    assert cycle.collected.links == 2  # gc/one's config and layer links
    assert cycle.collected.blobs == 1  # only gc/one's config: the layer is gc/two's too
    assert await stored_copies(client, shared) == 1
    await pullable(client, "gc/two", images[1])
    resp = await client.get(f"/v2/gc/one/blobs/{sha256(shared)}")
    await assert_error(resp, 404, "BLOB_UNKNOWN")


@pytest.mark.parametrize("untagged", ["keep", "collect"])
async def test_untagged_manifests_follow_the_policy(make_client: MakeClient, untagged: str) -> None:
    client = await registry(make_client, untagged)
    old = await push_image(client, "gc/app", "latest")
    new = await push_image(client, "gc/app", "latest")  # moves the tag: `old` is untagged
    cycle = await collect(client)
    await pullable(client, "gc/app", new)
    if untagged == "keep":
        assert cycle.collected.manifests == 0
        await pullable(client, "gc/app", old)
    else:
        assert cycle.collected.manifests == 1
        assert cycle.collected.repositories["gc/app"].manifests == 1
        resp = await client.get(f"/v2/gc/app/manifests/{old.digest}")
        await assert_error(resp, 404, "MANIFEST_UNKNOWN")
        assert await stored_copies(client, old.layers[0]) == 0


async def test_an_index_keeps_its_children_and_a_subject_its_referrers(
    make_client: MakeClient,
) -> None:
    client = await registry(make_client, "collect")
    children = [await push_image(client, "gc/multi", None) for _ in range(2)]
    index = encode(make_oci_index([c.descriptor for c in children]))
    index_digest = await push_manifest(client, "gc/multi", "latest", index, OCI_INDEX)
    signature, _ = await push_artifact(client, "gc/multi", children[0].descriptor)
    cycle = await collect(client)
    assert (cycle.collected.manifests, cycle.collected.blobs) == (0, 0)
    for child in children:
        await pullable(client, "gc/multi", child)
    assert (await client.get(f"/v2/gc/multi/manifests/{signature}")).status == 200

    # Deleting the index: its children go, and with the first child its signature.
    assert (await client.delete(f"/v2/gc/multi/manifests/{index_digest}")).status == 202
    cycle = await collect(client)
    assert cycle.collected.manifests == 3
    for digest in (children[0].digest, children[1].digest, signature):
        resp = await client.get(f"/v2/gc/multi/manifests/{digest}")
        await assert_error(resp, 404, "MANIFEST_UNKNOWN")
    assert await stored_copies(client, children[1].layers[0]) == 0


async def test_a_dry_run_reports_exactly_and_changes_nothing(make_client: MakeClient) -> None:
    client = await registry(make_client, "collect")
    image = await push_image(client, "gc/app", "v1", layers=2)
    await push_image(client, "gc/app", "v1")  # `image` is untagged now
    collector = client.app[REGISTRY].collector
    dry = await collector.cycle(grace=0, dry_run=True)
    assert dry.dry_run and dry.objects_deleted == 0
    assert dry.collected.manifests == 1 and dry.collected.blobs == 3
    assert dry.collected.bytes == sum(len(b) for b in [image.config, *image.layers])
    await pullable(client, "gc/app", image)
    real = await collect(client)
    assert real.summary() | {"dry_run": True, "objects_deleted": 0, "seconds": 0} == (
        dry.summary() | {"seconds": 0}
    )


class Stop(Exception):
    pass


class Watch:
    """A cycle's `progress`: records each (stage, done); raises Stop as `stop_at` starts."""

    def __init__(self, stop_at: str | None = None) -> None:
        self.calls: list[tuple[str, int]] = []
        self.stop_at = stop_at

    def __call__(self, stage: str, done: int) -> None:
        if stage == self.stop_at:
            raise Stop()
        self.calls.append((stage, done))


async def test_progress_sees_each_stage_and_can_stop_the_cycle(make_client: MakeClient) -> None:
    """`progress` is told where each stage is; raising from it stops a dry run with nothing
    changed, and a real cycle between two deletions, the next cycle doing the rest."""
    client = await registry(make_client, "collect")
    image = await push_image(client, "gc/app", "v1", layers=2)
    await push_image(client, "gc/app", "v1")  # `image` is untagged now
    collector = client.app[REGISTRY].collector
    watch = Watch()
    await collector.cycle(grace=0, dry_run=True, progress=watch)
    assert watch.calls == [
        ("manifests", 0), ("manifests", 1), ("v1", 0), ("v1", 0),
        ("links", 0), ("links", 3), ("blobs", 0), ("blobs", 3),
    ]  # fmt: skip
    with pytest.raises(Stop):
        await collector.cycle(grace=0, dry_run=True, progress=Watch(stop_at="blobs"))
    await pullable(client, "gc/app", image)  # the manifest and links it had deleted are back

    with pytest.raises(Stop):
        await collector.cycle(grace=0, progress=Watch(stop_at="links"))
    resp = await client.get(f"/v2/gc/app/manifests/{image.digest}")
    await assert_error(resp, 404, "MANIFEST_UNKNOWN")  # deleted before the stop, and whole
    for blob in [image.config, *image.layers]:
        assert await stored_copies(client, blob) == 1  # their links were not reached
    watch = Watch()
    rest = await collector.cycle(grace=0, progress=watch)
    assert rest.collected.manifests == 0 and rest.collected.links == 3
    assert rest.objects_deleted == 3 and watch.calls[-2:] == [("objects", 0), ("objects", 3)]
    for blob in [image.config, *image.layers]:
        assert await stored_copies(client, blob) == 0


async def test_an_upload_in_progress_is_not_touched(make_client: MakeClient) -> None:
    client = await registry(make_client)
    data = random_bytes(4000)
    resp = await client.post("/v2/gc/app/blobs/uploads/")
    location = resp.headers["Location"]
    resp = await client.patch(
        location, data=data[:1000], headers={"Content-Type": "application/octet-stream"}
    )
    assert resp.status == 202
    await collect(client)
    location = resp.headers["Location"]
    sep = "&" if "?" in location else "?"
    resp = await client.put(
        f"{location}{sep}digest={sha256(data)}",
        data=data[1000:],
        headers={"Content-Type": "application/octet-stream"},
    )
    assert resp.status == 201, await resp.text()
    assert await (await client.get(f"/v2/gc/app/blobs/{sha256(data)}")).read() == data


# -- the races of docs/design/gc.md -------------------------------------------------------


async def test_a_manifest_put_while_its_layer_link_is_collected(make_client: MakeClient) -> None:
    """The link is found unreferenced; before the collector locks it, a manifest naming it
    is pushed: the collector's check under the lock sees the reference and keeps it."""
    client = await registry(make_client)
    config, layer = make_config(), random_bytes(700)
    await push_blob(client, "gc/app", config)
    await push_blob(client, "gc/app", layer)
    body = encode(make_oci_manifest(descriptor(config, OCI_CONFIG), [descriptor(layer)]))
    digest: list[str] = []

    async def push() -> None:
        digest.append(await push_manifest(client, "gc/app", "latest", body))

    pause = pause_at("links", {sha256(config), sha256(layer)}, push)
    cycle = await collect(client, pause=pause)
    assert pause.ran and cycle.collected.links == 0 and cycle.collected.blobs == 0
    await pullable(client, "gc/app", Image(digest[0], body, config, [layer]))


async def test_a_manifest_put_after_its_layer_was_collected_is_refused(
    make_client: MakeClient,
) -> None:
    """The other order: the collector deleted the link first. The manifest is refused
    (MANIFEST_BLOB_UNKNOWN) and nothing of it is stored; the client pushes the layer again."""
    client = await registry(make_client)
    config, layer = make_config(), random_bytes(700)
    await push_blob(client, "gc/app", config)
    await push_blob(client, "gc/app", layer)
    await collect(client)
    body = encode(make_oci_manifest(descriptor(config, OCI_CONFIG), [descriptor(layer)]))
    resp = await put_manifest(client, "gc/app", "latest", body)
    await assert_error(resp, 400, "MANIFEST_BLOB_UNKNOWN")
    await assert_error(await client.get("/v2/gc/app/manifests/latest"), 404)
    await push_blob(client, "gc/app", config)
    await push_blob(client, "gc/app", layer)
    digest = await push_manifest(client, "gc/app", "latest", body)
    await pullable(client, "gc/app", Image(digest, body, config, [layer]))


async def test_a_mount_of_a_blob_being_collected(make_client: MakeClient) -> None:
    """The source repository's link is about to be collected when another repository
    mounts the blob: the mount's link keeps the blob; the source's link goes."""
    client = await registry(make_client)
    layer = random_bytes(900)
    await push_blob(client, "gc/source", layer)

    async def mount() -> None:
        query = f"mount={sha256(layer)}&from=gc/source"
        resp = await client.post(f"/v2/gc/target/blobs/uploads/?{query}")
        assert resp.status == 201, await resp.text()

    pause = pause_at("links", sha256(layer), mount)
    cycle = await collect(client, grace=0, pause=pause)
    # The source's link goes (nothing references it); the target's was made after the
    # cycle's cutoff, so it is inside its grace period, and it keeps the blob.
    assert pause.ran and cycle.collected.links == 1 and cycle.collected.blobs == 0
    resp = await client.get(f"/v2/gc/target/blobs/{sha256(layer)}")
    assert resp.status == 200 and await resp.read() == layer


async def test_a_mount_after_the_blob_was_collected_falls_back_to_an_upload(
    make_client: MakeClient,
) -> None:
    client = await registry(make_client)
    layer = random_bytes(900)
    await push_blob(client, "gc/source", layer)
    await collect(client)
    query = f"mount={sha256(layer)}&from=gc/source"
    resp = await client.post(f"/v2/gc/target/blobs/uploads/?{query}")
    assert resp.status == 202  # an upload session instead, as the spec allows


async def test_an_upload_of_content_whose_old_copy_is_being_collected(
    make_client: MakeClient,
) -> None:
    """The blob row is about to be collected when the same content is pushed again: the new
    upload links the stored copy (the collector then keeps it), or, if the collector got
    there first, commits its own. Either way the pushed blob is pullable afterwards."""
    client = await registry(make_client)
    layer = random_bytes(1500)
    await push_blob(client, "gc/old", layer)
    assert (await client.delete(f"/v2/gc/old/blobs/{sha256(layer)}")).status == 202

    async def push_again() -> None:
        await push_blob(client, "gc/new", layer)

    pause = pause_at("blobs", sha256(layer), push_again)
    cycle = await collect(client, pause=pause)
    assert pause.ran and cycle.collected.blobs == 0
    resp = await client.get(f"/v2/gc/new/blobs/{sha256(layer)}")
    assert resp.status == 200 and await resp.read() == layer
    assert await stored_copies(client, layer) == 1


@pytest.mark.parametrize("object_deleted", [False, True], ids=["object-there", "object-gone"])
async def test_an_upload_while_the_old_copy_waits_to_be_deleted(
    make_client: MakeClient, object_deleted: bool
) -> None:
    """The collector deleted the blob row and queued its object, then stopped (a crash)
    before deleting it, or after deleting it but before forgetting the queue entry. The same
    content pushed now must not be recorded at the queued key (on a filesystem, its
    content-addressed path): the queued deletion runs later and the new blob stays whole."""
    client = await registry(make_client)
    registry_ = client.app[REGISTRY]
    layer = random_bytes(1500)
    await push_blob(client, "gc/old", layer)
    assert (await client.delete(f"/v2/gc/old/blobs/{sha256(layer)}")).status == 202
    # The metadata step alone: the objects' step never ran.
    collected = await registry_.metadata.gc_collect(time.time(), untagged=False)
    assert collected.blobs == 1 and len(collected.keys) == 1
    if object_deleted:
        await registry_.blobs.storage.delete(collected.keys[0])
    await push_blob(client, "gc/new", layer)
    row = await registry_.metadata.blob(sha256(layer))
    assert row is not None and row.storage_key not in collected.keys
    assert await registry_.collector.delete_objects() == 1
    resp = await client.get(f"/v2/gc/new/blobs/{sha256(layer)}")
    assert resp.status == 200 and await resp.read() == layer


async def test_a_tag_moved_back_onto_a_manifest_being_collected(make_client: MakeClient) -> None:
    client = await registry(make_client, "collect")
    first = await push_image(client, "gc/app", "latest", layers=2)
    await push_image(client, "gc/app", "latest")  # `first` is untagged

    async def move_back() -> None:
        await push_manifest(client, "gc/app", "latest", first.body)

    pause = pause_at("manifests", first.digest, move_back)
    cycle = await collect(client, pause=pause)
    assert pause.ran
    assert cycle.collected.repositories.get("gc/app") is None or (
        cycle.collected.repositories["gc/app"].manifests == 0
    )
    resp = await client.get("/v2/gc/app/manifests/latest")
    assert resp.headers["Docker-Content-Digest"] == first.digest
    await pullable(client, "gc/app", first)


async def test_two_collectors_at_once_delete_each_thing_once(make_client: MakeClient) -> None:
    client = await registry(make_client)
    images = [await push_image(client, "gc/app", f"t{i}", layers=2) for i in range(4)]
    for image in images:
        assert (await client.delete(f"/v2/gc/app/manifests/{image.digest}")).status == 202
    one, two = await asyncio.gather(collect(client), collect(client))
    assert one.collected.blobs + two.collected.blobs == 12
    assert one.objects_deleted + two.objects_deleted == 12
    for image in images:
        assert await stored_copies(client, image.layers[0]) == 0
