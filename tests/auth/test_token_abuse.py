"""Tokens the registry must refuse (§12.4): expired, forged, re-signed, tampered, `alg: none`,
HMAC with the public key, wrong `aud`/`iss`, another repository's token, refresh tokens as
access tokens; and what the token server must not grant (scope escalation, deleted users)."""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from moorage.auth import htpasswd
from tests.auth.conftest import MakeRegistry, Registry
from tests.auth.helpers import (
    access_of,
    assert_unauthorized,
    b64url,
    b64url_decode,
    bearer,
    kid_of,
    load_private_key,
    make_claims,
    new_key,
    post_token,
    public_pem,
    push_image,
    put_manifest,
    sign,
    token,
    token_response,
)

PULL = [("team/app", ["pull"])]
ALL = [("team/app", ["pull", "push", "delete"])]


@pytest.fixture
async def registry(make_registry: MakeRegistry) -> Registry:
    reg = await make_registry("token")
    writer = await token(reg.client, "alice", "repository:team/app:pull,push")
    await push_image(reg.client, "team/app", "v1", bearer(writer))
    return reg


async def refused(registry: Registry, bad: str, path: str = "/v2/team/app/tags/list") -> None:
    """The token is rejected as invalid, on a resource and on the base endpoint."""
    resp = await registry.client.get(path, headers=bearer(bad))
    await assert_unauthorized(resp, error="invalid_token")
    resp = await registry.client.get("/v2/", headers=bearer(bad))
    await assert_unauthorized(resp, error="invalid_token")


