"""Token mode with the built-in token server (§12.1-12.5): §16 cases 69, 70, 119, 120 and
140-151."""

from __future__ import annotations

from datetime import datetime

import pytest
from yarl import URL

from tests.auth.conftest import MakeRegistry, Registry
from tests.auth.helpers import (
    access_of,
    assert_error,
    assert_unauthorized,
    basic,
    bearer,
    challenge,
    claims_of,
    load_private_key,
    local,
    make_claims,
    new_key,
    post_token,
    push_blob,
    push_image,
    put_manifest,
    random_bytes,
    realm_path,
    sign,
    token,
    token_response,
)


@pytest.fixture
async def registry(make_registry: MakeRegistry) -> Registry:
    return await make_registry("token")


async def admin(registry: Registry, repo: str) -> dict[str, str]:
    return bearer(await token(registry.client, "alice", f"repository:{repo}:pull,push,delete"))


async def test_base_with_any_valid_token_is_200(registry: Registry) -> None:
    client = registry.client
    for user in ("erin", None):  # no access at all, even anonymous: still a valid token
        resp = await client.get("/v2/", headers=bearer(await token(client, user)))
        assert resp.status == 200, await resp.text()


async def test_c140_pull_without_token_challenges_with_pull_scope(registry: Registry) -> None:
    client = registry.client
    resp = await client.get("/v2/team/app/manifests/v1")
    params = await assert_unauthorized(resp, scope="repository:team/app:pull")
    assert params["realm"].endswith("/auth/token")
    body = await resp.json()
    assert body["errors"][0]["detail"] == [
        {"Type": "repository", "Name": "team/app", "Action": "pull"}
    ]
    # The realm is usable as announced.
    resp = await client.get(realm_path(params["realm"]), params={"service": params["service"]})
    assert resp.status == 200


async def test_c140_one_component_name_scope_as_requested(registry: Registry) -> None:
    """§16 case 140 literally: `/v2/repo/...` is challenged with `repository:repo:pull`."""
    resp = await registry.client.get("/v2/repo/manifests/v1")
    await assert_unauthorized(resp, scope="repository:repo:pull")


async def test_c141_push_without_token_challenges_with_pull_push(registry: Registry) -> None:
    resp = await registry.client.post("/v2/team/app/blobs/uploads/")
    await assert_unauthorized(resp, scope="repository:team/app:pull,push")
    body = await resp.json()
    # the detail lists every missing action.
    assert body["errors"][0]["detail"] == [
        {"Type": "repository", "Name": "team/app", "Action": "pull"},
        {"Type": "repository", "Name": "team/app", "Action": "push"},
    ]


async def test_c142_token_request_with_valid_basic(registry: Registry) -> None:
    body = await token_response(registry.client, "bob", "repository:team/app:pull,push")
    assert body["token"] == body["access_token"]
    assert body["expires_in"] >= 60
    assert body["expires_in"] == 300
    issued = datetime.fromisoformat(body["issued_at"].replace("Z", "+00:00"))
    assert issued.tzinfo is not None
    assert "refresh_token" not in body
    claims = claims_of(body["token"])
    assert claims["iss"] == "moorage"
    assert claims["aud"] == "moorage"
    assert claims["sub"] == "bob"
    assert claims["exp"] - claims["iat"] == 300
    assert claims["nbf"] <= claims["iat"]
    assert claims["jti"]
    assert access_of(body["token"]) == {("repository", "team/app"): ["pull", "push"]}
    # And it works: bob can push with it.
    await push_image(registry.client, "team/app", "v1", bearer(body["token"]))


async def test_c143_token_request_with_bad_credentials_is_401(registry: Registry) -> None:
    client = registry.client
    for user, password in (("bob", "wrong"), ("nosuchuser", "x"), ("bob", "")):
        resp = await client.get(
            "/auth/token",
            params={"service": "moorage", "scope": "repository:team/app:pull"},
            headers=basic(user, password),
        )
        assert resp.status == 401, await resp.text()
        body = await resp.json()
        assert body["errors"][0]["code"] == "UNAUTHORIZED"
        assert "token" not in body and "access_token" not in body
    resp = await post_token(client, grant_type="password", username="bob", password="wrong")
    assert resp.status == 401
    assert "access_token" not in await resp.json()


