"""§16 cases 42-62: chunked and streamed uploads (§6.5-6.8). Case 63 is a process-level test."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from unittest import mock

from moorage.config import Settings
from tests.api.helpers import (
    Client,
    assert_error,
    assert_upload_range,
    local,
    path_of,
    random_bytes,
    raw_request,
    sha256,
    start_upload,
    stored_copies,
    with_query,
)

CHUNK1 = b"0123456789"
CHUNK2 = b"abcdefghij"
BLOB = CHUNK1 + CHUNK2
DIGEST = sha256(BLOB)


async def _patch(client: Client, location: str, data: bytes, content_range: str | None = None):  # type: ignore[no-untyped-def]
    headers = {"Content-Type": "application/octet-stream"}
    if content_range is not None:
        headers["Content-Range"] = content_range
    return await client.patch(location, data=data, headers=headers)


async def _status_range(client: Client, location: str) -> str:
    resp = await client.get(location)
    assert resp.status == 204, await resp.text()
    return resp.headers["Range"]


async def _patch_once_free(client: Client, location: str, data: bytes, content_range: str):  # type: ignore[no-untyped-def]
    """PATCH as a client does after a failed chunk: a 416 at the right offset means the server
    is still winding up the abandoned request (it learns of a hang-up asynchronously), so
    wait a little and send again."""
    deadline = time.monotonic() + 10
    while True:
        resp = await _patch(client, location, data, content_range)
        if resp.status != 416 or time.monotonic() > deadline:
            return resp
        assert resp.headers["Range"] == f"0-{int(content_range.split('-')[0]) - 1}"
        await asyncio.sleep(0.05)


def _assert_416(resp, end: int) -> None:  # type: ignore[no-untyped-def]
    assert resp.status == 416
    assert "Location" in resp.headers
    assert_upload_range(resp, end)


async def test_c42_first_chunk(client: Client) -> None:
    location = await start_upload(client, "repo")
    upload_id = location.rstrip("/").split("?")[0].rsplit("/", 1)[1]
    resp = await _patch(client, location, CHUNK1, "0-9")
    assert resp.status == 202, await resp.text()
    assert_upload_range(resp, 9)
    assert path_of(resp.headers["Location"]).startswith("/v2/repo/blobs/uploads/")
    assert resp.headers["Docker-Upload-UUID"] == upload_id
    assert resp.headers["Content-Length"] == "0"


async def test_c43_second_chunk_and_close(client: Client) -> None:
    location = await start_upload(client, "repo")
    resp = await _patch(client, location, CHUNK1, "0-9")
    resp = await _patch(client, local(resp.headers["Location"]), CHUNK2, "10-19")
    assert resp.status == 202, await resp.text()
    assert_upload_range(resp, 19)
    resp = await client.put(with_query(local(resp.headers["Location"]), digest=DIGEST))
    assert resp.status == 201, await resp.text()
    assert resp.headers["Docker-Content-Digest"] == DIGEST
    assert path_of(resp.headers["Location"]) == f"/v2/repo/blobs/{DIGEST}"
    resp = await client.get(f"/v2/repo/blobs/{DIGEST}")
    assert await resp.read() == BLOB


async def test_c44_first_chunk_not_at_zero(client: Client) -> None:
    location = await start_upload(client, "repo")
    resp = await _patch(client, location, b"56789", "5-9")
    _assert_416(resp, 0)
    assert await _status_range(client, location) == "0-0"


async def test_c45_patch_repeat_chunk_is_416(client: Client) -> None:
    location = await start_upload(client, "repo")
    assert (await _patch(client, location, CHUNK1, "0-9")).status == 202
    resp = await _patch(client, location, CHUNK1, "0-9")
    _assert_416(resp, 9)
    # The session is still usable.
    resp = await _patch(client, location, CHUNK2, "10-19")
    assert resp.status == 202
    resp = await client.put(with_query(location, digest=DIGEST))
    assert resp.status == 201, await resp.text()
    resp = await client.get(f"/v2/repo/blobs/{DIGEST}")
    assert await resp.read() == BLOB


async def test_c46_gap_is_416(client: Client) -> None:
    location = await start_upload(client, "repo")
    assert (await _patch(client, location, CHUNK1, "0-9")).status == 202
    resp = await _patch(client, location, b"fghij", "15-19")
    _assert_416(resp, 9)
    assert await _status_range(client, location) == "0-9"


async def test_overlap_is_416(client: Client) -> None:
    location = await start_upload(client, "repo")
    assert (await _patch(client, location, CHUNK1, "0-9")).status == 202
    resp = await _patch(client, location, b"9abcdefghij", "9-19")
    _assert_416(resp, 9)


async def test_c47_bad_content_range_format(client: Client) -> None:
    location = await start_upload(client, "repo")
    for value in ["bytes 0-9/20", "bytes=0-9", "0-", "-9", "0_9", "a-b", "0-9/10", " 0-9x"]:
        resp = await _patch(client, location, CHUNK1, value)
        _assert_416(resp, 0)
    assert await _status_range(client, location) == "0-0"


async def test_c48_reversed_range(client: Client) -> None:
    location = await start_upload(client, "repo")
    resp = await _patch(client, location, CHUNK1, "9-0")
    _assert_416(resp, 0)
    assert await _status_range(client, location) == "0-0"


async def test_c49_content_length_mismatch(client: Client) -> None:
    location = await start_upload(client, "repo")
    resp = await _patch(client, location, CHUNK1[:8], "0-9")
    await assert_error(resp, 400, "SIZE_INVALID")
    assert await _status_range(client, location) == "0-0"
    # Still usable afterwards.
    assert (await _patch(client, location, CHUNK1, "0-9")).status == 202


async def test_c49_content_length_mismatch_after_chunk(client: Client) -> None:
    location = await start_upload(client, "repo")
    assert (await _patch(client, location, CHUNK1, "0-9")).status == 202
    resp = await _patch(client, location, CHUNK2 + b"extra", "10-19")
    await assert_error(resp, 400, "SIZE_INVALID")
    assert await _status_range(client, location) == "0-9"


async def test_truncated_patch_is_discarded(client: Client) -> None:
    location = await start_upload(client, "repo")
    assert (await _patch(client, location, CHUNK1, "0-9")).status == 202
    resp = await raw_request(
        client,
        "PATCH",
        location,
        headers={"Content-Range": "10-19", "Content-Type": "application/octet-stream"},
        body=CHUNK2[:4],
        declared_length=10,
        hang_up=True,
    )
    if resp is not None:
        assert resp.status >= 400
    # Offset unchanged; the chunk can be sent again.
    assert await _status_range(client, location) == "0-9"
    assert (await _patch_once_free(client, location, CHUNK2, "10-19")).status == 202
    resp = await client.put(with_query(location, digest=DIGEST))
    assert resp.status == 201, await resp.text()
    assert await (await client.get(f"/v2/repo/blobs/{DIGEST}")).read() == BLOB


async def test_truncated_streamed_patch_is_discarded(client: Client) -> None:
    location = await start_upload(client, "repo")
    assert (await _patch(client, location, CHUNK1)).status == 202
    resp = await raw_request(
        client, "PATCH", location, body=b"abc", declared_length=1000, hang_up=True
    )
    if resp is not None:
        assert resp.status >= 400
    assert await _status_range(client, location) == "0-9"


async def test_c50_status_after_chunks(client: Client) -> None:
    location = await start_upload(client, "repo")
    upload_id = (await client.get(location)).headers["Docker-Upload-UUID"]
    await _patch(client, location, CHUNK1, "0-9")
    await _patch(client, location, CHUNK2, "10-19")
    resp = await client.get(location)
    assert resp.status == 204
    assert_upload_range(resp, 19)
    assert path_of(resp.headers["Location"]).startswith("/v2/repo/blobs/uploads/")
    assert resp.headers["Docker-Upload-UUID"] == upload_id
    assert resp.headers.get("Content-Length", "0") == "0"
    assert await resp.read() == b""


async def test_c51_original_location_stays_valid(client: Client) -> None:
    original = await start_upload(client, "repo")
    resp = await _patch(client, original, CHUNK1, "0-9")
    latest = local(resp.headers["Location"])
    resp = await _patch(client, latest, CHUNK2, "10-19")
    assert resp.status == 202
    resp = await client.get(original)
    assert resp.status == 204
    assert_upload_range(resp, 19)
    # And the original URL can still close the upload (U-1).
    resp = await client.put(with_query(original, digest=DIGEST))
    assert resp.status == 201, await resp.text()


async def test_c52_status_of_fresh_session(client: Client) -> None:
    location = await start_upload(client, "repo")
    resp = await client.get(location)
    assert resp.status == 204
    assert_upload_range(resp, 0)
    assert "Docker-Upload-UUID" in resp.headers
    assert "Location" in resp.headers


async def test_c53_streamed_chunked_patch_without_content_type(client: Client) -> None:
    location = await start_upload(client, "repo")
    resp = await raw_request(client, "PATCH", location, chunks=[CHUNK1[:3], CHUNK1[3:], CHUNK2])
    assert resp is not None
    assert resp.status == 202, (resp.status, resp.body[:300])
    assert resp.headers["Range"] == "0-19"
    assert "Location" in resp.headers


async def test_c53_streamed_patch_client_chunked(client: Client) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield CHUNK1
        yield CHUNK2

    location = await start_upload(client, "repo")
    resp = await client.patch(location, data=body())
    assert resp.status == 202, await resp.text()
    assert_upload_range(resp, 19)


async def test_c54_streamed_patch_then_empty_put(client: Client) -> None:
    data = random_bytes(100_000)
    location = await start_upload(client, "repo")
    resp = await raw_request(
        client, "PATCH", location, chunks=[data[i : i + 8192] for i in range(0, len(data), 8192)]
    )
    assert resp is not None and resp.status == 202
    assert resp.headers["Range"] == f"0-{len(data) - 1}"
    resp = await client.put(with_query(local(resp.headers["Location"]), digest=sha256(data)))
    assert resp.status == 201, await resp.text()
    assert await (await client.get(f"/v2/repo/blobs/{sha256(data)}")).read() == data


async def test_streamed_patches_append(client: Client) -> None:
    location = await start_upload(client, "repo")
    resp = await _patch(client, location, CHUNK1)
    assert_upload_range(resp, 9)
    resp = await _patch(client, location, CHUNK2)
    assert_upload_range(resp, 19)
    resp = await client.put(with_query(location, digest=DIGEST))
    assert resp.status == 201


async def test_c55_final_chunk_in_put(client: Client) -> None:
    location = await start_upload(client, "repo")
    assert (await _patch(client, location, CHUNK1, "0-9")).status == 202
    resp = await client.put(
        with_query(location, digest=DIGEST),
        data=CHUNK2,
        headers={"Content-Range": "10-19", "Content-Type": "application/octet-stream"},
    )
    assert resp.status == 201, await resp.text()
    assert await (await client.get(f"/v2/repo/blobs/{DIGEST}")).read() == BLOB


async def test_final_chunk_in_put_without_content_range(client: Client) -> None:
    location = await start_upload(client, "repo")
    assert (await _patch(client, location, CHUNK1, "0-9")).status == 202
    resp = await client.put(with_query(location, digest=DIGEST), data=CHUNK2)
    assert resp.status == 201, await resp.text()
    assert await (await client.get(f"/v2/repo/blobs/{DIGEST}")).read() == BLOB


async def test_c56_final_put_out_of_order(client: Client) -> None:
    location = await start_upload(client, "repo")
    assert (await _patch(client, location, CHUNK1, "0-9")).status == 202
    resp = await client.put(
        with_query(location, digest=DIGEST), data=b"cdefghij", headers={"Content-Range": "12-19"}
    )
    _assert_416(resp, 9)
    assert (await client.head(f"/v2/repo/blobs/{DIGEST}")).status == 404
    assert await _status_range(client, location) == "0-9"


async def test_c57_patch_content_type_ignored(client: Client) -> None:
    location = await start_upload(client, "repo")
    resp = await client.patch(
        location, data=CHUNK1, headers={"Content-Type": "text/plain", "Content-Range": "0-9"}
    )
    assert resp.status == 202, await resp.text()
    resp = await client.patch(location, data=CHUNK2, headers={"Content-Type": "text/plain"})
    assert resp.status == 202, await resp.text()
    assert_upload_range(resp, 19)


async def test_c58_unknown_session(client: Client) -> None:
    await start_upload(client, "repo")
    target = f"/v2/repo/blobs/uploads/{uuid.uuid4()}"
    await assert_error(await _patch(client, target, CHUNK1, "0-9"), 404, "BLOB_UPLOAD_UNKNOWN")
    await assert_error(await client.get(target), 404, "BLOB_UPLOAD_UNKNOWN")
    await assert_error(
        await client.put(f"{target}?digest={DIGEST}", data=BLOB), 404, "BLOB_UPLOAD_UNKNOWN"
    )
    await assert_error(await client.delete(target), 404, "BLOB_UPLOAD_UNKNOWN")
    assert (await client.head(f"/v2/repo/blobs/{DIGEST}")).status == 404


async def test_c58_non_uuid_session_id(client: Client) -> None:
    for upload_id in ["not-a-uuid", "0", "x" * 300]:
        resp = await client.get(f"/v2/repo/blobs/uploads/{upload_id}")
        await assert_error(resp, 404, "BLOB_UPLOAD_UNKNOWN")


async def test_c59_session_bound_to_repository(client: Client) -> None:
    location = await start_upload(client, "a")
    upload_id = location.split("?")[0].rstrip("/").rsplit("/", 1)[1]
    other = f"/v2/b/blobs/uploads/{upload_id}"
    await assert_error(await _patch(client, other, CHUNK1, "0-9"), 404, "BLOB_UPLOAD_UNKNOWN")
    await assert_error(await client.get(other), 404, "BLOB_UPLOAD_UNKNOWN")
    await assert_error(
        await client.put(f"{other}?digest={sha256(b'')}"), 404, "BLOB_UPLOAD_UNKNOWN"
    )
    await assert_error(await client.delete(other), 404, "BLOB_UPLOAD_UNKNOWN")
    # The session in A is untouched.
    assert await _status_range(client, location) == "0-0"
    assert (await _patch(client, location, CHUNK1, "0-9")).status == 202


async def test_c59_session_not_usable_from_prefix_repository(client: Client) -> None:
    location = await start_upload(client, "team/app")
    upload_id = location.split("?")[0].rstrip("/").rsplit("/", 1)[1]
    for repo in ("team", "team/app/x", "library/team"):
        resp = await client.get(f"/v2/{repo}/blobs/uploads/{upload_id}")
        await assert_error(resp, 404, "BLOB_UPLOAD_UNKNOWN")


async def test_c60_cancel(client: Client, settings: Settings) -> None:
    location = await start_upload(client, "repo")
    partial = random_bytes(4096)
    assert (await _patch(client, location, partial)).status == 202
    resp = await client.delete(location)
    assert resp.status == 204
    # §6.8: partial data released.
    assert await stored_copies(client, partial) == 0

    location = await start_upload(client, "repo")
    assert (await _patch(client, location, CHUNK1, "0-9")).status == 202
    resp = await client.delete(location)
    assert resp.status == 204
    await assert_error(await client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
    await assert_error(await _patch(client, location, CHUNK2, "10-19"), 404, "BLOB_UPLOAD_UNKNOWN")
    await assert_error(
        await client.put(with_query(location, digest=sha256(CHUNK1))), 404, "BLOB_UPLOAD_UNKNOWN"
    )
    await assert_error(await client.delete(location), 404, "BLOB_UPLOAD_UNKNOWN")
    assert (await client.head(f"/v2/repo/blobs/{sha256(CHUNK1)}")).status == 404


async def test_c61_put_twice(client: Client) -> None:
    location = await start_upload(client, "repo")
    resp = await client.put(with_query(location, digest=DIGEST), data=BLOB)
    assert resp.status == 201
    resp = await client.put(with_query(location, digest=DIGEST), data=BLOB)
    await assert_error(resp, 404, "BLOB_UPLOAD_UNKNOWN")
    await assert_error(await client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
    await assert_error(await _patch(client, location, CHUNK1), 404, "BLOB_UPLOAD_UNKNOWN")


async def test_c62_idle_session_expires(make_client, tmp_path) -> None:  # type: ignore[no-untyped-def]
    datadir = tmp_path / "ttl"
    client = await make_client(uploads={"ttl": 60}, datadir=datadir)
    location = await start_upload(client, "repo")
    partial = random_bytes(4096)
    assert (await _patch(client, location, partial)).status == 202
    assert await stored_copies(client, partial) == 1
    # Still there before the TTL (this also gives a token-auth client its token in real time).
    assert (await client.get(location)).status == 204
    real_time = time.time
    with mock.patch("time.time", side_effect=lambda: real_time() + 120):
        resp = await _patch(client, location, CHUNK2, "4096-4105")
        await assert_error(resp, 404, "BLOB_UPLOAD_UNKNOWN")
        await assert_error(await client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
    # U-2: partial data deleted.
    assert await stored_copies(client, partial) == 0
    # Gone for good, not just hidden while the clock is ahead.
    await assert_error(await client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
    await assert_error(
        await client.put(with_query(location, digest=sha256(partial))), 404, "BLOB_UPLOAD_UNKNOWN"
    )


async def test_c62_active_session_does_not_expire(make_client) -> None:  # type: ignore[no-untyped-def]
    # The TTL is idle time: a session touched within the TTL lives on.
    client = await make_client(uploads={"ttl": 60})
    location = await start_upload(client, "repo")
    real_time = time.time
    with mock.patch("time.time", side_effect=lambda: real_time() + 40):
        assert (await _patch(client, location, CHUNK1, "0-9")).status == 202
    with mock.patch("time.time", side_effect=lambda: real_time() + 80):
        assert (await _patch(client, location, CHUNK2, "10-19")).status == 202
        resp = await client.put(with_query(location, digest=DIGEST))
        assert resp.status == 201, await resp.text()
