"""§16 cases 29-41 and 153: monolithic and single-POST uploads (§6.2-6.4, §6.7)."""

from __future__ import annotations

import asyncio
import uuid

from moorage.config import Settings
from tests.api.helpers import (
    EMPTY_SHA256,
    UUID_RE,
    Client,
    assert_error,
    assert_upload_range,
    local,
    path_of,
    push_blob,
    random_bytes,
    raw_request,
    sha256,
    sha512,
    start_upload,
    stored_copies,
    with_query,
)


async def _head_blob(client: Client, repo: str, digest: str) -> int:
    return (await client.head(f"/v2/{repo}/blobs/{digest}")).status


async def test_c29_start_session(client: Client) -> None:
    resp = await client.post("/v2/repo/blobs/uploads/")
    assert resp.status == 202
    location = resp.headers["Location"]
    found = UUID_RE.search(location)
    assert found, location
    upload_id = resp.headers["Docker-Upload-UUID"]
    assert upload_id in location
    assert uuid.UUID(upload_id)
    assert path_of(location).startswith("/v2/repo/blobs/uploads/")
    assert_upload_range(resp, 0)
    assert resp.headers["Content-Length"] == "0"


async def test_c29_sessions_are_distinct(client: Client) -> None:
    one = await client.post("/v2/repo/blobs/uploads/")
    two = await client.post("/v2/repo/blobs/uploads/")
    assert one.headers["Docker-Upload-UUID"] != two.headers["Docker-Upload-UUID"]


