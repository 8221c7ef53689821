"""Deeply nested JSON from a client (issue 9, item 7) is a v1 400, not a 500 with a
traceback, on every v1 body that is JSON: image JSON, the index image lists, tag targets and
user records. Nothing is stored."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from moorage.api.context import V1
from tests.v1.client import V1Client, assert_error, make_chain, make_image
from tests.v1.conftest import ALICE, auth_settings, stored

DEEP = 100_000


def nested(depth: int = DEEP) -> bytes:
    return b"[" * depth + b"]" * depth


def no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if r.exc_info], caplog.text
    assert "unexpected error" not in caplog.text


async def test_deep_image_json_is_400(v1: V1Client, caplog: pytest.LogCaptureFixture) -> None:
    image = make_image()
    body = b'{"id": "' + image.id.encode() + b'", "config": ' + nested() + b"}"
    assert_error(await v1.put_json(image, None, body), 400, "Invalid JSON")
    assert await stored(v1, image.id) is None
    no_traceback(caplog)


async def test_deep_push_start_list_is_400(v1: V1Client, caplog: pytest.LogCaptureFixture) -> None:
    reply = await v1.call("PUT", "/v1/repositories/foo/deep/", data=nested())
    assert_error(reply, 400, "Error Decoding JSON")
    assert (await v1.call("GET", "/v1/repositories/foo/deep/tags")).status == 404
    assert not await v1.http.app[V1].metadata.repository_exists("foo/deep")
    no_traceback(caplog)


async def test_deep_push_final_list_is_400(v1: V1Client, caplog: pytest.LogCaptureFixture) -> None:
    (image,) = make_chain(1)
    await v1.push_images("foo/deep", [image])
    reply = await v1.call("PUT", "/v1/repositories/foo/deep/images", data=nested())
    assert_error(reply, 400, "Error Decoding JSON")
    listed = await v1.call("GET", "/v1/repositories/foo/deep/images")
    assert listed.status == 200 and [e["id"] for e in listed.json()] == [image.id]
    no_traceback(caplog)


async def test_deep_tag_target_is_400(v1: V1Client, caplog: pytest.LogCaptureFixture) -> None:
    reply = await v1.call("PUT", "/v1/repositories/foo/bar/tags/latest", data=nested())
    assert_error(reply, 400, "Invalid data")
    assert not await v1.http.app[V1].metadata.repository_exists("foo/bar")
    no_traceback(caplog)


async def test_deep_user_record_is_400_without_login_in_token_mode(
    make_client: Any, users_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = V1Client(
        await make_client(auth={"mode": "token", "htpasswd": users_file, "rules": []})
    )
    for path in ("/v1/users/", "/v1/users"):
        reply = await client.call("POST", path, data=nested())
        assert_error(reply, 400, "Error Decoding JSON")
    no_traceback(caplog)


async def test_deep_password_change_is_400(
    make_client: Any, users_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = V1Client(await make_client(auth=auth_settings(users_file)))
    reply = await client.call("PUT", "/v1/users/alice/", data=nested(), auth=ALICE)
    assert_error(reply, 400, "Error Decoding JSON")
    assert (await client.call("GET", "/v1/users/", auth=ALICE)).status == 200
    no_traceback(caplog)
