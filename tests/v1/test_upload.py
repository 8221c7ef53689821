"""Section 14 cases 29-49: image upload (contract 4.4.2-4.4.4, 8)."""

from __future__ import annotations

import asyncio
import bz2
import json
import secrets

import pytest

from moorage.api import direct, http
from moorage.content.v1 import _Analysis
from tests.shares import CountedShares
from tests.v1.client import (
    V1Client,
    V1Image,
    assert_error,
    assert_true,
    chunked_frames,
    chunks,
    make_chain,
    make_image,
    new_id,
    payload_checksum,
    raw_exchange,
)
from tests.v1.conftest import blob_stored, staged_uploads, stored, v2_status

BEING_UPLOADED = "Image is being uploaded, retry later"


async def _not_readable(v1: V1Client, image: V1Image, repository: str = "foo/bar") -> None:
    """Neither v1 nor v2 serve the image or its layer."""
    for part in ("json", "ancestry", "layer"):
        reply = await v1.call("GET", f"/v1/images/{image.id}/{part}")
        assert reply.status in (400, 404), reply
    assert await v2_status(v1, "HEAD", f"/v2/{repository}/blobs/{image.blob_digest}") == 404
    assert_error(await v1.put_tag(repository, "t", image.id, None), 400, BEING_UPLOADED)


async def test_v1_c29_put_json(v1: V1Client) -> None:
    (p,) = make_chain(1)
    assert_true(await v1.put_json(p, None))
    row = await stored(v1, p.id)
    assert row is not None and row.state == "uploading" and row.json == p.json


async def test_v1_c30_reads_while_uploading(v1: V1Client) -> None:
    (p,) = make_chain(1)
    assert_true(await v1.put_json(p, None))
    for part in ("json", "ancestry", "layer"):
        assert_error(await v1.call("GET", f"/v1/images/{p.id}/{part}"), 400, BEING_UPLOADED)


async def test_v1_c31_json_must_describe_the_image(v1: V1Client) -> None:
    (p,) = make_chain(1)
    other = json.loads(p.json) | {"id": new_id()}
    without = {k: v for k, v in json.loads(p.json).items() if k != "id"}
    bodies = [json.dumps(other).encode(), json.dumps(without).encode(), b"[]", b"not json"]
    for body in bodies:
        assert_error(await v1.put_json(p, None, body), 400)
    assert await stored(v1, p.id) is None


async def test_v1_c32_json_field_types(v1: V1Client) -> None:
    (p,) = make_chain(1)
    for change in ({"created": 5}, {"parent": "abc"}):
        body = json.dumps(json.loads(p.json) | change).encode()
        assert_error(await v1.put_json(p, None, body), 400)
    assert await stored(v1, p.id) is None


async def test_v1_c33_parent_must_be_complete(v1: V1Client) -> None:
    p, c = make_chain(2)
    assert_error(await v1.put_json(c, None), 400, "Image depends on a non existing parent")
    assert_true(await v1.put_json(p, None))
    assert_error(await v1.put_json(c, None), 400, "Image depends on a non existing parent")
    assert await stored(v1, c.id) is None
    selfish = json.dumps(json.loads(c.json) | {"parent": c.id}).encode()
    assert_error(await v1.put_json(c, None, selfish), 400)
    assert await stored(v1, c.id) is None


async def test_v1_c34_invalid_image_ids(v1: V1Client) -> None:
    (p,) = make_chain(1)
    for bad in (p.id.upper(), p.id[:63], p.id + "a"):
        reply = await v1.call(
            "PUT",
            f"/v1/images/{bad}/json",
            data=p.json,
            headers={"Content-Type": "application/json"},
        )
        assert_error(reply, 404, "Invalid image ID")
    host = f"Host: {v1.host}"
    raw = await raw_exchange(
        v1.http,
        f"PUT /v1/images/../json HTTP/1.1\r\n{host}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(p.json)}",
        p.json,
    )
    assert raw is not None
    assert_error(raw, 404, "Invalid image ID")
    for candidate in (p.id, p.id[:63] + "a"):
        assert await stored(v1, candidate) is None


async def test_v1_c35_layer_of_unknown_image(v1: V1Client) -> None:
    (p,) = make_chain(1)
    assert_error(await v1.put_layer(p, None), 404)
    assert await stored(v1, p.id) is None


