"""Bad input from the contract's tables (sections 3, 4.4.2, 4.4.3, 4.4.4) beyond the numbered
cases, and the rule behind all of them: a refused or broken upload leaves nothing half stored,
nothing readable through v1, nothing visible through v2."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import lzma
import secrets

import pytest

from moorage.api import direct
from moorage.api.context import V1
from moorage.app import IN_FLIGHT
from tests.images import gzip_bytes
from tests.v1.client import (
    V1Client,
    V1Image,
    assert_error,
    assert_true,
    make_chain,
    make_image,
    new_id,
    payload_checksum,
    raw_exchange,
    token_auth,
)
from tests.v1.conftest import ALICE, BOB, blob_stored, staged_uploads, stored, v2_status

BEING_UPLOADED = "Image is being uploaded, retry later"
ROUTES = [
    ("GET", "json"),
    ("GET", "layer"),
    ("GET", "ancestry"),
    ("PUT", "layer"),
    ("PUT", "checksum"),
]


async def _assert_not_served(v1: V1Client, image: V1Image, repository: str = "foo/bar") -> None:
    """Not pullable through v1 (json, ancestry, layer, image list, tag) nor v2 (blob)."""
    for part in ("json", "ancestry", "layer"):
        reply = await v1.call("GET", f"/v1/images/{image.id}/{part}")
        assert reply.status in (400, 404), reply
    listed = await v1.call("GET", f"/v1/repositories/{repository}/images")
    if listed.status == 200:
        assert image.id not in [entry["id"] for entry in listed.json()]
    tag = await v1.put_tag(repository, "half", image.id, None)
    assert tag.status in (400, 404), tag
    tags = await v1.call("GET", f"/v1/repositories/{repository}/tags")
    assert "half" not in (tags.json() if tags.status == 200 else {})
    for method in ("HEAD", "GET"):
        status = await v2_status(v1, method, f"/v2/{repository}/blobs/{image.blob_digest}")
        assert status == 404
    assert await v2_status(v1, "GET", f"/v2/{repository}/manifests/half") == 404


# -- section 3: URLs, names, responses ---------------------------------------------------


async def test_trailing_slash_forms(v1: V1Client) -> None:
    (image,) = make_chain(1)
    await v1.push_images("foo/bar", [image])
    assert_true(await v1.put_tag("foo/bar", "latest", image.id, None))
    for path in (
        "/v1/repositories/foo/bar/tags",
        "/v1/repositories/foo/bar/tags/",
        "/v1/repositories/foo/bar/images/",
        "/v1/repositories/foo/bar/tags/latest/",
    ):
        reply = await v1.call("GET", path)
        assert reply.status == 200, (path, reply)


async def test_head_is_get_without_a_body(v1: V1Client) -> None:
    (image,) = make_chain(1)
    await v1.push_images("foo/bar", [image], {"latest": image.id})
    for path in (
        "/v1/repositories/foo/bar/tags",
        "/v1/repositories/foo/bar/tags/latest",
        "/v1/repositories/foo/bar/images",
        f"/v1/images/{image.id}/json",
        f"/v1/images/{image.id}/ancestry",
        f"/v1/images/{image.id}/layer",
        f"/v1/images/{new_id()}/json",
        "/v1/repositories/no/such/tags",
    ):
        got = await v1.call("GET", path)
        head = await v1.call("HEAD", path)
        assert head.status == got.status, path
        assert head.body == b"", path
        for name in ("Content-Type", "X-Docker-Size", "Content-Length", "Accept-Ranges"):
            assert head.headers.get(name) == got.headers.get(name), (path, name)


async def test_unknown_paths_and_methods(v1: V1Client) -> None:
    (image,) = make_chain(1)
    for path in ("/v1/", "/v1/images", f"/v1/images/{image.id}/nope", f"/v1/images/{image.id}"):
        assert_error(await v1.call("GET", path), 404)
    for method, path in (
        ("DELETE", f"/v1/images/{image.id}/json"),
        ("GET", f"/v1/images/{image.id}/checksum"),
        ("POST", "/v1/repositories/foo/bar/tags"),
        ("PUT", "/v1/_ping"),
        ("DELETE", "/v1/search"),
    ):
        reply = await v1.call(method, path)
        assert_error(reply, 405, "Method not allowed")
        assert reply.headers.get("Allow"), (method, path)


async def test_invalid_image_ids_on_every_image_route(v1: V1Client) -> None:
    image_id = new_id()
    for bad in (image_id.upper(), image_id[:16], image_id + "0", "g" * 64, "%2E%2E"):
        for method, part in ROUTES:
            reply = await raw_exchange(
                v1.http,
                f"{method} /v1/images/{bad}/{part} HTTP/1.1\r\nHost: {v1.host}\r\n"
                "Connection: close\r\nContent-Length: 0",
            )
            assert reply is not None
            assert_error(reply, 404, "Invalid image ID")


@pytest.mark.parametrize(
    "name",
    ["foo/bar_", "foo/a..b", "_foo/bar", "foo/BAR", "foo/bar-", "a/b/c/d", "foo//bar"],
)
async def test_invalid_repository_names(v1: V1Client, name: str) -> None:
    assert_error(await v1.start_push(name, []), 400, "Invalid repository name")
    assert_error(await v1.call("GET", f"/v1/repositories/{name}/tags"), 400)
    search = (await v1.call("GET", "/v1/search")).json()
    assert search["results"] == []


async def test_malformed_tag_names_on_every_tag_route(v1: V1Client) -> None:
    (image,) = make_chain(1)
    await v1.push_images("foo/bar", [image], {"latest": image.id})
    for method, suffix in (("GET", ""), ("DELETE", ""), ("GET", "/json")):
        reply = await v1.call(method, f"/v1/repositories/foo/bar/tags/.bad{suffix}")
        assert_error(reply, 400)
        assert reply.json()["error"].startswith("Invalid tag name")
    assert (await v1.call("GET", "/v1/repositories/foo/bar/tags")).json() == {"latest": image.id}


async def test_response_conventions(v1: V1Client) -> None:
    (image,) = make_chain(1)
    await v1.push_images("foo/bar", [image], {"b": image.id, "a": image.id})
    tags = await v1.call("GET", "/v1/repositories/foo/bar/tags?ignored=1")
    assert tags.status == 200
    assert tags.body == json.dumps({"a": image.id, "b": image.id}, separators=(",", ":")).encode()
    assert tags.headers["Cache-Control"] == "no-cache"
    assert tags.headers["Pragma"] == "no-cache"
    assert tags.headers["Expires"] == "-1"
    for reply in v1.log:
        assert reply.headers.get("X-Docker-Registry-Version"), reply
        assert "Set-Cookie" not in reply.headers, reply
    missing = await v1.call("GET", "/v1/nope")
    assert missing.headers.get("X-Docker-Registry-Version")


async def test_challenges_by_route_kind(v1a: V1Client) -> None:
    tags = await v1a.call("GET", "/v1/repositories/alice/app/tags")
    assert_error(tags, 401)
    assert tags.headers["WWW-Authenticate"].startswith("Token")
    image = await v1a.call("GET", f"/v1/images/{new_id()}/json")
    assert_error(image, 401)
    assert image.headers["WWW-Authenticate"].startswith("Token")
    index = await v1a.start_push("alice/app", [], auth=None)
    assert_error(index, 401)
    assert index.headers["WWW-Authenticate"].startswith('Basic realm="')


async def test_wrong_password_is_401_even_on_public_data(v1a: V1Client) -> None:
    (pub,) = make_chain(1)
    await v1a.push("library/pub", [pub], {pub.id: ["latest"]}, auth=ALICE)
    wrong = "Basic " + "YWxpY2U6bm9wZQ=="  # alice:nope
    assert_error(await v1a.call("GET", "/v1/repositories/library/pub/tags", auth=wrong), 401)
    assert_error(await v1a.call("GET", f"/v1/images/{pub.id}/json", auth=wrong), 401)
    assert (await v1a.call("GET", "/v1/repositories/library/pub/tags")).status == 200
    assert (await v1a.call("GET", f"/v1/images/{pub.id}/json")).status == 200


async def test_token_access_by_method(v1a: V1Client) -> None:
    (image,) = make_chain(1)
    write = await v1a.open_push("alice/app", [image], auth=ALICE)
    await v1a.upload(image, write)
    assert_true(await v1a.put_tag("alice/app", "latest", image.id, write))
    assert_true(await v1a.put_tag("alice/app", "gone", image.id, write))
    # write also allows GET, not deleting the repository
    assert (await v1a.call("GET", "/v1/repositories/alice/app/tags", auth=write)).status == 200
    assert_error(await v1a.call("DELETE", "/v1/repositories/alice/app/", auth=write), 403)
    # a tag delete with Basic credentials of a writer
    assert_true(await v1a.call("DELETE", "/v1/repositories/alice/app/tags/gone", auth=ALICE))
    deleting = await v1a.call(
        "DELETE",
        "/v1/repositories/alice/app/images",
        auth=ALICE,
        headers={"X-Docker-Token": "true"},
    )
    assert deleting.status == 204, deleting
    delete = token_auth(deleting.headers["X-Docker-Token"])
    assert "access=delete" in delete
    assert_error(await v1a.put_tag("alice/app", "t", image.id, delete), 403)
    assert_true(await v1a.call("DELETE", "/v1/repositories/alice/app/", auth=delete))
    assert_error(await v1a.call("GET", "/v1/repositories/alice/app/tags", auth=ALICE), 404)


async def test_index_body_limit(v1: V1Client) -> None:
    body = b"[" + b" " * (16 * 1024 * 1024) + b"]"
    reply = await v1.call(
        "PUT", "/v1/repositories/foo/bar/", data=body, headers={"X-Docker-Token": "true"}
    )
    assert_error(reply, 413)
    assert_error(await v1.call("GET", "/v1/repositories/foo/bar/tags"), 404)


# -- 4.4.2: PUT json ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (b"\xff\xfe{}", "Invalid JSON"),
        (b'"a string"', "Invalid JSON"),
        (b"null", "Invalid JSON"),
        ({"id": None}, "Missing key `id' in JSON"),
        ({"id": "other"}, "JSON data contains invalid id"),
        ({"parent": 5}, "Invalid JSON"),
        ({"parent": "A" * 64}, "Invalid JSON"),
        ({"created": "yesterday"}, "Invalid JSON"),
        ({"created": "2014-13-45T99:00:00Z"}, "Invalid JSON"),
    ],
)
async def test_put_json_checks(v1: V1Client, change: object, message: str) -> None:
    (image,) = make_chain(1)
    if isinstance(change, bytes):
        body = change
    else:
        document = json.loads(image.json)
        assert isinstance(change, dict)
        for key, value in change.items():
            if key == "id" and value is None:
                del document["id"]
            elif key == "id":
                document["id"] = new_id()
            else:
                document[key] = value
        body = json.dumps(document).encode()
    assert_error(await v1.put_json(image, None, body), 400, message)
    assert await stored(v1, image.id) is None


async def test_put_json_null_parent_or_created(v1: V1Client) -> None:
    """Row 5: `parent` or `created` present but not a string -> 400, null included."""
    for change in ({"parent": None}, {"created": None}):
        (image,) = make_chain(1)
        body = json.dumps(json.loads(image.json) | change).encode()
        assert_error(await v1.put_json(image, None, body), 400, "Invalid JSON")
        assert await stored(v1, image.id) is None


async def test_put_json_keeps_unknown_keys_and_bytes(v1: V1Client) -> None:
    image = make_image(throwaway=True, odd={"ünïcode": [1.50, 1e3, 123456789012345678901234567890]})
    spaced = image.json.replace(b",", b" ,\n ")
    image = V1Image(image.id, None, spaced, image.tar, image.layer)
    await v1.upload(image, None)
    assert (await v1.call("GET", f"/v1/images/{image.id}/json")).body == spaced


async def test_put_json_parent_rules(v1: V1Client) -> None:
    p, c = make_chain(2)
    unknown_parent = make_image(make_image())
    assert_error(
        await v1.put_json(unknown_parent, None), 400, "Image depends on a non existing parent"
    )
    assert_true(await v1.put_json(p, None))
    assert_true(await v1.put_layer(p, None))  # uploaded, not complete
    assert_error(await v1.put_json(c, None), 400, "Image depends on a non existing parent")
    assert_true(await v1.put_checksum(p, None))
    assert_true(await v1.put_json(c, None))
    for image in (unknown_parent, c):
        assert (await v1.call("GET", f"/v1/images/{image.id}/json")).status != 200


async def test_put_json_ancestry_depth_limit(v1: V1Client) -> None:
    (root,) = make_chain(1)
    await v1.upload(root, None)
    # 999 descendants recorded directly (as the server records v2-derived images): pushing
    # them through the protocol would take a minute.
    chain = [root.id] + [new_id() for _ in range(999)]
    rows = [
        {
            "id": image_id,
            "json": json.dumps({"id": image_id, "parent": parent}).encode(),
            "parent": parent,
            "depth": depth,
            "blob_digest": root.blob_digest,
            "size": root.size,
        }
        for depth, (parent, image_id) in enumerate(itertools.pairwise(chain), 2)
    ]
    await v1.http.app[V1].metadata.v1_insert_complete(rows, "foo/deep", "sha256:" + "0" * 64)
    ancestry = await v1.call("GET", f"/v1/images/{chain[-1]}/ancestry")
    assert ancestry.status == 200 and ancestry.json() == chain[::-1]
    too_deep = make_image(image_id=new_id(), parent_id=chain[-1])
    assert_error(await v1.put_json(too_deep, None), 400, "Image ancestry too deep")
    assert await stored(v1, too_deep.id) is None
    deepest = make_image(image_id=new_id(), parent_id=chain[-2])
    assert_true(await v1.put_json(deepest, None))


# -- 4.4.3: PUT layer --------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"hello world",
        lzma.compress(b"x" * 600),
        b"\x28\xb5\x2f\xfd" + bytes(600),
        gzip_bytes(b"not a tar archive at all" * 40),
        gzip_bytes(make_image().tar)[:-40],
        make_image().tar[:700],
    ],
    ids=["text", "xz", "zstd", "gzip-of-text", "truncated-gzip", "truncated-tar"],
)
async def test_put_layer_refused_formats(v1: V1Client, body: bytes) -> None:
    (image,) = make_chain(1)
    assert (await v1.start_push("foo/bar", [{"id": image.id}])).status == 200
    assert_true(await v1.put_json(image, None))
    reply = await v1.put_layer(image, None, body)
    assert_error(reply, 400)
    row = await stored(v1, image.id)
    assert row is not None and row.state == "uploading" and row.blob_digest is None
    assert await staged_uploads(v1) == []
    assert not await blob_stored(v1, "sha256:" + hashlib.sha256(body).hexdigest())
    await _assert_not_served(v1, image)
    assert_error(await v1.put_checksum(image, None), 400, "Image layer not uploaded")


async def test_put_layer_empty_body_is_an_empty_archive(v1: V1Client) -> None:
    """An empty body reads as a tar stream without entries (as Go's reader sees it); the
    image then has an empty layer, served as 200 with an empty body (4.4.5)."""
    (image,) = make_chain(1)
    assert_true(await v1.put_json(image, None))
    assert_true(await v1.put_layer(image, None, b""))
    assert_error(await v1.put_checksum(image, None), 400, "Checksum mismatch")
    assert_true(await v1.put_checksum(image, None, payload=payload_checksum(image.json, b"")))
    meta = await v1.call("GET", f"/v1/images/{image.id}/json")
    assert meta.status == 200 and meta.headers["X-Docker-Size"] == "0"
    layer = await v1.call("GET", f"/v1/images/{image.id}/layer")
    assert layer.status == 200 and layer.body == b""


@pytest.mark.parametrize("blocks", [False, True], ids=["small", "many-blocks"])
async def test_put_layer_shorter_than_content_length(v1: V1Client, blocks: bool) -> None:
    """The client vanishes before its declared length. With many blocks the layer is taken
    from the socket and, on a local filesystem, analysed in lanes behind the receiving, which
    are waited for. Nothing of the layer is kept, and a retry works."""
    if blocks:
        image = make_image(files={f"{i}.bin": secrets.token_bytes(1_500_000) for i in range(7)})
        assert image.size > direct.MIN_LENGTH
    else:
        (image,) = make_chain(1)
    assert_true(await v1.put_json(image, None))
    head = (
        f"PUT /v1/images/{image.id}/layer HTTP/1.1\r\nHost: {v1.host}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {image.size + 1000}"
    )
    in_flight = v1.http.app[IN_FLIGHT]
    served = in_flight.served
    assert await raw_exchange(v1.http, head, image.layer, hang_up=True) is None
    # Until the cut request's handler has ended and what it staged is gone (its deletion is
    # shielded, so it may end just after the handler). Before the handler ends, the staging
    # area can also be empty only because the first bytes are not stored yet.
    for _ in range(200):
        ended = in_flight.served > served and in_flight.active == 0
        if ended and not await staged_uploads(v1):
            break
        await asyncio.sleep(0.05)
    assert in_flight.served > served and in_flight.active == 0
    assert await staged_uploads(v1) == []
    row = await stored(v1, image.id)
    assert row is not None and row.state == "uploading" and row.blob_digest is None
    await _assert_not_served(v1, image)
    await v1.upload(image, None)  # a retry still works


async def test_put_layer_replaced_by_a_second_layer(v1: V1Client) -> None:
    (image,) = make_chain(1)
    other = make_image(image_id=image.id).layer
    assert_true(await v1.put_json(image, None))
    assert_true(await v1.put_layer(image, None, other))
    assert_true(await v1.put_layer(image, None))
    assert_true(await v1.put_checksum(image, None))
    assert (await v1.call("GET", f"/v1/images/{image.id}/layer")).body == image.layer


async def test_put_layer_restarted_by_put_json(v1: V1Client) -> None:
    image = make_image(files={"big.bin": bytes(range(256)) * 8192})
    restarted = make_image(image_id=image.id)
    assert_true(await v1.put_json(image, None))
    halfway = asyncio.Event()
    resume = asyncio.Event()

    async def body() -> object:
        yield image.layer[: image.size // 2]
        halfway.set()
        await resume.wait()
        yield image.layer[image.size // 2 :]

    upload = asyncio.create_task(
        v1.call(
            "PUT",
            f"/v1/images/{image.id}/layer",
            data=body(),
            headers={"Content-Type": "application/octet-stream"},
        )
    )
    await halfway.wait()
    await asyncio.sleep(0.05)
    assert_true(await v1.put_json(restarted, None))
    resume.set()
    assert_error(await upload, 409, "Image upload was restarted")
    row = await stored(v1, image.id)
    assert row is not None and row.state == "uploading" and row.json == restarted.json
    assert row.blob_digest is None
    assert_error(await v1.put_checksum(image, None), 400, "Image layer not uploaded")
    await _assert_not_served(v1, image)
    assert_true(await v1.put_layer(restarted, None))
    assert_true(await v1.put_checksum(restarted, None))


async def test_put_layer_auth(v1a: V1Client) -> None:
    (image,) = make_chain(1)
    alice = await v1a.open_push("alice/app", [image], auth=ALICE)
    assert_true(await v1a.put_json(image, alice))
    assert_error(await v1a.put_layer(image, None), 401)
    assert_error(await v1a.put_layer(image, "Token "), 401)
    bob = await v1a.open_push("bob/x", [make_image()], auth=BOB)
    assert_error(await v1a.put_layer(image, bob), 404)
    assert_error(await v1a.put_checksum(image, bob), 404)
    row = await stored(v1a, image.id)
    assert row is not None and row.state == "uploading" and row.blob_digest is None
    assert_true(await v1a.put_layer(image, alice))
    assert_true(await v1a.put_checksum(image, alice))


# -- 4.4.4: PUT checksum -----------------------------------------------------------------


async def _uploaded(v1: V1Client) -> V1Image:
    (image,) = make_chain(1)
    assert (await v1.start_push("foo/bar", [{"id": image.id}])).status == 200
    assert_true(await v1.put_json(image, None))
    assert_true(await v1.put_layer(image, None))
    return image


async def test_checksum_headers_present_but_empty(v1: V1Client) -> None:
    image = await _uploaded(v1)
    reply = await v1.call(
        "PUT",
        f"/v1/images/{image.id}/checksum",
        headers={"X-Docker-Checksum": "", "X-Docker-Checksum-Payload": ""},
    )
    assert_error(reply, 400, "Missing Image's checksum")
    assert (await stored(v1, image.id)).state == "uploaded"  # type: ignore[union-attr]


async def test_checksum_messages(v1: V1Client) -> None:
    assert_error(await v1.put_checksum(make_image(), None), 404, "Image not found")
    image = await _uploaded(v1)
    assert_true(await v1.put_checksum(image, None))
    assert_error(await v1.put_checksum(image, None), 409, "Cannot set this image checksum")


async def test_checksum_hex_case_is_ignored(v1: V1Client) -> None:
    image = await _uploaded(v1)
    upper = "sha256:" + image.payload.partition(":")[2].upper()
    assert_true(await v1.put_checksum(image, None, payload=upper))


async def test_checksum_payload_form_in_tarsum_header(v1: V1Client) -> None:
    image = await _uploaded(v1)
    assert_true(await v1.put_checksum(image, None, payload=None, tarsum=image.payload))


async def test_checksum_legacy_header_spelling_is_not_the_payload(v1: V1Client) -> None:
    image = await _uploaded(v1)
    reply = await v1.call(
        "PUT",
        f"/v1/images/{image.id}/checksum",
        headers={"X-Docker-Payload-Checksum": image.payload},
    )
    assert_error(reply, 400, "Missing Image's checksum")


@pytest.mark.parametrize(
    ("payload", "tarsum"),
    [
        ("wrong", None),
        (None, "tarsum+sha256:" + "0" * 64),
        (None, "tarsum.v1+sha256:" + "0" * 64),
        ("sha256:" + "0" * 64, "from image"),
        ("sha256:", None),
    ],
)
async def test_checksum_mismatch_stores_nothing(
    v1: V1Client, payload: str | None, tarsum: str | None
) -> None:
    image = await _uploaded(v1)
    if payload == "wrong":
        payload = payload_checksum(image.json + b" ", image.layer)
    tarsum = image.tarsum if tarsum == "from image" else tarsum
    assert_error(
        await v1.put_checksum(image, None, payload=payload, tarsum=tarsum), 400, "Checksum mismatch"
    )
    row = await stored(v1, image.id)
    assert row is not None and row.state == "uploaded"
    await _assert_not_served(v1, image)
    # the v2 side never saw it either: no tag, no manifest, and the tag list is untouched
    async with v1.http.get("/v2/foo/bar/tags/list") as resp:
        body = await resp.json() if resp.status == 200 else {"tags": []}
    assert not body.get("tags")
    # and a correct checksum still completes it
    assert_true(await v1.put_checksum(image, None))
    assert_true(await v1.put_tag("foo/bar", "latest", image.id, None))
    assert await v2_status(v1, "GET", f"/v2/foo/bar/blobs/{image.blob_digest}") == 200
