"""Basic mode (§12.1-12.2): §16 cases 2-4, 120 and 152, anonymous pull, rules by user, group
and repository glob, the filtered catalog, and `Basic Og==`."""

from __future__ import annotations

from tests.auth.conftest import MakeRegistry
from tests.auth.helpers import (
    assert_basic_challenge,
    assert_error,
    basic,
    challenge,
    manifest_for,
    push_blob,
    push_image,
    put_manifest,
    random_bytes,
    sha256,
)

EMPTY_BASIC = {"Authorization": "Basic Og=="}


async def test_c2_base_without_credentials_is_401_basic_challenge(
    make_registry: MakeRegistry,
) -> None:
    client = (await make_registry("basic")).client
    resp = await client.get("/v2/")
    await assert_basic_challenge(resp)


async def test_c2_base_without_credentials_is_401_bearer_challenge(
    make_registry: MakeRegistry,
) -> None:
    client = (await make_registry("token")).client
    resp = await client.get("/v2/")
    body = await assert_error(resp, 401, "UNAUTHORIZED")
    assert body["errors"][0]["message"]
    scheme, params = challenge(resp)
    assert scheme == "Bearer"
    assert params["realm"].endswith("/auth/token"), params
    assert params["realm"].startswith("http://"), params
    assert params["service"] == "moorage"
    # §12.1: GET /v2/ carries no scope, and no credentials means no error parameter.
    assert "scope" not in params and "error" not in params, params


async def test_c3_base_with_valid_basic_credentials_is_200(make_registry: MakeRegistry) -> None:
    client = (await make_registry("basic")).client
    for user in ("alice", "erin"):  # erin has no rule at all, but is a valid identity
        resp = await client.get("/v2/", headers=basic(user))
        assert resp.status == 200, await resp.text()
        assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"
        assert await resp.json() == {}


async def test_c4_wrong_password_is_401_not_403(make_registry: MakeRegistry) -> None:
    client = (await make_registry("basic")).client
    resp = await client.get("/v2/", headers=basic("alice", "wrong"))
    await assert_basic_challenge(resp)
    resp = await client.get("/v2/", headers=basic("nosuchuser", "whatever"))
    await assert_basic_challenge(resp)
    # Wrong credentials on a pullable resource are still 401, not an anonymous pass.
    resp = await client.get("/v2/public/x/tags/list", headers=basic("alice", "wrong"))
    await assert_basic_challenge(resp)


async def test_malformed_basic_credentials_are_401(make_registry: MakeRegistry) -> None:
    client = (await make_registry("basic")).client
    for value in ("Basic !!!notbase64", "Basic bm9jb2xvbg=="):  # "nocolon"
        resp = await client.get("/v2/", headers={"Authorization": value})
        await assert_basic_challenge(resp)


async def test_c152_user_without_push_is_403_denied(make_registry: MakeRegistry) -> None:
    client = (await make_registry("basic")).client
    config, layer = b'{"a":1}', random_bytes(50)
    await push_blob(client, "team/app", config, basic("alice"))
    await push_blob(client, "team/app", layer, basic("alice"))
    resp = await put_manifest(client, "team/app", "v1", manifest_for(config, layer), basic("carol"))
    body = await assert_error(resp, 403, "DENIED")
    assert {"Type": "repository", "Name": "team/app"} in body["errors"][0]["detail"]
    # Nothing was stored.
    resp = await client.get("/v2/team/app/manifests/v1", headers=basic("alice"))
    await assert_error(resp, 404, "MANIFEST_UNKNOWN")
    # Starting an upload needs push too.
    resp = await client.post("/v2/team/app/blobs/uploads/", headers=basic("carol"))
    await assert_error(resp, 403, "DENIED")
    # carol may pull there.
    resp = await client.get(f"/v2/team/app/blobs/{sha256(config)}", headers=basic("carol"))
    assert resp.status == 200
    assert await resp.read() == config


async def test_delete_needs_delete_permission(make_registry: MakeRegistry) -> None:
    client = (await make_registry("basic")).client
    digest, _ = await push_image(client, "team/app", "v1", basic("bob"))
    resp = await client.delete(f"/v2/team/app/manifests/{digest}", headers=basic("bob"))
    await assert_error(resp, 403, "DENIED")
    resp = await client.get("/v2/team/app/manifests/v1", headers=basic("bob"))
    assert resp.status == 200
    resp = await client.delete(f"/v2/team/app/manifests/{digest}", headers=basic("alice"))
    assert resp.status == 202, await resp.text()


async def test_anonymous_pull_allowed_push_refused(make_registry: MakeRegistry) -> None:
    # Default rules (none configured) plus anonymouspull.
    client = (await make_registry("basic", rules=[], anonymouspull=True)).client
    digest, body = await push_image(client, "team/app", "v1", basic("erin"))
    resp = await client.get("/v2/team/app/manifests/v1")
    assert resp.status == 200, await resp.text()
    assert await resp.read() == body
    resp = await client.get("/v2/team/app/tags/list")
    assert resp.status == 200
    assert (await resp.json())["tags"] == ["v1"]
    # Push, manifest PUT and delete by an anonymous caller: 401 with the Basic challenge.
    await assert_basic_challenge(await client.post("/v2/team/app/blobs/uploads/"))
    await assert_basic_challenge(await put_manifest(client, "team/app", "v2", body))
    await assert_basic_challenge(await client.delete(f"/v2/team/app/manifests/{digest}"))
    resp = await client.get("/v2/team/app/manifests/v2", headers=basic("erin"))
    await assert_error(resp, 404, "MANIFEST_UNKNOWN")
    resp = await client.get(f"/v2/team/app/manifests/{digest}", headers=basic("erin"))
    assert resp.status == 200