async def test_v1_c36_layer_framings(v1: V1Client) -> None:
    p, q, r = make_chain(1)[0], make_chain(1)[0], make_chain(1)[0]
    for image in (p, q, r):
        assert_true(await v1.put_json(image, None))
    # on the wire exactly: chunked framing, no Content-Length
    head = (
        f"PUT /v1/images/{p.id}/layer HTTP/1.1\r\nHost: {v1.host}\r\nConnection: close\r\n"
        "Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked"
    )
    raw = await raw_exchange(v1.http, head, chunked_frames(p.layer, 1000) + b"0\r\n\r\n")
    assert raw is not None
    assert raw.status == 200 and raw.json() is True, raw
    assert_true(await v1.put_layer(q, None, chunked=True))  # what the test client sends
    assert_true(await v1.put_layer(r, None, chunked=False))
    for image in (p, q, r):
        row = await stored(v1, image.id)
        assert row is not None and row.state == "uploaded"
        assert row.size == image.size and row.blob_digest == image.blob_digest
        assert row.payload_checksum == image.payload


async def test_v1_c37_layer_must_be_a_tar(v1: V1Client) -> None:
    (p,) = make_chain(1)
    assert_true(await v1.put_json(p, None))
    assert_error(await v1.put_layer(p, None, b"hello world"), 400)
    assert_error(await v1.put_layer(p, None, bz2.compress(p.tar)), 400)
    row = await stored(v1, p.id)
    assert row is not None and row.state == "uploading" and row.blob_digest is None
    await _not_readable(v1, p)
    assert_error(await v1.put_checksum(p, None), 400, "Image layer not uploaded")
    assert await staged_uploads(v1) == []


async def test_v1_c38_plain_tar_and_unterminated_tar(v1: V1Client) -> None:
    plain = make_image(compress=False)
    open_ended = make_image(end_blocks=False)
    assert len(open_ended.tar) % 512 == 0 and not open_ended.tar.endswith(bytes(1024))
    for image in (plain, open_ended):
        assert_true(await v1.put_json(image, None))
        assert_true(await v1.put_layer(image, None))
        assert_true(await v1.put_checksum(image, None))
        row = await stored(v1, image.id)
        assert row is not None and row.diff_id == image.diff_id


async def test_v1_c39_checksum_completes(v1: V1Client) -> None:
    (p,) = make_chain(1)
    assert_true(await v1.put_json(p, None))
    assert_true(await v1.put_layer(p, None))
    assert_true(await v1.put_checksum(p, None))
    reply = await v1.call("GET", f"/v1/images/{p.id}/json")
    assert reply.status == 200, reply
    assert reply.body == p.json
    assert reply.headers["X-Docker-Size"] == str(p.size)
    assert reply.headers["X-Docker-Checksum-Payload"] == p.payload
    row = await stored(v1, p.id)
    assert row is not None and row.state == "complete"


async def test_v1_c40_checksum_mismatch(v1: V1Client) -> None:
    (p,) = make_chain(1)
    assert_true(await v1.put_json(p, None))
    assert_true(await v1.put_layer(p, None))
    wrong = payload_checksum(p.json, p.layer + b"x")
    assert_error(await v1.put_checksum(p, None, payload=wrong), 400, "Checksum mismatch")
    await _not_readable(v1, p)
    row = await stored(v1, p.id)
    assert row is not None and row.state == "uploaded"
    assert_true(await v1.put_checksum(p, None))
    assert (await v1.call("GET", f"/v1/images/{p.id}/json")).status == 200


async def test_v1_c41_payload_wins_over_tarsum(v1: V1Client) -> None:
    (p,) = make_chain(1)
    assert_true(await v1.put_json(p, None))
    assert_true(await v1.put_layer(p, None))
    wrong_tarsum = "tarsum+sha256:" + "0" * 64
    assert_true(await v1.put_checksum(p, None, tarsum=wrong_tarsum))
    assert (await v1.call("GET", f"/v1/images/{p.id}/json")).status == 200


async def test_v1_c42_tarsum_only(v1: V1Client) -> None:
    p, q = make_chain(1)[0], make_chain(1)[0]
    plain = make_image(compress=False)
    for image in (p, q, plain):
        assert_true(await v1.put_json(image, None))
        assert_true(await v1.put_layer(image, None))
        # The upload computes no TarSum (only these old clients check it): the checksum
        # call computes it from the stored layer.
        row = await stored(v1, image.id)
        assert row is not None and row.tarsum is None
    for image in (p, plain):
        assert_true(await v1.put_checksum(image, None, payload=None))
        resp = await v1.call("GET", f"/v1/images/{image.id}/json")
        assert resp.status == 200
        assert resp.headers["X-Docker-Checksum"] == image.tarsum
    wrong = "tarsum+sha256:" + "1" * 64
    assert_error(await v1.put_checksum(q, None, payload=None, tarsum=wrong), 400)
    row = await stored(v1, q.id)
    assert row is not None and row.state == "uploaded"
    # Its TarSum, from the stored layer, still completes it.
    assert_true(await v1.put_checksum(q, None, payload=None))


