"""§16 cases 20-28: blob pull (§5)."""

from __future__ import annotations

import aiohttp

from moorage.api.context import SETTINGS
from tests.api.helpers import (
    VERSION,
    VERSION_HEADER,
    Client,
    assert_error,
    push_blob,
    push_image,
    random_bytes,
    sha256,
)
from tests.conftest import MakeClient


async def test_c20_head_blob(client: Client) -> None:
    data = random_bytes(123)
    digest = await push_blob(client, "repo", data)
    resp = await client.head(f"/v2/repo/blobs/{digest}")
    assert resp.status == 200
    assert resp.headers["Content-Length"] == "123"
    assert resp.headers["Docker-Content-Digest"] == digest
    assert resp.headers["Accept-Ranges"] == "bytes"
    assert resp.headers["ETag"] == f'"{digest}"'
    assert await resp.read() == b""


async def test_c21_get_blob(client: Client) -> None:
    data = random_bytes(1000)
    digest = await push_blob(client, "repo", data)
    resp = await client.get(f"/v2/repo/blobs/{digest}")
    assert resp.status == 200
    assert await resp.read() == data
    assert resp.headers["Content-Type"] == "application/octet-stream"
    assert resp.headers["Docker-Content-Digest"] == digest
    assert resp.headers["ETag"] == f'"{digest}"'
    assert resp.headers["Content-Length"] == "1000"
    assert resp.headers["Accept-Ranges"] == "bytes"
    assert resp.headers[VERSION_HEADER] == VERSION


async def test_c22_unknown_blob(client: Client) -> None:
    await push_blob(client, "repo", random_bytes(10))
    unknown = sha256(random_bytes(10))
    await assert_error(await client.get(f"/v2/repo/blobs/{unknown}"), 404, "BLOB_UNKNOWN")
    resp = await client.head(f"/v2/repo/blobs/{unknown}")
    assert resp.status == 404
    assert await resp.read() == b""
    assert resp.headers[VERSION_HEADER] == VERSION


async def test_c23_blob_not_linked_in_other_repository(client: Client) -> None:
    data = random_bytes(50)
    digest = await push_blob(client, "a", data)
    await push_blob(client, "b", random_bytes(10))
    await assert_error(await client.get(f"/v2/b/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    resp = await client.head(f"/v2/b/blobs/{digest}")
    assert resp.status == 404


async def test_c24_range_prefix(client: Client) -> None:
    data = random_bytes(100)
    digest = await push_blob(client, "repo", data)
    resp = await client.get(f"/v2/repo/blobs/{digest}", headers={"Range": "bytes=0-3"})
    assert resp.status == 206
    assert resp.headers["Content-Range"] == "bytes 0-3/100"
    assert await resp.read() == data[:4]


async def test_b4_range_middle_and_open_end(client: Client) -> None:
    data = random_bytes(100)
    digest = await push_blob(client, "repo", data)
    resp = await client.get(f"/v2/repo/blobs/{digest}", headers={"Range": "bytes=10-19"})
    assert resp.status == 206
    assert resp.headers["Content-Range"] == "bytes 10-19/100"
    assert await resp.read() == data[10:20]
    resp = await client.get(f"/v2/repo/blobs/{digest}", headers={"Range": "bytes=90-"})
    assert resp.status == 206
    assert resp.headers["Content-Range"] == "bytes 90-99/100"
    assert await resp.read() == data[90:]
    # An end past the size is clamped (RFC 9110).
    resp = await client.get(f"/v2/repo/blobs/{digest}", headers={"Range": "bytes=95-500"})
    assert resp.status == 206
    assert resp.headers["Content-Range"] == "bytes 95-99/100"
    assert await resp.read() == data[95:]


async def test_c25_range_suffix(client: Client) -> None:
    data = random_bytes(100)
    digest = await push_blob(client, "repo", data)
    resp = await client.get(f"/v2/repo/blobs/{digest}", headers={"Range": "bytes=-5"})
    assert resp.status == 206
    assert resp.headers["Content-Range"] == "bytes 95-99/100"
    assert await resp.read() == data[-5:]


async def test_c26_range_unsatisfiable(client: Client) -> None:
    data = random_bytes(100)
    digest = await push_blob(client, "repo", data)
    resp = await client.get(f"/v2/repo/blobs/{digest}", headers={"Range": "bytes=100-"})
    assert resp.status == 416
    assert resp.headers["Content-Range"] == "bytes */100"


async def test_b4_multi_range_serves_whole_body(client: Client) -> None:
    data = random_bytes(100)
    digest = await push_blob(client, "repo", data)
    resp = await client.get(f"/v2/repo/blobs/{digest}", headers={"Range": "bytes=0-1,5-6"})
    assert resp.status == 200
    assert await resp.read() == data


async def test_c27_if_none_match(client: Client) -> None:
    data = random_bytes(100)
    digest = await push_blob(client, "repo", data)
    resp = await client.get(f"/v2/repo/blobs/{digest}", headers={"If-None-Match": f'"{digest}"'})
    assert resp.status == 304
    assert await resp.read() == b""
    other = sha256(b"other")
    resp = await client.get(f"/v2/repo/blobs/{digest}", headers={"If-None-Match": f'"{other}"'})
    assert resp.status == 200
    assert await resp.read() == data


async def test_c28_unknown_repository(client: Client) -> None:
    digest = await push_blob(client, "repo", random_bytes(10))
    resp = await client.get(f"/v2/nosuchrepo/blobs/{digest}")
    body = await assert_error(resp, 404)
    assert body["errors"][0]["code"] in ("BLOB_UNKNOWN", "NAME_UNKNOWN")
    resp = await client.head(f"/v2/nosuchrepo/blobs/{digest}")
    assert resp.status == 404


async def test_b7_manifest_is_not_a_blob(client: Client) -> None:
    image = await push_image(client, "repo", "v1")
    await assert_error(await client.get(f"/v2/repo/blobs/{image.digest}"), 404, "BLOB_UNKNOWN")


async def test_empty_blob_pull(client: Client) -> None:
    digest = await push_blob(client, "repo", b"")
    resp = await client.get(f"/v2/repo/blobs/{digest}")
    assert resp.status == 200
    assert await resp.read() == b""
    assert resp.headers["Content-Length"] == "0"
    assert resp.headers["Docker-Content-Digest"] == digest


async def test_storage_redirect_sends_clients_to_a_presigned_url(make_client: MakeClient) -> None:
    """`storage.redirect: true`: where the driver can presign a URL (S3), a blob GET answers
    307 to it and the URL serves the blob's bytes; HEAD is still answered by the registry. A
    filesystem has no such URL: the registry sends the bytes itself (200)."""
    client = await make_client(storage={"redirect": True})
    data = random_bytes(100_000)
    digest = await push_blob(client, "redirect/repo", data)
    resp = await client.get(f"/v2/redirect/repo/blobs/{digest}", allow_redirects=False)
    if client.app[SETTINGS].storage.driver == "s3":
        assert resp.status == 307, await resp.text()
        assert resp.headers["Docker-Content-Digest"] == digest
        location = resp.headers["Location"]
        async with aiohttp.ClientSession() as session, session.get(location) as direct:
            assert direct.status == 200  # what the client does next
            assert await direct.read() == data
    else:
        assert resp.status == 200
        assert await resp.read() == data
    head = await client.head(f"/v2/redirect/repo/blobs/{digest}")
    assert head.status == 200 and int(head.headers["Content-Length"]) == len(data)
