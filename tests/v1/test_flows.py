"""Section 14 cases 90-96: whole Docker 1.2 flows and the other protocol (contract 7, 11)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from moorage.api.context import SETTINGS
from tests.images import make_image as make_v2_image
from tests.v1 import v2side
from tests.v1.client import (
    DOCKER_MANIFEST,
    EMPTY_BASIC,
    PushResult,
    V1Client,
    V1Image,
    assert_error,
    make_chain,
    sha256,
)


async def _push_busybox(v1: V1Client) -> tuple[list[V1Image], PushResult]:
    p, c = make_chain(2)
    result = await v1.push("busybox", [p, c], {p.id: ["v1"], c.id: ["latest"]})
    return [p, c], result


async def test_v1_c90_docker_push(v1: V1Client) -> None:
    (p, c), result = await _push_busybox(v1)
    steps = [(r.method, r.path, r.status) for r in result.replies]
    assert steps == [
        ("PUT", "/v1/repositories/busybox/", 200),
        ("GET", f"/v1/images/{p.id}/json", 404),
        ("PUT", f"/v1/images/{p.id}/json", 200),
        ("PUT", f"/v1/images/{p.id}/layer", 200),
        ("PUT", f"/v1/images/{p.id}/checksum", 200),
        ("PUT", "/v1/repositories/busybox/tags/v1", 200),
        ("GET", f"/v1/images/{c.id}/json", 404),
        ("PUT", f"/v1/images/{c.id}/json", 200),
        ("PUT", f"/v1/images/{c.id}/layer", 200),
        ("PUT", f"/v1/images/{c.id}/checksum", 200),
        ("PUT", "/v1/repositories/busybox/tags/latest", 200),
        ("PUT", "/v1/repositories/busybox/images", 204),
    ]
    first, *middle, last = result.replies
    assert first.request_headers["Authorization"] == EMPTY_BASIC
    assert last.request_headers["Authorization"] == EMPTY_BASIC
    assert json.loads(first.request_body or b"") == [
        {"id": p.id, "Tag": "v1"},
        {"id": c.id, "Tag": "latest"},
    ]
    assert 'repository="library/busybox"' in result.token
    assert result.endpoints == [v1.host]
    for reply in middle:
        assert reply.request_headers["Authorization"] == f"Token {result.token}"
    assert last.body == b""
    assert result.uploaded == [p.id, c.id] and result.skipped == []


async def test_v1_c91_docker_pull(v1: V1Client) -> None:
    (p, c), _ = await _push_busybox(v1)
    pulled = await v1.pull("busybox")
    assert [(r.method, r.path) for r in pulled.replies[:2]] == [
        ("GET", "/v1/repositories/busybox/images"),
        ("GET", "/v1/repositories/library/busybox/tags"),
    ]
    assert pulled.tags == {"latest": c.id, "v1": p.id}
    assert pulled.ancestries == {c.id: [c.id, p.id], p.id: [p.id]}
    assert list(pulled.images) == [p.id, c.id]  # root first, each once
    for image in (p, c):
        got = pulled.images[image.id]
        assert got.json == image.json
        assert got.size == image.size
        assert got.layer == image.layer
    statuses = {r.status for r in pulled.replies}
    assert statuses <= {200, 206}, pulled.replies
    assert 206 in statuses  # the resumed half of every layer
    token = f"Token {pulled.token}"
    assert all(r.request_headers.get("Authorization") == token for r in pulled.replies[1:])


async def test_v1_c92_repeated_push_uploads_nothing(v1: V1Client) -> None:
    (p, c), _ = await _push_busybox(v1)
    again = await v1.push("busybox", [p, c], {p.id: ["v1"], c.id: ["latest"]})
    steps = [(r.method, r.path.rsplit("/", 1)[-1], r.status) for r in again.replies]
    assert steps == [
        ("PUT", "", 200),
        ("GET", "json", 200),
        ("PUT", "v1", 200),
        ("GET", "json", 200),
        ("PUT", "latest", 200),
        ("PUT", "images", 204),
    ]
    assert again.skipped == [p.id, c.id] and again.uploaded == []


async def test_v1_c93_pull_with_empty_token(v1: V1Client) -> None:
    (p, c), _ = await _push_busybox(v1)
    pulled = await v1.pull("busybox", "latest", index_token=False)
    assert all(r.request_headers.get("Authorization") == "Token " for r in pulled.replies[1:])
    assert pulled.images[c.id].layer == c.layer
    assert pulled.images[p.id].layer == p.layer


async def test_v1_c94_v1_push_then_v2_pull(v1: V1Client) -> None:
    (p, c), _ = await _push_busybox(v1)
    status, manifest, media_type = await v2side.get_manifest(v1.http, "library/busybox", "latest")
    assert status == 200 and manifest is not None
    assert media_type == DOCKER_MANIFEST
    assert [layer["digest"] for layer in manifest["layers"]] == [p.blob_digest, c.blob_digest]
    assert [layer["size"] for layer in manifest["layers"]] == [p.size, c.size]
    status, config = await v2side.get_blob(v1.http, "library/busybox", manifest["config"]["digest"])
    assert status == 200
    assert sha256(config) == manifest["config"]["digest"]
    assert json.loads(config)["rootfs"] == {
        "type": "layers",
        "diff_ids": [p.diff_id, c.diff_id],
    }


async def test_v1_c95_v2_push_then_v1_pull(v1: V1Client, make_client: Any, tmp_path: Path) -> None:
    image = make_v2_image(tmp_path / "layout", layers=[3000, 5000, 200], seed=95)
    await v2side.push_image(v1.http, "foo/v2img", "latest", image)
    first = await v1.pull("foo/v2img")
    second = await v1.pull("foo/v2img", resume=False)
    (top,) = first.tags.values()
    assert second.tags == first.tags
    ancestry = first.ancestries[top]
    assert len(ancestry) == 3 and second.ancestries[top] == ancestry
    blobs = {b.digest: b for b in image.layers}
    for image_id, layer_blob in zip(reversed(ancestry), image.layers, strict=True):
        got = first.images[image_id]
        assert got.layer == layer_blob.read()
        assert got.size == layer_blob.size
        assert json.loads(got.json)["id"] == image_id
        assert sha256(got.layer) in blobs
    assert [i["id"] for i in first.image_list] and set(ancestry) <= {
        i["id"] for i in first.image_list
    }
    # the ids survive a restart
    datadir = v1.http.app[SETTINGS].datadir
    await v1.http.close()
    again = V1Client(await make_client(auth={"mode": "none"}, datadir=datadir))
    third = await again.pull("foo/v2img")
    assert third.tags == first.tags and third.ancestries == first.ancestries


async def test_v1_c96_v2_tag_delete_is_seen_by_v1(v1: V1Client, tmp_path: Path) -> None:
    image = make_v2_image(tmp_path / "layout", layers=[1000], seed=96)
    await v2side.push_image(v1.http, "foo/v2img", "latest", image)
    await v2side.push_image(v1.http, "foo/v2img", "keep", image)
    assert set((await v1.call("GET", "/v1/repositories/foo/v2img/tags")).json()) == {
        "latest",
        "keep",
    }
    async with v1.http.delete("/v2/foo/v2img/manifests/latest") as resp:
        assert resp.status == 202, await resp.text()
    assert_error(await v1.call("GET", "/v1/repositories/foo/v2img/tags/latest"), 404)
    tags = await v1.call("GET", "/v1/repositories/foo/v2img/tags")
    assert tags.status == 200 and set(tags.json()) == {"keep"}