async def test_c144_anonymous_push_request_gets_empty_actions(registry: Registry) -> None:
    body = await token_response(registry.client, None, "repository:team/app:push")
    claims = claims_of(body["token"])
    assert claims["sub"] == ""
    assert claims["access"] == [{"type": "repository", "name": "team/app", "actions": []}]
    assert "refresh_token" not in body
    # public/* is pullable anonymously: the anonymous token gets pull there, not push.
    body = await token_response(registry.client, None, "repository:public/x:pull,push")
    assert access_of(body["token"]) == {("repository", "public/x"): ["pull"]}


async def test_c145_two_scope_parameters(registry: Registry) -> None:
    body = await token_response(
        registry.client,
        "bob",
        "repository:team/a:pull,push",
        "repository:other/b:pull",
    )
    assert access_of(body["token"]) == {
        ("repository", "team/a"): ["pull", "push"],
        ("repository", "other/b"): [],
    }
    body = await token_response(
        registry.client, "carol", "repository:team/a:pull", "repository:team/b:pull"
    )
    assert access_of(body["token"]) == {
        ("repository", "team/a"): ["pull"],
        ("repository", "team/b"): ["pull"],
    }
    # Several resources space-separated in one parameter work as well.
    body = await token_response(
        registry.client, "carol", "repository:team/a:pull repository:team/c:pull"
    )
    assert set(access_of(body["token"])) == {("repository", "team/a"), ("repository", "team/c")}


async def test_c146_offline_token_returns_refresh_token(registry: Registry) -> None:
    body = await token_response(registry.client, "bob", offline=True)
    refresh = body["refresh_token"]
    assert refresh and refresh != body["token"]
    assert claims_of(refresh)["sub"] == "bob"
    # Anonymous callers get none, even when asking.
    body = await token_response(registry.client, None, offline=True)
    assert "refresh_token" not in body


