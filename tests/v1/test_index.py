"""Section 14 cases 11-28: start a push, image lists, finish, delete (contract 4.3)."""

from __future__ import annotations

import json

from tests.v1.client import Reply, V1Client, assert_error, assert_true, make_chain, new_id
from tests.v1.conftest import ALICE, ALICE_WRONG, BOB


async def test_v1_c11_start_push(v1: V1Client) -> None:
    p, c = new_id(), new_id()
    reply = await v1.start_push("foo/bar", [{"id": p}, {"id": c, "Tag": "latest"}])
    assert reply.status == 200, reply
    assert reply.json() == ""
    token = reply.headers["X-Docker-Token"]
    assert 'repository="foo/bar"' in token
    assert "access=write" in token
    assert not token.lower().startswith("token")
    assert " " not in token
    assert len(reply.headers.getall("X-Docker-Token")) == 1
    assert reply.headers["WWW-Authenticate"].startswith("Token ")
    assert reply.headers["X-Docker-Endpoints"] == v1.host


async def test_v1_c12_start_push_without_slash(v1: V1Client) -> None:
    reply = await v1.call(
        "PUT",
        "/v1/repositories/foo/bar",
        auth="Basic Og==",
        headers={"X-Docker-Token": "true", "Content-Type": "application/json"},
        data=json.dumps([{"id": new_id()}]).encode(),
    )
    assert reply.status == 200, reply
    assert "Location" not in reply.headers
    assert reply.headers["X-Docker-Token"]


async def test_v1_c13_one_component_name_is_library(v1: V1Client) -> None:
    reply = await v1.start_push("busybox", [{"id": new_id(), "Tag": "latest"}])
    assert reply.status == 200, reply
    assert 'repository="library/busybox"' in reply.headers["X-Docker-Token"]


async def test_v1_c14_empty_image_lists(v1: V1Client) -> None:
    assert (await v1.start_push("foo/bar", [])).status == 200
    reply = await v1.call(
        "PUT", "/v1/repositories/foo/bar/", auth="Basic Og==", headers={"X-Docker-Token": "true"}
    )
    assert reply.status == 200, reply
    assert reply.headers["X-Docker-Token"]


async def test_v1_c15_bad_image_lists(v1: V1Client) -> None:
    for body in (b"nope", json.dumps({"id": new_id()}).encode(), b'[{"id":"xyz"}]'):
        reply = await v1.call(
            "PUT",
            "/v1/repositories/foo/bar/",
            auth="Basic Og==",
            headers={"X-Docker-Token": "true", "Content-Type": "application/json"},
            data=body,
        )
        assert_error(reply, 400)
        assert "X-Docker-Token" not in reply.headers


async def test_v1_c16_bad_repository_names(v1: V1Client) -> None:
    for name in ("Foo/bar", "foo/-bar", "a/b/c"):
        reply = await v1.start_push(name, [])
        assert_error(reply, 400, "Invalid repository name")
    # nothing was created
    for name in ("Foo/bar", "foo/-bar"):
        assert (await v1.call("GET", f"/v1/repositories/{name}/tags")).status == 400


async def test_v1_c17_push_needs_credentials(v1a: V1Client) -> None:
    for auth in (None, "Basic Og==", ALICE_WRONG):
        reply = await v1a.start_push("alice/app", [{"id": new_id()}], auth=auth)
        assert_error(reply, 401)
        assert reply.headers["WWW-Authenticate"].startswith("Basic")
        assert "X-Docker-Token" not in reply.headers


async def test_v1_c18_push_elsewhere_is_403_whether_or_not_it_exists(v1a: V1Client) -> None:
    assert (await v1a.start_push("alice/app", [], auth=ALICE)).status == 200
    existing = await v1a.start_push("alice/app", [{"id": new_id()}], auth=BOB)
    missing = await v1a.start_push("alice/nothere", [{"id": new_id()}], auth=BOB)
    assert_error(existing, 403)
    assert_error(missing, 403)
    assert existing.body == missing.body
    assert "X-Docker-Token" not in existing.headers


async def test_v1_c19_image_list(v1: V1Client) -> None:
    p, c = make_chain(2)
    await v1.push_images("foo/bar", [p, c], {"latest": c.id})
    reply = await v1.call(
        "GET", "/v1/repositories/foo/bar/images", headers={"X-Docker-Token": "true"}
    )
    assert reply.status == 200, reply
    listed = reply.json()
    assert isinstance(listed, list)
    assert {entry["id"] for entry in listed} == {p.id, c.id}
    assert all(isinstance(entry, dict) and "Tag" not in entry for entry in listed)
    token = reply.headers["X-Docker-Token"]
    assert "access=read" in token and 'repository="foo/bar"' in token
    assert reply.headers["X-Docker-Endpoints"] == v1.host


