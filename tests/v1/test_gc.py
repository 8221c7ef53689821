"""Garbage collection of what v1 pushes stored (docs/design/gc.md): a v1 repository deleted
frees its images and their layers (unless another repository still uses them), and a child
image pushed onto a parent at the moment the collector is about to take the parent keeps it."""

from __future__ import annotations

from typing import Any

from moorage.api.context import REGISTRY
from moorage.content.gc import Cycle
from tests.v1.client import V1Client, assert_true, make_chain, make_image, sha256
from tests.v1.conftest import blob_stored


async def collector_registry(make_client: Any) -> V1Client:
    return V1Client(await make_client(auth={"mode": "none"}, gc={"interval": 0}))


async def collect(v1: V1Client, pause: Any = None) -> Cycle:
    return await v1.http.app[REGISTRY].collector.cycle(grace=0, pause=pause)


async def test_a_deleted_v1_repository_frees_its_images_and_layers(make_client: Any) -> None:
    v1 = await collector_registry(make_client)
    chain = make_chain(3)
    await v1.push_images("gc/gone", chain, {"latest": chain[-1].id})
    await v1.push("gc/stays", chain[:1], {chain[0].id: ["base"]})  # shares the root
    assert_true(await v1.call("DELETE", "/v1/repositories/gc/gone/"))
    cycle = await collect(v1)
    assert cycle.collected.v1_images == 2  # the root is still gc/stays'
    for image in chain[1:]:
        assert not await blob_stored(v1, sha256(image.layer)), image.id
        assert (await v1.call("GET", f"/v1/images/{image.id}/json")).status == 404
    pulled = await v1.pull("gc/stays", "base")
    assert list(pulled.images) == [chain[0].id]
    assert pulled.images[chain[0].id].layer == chain[0].layer
    assert await blob_stored(v1, sha256(chain[0].layer))


async def test_a_child_pushed_onto_a_parent_being_collected_keeps_it(make_client: Any) -> None:
    v1 = await collector_registry(make_client)
    (parent,) = make_chain(1)
    await v1.push_images("gc/first", [parent], {"latest": parent.id})
    assert_true(await v1.call("DELETE", "/v1/repositories/gc/first/"))
    child = make_image(parent)
    ran: list[bool] = []

    async def pause(stage: str, candidate: tuple[Any, ...]) -> None:
        if stage == "v1" and parent.id in candidate and not ran:
            ran.append(True)
            await v1.push_images("gc/second", [child], {"latest": child.id})

    cycle = await collect(v1, pause)
    assert ran and cycle.collected.v1_images == 0
    pulled = await v1.pull("gc/second", "latest")
    assert sorted(pulled.images) == sorted([parent.id, child.id])
    for image in (parent, child):
        assert pulled.images[image.id].layer == image.layer


async def test_v1_respects_immutable_tags_and_quotas(make_client: Any) -> None:
    v1 = V1Client(
        await make_client(
            auth={"mode": "none"},
            immutable=[{"repository": "rel/*", "tags": ["v*"]}],
            quotas=[{"namespace": "tiny", "bytes": 10}],
        )
    )
    first, second = make_chain(1), make_chain(1)
    await v1.push_images("rel/app", first, {"v1": first[0].id})
    await v1.push("rel/app", second)
    moved = await v1.put_tag("rel/app", "v1", second[0].id, None)
    assert moved.status == 403 and b"immutable" in moved.body
    assert await v1.tag("rel/app", "v1", None) == first[0].id
    gone = await v1.call("DELETE", "/v1/repositories/rel/app/tags/v1")
    assert gone.status == 403
    assert (await v1.call("DELETE", "/v1/repositories/rel/app/")).status == 403
    # Over quota: the tag (which links the layers into the namespace) is refused.
    (image,) = make_chain(1)
    await v1.push("tiny/app", [image])
    refused = await v1.put_tag("tiny/app", "latest", image.id, None)
    assert refused.status == 403 and b"quota" in refused.body
