"""Section 14 cases 72-85: tokens and access (contract 3.6, 3.7, 9). Mode A unless stated."""

from __future__ import annotations

import pytest

from moorage.api.context import SETTINGS
from moorage.auth.v1tokens import V1Tokens, load_or_create_secret
from tests.v1.client import (
    V1Client,
    V1Image,
    assert_error,
    assert_true,
    make_chain,
    make_image,
    token_auth,
)
from tests.v1.conftest import ALICE, ALICE_WRONG, BOB, stored


@pytest.fixture
async def x(v1a: V1Client) -> V1Image:
    """alice's image X, complete and tagged `latest` in her private alice/app."""
    (image,) = make_chain(1)
    await v1a.push("alice/app", [image], {image.id: ["latest"]}, auth=ALICE)
    return image


async def _token(v1: V1Client, name: str, images: list[V1Image], auth: str) -> str:
    return await v1.open_push(name, images, auth=auth)


async def _read_token(v1: V1Client, name: str, auth: str | None) -> str:
    reply = await v1.call(
        "GET", f"/v1/repositories/{name}/images", auth=auth, headers={"X-Docker-Token": "true"}
    )
    assert reply.status == 200, reply
    return token_auth(reply.headers["X-Docker-Token"])


async def test_v1_c72_write_token_uploads_and_tags(v1a: V1Client) -> None:
    p, c = make_chain(2)
    token = await _token(v1a, "alice/app", [p, c], ALICE)
    for image in (p, c):
        assert_true(await v1a.put_json(image, token))
        assert_true(await v1a.put_layer(image, token))
        assert_true(await v1a.put_checksum(image, token))
    assert_true(await v1a.put_tag("alice/app", "t", c.id, token))
    assert (await v1a.call("GET", "/v1/repositories/alice/app/tags", auth=ALICE)).json() == {
        "t": c.id
    }


async def test_v1_c73_write_token_reads_images(v1a: V1Client, x: V1Image) -> None:
    token = await _token(v1a, "alice/app", [make_image()], ALICE)
    reply = await v1a.call("GET", f"/v1/images/{x.id}/json", auth=token)
    assert reply.status == 200 and reply.body == x.json
    unknown = await v1a.call("GET", f"/v1/images/{make_image().id}/json", auth=token)
    assert_error(unknown, 404)


async def test_v1_c74_token_scope(v1a: V1Client, x: V1Image) -> None:
    read = await _read_token(v1a, "alice/app", ALICE)
    assert_error(await v1a.put_tag("alice/app", "t", x.id, read), 403)
    assert_error(await v1a.call("GET", "/v1/repositories/alice/other/tags", auth=read), 403)
    assert (await v1a.call("GET", "/v1/repositories/alice/app/tags", auth=read)).status == 200


async def test_v1_c75_bogus_and_expired_tokens(v1a: V1Client, x: V1Image) -> None:
    bogus = 'Token signature=bogus,repository="alice/app",access=write'
    reply = await v1a.call("GET", "/v1/repositories/alice/app/tags", auth=bogus)
    assert_error(reply, 401)
    assert reply.headers["WWW-Authenticate"].startswith("Token")
    secret = load_or_create_secret(v1a.http.app[SETTINGS].datadir / "auth" / "v1-secret")
    expired = V1Tokens(secret, lifetime=-60).issue("alice/app", "read", "alice")
    reply = await v1a.call("GET", "/v1/repositories/alice/app/tags", auth=token_auth(expired))
    assert_error(reply, 401)
    assert reply.headers["WWW-Authenticate"].startswith("Token")
    fresh = V1Tokens(secret).issue("alice/app", "read", "alice")
    assert (
        await v1a.call("GET", "/v1/repositories/alice/app/tags", auth=token_auth(fresh))
    ).status == 200


async def test_v1_c76_doubled_token_word(v1a: V1Client, x: V1Image) -> None:
    read = await _read_token(v1a, "alice/app", ALICE)
    reply = await v1a.call("GET", "/v1/repositories/alice/app/tags", auth="Token " + read)
    assert reply.status == 200 and reply.json() == {"latest": x.id}


async def test_v1_c77_empty_token_is_anonymous(v1a: V1Client, x: V1Image) -> None:
    (pub,) = make_chain(1)
    await v1a.push("library/pub", [pub], {pub.id: ["latest"]}, auth=ALICE)
    public = await v1a.call("GET", "/v1/repositories/library/pub/tags", auth="Token ")
    assert public.status == 200 and public.json() == {"latest": pub.id}
    assert_error(await v1a.call("GET", "/v1/repositories/alice/app/tags", auth="Token "), 401)