async def test_c147_post_password_refresh_and_unknown_grant(registry: Registry) -> None:
    client = registry.client
    resp = await post_token(
        client,
        grant_type="password",
        username="bob",
        password="bob-secret-pw",
        scope="repository:team/app:pull,push repository:team/b:pull",
        access_type="offline",
        client_id="containerd-client",
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["access_token"] == body["token"]
    assert body["expires_in"] >= 60 and body["issued_at"]
    assert access_of(body["access_token"]) == {
        ("repository", "team/app"): ["pull", "push"],
        ("repository", "team/b"): ["pull"],
    }
    refresh = body["refresh_token"]

    resp = await post_token(
        client,
        grant_type="refresh_token",
        refresh_token=refresh,
        scope="repository:team/app:pull",
        client_id="containers/image",
    )
    assert resp.status == 200, await resp.text()
    renewed = await resp.json()
    assert renewed["access_token"] != body["access_token"]
    assert claims_of(renewed["access_token"])["sub"] == "bob"
    assert access_of(renewed["access_token"]) == {("repository", "team/app"): ["pull"]}
    await push_image(client, "team/app", "v1", await admin(registry, "team/app"))
    resp = await client.get("/v2/team/app/manifests/v1", headers=bearer(renewed["access_token"]))
    assert resp.status == 200

    resp = await post_token(client, grant_type="authorization_code", code="x")
    assert resp.status == 400
    resp = await post_token(client, grant_type="nonsense")
    assert resp.status == 400
    # A wrong service is refused whatever the grant.
    resp = await post_token(
        client, grant_type="refresh_token", refresh_token=refresh, service="other"
    )
    assert resp.status == 400


async def test_c148_pull_only_token_on_manifest_put(registry: Registry) -> None:
    client = registry.client
    _, body = await push_image(client, "team/app", "v1", await admin(registry, "team/app"))
    pull_only = await token(client, "bob", "repository:team/app:pull")
    resp = await put_manifest(client, "team/app", "v2", body, bearer(pull_only))
    await assert_unauthorized(
        resp, error="insufficient_scope", scope="repository:team/app:pull,push"
    )
    resp = await client.get("/v2/team/app/manifests/v2", headers=bearer(pull_only))
    await assert_error(resp, 404, "MANIFEST_UNKNOWN")


async def test_c149_expired_token_is_invalid_token(registry: Registry) -> None:
    # Signed with the server's own key, expired 2 minutes ago (beyond the verifier's leeway).
    client = registry.client
    claims = make_claims("bob", [("team/app", ["pull"])], exp_delta=-120)
    expired = sign(claims, load_private_key(registry.key_file))
    resp = await client.get("/v2/team/app/tags/list", headers=bearer(expired))
    await assert_unauthorized(resp, error="invalid_token")
    resp = await client.get("/v2/", headers=bearer(expired))
    await assert_unauthorized(resp, error="invalid_token")


async def test_c150_other_audience_or_unknown_key_is_401(registry: Registry) -> None:
    client = registry.client
    access = [("team/app", ["pull"])]
    other_aud = sign(
        make_claims("bob", access, aud="elsewhere"), load_private_key(registry.key_file)
    )
    unknown_key = sign(make_claims("bob", access), new_key())
    for bad in (other_aud, unknown_key):
        resp = await client.get("/v2/team/app/tags/list", headers=bearer(bad))
        await assert_unauthorized(resp, error="invalid_token")


async def test_c151_pull_push_token_cannot_delete(registry: Registry) -> None:
    client = registry.client
    digest, _ = await push_image(client, "team/app", "v1", await admin(registry, "team/app"))
    # bob asks for everything; the rules give him pull,push only.
    body = await token_response(client, "bob", "repository:team/app:pull,push,delete")
    assert access_of(body["token"]) == {("repository", "team/app"): ["pull", "push"]}
    resp = await client.delete(f"/v2/team/app/manifests/{digest}", headers=bearer(body["token"]))
    await assert_unauthorized(resp, error="insufficient_scope", scope="repository:team/app:delete")
    resp = await client.delete(f"/v2/team/app/blobs/{digest}", headers=bearer(body["token"]))
    await assert_unauthorized(resp, error="insufficient_scope", scope="repository:team/app:delete")
    resp = await client.get(f"/v2/team/app/manifests/{digest}", headers=bearer(body["token"]))
    assert resp.status == 200
    # With delete, it works.
    resp = await client.delete(
        f"/v2/team/app/manifests/{digest}", headers=await admin(registry, "team/app")
    )
    assert resp.status == 202


async def test_c119_catalog_without_catalog_scope(registry: Registry) -> None:
    client = registry.client
    resp = await client.get("/v2/_catalog")
    await assert_unauthorized(resp, scope="registry:catalog:*")
    plain = await token(client, "alice", "repository:team/a:pull")
    resp = await client.get("/v2/_catalog", headers=bearer(plain))
    await assert_unauthorized(resp, error="insufficient_scope", scope="registry:catalog:*")
    # An anonymous caller asking for the catalog is granted nothing.
    body = await token_response(client, None, "registry:catalog:*")
    assert access_of(body["token"]) == {("registry", "catalog"): []}
    resp = await client.get("/v2/_catalog", headers=bearer(body["token"]))
    await assert_unauthorized(resp, error="insufficient_scope", scope="registry:catalog:*")


async def test_c120_token_catalog_lists_only_pullable(registry: Registry) -> None:
    client = registry.client
    for repo in ("team/a", "team/b", "other/c"):
        await push_blob(client, repo, random_bytes(10), await admin(registry, repo))

    async def catalog(user: str) -> list[str]:
        catalog_token = await token(client, user, "registry:catalog:*")
        resp = await client.get("/v2/_catalog", headers=bearer(catalog_token))
        assert resp.status == 200, await resp.text()
        return list((await resp.json())["repositories"])

    assert await catalog("dave") == ["team/a"]
    assert await catalog("carol") == ["team/a", "team/b"]
    assert await catalog("erin") == []
    assert await catalog("alice") == ["other/c", "team/a", "team/b"]


async def test_c69_mount_without_pull_on_source_is_202(registry: Registry) -> None:
    client = registry.client
    data = random_bytes(400)
    digest = await push_blob(client, "other/a", data, await admin(registry, "other/a"))
    # bob: pull,push on team/b, nothing on other/a (asked for, not granted).
    body = await token_response(
        client, "bob", "repository:team/b:pull,push", "repository:other/a:pull"
    )
    assert access_of(body["token"])[("repository", "other/a")] == []
    resp = await client.post(
        f"/v2/team/b/blobs/uploads/?mount={digest}&from=other/a", headers=bearer(body["token"])
    )
    assert resp.status == 202, await resp.text()
    assert "Docker-Content-Digest" not in resp.headers
    location = local(resp.headers["Location"])
    assert URL(location).path.startswith("/v2/team/b/blobs/uploads/")
    resp = await client.head(f"/v2/team/b/blobs/{digest}", headers=await admin(registry, "team/b"))
    assert resp.status == 404
    # The same request with pull on the source mounts.
    both = await token(client, "alice", "repository:team/b:pull,push", "repository:other/a:pull")
    resp = await client.post(
        f"/v2/team/b/blobs/uploads/?mount={digest}&from=other/a", headers=bearer(both)
    )
    assert resp.status == 201, await resp.text()


async def test_c70_cancel_after_mount_with_push_only_token(registry: Registry) -> None:
    client = registry.client
    digest = await push_blob(client, "other/a", random_bytes(90), await admin(registry, "other/a"))
    writer = await token(client, "bob", "repository:team/b:pull,push")
    resp = await client.post(
        f"/v2/team/b/blobs/uploads/?mount={digest}&from=other/a", headers=bearer(writer)
    )
    assert resp.status == 202
    location = local(resp.headers["Location"])
    push_only = await token_response(client, "bob", "repository:team/b:push")
    assert access_of(push_only["token"]) == {("repository", "team/b"): ["push"]}
    resp = await client.delete(location, headers=bearer(push_only["token"]))
    assert resp.status == 204, await resp.text()
    resp = await client.get(location, headers=bearer(writer))
    await assert_error(resp, 404, "BLOB_UPLOAD_UNKNOWN")


async def test_token_mode_ignores_basic_on_registry_endpoints(registry: Registry) -> None:
    """In token mode the registry takes tokens only: Basic there is anonymous, and the
    challenge sends the client to the token server."""
    resp = await registry.client.get("/v2/team/a/tags/list", headers=basic("alice"))
    params = await assert_unauthorized(resp, scope="repository:team/a:pull")
    assert challenge(resp)[0] == "Bearer"
    assert params["realm"].endswith("/auth/token")


async def test_token_endpoint_rejects_other_service(registry: Registry) -> None:
    resp = await registry.client.get(
        "/auth/token", params={"service": "other"}, headers=basic("bob")
    )
    assert resp.status == 400
    assert "token" not in await resp.json()


async def test_one_component_name_round_trip_with_the_built_in_server(registry: Registry) -> None:
    """Docker asks for `repository:busybox:pull,push`; the built-in server and the registry
    agree on the name, whatever form it is stored in."""
    client = registry.client
    body = await token_response(client, "alice", "repository:busybox:pull,push")
    _, manifest = await push_image(client, "busybox", "v1", bearer(body["token"]))
    resp = await client.get("/v2/busybox/manifests/v1", headers=bearer(body["token"]))
    assert resp.status == 200
    assert await resp.read() == manifest
