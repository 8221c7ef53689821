"""Section 14 cases 1-10: ping and users (contract 4.1, 4.2).

Not applicable to Moorage: the `carol` part of case 8 (htpasswd has no disabled users) and
case 9 (self-registration cannot be enabled)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from tests.v1.client import V1Client, assert_error, basic
from tests.v1.conftest import ALICE, ALICE_WRONG, BOB, auth_settings

REGISTER = {"username": "alice", "password": "pw", "email": "", "auth": ""}


async def test_v1_c01_ping(v1: V1Client) -> None:
    reply = await v1.call("GET", "/v1/_ping")
    assert reply.status == 200
    assert reply.json() is True
    assert reply.headers["X-Docker-Registry-Standalone"] == "true"
    assert reply.headers["X-Docker-Registry-Version"]
    assert reply.headers["Content-Type"].startswith("application/json")


async def test_v1_c02_root_ping_is_identical(v1: V1Client) -> None:
    first = await v1.call("GET", "/v1/_ping")
    second = await v1.call("GET", "/_ping")
    assert (second.status, second.body) == (first.status, first.body)
    for name in ("X-Docker-Registry-Standalone", "X-Docker-Registry-Version", "Content-Type"):
        assert second.headers.get(name) == first.headers.get(name), name


async def test_v1_c03_ping_ignores_wrong_password(v1a: V1Client) -> None:
    reply = await v1a.call("GET", "/v1/_ping", auth=ALICE_WRONG)
    assert reply.status == 200
    assert reply.json() is True


async def test_v1_c04_head_ping(v1: V1Client) -> None:
    reply = await v1.call("HEAD", "/v1/_ping")
    assert reply.status == 200
    assert reply.body == b""


async def test_v1_c05_registration_disabled(v1a: V1Client) -> None:
    reply = await v1a.call("POST", "/v1/users/", json_body=REGISTER)
    assert_error(reply, 401)
    assert reply.headers["WWW-Authenticate"].startswith("Basic ")


async def test_v1_c06_registration_disabled_without_slash(v1a: V1Client) -> None:
    reply = await v1a.call("POST", "/v1/users", json_body=REGISTER)
    assert_error(reply, 401)


async def test_v1_c07_registration_bad_json(v1a: V1Client) -> None:
    reply = await v1a.call(
        "POST", "/v1/users/", data=b"{oops", headers={"Content-Type": "application/json"}
    )
    assert_error(reply, 400)


async def test_v1_c08_login(v1a: V1Client) -> None:
    ok = await v1a.call("GET", "/v1/users/", auth=ALICE)
    assert ok.status == 200
    assert ok.json() == "OK"
    wrong = await v1a.call("GET", "/v1/users/", auth=ALICE_WRONG)
    assert_error(wrong, 401)
    assert wrong.headers["WWW-Authenticate"].startswith("Basic")
    assert_error(await v1a.call("GET", "/v1/users/"), 401)
    # carol (a disabled user -> 403) is not applicable: htpasswd has no disabled users.


async def test_v1_c10_update_password(make_client: Any, users_file: Path, tmp_path: Path) -> None:
    own = tmp_path / "htpasswd"
    shutil.copy(users_file, own)
    v1a = V1Client(await make_client(auth=auth_settings(own)))
    reply = await v1a.call("PUT", "/v1/users/alice/", auth=ALICE, json_body={"password": "newpass"})
    assert reply.status == 204, reply
    assert reply.body == b""
    assert_error(await v1a.call("GET", "/v1/users/", auth=ALICE), 401)
    fresh = await v1a.call("GET", "/v1/users/", auth=basic("alice", "newpass"))
    assert fresh.status == 200, fresh
    other = await v1a.call(
        "PUT", "/v1/users/bob/", auth=basic("alice", "newpass"), json_body={"password": "hijack"}
    )
    assert_error(other, 403)
    assert (await v1a.call("GET", "/v1/users/", auth=BOB)).status == 200