async def test_v1_c78_basic_reads(v1a: V1Client, x: V1Image) -> None:
    tags = await v1a.call("GET", "/v1/repositories/alice/app/tags", auth=ALICE)
    assert tags.status == 200 and tags.json() == {"latest": x.id}
    meta = await v1a.call("GET", f"/v1/images/{x.id}/json", auth=ALICE)
    assert meta.status == 200 and meta.body == x.json
    assert meta.headers["Cache-Control"].startswith("private")


async def test_v1_c79_other_users_cannot_read(v1a: V1Client, x: V1Image) -> None:
    assert_error(await v1a.call("GET", f"/v1/images/{x.id}/json", auth=BOB), 404)
    assert_error(await v1a.call("GET", f"/v1/images/{x.id}/json"), 401)


async def test_v1_c80_base_image_in_another_own_repository(v1a: V1Client, x: V1Image) -> None:
    child = make_image(x)
    token = await _token(v1a, "alice/app2", [x, child], ALICE)
    probe = await v1a.call("GET", f"/v1/images/{x.id}/json", auth=token)
    assert probe.status == 200 and probe.body == x.json
    assert_true(await v1a.put_tag("alice/app2", "t", x.id, token))
    bobs = await _token(v1a, "bob/x", [make_image()], BOB)
    assert_error(await v1a.call("GET", f"/v1/images/{x.id}/json", auth=bobs), 404)
    # the tag linked X into alice/app2
    listed = await v1a.call("GET", "/v1/repositories/alice/app2/images", auth=ALICE)
    assert x.id in [entry["id"] for entry in listed.json()]


async def test_v1_c81_undeclared_image(v1a: V1Client) -> None:
    token = await _token(v1a, "alice/app", [make_image()], ALICE)
    z = make_image()
    assert_error(await v1a.put_json(z, token), 400, "This image does not belong to the repository")
    assert await stored(v1a, z.id) is None


async def test_v1_c82_proof_of_possession(v1a: V1Client, x: V1Image) -> None:
    token = await _token(v1a, "bob/x", [x], BOB)
    assert_error(await v1a.call("GET", f"/v1/images/{x.id}/json", auth=token), 404)
    assert_true(await v1a.put_json(x, token))
    assert_true(await v1a.put_layer(x, token))
    assert_true(await v1a.put_checksum(x, token))
    assert_true(await v1a.put_tag("bob/x", "t", x.id, token))
    meta = await v1a.call("GET", f"/v1/images/{x.id}/json", auth=BOB)
    assert meta.status == 200 and meta.body == x.json
    # alice's image is unchanged
    row = await stored(v1a, x.id)
    assert row is not None and row.state == "complete" and row.json == x.json


async def test_v1_c83_failed_proof_of_possession(v1a: V1Client, x: V1Image) -> None:
    token = await _token(v1a, "bob/x", [x], BOB)
    assert_true(await v1a.put_json(x, token))
    fake = make_image(image_id=x.id)
    assert_true(await v1a.put_layer(x, token, fake.layer))
    assert_error(await v1a.put_checksum(x, token), 400)
    assert_error(await v1a.put_tag("bob/x", "t", x.id, token), 404)
    assert_error(await v1a.call("GET", f"/v1/images/{x.id}/json", auth=BOB), 404)
    # alice still reads her image, byte for byte
    layer = await v1a.call("GET", f"/v1/images/{x.id}/layer", auth=ALICE)
    assert layer.status == 200 and layer.body == x.layer


async def test_v1_c84_unauthorized_parent(v1a: V1Client, x: V1Image) -> None:
    child = make_image(x)
    token = await _token(v1a, "bob/x", [child], BOB)
    assert_error(await v1a.put_json(child, token), 400, "Image depends on an unauthorized parent")
    assert await stored(v1a, child.id) is None


async def test_v1_c85_open_mode_ignores_credentials(v1: V1Client) -> None:
    (image,) = make_chain(1)
    await v1.push("foo/bar", [image], {image.id: ["latest"]})
    for auth in ("Token signature=garbage", ALICE_WRONG, "Basic !!!"):
        reply = await v1.call("GET", "/v1/repositories/foo/bar/tags", auth=auth)
        assert reply.status == 200 and reply.json() == {"latest": image.id}, auth
