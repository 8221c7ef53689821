"""Section 14 cases 61-71: tags and repository metadata (contract 4.5)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.images import make_image as make_v2_image
from tests.v1 import v2side
from tests.v1.client import V1Client, V1Image, assert_error, assert_true, make_chain, new_id

DOCKER_UA = "docker/1.2.0 go/go1.3.1 git-commit/abc kernel/3.13.0 os/linux arch/amd64"


@pytest.fixture
async def pushed(v1: V1Client) -> list[V1Image]:
    """P and C complete in foo/bar, no tags yet."""
    p, c = make_chain(2)
    await v1.push_images("foo/bar", [p, c])
    return [p, c]


async def test_v1_c61_put_tag(v1: V1Client, pushed: list[V1Image]) -> None:
    c = pushed[1]
    assert_true(await v1.put_tag("foo/bar", "latest", c.id, None))


async def test_v1_c62_read_tags(v1: V1Client, pushed: list[V1Image]) -> None:
    c = pushed[1]
    assert_true(await v1.put_tag("foo/bar", "latest", c.id, None))
    listed = await v1.call("GET", "/v1/repositories/foo/bar/tags")
    assert listed.status == 200 and listed.json() == {"latest": c.id}
    assert listed.headers["Content-Type"].startswith("application/json")
    single = await v1.call("GET", "/v1/repositories/foo/bar/tags/latest")
    assert single.status == 200 and single.json() == c.id


async def test_v1_c63_one_component_tags(v1: V1Client) -> None:
    (image,) = make_chain(1)
    await v1.push_images("busybox", [image])
    assert_true(await v1.put_tag("busybox", "latest", image.id, None))
    for name in ("library/busybox", "busybox"):
        reply = await v1.call("GET", f"/v1/repositories/{name}/tags")
        assert reply.status == 200 and reply.json() == {"latest": image.id}, name


async def test_v1_c64_tag_names(v1: V1Client, pushed: list[V1Image]) -> None:
    c = pushed[1]
    for bad in (".bad", "-bad", "$x", "a" * 129):
        assert_error(await v1.put_tag("foo/bar", bad, c.id, None), 400)
    for good in ("_ok", "v1.0-rc_1", "a" * 128):
        assert_true(await v1.put_tag("foo/bar", good, c.id, None))
    tags = (await v1.call("GET", "/v1/repositories/foo/bar/tags")).json()
    assert sorted(tags) == sorted(["_ok", "v1.0-rc_1", "a" * 128])


async def test_v1_c65_tag_body_must_be_a_json_string(v1: V1Client, pushed: list[V1Image]) -> None:
    c = pushed[1]
    for body in (c.id.encode(), b"123", b'{"id":"%s"}' % c.id.encode()):
        reply = await v1.call(
            "PUT",
            "/v1/repositories/foo/bar/tags/latest",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        assert_error(reply, 400)
    assert (await v1.call("GET", "/v1/repositories/foo/bar/tags")).json() == {}


async def test_v1_c66_tag_target_must_exist_and_be_complete(
    v1: V1Client, pushed: list[V1Image]
) -> None:
    assert_error(await v1.put_tag("foo/bar", "latest", new_id(), None), 404)
    assert_error(await v1.put_tag("foo/bar", "latest", "xyz", None), 404)
    (uploading,) = make_chain(1)
    assert_true(await v1.put_json(uploading, None))
    assert_error(
        await v1.put_tag("foo/bar", "latest", uploading.id, None),
        400,
        "Image is being uploaded, retry later",
    )
    assert (await v1.call("GET", "/v1/repositories/foo/bar/tags")).json() == {}


async def test_v1_c67_move_tag(v1: V1Client, pushed: list[V1Image]) -> None:
    p, c = pushed
    assert_true(await v1.put_tag("foo/bar", "latest", c.id, None))
    assert_true(await v1.put_tag("foo/bar", "latest", p.id, None))
    assert (await v1.call("GET", "/v1/repositories/foo/bar/tags/latest")).json() == p.id


async def test_v1_c68_tag_creates_repository(v1: V1Client, pushed: list[V1Image]) -> None:
    assert_error(await v1.call("GET", "/v1/repositories/new/repo/tags"), 404)
    assert_true(await v1.put_tag("new/repo", "t", pushed[1].id, None))
    reply = await v1.call("GET", "/v1/repositories/new/repo/tags")
    assert reply.status == 200 and reply.json() == {"t": pushed[1].id}


async def test_v1_c69_unknown_repository_and_tag(v1: V1Client, pushed: list[V1Image]) -> None:
    assert_error(await v1.call("GET", "/v1/repositories/never/made/tags"), 404)
    assert_error(await v1.call("GET", "/v1/repositories/foo/bar/tags/nothere"), 404)


async def test_v1_c70_delete_tag(v1: V1Client, pushed: list[V1Image]) -> None:
    p, c = pushed
    assert_true(await v1.put_tag("foo/bar", "latest", c.id, None))
    assert_true(await v1.put_tag("foo/bar", "keep", p.id, None))
    assert_true(await v1.call("DELETE", "/v1/repositories/foo/bar/tags/latest"))
    assert_error(await v1.call("GET", "/v1/repositories/foo/bar/tags/latest"), 404)
    assert (await v1.call("GET", "/v1/repositories/foo/bar/tags")).json() == {"keep": p.id}
    assert_error(await v1.call("DELETE", "/v1/repositories/foo/bar/tags/latest"), 404)
    # image data is untouched
    assert (await v1.call("GET", f"/v1/images/{c.id}/json")).status == 200


async def test_v1_c71_tag_and_repository_metadata(v1: V1Client, pushed: list[V1Image]) -> None:
    c = pushed[1]
    reply = await v1.call(
        "PUT",
        "/v1/repositories/foo/bar/tags/latest",
        data=f'"{c.id}"'.encode(),
        headers={"Content-Type": "application/json"},
        user_agent=DOCKER_UA,
    )
    assert_true(reply)
    meta = await v1.call("GET", "/v1/repositories/foo/bar/tags/latest/json")
    assert meta.status == 200, meta
    body = meta.json()
    assert body["docker_version"] == "1.2.0"
    assert body["docker_go_version"] == "go1.3.1"
    assert body["kernel"] == "3.13.0"
    assert body["os"] == "linux" and body["arch"] == "amd64"
    assert isinstance(body["last_update"], int) and not isinstance(body["last_update"], bool)
    repository = await v1.call("GET", "/v1/repositories/foo/bar/json")
    assert repository.status == 200 and isinstance(repository.json(), dict)


async def test_tag_metadata_belongs_to_its_registry(
    v1: V1Client, make_client: Any, tmp_path: Path
) -> None:
    """4.5.5: the metadata is that of the `PUT tags/T` that last set the tag in this registry;
    where nothing was recorded the body is the default object. A second registry (its own
    data directory) whose tag was only ever written through v2 has nothing recorded."""
    p, c = make_chain(2)
    await v1.push_images("foo/bar", [p, c])
    reply = await v1.call(
        "PUT",
        "/v1/repositories/foo/bar/tags/latest",
        data=f'"{c.id}"'.encode(),
        headers={"Content-Type": "application/json"},
        user_agent=DOCKER_UA,
    )
    assert_true(reply)
    other = V1Client(await make_client(auth={"mode": "none"}))
    image = make_v2_image(tmp_path / "layout", layers=[100], seed=71)
    await v2side.push_image(other.http, "foo/bar", "latest", image)
    meta = await other.call("GET", "/v1/repositories/foo/bar/tags/latest/json")
    assert meta.status == 200
    assert meta.json() == {
        "last_update": None,
        "docker_version": None,
        "docker_go_version": None,
        "arch": "amd64",
        "os": "linux",
        "kernel": None,
    }
