"""§16 cases 132-138: deletes (§10). Case 139 (conformance suite) runs elsewhere."""

from __future__ import annotations

import json

from tests.api.helpers import (
    ACCEPT_ALL,
    OCI_INDEX,
    Client,
    assert_error,
    encode,
    make_oci_index,
    push_blob,
    push_image,
    push_manifest,
    random_bytes,
    random_digest,
    sha256,
)

REPO = "team/app"


async def _get(client: Client, ref: str, repo: str = REPO):  # type: ignore[no-untyped-def]
    return await client.get(f"/v2/{repo}/manifests/{ref}", headers={"Accept": ACCEPT_ALL})


async def _tags(client: Client, repo: str = REPO) -> list[str]:
    resp = await client.get(f"/v2/{repo}/tags/list")
    assert resp.status == 200, await resp.text()
    tags: list[str] = (await resp.json())["tags"]
    return tags


async def test_c132_delete_tag(client: Client) -> None:
    image = await push_image(client, REPO, "v1")
    await push_manifest(client, REPO, "v2", image.body)
    resp = await client.delete(f"/v2/{REPO}/manifests/v1")
    assert resp.status == 202
    assert await resp.read() == b""
    await assert_error(await _get(client, "v1"), 404, "MANIFEST_UNKNOWN")
    resp = await _get(client, image.digest)
    assert resp.status == 200
    assert await resp.read() == image.body
    assert await _tags(client) == ["v2"]
    assert (await _get(client, "v2")).status == 200


async def test_c132_delete_unknown_tag(client: Client) -> None:
    await push_image(client, REPO, "v1")
    await assert_error(await client.delete(f"/v2/{REPO}/manifests/nosuch"), 404, "MANIFEST_UNKNOWN")


async def test_c133_delete_by_digest_untags(client: Client) -> None:
    image = await push_image(client, REPO, "v1")
    await push_manifest(client, REPO, "v2", image.body)
    other = await push_image(client, REPO, "other")
    resp = await client.delete(f"/v2/{REPO}/manifests/{image.digest}")
    assert resp.status == 202
    await assert_error(await _get(client, image.digest), 404, "MANIFEST_UNKNOWN")
    await assert_error(await _get(client, "v1"), 404, "MANIFEST_UNKNOWN")
    await assert_error(await _get(client, "v2"), 404, "MANIFEST_UNKNOWN")
    resp = await client.head(f"/v2/{REPO}/manifests/{image.digest}")
    assert resp.status == 404
    assert await _tags(client) == ["other"]
    assert (await _get(client, other.digest)).status == 200
    # Blobs stay linked (only the manifest went).
    assert (await client.head(f"/v2/{REPO}/blobs/{image.layer_digests[0]}")).status == 200


async def test_c133_repush_after_delete(client: Client) -> None:
    image = await push_image(client, REPO, "v1")
    assert (await client.delete(f"/v2/{REPO}/manifests/{image.digest}")).status == 202
    digest = await push_manifest(client, REPO, "v1", image.body)
    assert digest == image.digest
    assert (await _get(client, "v1")).status == 200


async def test_c134_delete_twice(client: Client) -> None:
    image = await push_image(client, REPO, "v1")
    assert (await client.delete(f"/v2/{REPO}/manifests/{image.digest}")).status == 202
    resp = await client.delete(f"/v2/{REPO}/manifests/{image.digest}")
    await assert_error(resp, 404, "MANIFEST_UNKNOWN")


async def test_d2_delete_unknown_digest(client: Client) -> None:
    await push_image(client, REPO, "v1")
    resp = await client.delete(f"/v2/{REPO}/manifests/{random_digest()}")
    await assert_error(resp, 404, "MANIFEST_UNKNOWN")


async def test_d2_delete_bad_digest(client: Client) -> None:
    await push_image(client, REPO, "v1")
    for bad in ["sha256:abc", "md5:" + "a" * 32]:
        resp = await client.delete(f"/v2/{REPO}/manifests/{bad}")
        await assert_error(resp, 400, "DIGEST_INVALID")
        resp = await client.delete(f"/v2/{REPO}/blobs/{bad}")
        await assert_error(resp, 400, "DIGEST_INVALID")


