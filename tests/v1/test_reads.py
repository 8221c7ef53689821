"""Section 14 cases 50-60: image reads (contract 4.4.1, 4.4.5, 4.4.6)."""

from __future__ import annotations

import pytest

from tests.v1.client import V1Client, V1Image, assert_error, make_chain, new_id


@pytest.fixture
async def pushed(v1: V1Client) -> list[V1Image]:
    p, c = make_chain(2)
    await v1.push_images("foo/bar", [p, c], {"latest": c.id})
    return [p, c]


async def test_v1_c50_ancestry(v1: V1Client, pushed: list[V1Image]) -> None:
    p, c = pushed
    child = await v1.call("GET", f"/v1/images/{c.id}/ancestry")
    assert child.status == 200 and child.json() == [c.id, p.id]
    assert child.headers["Content-Type"].startswith("application/json")
    root = await v1.call("GET", f"/v1/images/{p.id}/ancestry")
    assert root.status == 200 and root.json() == [p.id]


async def test_v1_c51_layer(v1: V1Client, pushed: list[V1Image]) -> None:
    p = pushed[0]
    reply = await v1.call("GET", f"/v1/images/{p.id}/layer")
    assert reply.status == 200
    assert reply.body == p.layer
    assert reply.headers["Accept-Ranges"] == "bytes"
    assert reply.headers["Content-Length"] == str(p.size)
    assert reply.headers["Content-Type"] == "application/octet-stream"


async def test_v1_c52_closed_range(v1: V1Client, pushed: list[V1Image]) -> None:
    p = pushed[0]
    reply = await v1.call("GET", f"/v1/images/{p.id}/layer", headers={"Range": "bytes=10-19"})
    assert reply.status == 206
    assert reply.headers["Content-Range"] == f"bytes 10-19/{p.size}"
    assert reply.headers["Content-Length"] == "10"
    assert reply.body == p.layer[10:20]


async def test_v1_c53_open_range(v1: V1Client, pushed: list[V1Image]) -> None:
    p = pushed[0]
    reply = await v1.call("GET", f"/v1/images/{p.id}/layer", headers={"Range": "bytes=10-"})
    assert reply.status == 206
    assert reply.headers["Content-Range"] == f"bytes 10-{p.size - 1}/{p.size}"
    assert reply.body == p.layer[10:]
    assert len(reply.body) == p.size - 10


async def test_v1_c54_docker_resume_range(v1: V1Client, pushed: list[V1Image]) -> None:
    p = pushed[0]
    n = p.size
    reply = await v1.call("GET", f"/v1/images/{p.id}/layer", headers={"Range": f"bytes=10-{n}"})
    assert reply.status == 206
    assert reply.headers["Content-Range"] == f"bytes 10-{n - 1}/{n}"
    assert reply.headers["Content-Length"] == str(n - 10)
    assert reply.body == p.layer[10:]


async def test_v1_c55_range_at_the_end(v1: V1Client, pushed: list[V1Image]) -> None:
    p = pushed[0]
    n = p.size
    reply = await v1.call("GET", f"/v1/images/{p.id}/layer", headers={"Range": f"bytes={n}-{n}"})
    assert reply.status == 416
    assert reply.headers["Content-Range"] == f"bytes */{n}"
    assert reply.headers["Content-Length"] == "0"
    assert reply.body == b""


async def test_v1_c56_suffix_and_one_byte_ranges(v1: V1Client, pushed: list[V1Image]) -> None:
    p = pushed[0]
    path = f"/v1/images/{p.id}/layer"
    suffix = await v1.call("GET", path, headers={"Range": "bytes=-5"})
    assert suffix.status == 206 and suffix.body == p.layer[-5:]
    assert suffix.headers["Content-Range"] == f"bytes {p.size - 5}-{p.size - 1}/{p.size}"
    one = await v1.call("GET", path, headers={"Range": "bytes=0-0"})
    assert one.status == 206 and one.body == p.layer[:1]
    assert one.headers["Content-Range"] == f"bytes 0-0/{p.size}"


async def test_v1_c57_ignored_ranges(v1: V1Client, pushed: list[V1Image]) -> None:
    p = pushed[0]
    for value in ("items=0-1", "bytes=5-2", "bytes=0-1,4-5"):
        reply = await v1.call("GET", f"/v1/images/{p.id}/layer", headers={"Range": value})
        assert reply.status == 200, (value, reply)
        assert reply.body == p.layer
        assert "Content-Range" not in reply.headers


async def test_v1_c58_unknown_image(v1: V1Client) -> None:
    unknown = new_id()
    for part in ("json", "ancestry", "layer"):
        assert_error(await v1.call("GET", f"/v1/images/{unknown}/{part}"), 404)


async def test_v1_c59_if_modified_since(v1: V1Client, pushed: list[V1Image]) -> None:
    p = pushed[0]
    since = {"If-Modified-Since": "Thu, 01 Jan 2015 00:00:00 GMT"}
    reply = await v1.call("GET", f"/v1/images/{p.id}/json", headers=since)
    assert reply.status == 304
    assert reply.body == b""
    assert "max-age" in reply.headers["Cache-Control"]
    assert_error(await v1.call("GET", f"/v1/images/{new_id()}/json", headers=since), 404)


async def test_v1_c60_head_layer_and_cache_headers(v1: V1Client, pushed: list[V1Image]) -> None:
    p = pushed[0]
    head = await v1.call("HEAD", f"/v1/images/{p.id}/layer")
    assert head.status == 200
    assert head.headers["Content-Length"] == str(p.size)
    assert head.body == b""
    meta = await v1.call("GET", f"/v1/images/{p.id}/json")
    assert "max-age" in meta.headers["Cache-Control"]
    assert meta.headers["Last-Modified"] == "Thu, 01 Jan 1970 00:00:00 GMT"
    assert meta.headers["Expires"]