async def test_v1_c43_checksum_preconditions(v1: V1Client) -> None:
    p, unknown = make_chain(1)[0], make_chain(1)[0]
    assert_true(await v1.put_json(p, None))
    assert_true(await v1.put_layer(p, None))
    assert_error(await v1.put_checksum(p, None, payload=None, tarsum=None), 400)
    assert_error(await v1.put_checksum(unknown, None), 404)
    fresh = make_image()
    assert_true(await v1.put_json(fresh, None))
    assert_error(await v1.put_checksum(fresh, None), 400)
    assert (await stored(v1, p.id)).state == "uploaded"  # type: ignore[union-attr]


async def test_v1_c44_complete_images_are_immutable(v1: V1Client) -> None:
    (p,) = make_chain(1)
    await v1.upload(p, None)
    again = await v1.put_json(p, None)
    assert again.status == 409, again
    assert again.json() == {"error": "Image already exists"}
    assert_error(await v1.put_layer(p, None, make_image().layer), 409)
    assert_error(await v1.put_checksum(p, None), 409)
    row = await stored(v1, p.id)
    assert row is not None and row.json == p.json and row.blob_digest == p.blob_digest


async def test_v1_c45_payload_is_over_the_exact_json_bytes(v1: V1Client) -> None:
    (p,) = make_chain(1)
    assert_true(await v1.put_json(p, None))
    assert_true(await v1.put_layer(p, None))
    reserialised = json.dumps(json.loads(p.json), indent=2).encode()
    assert reserialised != p.json
    payload = payload_checksum(reserialised, p.layer)
    assert_error(await v1.put_checksum(p, None, payload=payload), 400)


async def test_v1_c46_json_again_restarts_the_upload(v1: V1Client) -> None:
    (p,) = make_chain(1)
    assert_true(await v1.put_json(p, None))
    assert_true(await v1.put_layer(p, None))
    second = make_image(image_id=p.id)
    assert second.json != p.json
    assert_true(await v1.put_json(second, None))
    assert_error(await v1.put_checksum(p, None), 400, "Image layer not uploaded")
    assert_error(await v1.put_checksum(second, None), 400, "Image layer not uploaded")
    assert_true(await v1.put_layer(second, None))
    assert_true(await v1.put_checksum(second, None))
    reply = await v1.call("GET", f"/v1/images/{p.id}/json")
    assert reply.body == second.json
    assert (await v1.call("GET", f"/v1/images/{p.id}/layer")).body == second.layer


