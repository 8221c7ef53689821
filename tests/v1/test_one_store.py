"""One store for both protocols (contract 11): v1 pushes pull through v2, v2 pushes read
through v1, and a tag moved through either protocol is the tag the other one reads."""

from __future__ import annotations

import json
from pathlib import Path

from tests.images import make_image as make_v2_image
from tests.v1 import v2side
from tests.v1.client import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_LAYER_TAR,
    DOCKER_MANIFEST,
    V1Client,
    assert_error,
    assert_true,
    make_chain,
    make_image,
    sha256,
)


async def test_v1_push_pulls_through_v2(v1: V1Client) -> None:
    root = make_image()
    middle = make_image(root, compress=False)  # a plain tar layer
    top = make_image(middle, cmd="echo hi > /x")
    await v1.push("foo/app", [root, middle, top], {top.id: ["latest"]})
    chain = [root, middle, top]

    status, manifest, media_type = await v2side.get_manifest(v1.http, "foo/app", "latest")
    assert status == 200 and manifest is not None
    assert media_type == DOCKER_MANIFEST == manifest["mediaType"]
    assert manifest["schemaVersion"] == 2
    assert manifest["config"]["mediaType"] == DOCKER_CONFIG
    assert [layer["digest"] for layer in manifest["layers"]] == [i.blob_digest for i in chain]
    assert [layer["size"] for layer in manifest["layers"]] == [i.size for i in chain]
    assert [layer["mediaType"] for layer in manifest["layers"]] == [
        DOCKER_LAYER_GZIP,
        DOCKER_LAYER_TAR,
        DOCKER_LAYER_GZIP,
    ]
    status, config_bytes = await v2side.get_blob(v1.http, "foo/app", manifest["config"]["digest"])
    assert status == 200
    assert sha256(config_bytes) == manifest["config"]["digest"]
    assert len(config_bytes) == manifest["config"]["size"]
    config = json.loads(config_bytes)
    assert config["rootfs"] == {"type": "layers", "diff_ids": [i.diff_id for i in chain]}
    assert [sha256(i.tar) for i in chain] == config["rootfs"]["diff_ids"]
    assert (config["architecture"], config["os"]) == ("amd64", "linux")
    assert len(config["history"]) == 3
    assert config["history"][2]["created_by"] == "/bin/sh -c echo hi > /x"
    for dropped in ("id", "parent", "Size"):
        assert dropped not in config
    for image in chain:
        status, blob = await v2side.get_blob(v1.http, "foo/app", image.blob_digest)
        assert status == 200 and blob == image.layer
    # the manifest is stored once: its digest does not change between reads
    async with v1.http.get("/v2/foo/app/manifests/latest", headers=v2side.ACCEPT) as first:
        digest = first.headers["Docker-Content-Digest"]
        assert sha256(await first.read()) == digest
    async with v1.http.head("/v2/foo/app/manifests/latest", headers=v2side.ACCEPT) as again:
        assert again.headers["Docker-Content-Digest"] == digest
    async with v1.http.get("/v2/foo/app/tags/list") as tags:
        assert (await tags.json())["tags"] == ["latest"]


