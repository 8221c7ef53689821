"""Section 14 cases 97-100: hostile paths, unknown routes, no redirects, no secrets echoed."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from tests.v1.client import V1Client, assert_error, make_chain, new_id, raw_exchange
from tests.v1.conftest import ALICE, ALICE_WRONG, BOB, PASSWORDS, auth_settings


async def _raw_get(v1: V1Client, target: str) -> Any:
    reply = await raw_exchange(
        v1.http, f"GET {target} HTTP/1.1\r\nHost: {v1.host}\r\nConnection: close"
    )
    assert reply is not None
    return reply


async def test_v1_c97_traversal_and_encoded_slashes(v1: V1Client) -> None:
    reply = await _raw_get(v1, "/v1/images/..%2F..%2Fetc%2Fpasswd/json")
    assert_error(reply, 404)
    assert b"root:" not in reply.body
    assert_error(await _raw_get(v1, "/v1/repositories/foo%2Fbar/tags"), 400)
    for target in (
        "/v1/images/%2E%2E/json",
        "/v1/images/..%2F..%2F..%2F..%2Fetc%2Fpasswd/layer",
        "/v1/repositories/foo/%2E%2E/tags",
        "/v1/repositories/%2E%2E/%2E%2E/tags",
        "/v1/repositories/foo/bar%00/tags",
    ):
        reply = await _raw_get(v1, target)
        assert reply.status in (400, 404), (target, reply)
        assert_error(reply, reply.status)
        assert b"root:" not in reply.body


async def test_v1_c98_unknown_path_and_method(v1: V1Client) -> None:
    assert_error(await v1.call("GET", "/v1/nope"), 404)
    (p,) = make_chain(1)
    reply = await v1.call("POST", f"/v1/images/{p.id}/json", data=p.json)
    assert_error(reply, 405)
    allow = {m.strip() for m in reply.headers["Allow"].split(",")}
    assert {"GET", "PUT"} <= allow


async def test_v1_c99_no_redirects_and_empty_204s(v1: V1Client) -> None:
    p, c = make_chain(2)
    await v1.push("foo/bar", [p, c], {c.id: ["latest"]})
    await v1.push("busybox", [p, c], {p.id: ["old"], c.id: ["latest"]})
    await v1.call("PUT", "/v1/repositories/foo/bar", data=b"[]")
    await v1.call("PUT", "/v1/repositories/foo/bar/images/", data=b"[]")
    await v1.call("PUT", "/v1/repositories/foo/bar/tags/latest/", data=f'"{p.id}"'.encode())
    await v1.call("PUT", f"/v1/images/{new_id()}/json/", data=p.json)
    await v1.call("DELETE", "/v1/repositories/foo/bar/images")
    puts = [r for r in v1.log if r.method == "PUT"]
    assert len(puts) >= 15
    for reply in v1.log:
        assert not 300 <= reply.status < 400, reply
        if reply.status == 204:
            assert reply.body == b"", reply
    assert any(r.status == 204 for r in v1.log)


async def test_v1_c100_no_secrets_in_answers_or_logs(
    make_client: Any, users_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    v1a = V1Client(
        await make_client(auth=auth_settings(users_file), log={"accesslog": True, "level": "debug"})
    )
    p, c = make_chain(2)
    pushed = await v1a.push("alice/app", [p, c], {c.id: ["latest"]}, auth=ALICE)
    pulled = await v1a.pull("alice/app", auth=ALICE)
    bogus = 'Token signature=c2VjcmV0LXNpZ25hdHVyZQ,repository="alice/app",access=write'
    await v1a.call("GET", "/v1/repositories/alice/app/tags", auth=bogus)
    await v1a.call("GET", "/v1/users/", auth=ALICE_WRONG)
    await v1a.call("GET", f"/v1/images/{p.id}/json", auth=BOB)
    await v1a.start_push("alice/app", [], auth=BOB)
    await v1a.call("PUT", f"/v1/images/{new_id()}/json", auth=f"Token {pushed.token}", data=b"{")
    secrets = {
        ALICE,
        ALICE_WRONG,
        BOB,
        *PASSWORDS.values(),
        ALICE.split()[1],
        pushed.token,
        pushed.token.split(",")[0],
        bogus,
        "c2VjcmV0LXNpZ25hdHVyZQ",
    }
    assert pulled.token is not None
    secrets |= {pulled.token, pulled.token.split(",")[0]}
    for reply in v1a.log:
        for secret in secrets:
            assert secret.encode() not in reply.body, (reply, secret)
    logged = caplog.text + "\n".join(str(r.args) for r in caplog.records)
    for secret in secrets:
        assert secret not in logged, secret