async def test_v1_c47_interrupted_layer_upload(v1: V1Client) -> None:
    (p,) = make_chain(1)
    big = make_image(image_id=p.id, files={"data.bin": bytes(range(256)) * 4096})
    assert (await v1.start_push("foo/bar", [{"id": p.id}])).status == 200
    assert_true(await v1.put_json(big, None))
    head = (
        f"PUT /v1/images/{big.id}/layer HTTP/1.1\r\nHost: {v1.host}\r\n"
        "Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked"
    )
    half = chunked_frames(big.layer[: big.size // 2])
    assert await raw_exchange(v1.http, head, half, hang_up=True) is None
    for _ in range(100):
        if not await staged_uploads(v1):
            break
        await asyncio.sleep(0.05)
    assert await staged_uploads(v1) == []
    row = await stored(v1, big.id)
    assert row is not None and row.state == "uploading" and row.blob_digest is None
    await _not_readable(v1, big)
    assert not await blob_stored(v1, big.blob_digest)
    # the full retry of Docker's next push
    await v1.upload(big, None)
    assert (await v1.call("GET", f"/v1/images/{big.id}/layer")).body == big.layer


async def test_v1_c48_json_too_large(v1: V1Client) -> None:
    (p,) = make_chain(1)
    body = json.dumps(json.loads(p.json) | {"pad": "x" * (4 * 1024 * 1024)}).encode()
    assert_error(await v1.put_json(p, None, body), 413)
    assert await stored(v1, p.id) is None


async def _docker_upload(v1: V1Client, image: V1Image) -> list[int]:
    """One client's json, layer (slow, chunked), checksum; the statuses it got."""

    async def slow() -> object:
        async for piece in chunks(image.layer, 4096):
            await asyncio.sleep(0.001)
            yield piece

    statuses = [(await v1.put_json(image, None)).status]
    if statuses[-1] != 200:
        return statuses
    reply = await v1.call(
        "PUT",
        f"/v1/images/{image.id}/layer",
        data=slow(),
        headers={"Content-Type": "application/octet-stream"},
    )
    statuses.append(reply.status)
    if reply.status != 200:
        return statuses
    statuses.append((await v1.put_checksum(image, None)).status)
    return statuses


async def _assert_consistent(v1: V1Client, image_id: str) -> bytes:
    meta = await v1.call("GET", f"/v1/images/{image_id}/json")
    layer = await v1.call("GET", f"/v1/images/{image_id}/layer")
    assert meta.status == layer.status == 200
    assert meta.headers["X-Docker-Checksum-Payload"] == payload_checksum(meta.body, layer.body)
    assert meta.headers["X-Docker-Size"] == str(len(layer.body))
    return meta.body


async def test_v1_c49_concurrent_uploads_of_one_id(v1: V1Client) -> None:
    # Two clients pushing the same image, every step racing.
    (p,) = make_chain(1)
    for _ in range(3):
        image = make_image(image_id=new_id(), files={"f": bytes(200_000)})
        first, second = await asyncio.gather(_docker_upload(v1, image), _docker_upload(v1, image))
        done = [s for s in (first, second) if s == [200, 200, 200]]
        assert len(done) == 1, (first, second)
        failed = second if first == [200, 200, 200] else first
        assert 400 <= failed[-1] < 500, failed
        assert await _assert_consistent(v1, image.id) == image.json
    # Two different documents for one id, interleaved step by step: the second JSON wins,
    # the first client's checksum (over its own JSON) cannot match.
    a = p
    b = make_image(image_id=p.id)
    assert_true(await v1.put_json(a, None))
    assert_true(await v1.put_json(b, None))
    assert_true(await v1.put_layer(a, None))
    assert_true(await v1.put_layer(b, None))
    assert_error(await v1.put_checksum(a, None), 400, "Checksum mismatch")
    assert_true(await v1.put_checksum(b, None))
    assert await _assert_consistent(v1, p.id) == b.json


async def test_a_large_refused_layer_taken_directly_stops_and_closes(v1: V1Client) -> None:
    """A layer PUT with a Content-Length from `direct.MIN_LENGTH` on is read straight from the
    socket (moorage/api/direct.py); refused on its first block, the rest is never read: the
    answer is the usual 400, the connection closes, nothing is kept."""
    (p,) = make_chain(1)
    assert_true(await v1.put_json(p, None))
    body = b"BZh9" + bytes(direct.MIN_LENGTH + 4096)
    reply = await v1.put_layer(p, None, body, chunked=False)
    assert_error(reply, 400)
    assert reply.headers.get("Connection", "").lower() == "close"
    row = await stored(v1, p.id)
    assert row is not None and row.state == "uploading" and row.blob_digest is None
    assert await staged_uploads(v1) == []
    # The layer is then accepted on a new connection.
    assert_true(await v1.put_layer(p, None))
    assert_true(await v1.put_checksum(p, None))


async def test_a_layer_of_many_blocks_is_analysed_in_order(v1: V1Client) -> None:
    """A layer of many more blocks than a drained body reuses, sent with a length and chunked:
    its halves run behind the receiving, and every sum still covers the bytes in their order."""
    files = {f"data/{i}.bin": secrets.token_bytes(1_500_000) for i in range(6)}
    for chunked in (False, True):
        image = make_image(files=files)
        assert image.size > (_Analysis.HOLDS + 4) * direct.BLOCK
        assert_true(await v1.put_json(image, None))
        assert_true(await v1.put_layer(image, None, chunked=chunked))
        row = await stored(v1, image.id)
        assert row is not None and row.state == "uploaded", chunked
        assert (row.size, row.blob_digest) == (image.size, image.blob_digest)
        assert (row.diff_id, row.payload_checksum) == (image.diff_id, image.payload)
        assert_true(await v1.put_checksum(image, None))
        assert await blob_stored(v1, image.blob_digest)


@pytest.mark.embedded_only  # on object storage v1 layers are read in 1 MiB blocks, not drained
async def test_v1_layers_read_within_the_shares(
    v1: V1Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Layers beyond a worker's large bodies, read through aiohttp, come piece by piece within
    its shares (`http._Paced`), each piece analysed as it comes: the checksums, size and digest
    are the layer's, and every share is given back."""
    shares = CountedShares(2)
    monkeypatch.setattr(http, "SHARES", shares)
    monkeypatch.setattr(http, "LARGE_BODIES", 0)  # every streamed body is a medium one
    monkeypatch.setattr(direct, "MAX_DRAINING_CHUNKED", 0)  # none taken over by a thread
    images = [make_chain(1)[0] for _ in range(4)]
    for image in images:
        assert_true(await v1.put_json(image, None))
    replies = await asyncio.gather(*(v1.put_layer(image, None, chunked=True) for image in images))
    for reply in replies:
        assert_true(reply)
    for image in images:
        row = await stored(v1, image.id)
        assert row is not None and row.state == "uploaded"
        assert row.size == image.size and row.blob_digest == image.blob_digest
        assert row.payload_checksum == image.payload
    assert shares.most >= 1  # the layers were read within the shares
    assert shares.held == 0 and not shares.wanted()
