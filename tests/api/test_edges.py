"""Issue 9 item 11: protocol edges (empty re-push, If-Range, many ranges, encoded path parts)."""

from __future__ import annotations

import pytest

from tests.api.helpers import (
    EMPTY_SHA256,
    Client,
    assert_raw_error,
    local,
    push_blob,
    random_bytes,
    raw_request,
    sha256,
    start_upload,
    with_query,
)

# --- a zero-length blob pushed again ---------------------------------------------------------


async def _push_empty_post_put(client: Client, repo: str) -> None:
    location = await start_upload(client, repo)
    resp = await client.put(with_query(location, digest=EMPTY_SHA256), data=b"")
    assert resp.status == 201, await resp.text()
    assert resp.headers["Docker-Content-Digest"] == EMPTY_SHA256


async def _push_empty_single_post(client: Client, repo: str) -> None:
    resp = await client.post(f"/v2/{repo}/blobs/uploads/?digest={EMPTY_SHA256}", data=b"")
    assert resp.status == 201, await resp.text()
    assert resp.headers["Docker-Content-Digest"] == EMPTY_SHA256


PUSHES = {"post-put": _push_empty_post_put, "single-post": _push_empty_single_post}


@pytest.mark.parametrize("second", sorted(PUSHES))
@pytest.mark.parametrize("first", sorted(PUSHES))
async def test_empty_blob_pushed_again_is_201(client: Client, first: str, second: str) -> None:
    await PUSHES[first](client, "repo")
    await PUSHES[second](client, "repo")
    await PUSHES[second](client, "other")
    for repo in ("repo", "other"):
        resp = await client.get(f"/v2/{repo}/blobs/{EMPTY_SHA256}")
        assert resp.status == 200
        assert await resp.read() == b""


# --- If-Range ----------------------------------------------------------------------------------


async def test_if_range_with_our_etag_gives_the_range(client: Client) -> None:
    data = random_bytes(100)
    digest = await push_blob(client, "repo", data)
    headers = {"Range": "bytes=10-19", "If-Range": f'"{digest}"'}
    resp = await client.get(f"/v2/repo/blobs/{digest}", headers=headers)
    assert resp.status == 206
    assert resp.headers["Content-Range"] == "bytes 10-19/100"
    assert await resp.read() == data[10:20]


@pytest.mark.parametrize(
    "if_range",
    [
        '"sha256:0000000000000000000000000000000000000000000000000000000000000000"',
        "W/{etag}",  # a weak tag never matches (strong comparison)
        "{etag}x",
        "Wed, 21 Oct 2015 07:28:00 GMT",  # a date: we have no strong date validator
        "Fri, 01 Jan 2100 00:00:00 GMT",
        "",
    ],
    ids=["other etag", "weak etag", "garbled", "past date", "future date", "empty"],
)
async def test_if_range_that_does_not_match_gives_the_whole_blob(
    client: Client, if_range: str
) -> None:
    data = random_bytes(100)
    digest = await push_blob(client, "repo", data)
    headers = {"Range": "bytes=10-19", "If-Range": if_range.format(etag=f'"{digest}"')}
    resp = await client.get(f"/v2/repo/blobs/{digest}", headers=headers)
    assert resp.status == 200
    assert "Content-Range" not in resp.headers
    assert await resp.read() == data


async def test_if_range_that_does_not_match_ignores_an_unsatisfiable_range(
    client: Client,
) -> None:
    data = random_bytes(100)
    digest = await push_blob(client, "repo", data)
    headers = {"Range": "bytes=500-", "If-Range": '"other"'}
    resp = await client.get(f"/v2/repo/blobs/{digest}", headers=headers)
    assert resp.status == 200
    assert await resp.read() == data


# --- many ranges -------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [2, 1000, 5000])
async def test_range_of_many_ranges_gives_the_whole_blob(client: Client, count: int) -> None:
    data = random_bytes(100)
    digest = await push_blob(client, "repo", data)
    ranges = "bytes=" + ",".join(f"{i}-{i}" for i in range(count))
    resp = await raw_request(client, "GET", f"/v2/repo/blobs/{digest}", headers={"Range": ranges})
    assert resp is not None
    assert resp.status == 200, resp.body[:200]
    assert "Content-Range" not in resp.headers
    assert resp.body == data


# --- encoded slashes in references, digests and upload ids -----------------------------------

HEX = "0" * 64


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("GET", "/v2/repo/manifests/sha256:..%2F..%2F..%2Fetc%2Fpasswd"),
        ("HEAD", "/v2/repo/manifests/sha256:..%2F..%2F..%2Fetc%2Fpasswd"),
        # Decoded before routing, these would reach the blob and tags routes (405).
        ("PUT", f"/v2/repo/manifests/sha256:..%2F..%2Fblobs%2Fsha256:{HEX}"),
        ("DELETE", "/v2/repo/manifests/sha256:..%2F..%2Ftags%2Flist"),
        ("GET", f"/v2/repo/blobs/sha256:{HEX}%2F..%2F..%2Fx"),
        ("GET", "/v2/repo/referrers/sha256:..%2F..%2Fx"),
    ],
)
async def test_encoded_slash_in_a_digest_is_digest_invalid(
    client: Client, method: str, target: str
) -> None:
    resp = await raw_request(client, method, target, body=b"{}" if method == "PUT" else b"")
    assert resp is not None
    assert resp.status == 400
    if method != "HEAD":
        assert_raw_error(resp, (400,), "DIGEST_INVALID")


async def test_encoded_slash_in_a_tag_is_manifest_unknown(client: Client) -> None:
    resp = await raw_request(client, "GET", "/v2/repo/manifests/..%2F..%2Ftags%2Flist")
    assert_raw_error(resp, (404,), "MANIFEST_UNKNOWN")


@pytest.mark.parametrize("method", ["GET", "PATCH", "PUT", "DELETE"])
@pytest.mark.parametrize("upload_id", ["..%2F..%2Fmanifests%2Flatest", "a%2Fb", "..%2F..%2F"])
async def test_encoded_slash_in_an_upload_id_is_blob_upload_unknown(
    client: Client, method: str, upload_id: str
) -> None:
    target = f"/v2/repo/blobs/uploads/{upload_id}"
    if method == "PUT":
        target += f"?digest={sha256(b'')}"
    resp = await raw_request(client, method, target)
    assert_raw_error(resp, (404,), "BLOB_UPLOAD_UNKNOWN")


async def test_encoded_slash_cannot_reach_another_repositorys_upload(client: Client) -> None:
    location = await start_upload(client, "victim")
    upload_id = local(location).rsplit("/", 1)[-1].split("?")[0]
    target = f"/v2/repo/blobs/uploads/..%2F..%2F..%2Fvictim%2Fblobs%2Fuploads%2F{upload_id}"
    resp = await raw_request(client, "DELETE", target)
    assert_raw_error(resp, (404,), "BLOB_UPLOAD_UNKNOWN")
    resp = await client.get(location)
    assert resp.status == 204


async def test_percent_encoded_name_still_routes(client: Client) -> None:
    data = random_bytes(10)
    digest = await push_blob(client, "team/app", data)
    resp = await raw_request(client, "GET", f"/v2/team%2Fapp/blobs/{digest}")
    assert resp is not None
    assert resp.status == 200
    assert resp.body == data
    resp = await raw_request(client, "GET", "/v2/team%2F..%2Fapp/tags/list")
    assert_raw_error(resp, (400,), "NAME_INVALID")