async def test_v2_push_reads_through_v1(v1: V1Client, tmp_path: Path) -> None:
    image = make_v2_image(tmp_path / "layout", layers=[2000, 70_000, 10], seed=4)
    await v2side.push_image(v1.http, "foo/v2img", "latest", image)
    tags = await v1.call("GET", "/v1/repositories/foo/v2img/tags")
    assert tags.status == 200
    top = tags.json()["latest"]
    ancestry = (await v1.call("GET", f"/v1/images/{top}/ancestry")).json()
    assert len(ancestry) == len(image.layers) == 3
    assert len(set(ancestry)) == 3
    parent = None
    for image_id, blob in zip(reversed(ancestry), image.layers, strict=True):
        meta = await v1.call("GET", f"/v1/images/{image_id}/json")
        assert meta.status == 200
        document = json.loads(meta.body)
        assert document["id"] == image_id
        assert document.get("parent") == parent
        assert meta.headers["X-Docker-Size"] == str(blob.size)
        layer = await v1.call("GET", f"/v1/images/{image_id}/layer")
        assert layer.status == 200 and layer.body == blob.read()
        parent = image_id
    listed = await v1.call("GET", "/v1/repositories/foo/v2img/images")
    assert set(ancestry) <= {entry["id"] for entry in listed.json()}
    # a v1 client pushing on top of it sees its base as already there
    child = make_image(parent_id=top)
    result = await v1.push("foo/v2img", [child], {child.id: ["child"]})
    assert result.uploaded == [child.id]
    status, manifest, _ = await v2side.get_manifest(v1.http, "foo/v2img", "child")
    assert status == 200 and manifest is not None
    assert [layer["digest"] for layer in manifest["layers"]] == [
        *image.layer_digests,
        child.blob_digest,
    ]


async def test_tag_moved_through_v1_is_seen_by_v2(v1: V1Client, tmp_path: Path) -> None:
    v2_image = make_v2_image(tmp_path / "layout", layers=[1000], seed=7)
    first_digest = await v2side.push_image(v1.http, "foo/mix", "latest", v2_image)
    before = (await v1.call("GET", "/v1/repositories/foo/mix/tags/latest")).json()
    p, c = make_chain(2)
    await v1.push("foo/mix", [p, c], {c.id: ["latest"]})
    status, manifest, _ = await v2side.get_manifest(v1.http, "foo/mix", "latest")
    assert status == 200 and manifest is not None
    assert [layer["digest"] for layer in manifest["layers"]] == [p.blob_digest, c.blob_digest]
    # and back: a v2 push moves it again; v1 sees the v2 image's v1 id from before
    assert await v2side.push_image(v1.http, "foo/mix", "latest", v2_image) == first_digest
    assert (await v1.call("GET", "/v1/repositories/foo/mix/tags/latest")).json() == before
    # a v1 tag on the v2-derived image gives v2 the same layers
    assert_true(await v1.put_tag("foo/mix", "again", before, None))
    status, manifest, _ = await v2side.get_manifest(v1.http, "foo/mix", "again")
    assert status == 200 and manifest is not None
    assert [layer["digest"] for layer in manifest["layers"]] == v2_image.layer_digests


async def test_tag_deleted_through_v1_is_gone_from_v2(v1: V1Client) -> None:
    (image,) = make_chain(1)
    await v1.push("foo/app", [image], {image.id: ["latest", "keep"]})
    assert_true(await v1.call("DELETE", "/v1/repositories/foo/app/tags/latest"))
    status, _, _ = await v2side.get_manifest(v1.http, "foo/app", "latest")
    assert status == 404
    status, _, _ = await v2side.get_manifest(v1.http, "foo/app", "keep")
    assert status == 200
    async with v1.http.get("/v2/foo/app/tags/list") as tags:
        assert (await tags.json())["tags"] == ["keep"]


async def test_v1_pull_of_v1_push_keeps_the_pushed_ids(v1: V1Client) -> None:
    p, c = make_chain(2)
    await v1.push("foo/app", [p, c], {c.id: ["latest"]})
    await v2side.get_manifest(v1.http, "foo/app", "latest")  # a v2 read derives nothing new
    pulled = await v1.pull("foo/app")
    assert pulled.tags == {"latest": c.id}
    assert pulled.ancestries[c.id] == [c.id, p.id]


async def test_repository_deleted_through_v1_is_gone_from_v2(v1: V1Client) -> None:
    (image,) = make_chain(1)
    await v1.push("foo/app", [image], {image.id: ["latest"]})
    assert_true(await v1.call("DELETE", "/v1/repositories/foo/app/"))
    status, _, _ = await v2side.get_manifest(v1.http, "foo/app", "latest")
    assert status == 404
    assert_error(await v1.call("GET", "/v1/repositories/foo/app/tags"), 404)