async def test_c30_monolithic_post_put(client: Client) -> None:
    data = random_bytes(500)
    digest = sha256(data)
    location = await start_upload(client, "repo")
    resp = await client.put(
        with_query(location, digest=digest),
        data=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert resp.status == 201, await resp.text()
    assert path_of(resp.headers["Location"]) == f"/v2/repo/blobs/{digest}"
    assert resp.headers["Docker-Content-Digest"] == digest
    assert resp.headers["Content-Length"] == "0"
    resp = await client.get(f"/v2/repo/blobs/{digest}")
    assert resp.status == 200
    assert await resp.read() == data


async def test_c31_location_used_verbatim(client: Client) -> None:
    data = random_bytes(64)
    digest = sha256(data)
    resp = await client.post("/v2/repo/blobs/uploads/")
    raw_location = resp.headers["Location"]
    # Whatever the server sent (relative or absolute, with or without a query), the client
    # appends `digest` to it and the PUT must work.
    target = with_query(raw_location, digest=digest)
    if "?" in local(raw_location):
        assert local(raw_location).split("?", 1)[1] in target
    resp = await client.put(target, data=data)
    assert resp.status == 201, await resp.text()
    location = resp.headers["Location"]
    resp = await client.get(local(location))
    assert resp.status == 200
    assert await resp.read() == data


async def test_c32_single_post(client: Client) -> None:
    data = random_bytes(300)
    digest = sha256(data)
    resp = await client.post(f"/v2/repo/blobs/uploads/?digest={digest}", data=data)
    assert resp.status == 201, await resp.text()
    assert path_of(resp.headers["Location"]) == f"/v2/repo/blobs/{digest}"
    assert resp.headers["Docker-Content-Digest"] == digest
    resp = await client.get(f"/v2/repo/blobs/{digest}")
    assert resp.status == 200
    assert await resp.read() == data


async def test_c32_single_post_empty_blob(client: Client) -> None:
    resp = await client.post(f"/v2/repo/blobs/uploads/?digest={EMPTY_SHA256}", data=b"")
    assert resp.status == 201, await resp.text()
    assert resp.headers["Docker-Content-Digest"] == EMPTY_SHA256
    assert await _head_blob(client, "repo", EMPTY_SHA256) == 200


async def test_c33_single_post_digest_mismatch(client: Client, settings: Settings) -> None:
    data = random_bytes(300)
    claimed = sha256(b"something else")
    resp = await client.post(f"/v2/repo/blobs/uploads/?digest={claimed}", data=data)
    await assert_error(resp, 400, "DIGEST_INVALID")
    assert await _head_blob(client, "repo", claimed) == 404
    assert await _head_blob(client, "repo", sha256(data)) == 404
    assert await stored_copies(client, data) == 0


async def test_single_post_unsupported_digest(client: Client) -> None:
    resp = await client.post("/v2/repo/blobs/uploads/?digest=md5:" + "a" * 32, data=b"abc")
    await assert_error(resp, 400, "DIGEST_INVALID")
    resp = await client.post("/v2/repo/blobs/uploads/?digest=sha256:xyz", data=b"abc")
    await assert_error(resp, 400, "DIGEST_INVALID")


async def test_c34_single_post_truncated_body(client: Client, settings: Settings) -> None:
    data = random_bytes(100)
    digest = sha256(data + random_bytes(100))
    resp = await raw_request(
        client,
        "POST",
        f"/v2/repo/blobs/uploads/?digest={digest}",
        body=data,
        declared_length=200,
        hang_up=True,
    )
    if resp is not None:
        assert resp.status == 400, (resp.status, resp.body[:300])
        assert resp.json()["errors"][0]["code"] == "SIZE_INVALID"
    assert await _head_blob(client, "repo", digest) == 404
    assert await _head_blob(client, "repo", sha256(data)) == 404
    assert await stored_copies(client, data) == 0


async def test_c34_monolithic_put_truncated_body(client: Client) -> None:
    data = random_bytes(100)
    full = data + random_bytes(100)
    location = await start_upload(client, "repo")
    resp = await raw_request(
        client,
        "PUT",
        with_query(location, digest=sha256(full)),
        body=data,
        declared_length=200,
        hang_up=True,
    )
    if resp is not None:
        assert resp.status == 400, (resp.status, resp.body[:300])
    assert await _head_blob(client, "repo", sha256(full)) == 404
    assert await _head_blob(client, "repo", sha256(data)) == 404


async def test_c35_put_without_digest(client: Client) -> None:
    location = await start_upload(client, "repo")
    resp = await client.put(location, data=b"hello")
    await assert_error(resp, 400, "DIGEST_INVALID")
    assert await _head_blob(client, "repo", sha256(b"hello")) == 404


async def test_c36_put_malformed_digest(client: Client) -> None:
    location = await start_upload(client, "repo")
    resp = await client.put(with_query(location, digest="sha256:xyz"), data=b"hello")
    await assert_error(resp, 400, "DIGEST_INVALID")


async def test_put_unsupported_digest_algorithm(client: Client) -> None:
    location = await start_upload(client, "repo")
    resp = await client.put(with_query(location, digest="md5:" + "a" * 32), data=b"hello")
    await assert_error(resp, 400, "DIGEST_INVALID")


async def test_c37_put_wrong_digest(client: Client, settings: Settings) -> None:
    data = random_bytes(100)
    wrong = sha256(b"not the data")
    location = await start_upload(client, "repo")
    resp = await client.put(with_query(location, digest=wrong), data=data)
    await assert_error(resp, 400, "DIGEST_INVALID")
    assert await _head_blob(client, "repo", wrong) == 404
    assert await _head_blob(client, "repo", sha256(data)) == 404
    # Decision §6.7: the session is ended.
    await assert_error(await client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
    assert await stored_copies(client, data) == 0


async def test_s67_several_digest_params_all_checked(client: Client) -> None:
    data = random_bytes(100)
    location = await start_upload(client, "repo")
    good = sha256(data)
    target = local(location) + ("&" if "?" in local(location) else "?")
    target += f"digest={good}&digest={sha256(b'wrong')}"
    resp = await client.put(target, data=data)
    await assert_error(resp, 400, "DIGEST_INVALID")
    assert await _head_blob(client, "repo", good) == 404

    location = await start_upload(client, "repo")
    target = local(location) + ("&" if "?" in local(location) else "?")
    target += f"digest={good}&digest={sha512(data)}"
    resp = await client.put(target, data=data)
    assert resp.status == 201, await resp.text()
    assert await _head_blob(client, "repo", good) == 200


async def test_c38_empty_blob(client: Client) -> None:
    location = await start_upload(client, "repo")
    resp = await client.put(with_query(location, digest=EMPTY_SHA256), data=b"")
    assert resp.status == 201, await resp.text()
    assert resp.headers["Docker-Content-Digest"] == EMPTY_SHA256
    resp = await client.get(f"/v2/repo/blobs/{EMPTY_SHA256}")
    assert resp.status == 200
    assert await resp.read() == b""


async def test_c39_sha512_upload(client: Client) -> None:
    data = random_bytes(200)
    digest = sha512(data)
    location = await start_upload(client, "repo")
    resp = await client.put(with_query(location, digest=digest), data=data)
    assert resp.status == 201, await resp.text()
    assert resp.headers["Docker-Content-Digest"] == digest
    assert path_of(resp.headers["Location"]) == f"/v2/repo/blobs/{digest}"
    resp = await client.get(f"/v2/repo/blobs/{digest}")
    assert resp.status == 200
    assert resp.headers["Docker-Content-Digest"] == digest
    assert await resp.read() == data


async def test_c39_sha512_single_post(client: Client) -> None:
    data = random_bytes(200)
    digest = sha512(data)
    resp = await client.post(f"/v2/repo/blobs/uploads/?digest={digest}", data=data)
    assert resp.status == 201, await resp.text()
    assert resp.headers["Docker-Content-Digest"] == digest
    resp = await client.head(f"/v2/repo/blobs/{digest}")
    assert resp.status == 200
    assert resp.headers["Content-Length"] == "200"


async def test_c39_sha512_mismatch(client: Client) -> None:
    location = await start_upload(client, "repo")
    resp = await client.put(with_query(location, digest=sha512(b"other")), data=b"data")
    await assert_error(resp, 400, "DIGEST_INVALID")


async def test_c40_blob_invisible_mid_upload(client: Client) -> None:
    data = random_bytes(20)
    digest = sha256(data)
    location = await start_upload(client, "repo")
    resp = await client.patch(location, data=data, headers={"Content-Range": "0-19"})
    assert resp.status == 202
    assert await _head_blob(client, "repo", digest) == 404
    await assert_error(await client.get(f"/v2/repo/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    resp = await client.put(with_query(local(resp.headers["Location"]), digest=digest))
    assert resp.status == 201
    assert await _head_blob(client, "repo", digest) == 200


async def test_c41_concurrent_uploads_same_blob(client: Client, settings: Settings) -> None:
    data = random_bytes(256 * 1024)
    digest = sha256(data)

    async def upload() -> int:
        location = await start_upload(client, "repo")
        half = len(data) // 2
        resp = await client.patch(
            location, data=data[:half], headers={"Content-Range": f"0-{half - 1}"}
        )
        assert resp.status == 202
        resp = await client.put(
            with_query(local(resp.headers["Location"]), digest=digest), data=data[half:]
        )
        return resp.status

    statuses = await asyncio.gather(upload(), upload(), upload())
    assert statuses == [201, 201, 201]
    resp = await client.get(f"/v2/repo/blobs/{digest}")
    assert resp.status == 200
    assert await resp.read() == data
    # U-4: one stored copy, and no partial upload data left behind.
    assert await stored_copies(client, data) == 1


async def test_c41_concurrent_uploads_two_repositories(client: Client, settings: Settings) -> None:
    data = random_bytes(64 * 1024)
    digests = await asyncio.gather(push_blob(client, "a", data), push_blob(client, "b", data))
    assert digests == [sha256(data)] * 2
    for repo in ("a", "b"):
        resp = await client.get(f"/v2/{repo}/blobs/{sha256(data)}")
        assert await resp.read() == data
    assert await stored_copies(client, data) == 1


async def test_push_same_blob_twice(client: Client) -> None:
    data = random_bytes(100)
    assert await push_blob(client, "repo", data) == await push_blob(client, "repo", data)
    resp = await client.get(f"/v2/repo/blobs/{sha256(data)}")
    assert await resp.read() == data


async def test_post_with_body_and_no_digest_starts_session(client: Client) -> None:
    # Without `digest`, POST is a plain session start (§6.2).
    resp = await client.post("/v2/repo/blobs/uploads/")
    assert resp.status == 202
    assert_upload_range(resp, 0)


async def test_post_creates_repository_lazily(client: Client) -> None:
    # A session alone does not make the repository exist for tags/catalog (C-3).
    await start_upload(client, "fresh/repo")
    await assert_error(await client.get("/v2/fresh/repo/tags/list"), 404, "NAME_UNKNOWN")
    resp = await client.get("/v2/_catalog")
    assert "fresh/repo" not in (await resp.json())["repositories"]


async def test_expect_100_continue(client: Client) -> None:
    data = random_bytes(1000)
    digest = sha256(data)
    location = await start_upload(client, "repo")
    resp = await client.put(with_query(location, digest=digest), data=data, expect100=True)
    assert resp.status == 201, await resp.text()
    assert await _head_blob(client, "repo", digest) == 200


async def test_c153_upload_range_format_everywhere(client: Client) -> None:
    resp = await client.post("/v2/repo/blobs/uploads/")
    assert_upload_range(resp, 0)
    location = local(resp.headers["Location"])
    resp = await client.get(location)
    assert resp.status == 204
    assert_upload_range(resp, 0)
    resp = await client.patch(location, data=b"0123456789", headers={"Content-Range": "0-9"})
    assert_upload_range(resp, 9)
    resp = await client.patch(location, data=b"abc")
    assert_upload_range(resp, 12)
    resp = await client.patch(location, data=b"zz", headers={"Content-Range": "0-1"})
    assert resp.status == 416
    assert_upload_range(resp, 12)
    resp = await client.get(location)
    assert_upload_range(resp, 12)
    for value in (resp.headers["Range"],):
        assert not value.startswith("bytes")