def _split(jwt_text: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    header, payload, signature = jwt_text.split(".")
    return json.loads(b64url_decode(header)), json.loads(b64url_decode(payload)), signature


def _join(header: Mapping[str, Any], payload: Mapping[str, Any], signature: str) -> str:
    encoded = [b64url(json.dumps(part).encode()) for part in (header, payload)]
    return ".".join([*encoded, signature])


async def test_own_key_control_token_is_accepted(registry: Registry) -> None:
    """The forged variants below are refused for what they change, not for how we sign."""
    good = sign(make_claims("carol", PULL), load_private_key(registry.key_file))
    resp = await registry.client.get("/v2/team/app/tags/list", headers=bearer(good))
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["tags"] == ["v1"]
    # Without kid, the only trusted key is used.
    no_kid = sign(make_claims("carol", PULL), load_private_key(registry.key_file), kid=None)
    resp = await registry.client.get("/v2/team/app/tags/list", headers=bearer(no_kid))
    assert resp.status == 200, await resp.text()


async def test_expired_token(registry: Registry) -> None:
    key = load_private_key(registry.key_file)
    await refused(registry, sign(make_claims("alice", ALL, exp_delta=-120), key))


async def test_token_not_yet_valid(registry: Registry) -> None:
    key = load_private_key(registry.key_file)
    claims = make_claims("alice", ALL)
    claims["nbf"] = claims["iat"] + 3600
    await refused(registry, sign(claims, key))


async def test_forged_with_the_servers_kid(registry: Registry) -> None:
    server_kid = kid_of(load_private_key(registry.key_file))
    await refused(registry, sign(make_claims("alice", ALL), new_key(), kid=server_kid))


async def test_forged_without_kid(registry: Registry) -> None:
    await refused(registry, sign(make_claims("alice", ALL), new_key(), kid=None))


async def test_forged_with_own_kid(registry: Registry) -> None:
    await refused(registry, sign(make_claims("alice", ALL), new_key()))


async def test_forged_with_embedded_jwk(registry: Registry) -> None:
    """A key carried in the token header (jwk) is not a trusted key."""
    attacker = new_key()
    numbers = attacker.public_key().public_numbers()
    jwk = {
        "kty": "EC",
        "crv": "P-256",
        "x": b64url(numbers.x.to_bytes(32, "big")),
        "y": b64url(numbers.y.to_bytes(32, "big")),
    }
    await refused(registry, sign(make_claims("alice", ALL), attacker, extra_headers={"jwk": jwk}))


async def test_resigned_payload_changed(registry: Registry) -> None:
    """A real token's payload escalated, then signed by another key under the real header."""
    real = await token(registry.client, "carol", "repository:team/app:pull")
    header, payload, _ = _split(real)
    payload["access"] = [{"type": "repository", "name": "team/app", "actions": ["*"]}]
    resigned = sign(payload, new_key(), kid=header["kid"])
    await refused(registry, resigned)


async def test_tampered_payload_original_signature(registry: Registry) -> None:
    real = await token(registry.client, "carol", "repository:team/app:pull")
    header, payload, signature = _split(real)
    payload["access"] = [{"type": "repository", "name": "team/app", "actions": ["pull", "push"]}]
    await refused(registry, _join(header, payload, signature))
    # One byte changed in the encoded payload, everything else original.
    head, body, sig = real.split(".")
    flipped = body[:10] + ("A" if body[10] != "A" else "B") + body[11:]
    await refused(registry, ".".join([head, flipped, sig]))
    # The untouched original still works (carol may pull).
    resp = await registry.client.get("/v2/team/app/tags/list", headers=bearer(real))
    assert resp.status == 200


async def test_alg_none(registry: Registry) -> None:
    kid = kid_of(load_private_key(registry.key_file))
    claims = make_claims("alice", ALL)
    for header in ({"alg": "none", "typ": "JWT", "kid": kid}, {"alg": "none", "typ": "JWT"}):
        await refused(registry, _join(header, claims, ""))
        await refused(registry, _join(header, claims, "AAAA"))
    await refused(registry, _join({"alg": "None", "typ": "JWT", "kid": kid}, claims, ""))


async def test_hmac_with_public_key_as_secret(registry: Registry) -> None:
    """Algorithm confusion: HS256 keyed with the server's public key (PEM) must not pass."""
    key = load_private_key(registry.key_file)
    header = {"alg": "HS256", "typ": "JWT", "kid": kid_of(key)}
    claims = make_claims("alice", ALL)
    signing_input = ".".join(b64url(json.dumps(p).encode()) for p in (header, claims))
    mac = hmac.new(public_pem(key), signing_input.encode(), hashlib.sha256).digest()
    await refused(registry, f"{signing_input}.{b64url(mac)}")


async def test_wrong_audience(registry: Registry) -> None:
    key = load_private_key(registry.key_file)
    await refused(registry, sign(make_claims("alice", ALL, aud="other-registry"), key))
    await refused(registry, sign(make_claims("alice", ALL, aud=["a", "b"]), key))
    # The refresh audience is not ours either (see test_refresh_token_is_not_an_access_token).
    await refused(registry, sign(make_claims("alice", ALL, aud="moorage/refresh"), key))


async def test_audience_list_containing_our_service_is_accepted(registry: Registry) -> None:
    key = load_private_key(registry.key_file)
    good = sign(make_claims("carol", PULL, aud=["other", "moorage"]), key)
    resp = await registry.client.get("/v2/team/app/tags/list", headers=bearer(good))
    assert resp.status == 200, await resp.text()


async def test_wrong_issuer(registry: Registry) -> None:
    key = load_private_key(registry.key_file)
    await refused(registry, sign(make_claims("alice", ALL, iss="evil"), key))


async def test_missing_expiry(registry: Registry) -> None:
    key = load_private_key(registry.key_file)
    claims = make_claims("alice", ALL)
    del claims["exp"]
    await refused(registry, sign(claims, key))


async def test_garbage_tokens(registry: Registry) -> None:
    for bad in ("x", "a.b.c", "....", "eyJhbGciOiJFUzI1NiJ9.e30."):
        await refused(registry, bad)


async def test_token_for_a_used_on_b_is_insufficient_scope(registry: Registry) -> None:
    client = registry.client
    writer = await token(client, "alice", "repository:team/b:pull,push")
    _, body = await push_image(client, "team/b", "v1", bearer(writer))
    for_a = await token(client, "alice", "repository:team/app:pull,push,delete")
    resp = await client.get("/v2/team/b/manifests/v1", headers=bearer(for_a))
    await assert_unauthorized(resp, error="insufficient_scope", scope="repository:team/b:pull")
    resp = await put_manifest(client, "team/b", "v2", body, bearer(for_a))
    await assert_unauthorized(resp, error="insufficient_scope", scope="repository:team/b:pull,push")
    # Even a prefix-like name is another repository.
    resp = await client.get("/v2/team/app/sub/tags/list", headers=bearer(for_a))
    await assert_unauthorized(
        resp, error="insufficient_scope", scope="repository:team/app/sub:pull"
    )


async def test_scope_escalation_in_token_request(registry: Registry) -> None:
    """carol may only pull team/*: asking for push (or `*`) grants pull only (§12.3)."""
    client = registry.client
    body = await token_response(client, "carol", "repository:team/app:pull,push")
    assert access_of(body["token"]) == {("repository", "team/app"): ["pull"]}
    assert body["scope"] == "repository:team/app:pull"
    _, manifest = await push_image(
        client,
        "team/app",
        "v9",
        bearer(await token(client, "alice", "repository:team/app:pull,push")),
    )
    resp = await put_manifest(client, "team/app", "v2", manifest, bearer(body["token"]))
    await assert_unauthorized(
        resp, error="insufficient_scope", scope="repository:team/app:pull,push"
    )
    resp = await client.post("/v2/team/app/blobs/uploads/", headers=bearer(body["token"]))
    await assert_unauthorized(
        resp, error="insufficient_scope", scope="repository:team/app:pull,push"
    )
    star = await token_response(client, "carol", "repository:team/app:*")
    assert access_of(star["token"])[("repository", "team/app")] in ([], ["pull"])
    resp = await client.delete("/v2/team/app/manifests/v1", headers=bearer(star["token"]))
    await assert_unauthorized(resp, error="insufficient_scope", scope="repository:team/app:delete")
    # Unknown actions are never granted.
    odd = await token_response(client, "carol", "repository:team/app:pull,admin")
    assert access_of(odd["token"]) == {("repository", "team/app"): ["pull"]}


async def test_refresh_token_is_not_an_access_token(registry: Registry) -> None:
    body = await token_response(registry.client, "alice", "repository:team/app:pull", offline=True)
    await refused(registry, body["refresh_token"])


async def test_access_token_is_not_a_refresh_token(registry: Registry) -> None:
    access = await token(registry.client, "alice", "repository:team/app:pull")
    resp = await post_token(registry.client, grant_type="refresh_token", refresh_token=access)
    assert resp.status == 401
    assert "access_token" not in await resp.json()
    resp = await post_token(registry.client, grant_type="refresh_token", refresh_token="")
    assert resp.status == 401


async def test_forged_refresh_token_is_refused(registry: Registry) -> None:
    server_kid = kid_of(load_private_key(registry.key_file))
    forged = sign(make_claims("alice", [], aud="moorage/refresh"), new_key(), kid=server_kid)
    resp = await post_token(registry.client, grant_type="refresh_token", refresh_token=forged)
    assert resp.status == 401


async def test_post_refresh_token_grant_works(registry: Registry) -> None:
    client = registry.client
    body = await token_response(client, "bob", offline=True)
    resp = await post_token(
        client,
        grant_type="refresh_token",
        refresh_token=body["refresh_token"],
        scope="repository:team/app:pull,push",
        access_type="offline",
    )
    assert resp.status == 200, await resp.text()
    renewed = await resp.json()
    assert access_of(renewed["access_token"]) == {("repository", "team/app"): ["pull", "push"]}
    assert renewed["refresh_token"]
    resp = await client.get("/v2/team/app/manifests/v1", headers=bearer(renewed["access_token"]))
    assert resp.status == 200
    # The refresh grant re-applies the rules: no more than the subject may have.
    resp = await post_token(
        client,
        grant_type="refresh_token",
        refresh_token=body["refresh_token"],
        scope="repository:other/x:pull",
    )
    assert access_of((await resp.json())["access_token"]) == {("repository", "other/x"): []}


async def test_refresh_token_of_removed_user_is_refused(
    make_registry: MakeRegistry, users_file: Path, tmp_path: Path
) -> None:
    """Removing a user from the htpasswd file ends their access: their refresh (identity)
    token must not mint new access tokens for up to 30 days."""
    users = tmp_path / "htpasswd"
    shutil.copy(users_file, users)
    client = (await make_registry("token", htpasswd=users)).client
    body = await token_response(client, "bob", offline=True)
    entries = htpasswd.read(users)
    del entries["bob"]
    htpasswd.write(users, entries)
    # The password no longer works ...
    await token_response(client, "bob", status=401)
    # ... and neither may the refresh token.
    resp = await post_token(
        client,
        grant_type="refresh_token",
        refresh_token=body["refresh_token"],
        scope="repository:team/app:pull,push",
    )
    assert resp.status == 401, await resp.text()