async def test_base_needs_credentials_even_with_anonymous_pull(
    make_registry: MakeRegistry,
) -> None:
    client = (await make_registry("basic", rules=[], anonymouspull=True)).client
    await assert_basic_challenge(await client.get("/v2/"))
    # The catalog is not part of "pull" either.
    await assert_basic_challenge(await client.get("/v2/_catalog"))


async def test_anonymous_pull_is_off_by_default(make_registry: MakeRegistry) -> None:
    client = (await make_registry("basic", rules=[])).client
    await push_image(client, "team/app", "v1", basic("erin"))
    await assert_basic_challenge(await client.get("/v2/team/app/manifests/v1"))
    resp = await client.get("/v2/team/app/manifests/v1", headers=basic("dave"))
    assert resp.status == 200  # default rules: any authenticated user may pull


async def test_rules_by_group(make_registry: MakeRegistry) -> None:
    client = (await make_registry("basic")).client
    # bob is in "devs": pull+push on team/* (the glob crosses "/").
    await push_image(client, "team/app", "v1", basic("bob"))
    await push_image(client, "team/sub/app", "v1", basic("bob"))
    resp = await client.get("/v2/team/sub/app/manifests/v1", headers=basic("bob"))
    assert resp.status == 200
    # Not in team/*: denied, also for pulls of something that exists.
    resp = await client.post("/v2/other/app/blobs/uploads/", headers=basic("bob"))
    await assert_error(resp, 403, "DENIED")
    await push_image(client, "other/app", "v1", basic("alice"))
    resp = await client.get("/v2/other/app/manifests/v1", headers=basic("bob"))
    await assert_error(resp, 403, "DENIED")
    # "team" itself and "teams/x" are not matched by "team/*".
    for repo in ("team", "teams/x"):
        resp = await client.post(f"/v2/{repo}/blobs/uploads/", headers=basic("bob"))
        await assert_error(resp, 403, "DENIED")


async def test_rules_by_repository_glob(make_registry: MakeRegistry) -> None:
    client = (await make_registry("basic")).client
    await push_image(client, "team/a", "v1", basic("alice"))
    await push_image(client, "team/b", "v1", basic("alice"))
    await push_image(client, "public/tool", "v1", basic("alice"))
    # dave: exactly team/a.
    assert (await client.get("/v2/team/a/manifests/v1", headers=basic("dave"))).status == 200
    resp = await client.get("/v2/team/b/manifests/v1", headers=basic("dave"))
    await assert_error(resp, 403, "DENIED")
    # carol: team/*.
    for repo in ("team/a", "team/b"):
        resp = await client.get(f"/v2/{repo}/manifests/v1", headers=basic("carol"))
        assert resp.status == 200
    # public/*: any user and anonymous callers may pull; nobody but alice may push.
    assert (await client.get("/v2/public/tool/manifests/v1")).status == 200
    assert (await client.get("/v2/public/tool/manifests/v1", headers=basic("erin"))).status == 200
    resp = await client.post("/v2/public/tool/blobs/uploads/", headers=basic("erin"))
    await assert_error(resp, 403, "DENIED")
    await assert_basic_challenge(await client.post("/v2/public/tool/blobs/uploads/"))
    # erin has no rule for team/*: 403 (authenticated), anonymous: 401.
    resp = await client.get("/v2/team/a/manifests/v1", headers=basic("erin"))
    await assert_error(resp, 403, "DENIED")
    await assert_basic_challenge(await client.get("/v2/team/a/manifests/v1"))


async def test_c120_catalog_lists_only_what_the_caller_may_pull(
    make_registry: MakeRegistry,
) -> None:
    client = (await make_registry("basic")).client
    for repo in ("team/a", "team/b", "other/c", "public/d"):
        await push_blob(client, repo, random_bytes(10), basic("alice"))

    async def catalog(user: str) -> list[str]:
        resp = await client.get("/v2/_catalog", headers=basic(user))
        assert resp.status == 200, await resp.text()
        return list((await resp.json())["repositories"])

    assert await catalog("dave") == ["public/d", "team/a"]
    assert await catalog("carol") == ["public/d", "team/a", "team/b"]
    assert await catalog("erin") == ["public/d"]
    # bob may push to drop/* but not pull it: pushing alone does not list it.
    await push_blob(client, "drop/box", random_bytes(10), basic("alice"))
    assert "drop/box" not in await catalog("bob")
    # Admins see everything.
    assert await catalog("alice") == ["drop/box", "other/c", "public/d", "team/a", "team/b"]
    await assert_basic_challenge(await client.get("/v2/_catalog"))


