"""Section 9: a global image-id namespace. Knowing alice's private image ids must not let bob
(or anyone) read them, tag them into another repository, or build on them."""

from __future__ import annotations

import pytest

from tests.v1.client import (
    V1Client,
    V1Image,
    assert_error,
    assert_true,
    make_chain,
    make_image,
    new_id,
    token_auth,
)
from tests.v1.conftest import ALICE, BOB, stored, v2_status

PARTS = ("json", "layer", "ancestry")


@pytest.fixture
async def private(v1a: V1Client) -> list[V1Image]:
    """X and its child Y, complete and tagged in alice's private alice/app."""
    x, y = make_chain(2)
    await v1a.push("alice/app", [x, y], {y.id: ["latest"]}, auth=ALICE)
    return [x, y]


async def _bob_token(v1a: V1Client, images: list[V1Image]) -> str:
    return await v1a.open_push("bob/x", images, auth=BOB)


async def test_known_ids_are_not_readable_by_others(v1a: V1Client, private: list[V1Image]) -> None:
    token = await _bob_token(v1a, [make_image()])
    (pub,) = make_chain(1)
    await v1a.push("library/pub", [pub], {pub.id: ["latest"]}, auth=ALICE)
    pub_read = await v1a.call(
        "GET", "/v1/repositories/library/pub/images", auth=BOB, headers={"X-Docker-Token": "true"}
    )
    read_token = token_auth(pub_read.headers["X-Docker-Token"])
    for image in private:
        for part in PARTS:
            for method in ("GET", "HEAD"):
                path = f"/v1/images/{image.id}/{part}"
                for auth in (BOB, token, read_token):
                    assert_error(await v1a.call(method, path, auth=auth), 404)
                for anonymous in (None, "Basic Og==", "Token "):
                    assert_error(await v1a.call(method, path, auth=anonymous), 401)
            # alice herself can
            assert (
                await v1a.call("GET", f"/v1/images/{image.id}/{part}", auth=ALICE)
            ).status == 200


async def test_no_existence_oracle(v1a: V1Client, private: list[V1Image]) -> None:
    x = private[0]
    for part in PARTS:
        known = await v1a.call("GET", f"/v1/images/{x.id}/{part}", auth=BOB)
        unknown = await v1a.call("GET", f"/v1/images/{new_id()}/{part}", auth=BOB)
        assert (known.status, known.body) == (unknown.status, unknown.body)
        known_anon = await v1a.call("GET", f"/v1/images/{x.id}/{part}")
        unknown_anon = await v1a.call("GET", f"/v1/images/{new_id()}/{part}")
        assert (known_anon.status, known_anon.body) == (unknown_anon.status, unknown_anon.body)
    known = await v1a.call("GET", "/v1/repositories/alice/app/images", auth=BOB)
    unknown = await v1a.call("GET", "/v1/repositories/alice/none/images", auth=BOB)
    assert (
        (known.status, known.body) == (unknown.status, unknown.body) == (known.status, known.body)
    )
    assert known.status == 403


async def test_known_ids_cannot_be_tagged_elsewhere(v1a: V1Client, private: list[V1Image]) -> None:
    token = await _bob_token(v1a, private)
    for image in private:
        assert_error(await v1a.put_tag("bob/x", "stolen", image.id, token), 404)
        assert_error(await v1a.put_tag("bob/x", "stolen", image.id, BOB), 404)
    tags = await v1a.call("GET", "/v1/repositories/bob/x/tags", auth=BOB)
    assert tags.status == 200 and tags.json() == {}
    listed = await v1a.call("GET", "/v1/repositories/bob/x/images", auth=BOB)
    assert listed.json() == []
    assert await v2_status(v1a, "GET", "/v2/bob/x/manifests/stolen", Authorization=BOB) == 404


async def test_known_ids_cannot_be_built_upon(v1a: V1Client, private: list[V1Image]) -> None:
    for parent in private:
        child = make_image(parent)
        token = await _bob_token(v1a, [child])
        for auth in (token, BOB):
            assert_error(
                await v1a.put_json(child, auth), 400, "Image depends on an unauthorized parent"
            )
        assert await stored(v1a, child.id) is None


async def test_layers_stay_private_through_v2(v1a: V1Client, private: list[V1Image]) -> None:
    await _bob_token(v1a, [make_image()])
    for image in private:
        path = f"/v2/bob/x/blobs/{image.blob_digest}"
        assert await v2_status(v1a, "GET", path, Authorization=BOB) == 404
        mount = f"/v2/bob/x/blobs/uploads/?mount={image.blob_digest}&from=alice/app"
        assert await v2_status(v1a, "POST", mount, Authorization=BOB) != 201
        assert await v2_status(v1a, "GET", path, Authorization=BOB) == 404
        alice = f"/v2/alice/app/blobs/{image.blob_digest}"
        assert await v2_status(v1a, "GET", alice, Authorization=ALICE) == 200


async def test_uploads_in_progress_are_private(v1a: V1Client) -> None:
    (image,) = make_chain(1)
    token = await v1a.open_push("alice/app", [image], auth=ALICE)
    assert_true(await v1a.put_json(image, token))
    for part in PARTS:
        path = f"/v1/images/{image.id}/{part}"
        assert_error(await v1a.call("GET", path, auth=BOB), 404)
        assert_error(await v1a.call("GET", path), 401)
    # bob cannot hijack the upload: his session did not declare it
    bob = await _bob_token(v1a, [make_image()])
    assert_error(
        await v1a.put_json(image, bob), 400, "This image does not belong to the repository"
    )
    assert_error(await v1a.put_layer(image, bob), 404)
    row = await stored(v1a, image.id)
    assert row is not None and row.json == image.json and row.blob_digest is None


async def test_uploader_is_told_to_retry(v1a: V1Client) -> None:
    """Contract 4.4 read status rule 2: an image of the caller's own live push session (or
    token repository) that is still uploading answers 400 "being uploaded", as in open mode."""
    (image,) = make_chain(1)
    token = await v1a.open_push("alice/app", [image], auth=ALICE)
    assert_true(await v1a.put_json(image, token))
    for part in PARTS:
        path = f"/v1/images/{image.id}/{part}"
        for auth in (token, ALICE):
            assert_error(
                await v1a.call("GET", path, auth=auth), 400, "Image is being uploaded, retry later"
            )


async def test_private_repositories_are_not_listed(v1a: V1Client, private: list[V1Image]) -> None:
    for auth in (BOB, None):
        body = (await v1a.call("GET", "/v1/search?q=app", auth=auth)).json()
        assert body["results"] == [] and body["num_results"] == 0