async def test_c135_delete_blob(client: Client) -> None:
    data = random_bytes(100)
    digest = await push_blob(client, REPO, data)
    await push_blob(client, "other", data)
    resp = await client.delete(f"/v2/{REPO}/blobs/{digest}")
    assert resp.status == 202
    await assert_error(await client.get(f"/v2/{REPO}/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    assert (await client.head(f"/v2/{REPO}/blobs/{digest}")).status == 404
    resp = await client.get(f"/v2/other/blobs/{digest}")
    assert resp.status == 200
    assert await resp.read() == data


async def test_c135_reupload_after_delete(client: Client) -> None:
    data = random_bytes(100)
    digest = await push_blob(client, REPO, data)
    assert (await client.delete(f"/v2/{REPO}/blobs/{digest}")).status == 202
    assert await push_blob(client, REPO, data) == digest
    assert await (await client.get(f"/v2/{REPO}/blobs/{digest}")).read() == data


async def test_c136_delete_unknown_blob(client: Client) -> None:
    await push_blob(client, REPO, random_bytes(10))
    resp = await client.delete(f"/v2/{REPO}/blobs/{sha256(b'unknown')}")
    await assert_error(resp, 404, "BLOB_UNKNOWN")


async def test_c136_delete_blob_twice(client: Client) -> None:
    digest = await push_blob(client, REPO, random_bytes(10))
    assert (await client.delete(f"/v2/{REPO}/blobs/{digest}")).status == 202
    await assert_error(await client.delete(f"/v2/{REPO}/blobs/{digest}"), 404, "BLOB_UNKNOWN")


async def test_c137_deletes_disabled(make_client) -> None:  # type: ignore[no-untyped-def]
    client = await make_client(deletes={"enabled": False})
    image = await push_image(client, REPO, "v1")
    for target in (
        f"/v2/{REPO}/manifests/{image.digest}",
        f"/v2/{REPO}/manifests/v1",
        f"/v2/{REPO}/blobs/{image.layer_digests[0]}",
    ):
        resp = await client.delete(target)
        await assert_error(resp, 405, "UNSUPPORTED")
    # Nothing was deleted.
    assert (await _get(client, "v1")).status == 200
    assert (await client.head(f"/v2/{REPO}/blobs/{image.layer_digests[0]}")).status == 200


async def test_c137_deletes_disabled_upload_cancel_still_works(make_client) -> None:  # type: ignore[no-untyped-def]
    client = await make_client(deletes={"enabled": False})
    resp = await client.post(f"/v2/{REPO}/blobs/uploads/")
    resp = await client.delete(resp.headers["Location"])
    assert resp.status == 204


async def test_c138_delete_in_unknown_repository(client: Client) -> None:
    await push_image(client, REPO, "v1")
    resp = await client.delete(f"/v2/nosuchrepo/manifests/{random_digest()}")
    body = await assert_error(resp, 404)
    assert body["errors"][0]["code"] in ("NAME_UNKNOWN", "MANIFEST_UNKNOWN")
    resp = await client.delete(f"/v2/nosuchrepo/blobs/{random_digest()}")
    body = await assert_error(resp, 404)
    assert body["errors"][0]["code"] in ("NAME_UNKNOWN", "BLOB_UNKNOWN")


async def test_d5_delete_manifest_referenced_by_index(client: Client) -> None:
    image = await push_image(client, REPO, None)
    index = encode(make_oci_index([image.descriptor]))
    await push_manifest(client, REPO, "idx", index, media_type=OCI_INDEX)
    assert (await client.delete(f"/v2/{REPO}/manifests/{image.digest}")).status == 202
    resp = await _get(client, "idx")
    assert resp.status == 200
    assert await resp.read() == index


async def test_d6_blobs_then_manifest(client: Client) -> None:
    image = await push_image(client, REPO, "v1", layers=2)
    for digest in [sha256(image.config), *image.layer_digests]:
        assert (await client.delete(f"/v2/{REPO}/blobs/{digest}")).status == 202
    assert (await client.delete(f"/v2/{REPO}/manifests/{image.digest}")).status == 202
    await assert_error(await _get(client, image.digest), 404, "MANIFEST_UNKNOWN")


async def test_d6_manifest_then_blobs(client: Client) -> None:
    image = await push_image(client, REPO, "v1", layers=2)
    assert (await client.delete(f"/v2/{REPO}/manifests/{image.digest}")).status == 202
    for digest in [sha256(image.config), *image.layer_digests]:
        assert (await client.delete(f"/v2/{REPO}/blobs/{digest}")).status == 202
        assert (await client.head(f"/v2/{REPO}/blobs/{digest}")).status == 404


async def test_d4_deleted_blob_not_usable_by_new_manifest(client: Client) -> None:
    image = await push_image(client, REPO, "v1")
    digest = image.layer_digests[0]
    assert (await client.delete(f"/v2/{REPO}/blobs/{digest}")).status == 202
    manifest = json.loads(image.body)
    manifest["annotations"] = {"new": "1"}
    resp = await client.put(
        f"/v2/{REPO}/manifests/v2",
        data=encode(manifest),
        headers={"Content-Type": manifest["mediaType"]},
    )
    await assert_error(resp, 400, "MANIFEST_BLOB_UNKNOWN")