async def test_catalog_filtering_keeps_pagination_right_and_leaks_no_names(
    make_registry: MakeRegistry,
) -> None:
    client = (await make_registry("basic")).client
    # More hidden repositories than one internal batch (100) before and between the visible
    # ones, so the filter has to fetch several batches to fill a page.
    hidden = [f"secret/r{i:03d}" for i in range(110)] + ["team0/x", "zzz/last"]
    visible = ["team/a", "team/b", "team/c", "team/d", "team/e"]
    data = random_bytes(10)
    for repo in hidden + visible:
        await push_blob(client, repo, data, basic("alice"))

    seen: list[str] = []
    url: str | None = "/v2/_catalog?n=2"
    pages = 0
    while url is not None:
        resp = await client.get(url, headers=basic("carol"))
        assert resp.status == 200, await resp.text()
        page = (await resp.json())["repositories"]
        link = resp.headers.get("Link")
        assert len(page) <= 2
        for name in hidden:
            assert name not in page
            assert name.replace("/", "%2F") not in (link or "") and name not in (link or "")
        seen += page
        pages += 1
        if link is None:
            url = None
        else:
            assert link.endswith('>; rel="next"'), link
            url = link[1 : link.index(">")]
            assert "n=2" in url
    assert seen == visible
    assert pages == 3
    # `last` set to a hidden name, or between names, still gives the visible ones after it.
    resp = await client.get("/v2/_catalog?n=10&last=secret/r050", headers=basic("carol"))
    assert (await resp.json())["repositories"] == visible
    resp = await client.get("/v2/_catalog?n=10&last=team/bb", headers=basic("carol"))
    assert (await resp.json())["repositories"] == ["team/c", "team/d", "team/e"]
    # The admin's view is unfiltered.
    resp = await client.get("/v2/_catalog?n=1000", headers=basic("alice"))
    assert (await resp.json())["repositories"] == sorted(hidden + visible)


async def test_empty_basic_credentials_are_anonymous(make_registry: MakeRegistry) -> None:
    """`Basic Og==` (empty user and password) is anonymous, not a failed login."""
    client = (await make_registry("basic", rules=[], anonymouspull=True, maxfailures=2)).client
    _, body = await push_image(client, "team/app", "v1", basic("alice"))
    for _ in range(5):
        resp = await client.get("/v2/team/app/manifests/v1", headers=EMPTY_BASIC)
        assert resp.status == 200, await resp.text()
        assert await resp.read() == body
        # Anonymous on the base endpoint: 401 with the challenge, never 429.
        await assert_basic_challenge(await client.get("/v2/", headers=EMPTY_BASIC))
        await assert_basic_challenge(
            await client.post("/v2/team/app/blobs/uploads/", headers=EMPTY_BASIC)
        )
    # None of that counted as a failure for this address.
    assert (await client.get("/v2/", headers=basic("bob"))).status == 200


async def test_mount_from_source_the_caller_cannot_pull_is_a_plain_session(
    make_registry: MakeRegistry,
) -> None:
    client = (await make_registry("basic")).client
    data = random_bytes(300)
    digest = await push_blob(client, "other/src", data, basic("alice"))
    # bob may push to team/dst but not pull other/src.
    resp = await client.post(
        f"/v2/team/dst/blobs/uploads/?mount={digest}&from=other/src", headers=basic("bob")
    )
    assert resp.status == 202, await resp.text()
    assert resp.headers["Location"].split("?")[0].startswith("/v2/team/dst/blobs/uploads/")
    assert "Docker-Content-Digest" not in resp.headers
    # Nothing linked: not even the admin sees the blob in the target.
    resp = await client.head(f"/v2/team/dst/blobs/{digest}", headers=basic("alice"))
    assert resp.status == 404
    # The same mount by someone who may pull the source works (the 202 was about access).
    resp = await client.post(
        f"/v2/team/dst/blobs/uploads/?mount={digest}&from=other/src", headers=basic("alice")
    )
    assert resp.status == 201, await resp.text()
    assert (await client.get(f"/v2/team/dst/blobs/{digest}", headers=basic("bob"))).status == 200


async def test_automatic_mount_skips_sources_the_caller_cannot_pull(
    make_registry: MakeRegistry,
) -> None:
    client = (await make_registry("basic", settings={"mount": {"automatic": True}})).client
    digest = await push_blob(client, "other/src", random_bytes(120), basic("alice"))
    resp = await client.post(f"/v2/team/dst/blobs/uploads/?mount={digest}", headers=basic("bob"))
    assert resp.status == 202, await resp.text()
    resp = await client.head(f"/v2/team/dst/blobs/{digest}", headers=basic("alice"))
    assert resp.status == 404
    # From a repository bob can pull, the automatic mount happens.
    await push_blob(client, "team/src", random_bytes(5), basic("bob"))
    other = await push_blob(client, "team/src", random_bytes(130), basic("bob"))
    resp = await client.post(f"/v2/team/dst2/blobs/uploads/?mount={other}", headers=basic("bob"))
    assert resp.status == 201, await resp.text()
