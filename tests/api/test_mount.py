"""§16 cases 64-68: cross-repository mount (§6.9). Cases 69-70 need auth (another issue)."""

from __future__ import annotations

from aiohttp import ClientResponse

from tests.api.helpers import (
    Client,
    assert_upload_range,
    local,
    path_of,
    push_blob,
    random_bytes,
    sha256,
    sha512,
    with_query,
)


async def _assert_fallback_session(client: Client, resp: ClientResponse, repo: str) -> None:
    """A mount that did not happen is a normal 202 session (§6.2), and that session works."""
    assert resp.status == 202, await resp.text()
    assert path_of(resp.headers["Location"]).startswith(f"/v2/{repo}/blobs/uploads/")
    assert "Docker-Upload-UUID" in resp.headers
    assert_upload_range(resp, 0)
    assert resp.headers["Content-Length"] == "0"
    data = random_bytes(30)
    done = await client.put(
        with_query(local(resp.headers["Location"]), digest=sha256(data)), data=data
    )
    assert done.status == 201, await done.text()


async def test_c64_mount_from_other_repository(client: Client) -> None:
    data = random_bytes(200)
    digest = await push_blob(client, "a", data)
    assert (await client.head(f"/v2/b/blobs/{digest}")).status == 404
    resp = await client.post(f"/v2/b/blobs/uploads/?mount={digest}&from=a")
    assert resp.status == 201, await resp.text()
    assert path_of(resp.headers["Location"]) == f"/v2/b/blobs/{digest}"
    assert resp.headers["Docker-Content-Digest"] == digest
    assert resp.headers["Content-Length"] == "0"
    resp = await client.get(f"/v2/b/blobs/{digest}")
    assert resp.status == 200
    assert await resp.read() == data
    # The source keeps its link.
    assert (await client.head(f"/v2/a/blobs/{digest}")).status == 200


async def test_c64_mount_sha512_blob(client: Client) -> None:
    data = random_bytes(64)
    location = local((await client.post("/v2/a/blobs/uploads/")).headers["Location"])
    digest = sha512(data)
    assert (await client.put(with_query(location, digest=digest), data=data)).status == 201
    resp = await client.post(f"/v2/b/blobs/uploads/?mount={digest}&from=a")
    assert resp.status == 201, await resp.text()
    assert resp.headers["Docker-Content-Digest"] == digest
    assert await (await client.get(f"/v2/b/blobs/{digest}")).read() == data


async def test_c64_mount_repository_now_exists(client: Client) -> None:
    digest = await push_blob(client, "a", random_bytes(20))
    resp = await client.post(f"/v2/fresh/b/blobs/uploads/?mount={digest}&from=a")
    assert resp.status == 201
    catalog = await (await client.get("/v2/_catalog")).json()
    assert "fresh/b" in catalog["repositories"]


async def test_c64_mount_already_linked(client: Client) -> None:
    data = random_bytes(20)
    digest = await push_blob(client, "a", data)
    await push_blob(client, "b", data)
    resp = await client.post(f"/v2/b/blobs/uploads/?mount={digest}&from=a")
    assert resp.status == 201


async def test_c64_mount_with_alias_source(client: Client) -> None:
    data = random_bytes(20)
    digest = await push_blob(client, "busybox", data)
    resp = await client.post(f"/v2/b/blobs/uploads/?mount={digest}&from=library/busybox")
    assert resp.status == 201, await resp.text()
    resp = await client.post(f"/v2/c/blobs/uploads/?mount={digest}&from=busybox")
    assert resp.status == 201, await resp.text()


async def test_c65_mount_digest_not_in_source(client: Client) -> None:
    await push_blob(client, "a", random_bytes(20))
    other = await push_blob(client, "c", random_bytes(20))
    resp = await client.post(f"/v2/b/blobs/uploads/?mount={other}&from=a")
    await _assert_fallback_session(client, resp, "b")
    assert (await client.head(f"/v2/b/blobs/{other}")).status == 404


async def test_c66_mount_from_unknown_repository(client: Client) -> None:
    digest = await push_blob(client, "a", random_bytes(20))
    resp = await client.post(f"/v2/b/blobs/uploads/?mount={digest}&from=nosuchrepo")
    await _assert_fallback_session(client, resp, "b")
    assert (await client.head(f"/v2/b/blobs/{digest}")).status == 404


async def test_c66_mount_from_invalid_name(client: Client) -> None:
    digest = await push_blob(client, "a", random_bytes(20))
    for source in ["A", "a..b", "../a", "a/"]:
        resp = await client.post(f"/v2/b/blobs/uploads/?mount={digest}&from={source}")
        await _assert_fallback_session(client, resp, "b")


async def test_c67_mount_bad_digest(client: Client) -> None:
    await push_blob(client, "a", random_bytes(20))
    for bad in ["sha256:bad", "md5:" + "a" * 32, "sha256:" + "A" * 64, ""]:
        resp = await client.post(f"/v2/b/blobs/uploads/?mount={bad}&from=a")
        await _assert_fallback_session(client, resp, "b")


async def test_c68_mount_without_from_automatic_off(client: Client) -> None:
    digest = await push_blob(client, "a", random_bytes(20))
    resp = await client.post(f"/v2/b/blobs/uploads/?mount={digest}")
    await _assert_fallback_session(client, resp, "b")
    assert (await client.head(f"/v2/b/blobs/{digest}")).status == 404


async def test_c68_mount_without_from_automatic_on(make_client) -> None:  # type: ignore[no-untyped-def]
    client = await make_client(mount={"automatic": True})
    data = random_bytes(20)
    digest = await push_blob(client, "a", data)
    resp = await client.post(f"/v2/b/blobs/uploads/?mount={digest}")
    assert resp.status == 201, await resp.text()
    assert path_of(resp.headers["Location"]) == f"/v2/b/blobs/{digest}"
    assert resp.headers["Docker-Content-Digest"] == digest
    assert await (await client.get(f"/v2/b/blobs/{digest}")).read() == data
    # Still 202 for a blob that exists nowhere.
    resp = await client.post(f"/v2/b/blobs/uploads/?mount={sha256(b'nowhere')}")
    await _assert_fallback_session(client, resp, "b")


async def test_mount_takes_precedence_over_digest(client: Client) -> None:
    # §6.2: mount first; if it does not happen, fall through to the single-POST rule.
    data = random_bytes(20)
    digest = await push_blob(client, "a", data)
    resp = await client.post(f"/v2/b/blobs/uploads/?mount={digest}&from=a&digest={digest}")
    assert resp.status == 201
    other = random_bytes(20)
    resp = await client.post(
        f"/v2/b/blobs/uploads/?mount={sha256(other)}&from=a&digest={sha256(other)}", data=other
    )
    assert resp.status == 201, await resp.text()
    assert await (await client.get(f"/v2/b/blobs/{sha256(other)}")).read() == other


async def test_mount_cancel_fallback_session(client: Client) -> None:
    resp = await client.post(f"/v2/b/blobs/uploads/?mount={sha256(b'x')}&from=a")
    assert resp.status == 202
    resp = await client.delete(local(resp.headers["Location"]))
    assert resp.status == 204