async def test_v1_c20_image_list_of_unknown_repository(v1: V1Client) -> None:
    reply = await v1.call(
        "GET", "/v1/repositories/never/made/images", headers={"X-Docker-Token": "true"}
    )
    assert_error(reply, 404)


async def test_v1_c21_private_image_list(v1a: V1Client) -> None:
    assert (await v1a.start_push("alice/app", [], auth=ALICE)).status == 200
    path = "/v1/repositories/alice/app/images"
    headers = {"X-Docker-Token": "true"}
    anonymous = await v1a.call("GET", path, headers=headers)
    assert_error(anonymous, 401)
    assert "X-Docker-Token" not in anonymous.headers
    assert_error(await v1a.call("GET", path, auth=BOB, headers=headers), 403)
    mine = await v1a.call("GET", path, auth=ALICE, headers=headers)
    assert mine.status == 200, mine
    assert "access=read" in mine.headers["X-Docker-Token"]
    missing = await v1a.call("GET", "/v1/repositories/alice/zzz/images", headers=headers)
    assert_error(missing, 401)


async def test_v1_c22_public_image_list_for_anonymous(v1a: V1Client) -> None:
    (image,) = make_chain(1)
    token = await v1a.open_push("library/pub", [image], auth=ALICE)
    await v1a.upload(image, token)
    assert_true(await v1a.put_tag("library/pub", "latest", image.id, token))
    reply = await v1a.call(
        "GET", "/v1/repositories/library/pub/images", headers={"X-Docker-Token": "true"}
    )
    assert reply.status == 200, reply
    assert [entry["id"] for entry in reply.json()] == [image.id]
    token = reply.headers["X-Docker-Token"]
    assert "access=read" in token and 'repository="library/pub"' in token


async def _finish(v1: V1Client, name: str, body: bytes) -> Reply:
    return await v1.call(
        "PUT",
        f"/v1/repositories/{name}/images",
        auth="Basic Og==",
        headers={"X-Docker-Token": "true", "Content-Type": "application/json"},
        data=body,
    )


async def test_v1_c23_finish_push(v1: V1Client) -> None:
    assert (await v1.start_push("foo/bar", [])).status == 200
    reply = await _finish(v1, "foo/bar", b"[]")
    assert reply.status == 204, reply
    assert reply.body == b""


async def test_v1_c24_finish_push_records_checksums(v1: V1Client) -> None:
    p, c = make_chain(2)
    await v1.push_images("foo/bar", [p, c], {"latest": c.id})
    body = json.dumps([{"id": c.id, "checksum": "tarsum+sha256:ab"}]).encode()
    reply = await _finish(v1, "foo/bar", body)
    assert reply.status == 204, reply
    listed = await v1.call("GET", "/v1/repositories/foo/bar/images")
    by_id = {entry["id"]: entry for entry in listed.json()}
    assert by_id[c.id].get("checksum") == "tarsum+sha256:ab", by_id


async def test_v1_c25_finish_push_errors(v1: V1Client) -> None:
    assert (await v1.start_push("foo/bar", [])).status == 200
    assert_error(await _finish(v1, "foo/bar", b"{}"), 400)
    assert_error(await _finish(v1, "no/such", b"[]"), 404)


async def test_v1_c26_delete_repository(v1: V1Client) -> None:
    (image,) = make_chain(1)
    await v1.push_images("foo/bar", [image], {"latest": image.id})
    deleted = await v1.call(
        "DELETE", "/v1/repositories/foo/bar/", headers={"X-Docker-Token": "true"}
    )
    assert_true(deleted)
    assert "access=delete" in deleted.headers["X-Docker-Token"]
    assert deleted.headers["X-Docker-Endpoints"] == v1.host
    assert_error(await v1.call("GET", "/v1/repositories/foo/bar/tags"), 404)
    assert_error(await v1.call("GET", "/v1/repositories/foo/bar/images"), 404)
    assert_error(await v1.call("GET", "/v1/repositories/foo/bar/tags/latest"), 404)
    v2 = await v1.http.get("/v2/foo/bar/tags/list")
    assert v2.status == 404


async def test_v1_c27_delete_aliases(v1: V1Client) -> None:
    for name in ("x/one", "x/two"):
        assert (await v1.start_push(name, [])).status == 200
    assert_true(await v1.call("DELETE", "/v1/repositories/x/one"))
    assert_true(await v1.call("DELETE", "/v1/repositories/x/two/tags"))
    for name in ("x/one", "x/two"):
        assert_error(await v1.call("GET", f"/v1/repositories/{name}/tags"), 404)
    assert_error(await v1.call("DELETE", "/v1/repositories/no/such/"), 404)


async def test_v1_c28_delete_image_list(v1: V1Client) -> None:
    assert (await v1.start_push("foo/baz", [])).status == 200
    reply = await v1.call("DELETE", "/v1/repositories/foo/baz/images")
    assert reply.status == 204, reply
    assert reply.body == b""
