"""§16 cases 99-104: Docker schema 1 signed manifests (§7.4)."""

from __future__ import annotations

import json

from cryptography.hazmat.primitives.asymmetric import ec

from moorage.content import schema1
from tests.api.helpers import (
    ACCEPT_ALL,
    SCHEMA1_SIGNED,
    Client,
    assert_error,
    path_of,
    push_blob,
    put_manifest,
    random_bytes,
    sha256,
)

SCHEMA1_UNSIGNED = "application/vnd.docker.distribution.manifest.v1+json"
REPO = "legacy/app"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _history(count: int) -> list[str]:
    return [
        json.dumps({"id": f"{i:064x}", "created": "2016-01-01T00:00:00Z"}, separators=(",", ":"))
        for i in range(count, 0, -1)
    ]


async def _signed(
    client: Client,
    repo: str = REPO,
    tag: str = "latest",
    *,
    name: str | None = None,
    push_layers: bool = True,
) -> tuple[bytes, bytes, list[str]]:
    """(signed document, payload, blob digests)."""
    layers = [random_bytes(64), random_bytes(80)]
    digests = [sha256(layer) for layer in layers]
    if push_layers:
        for layer in layers:
            await push_blob(client, repo, layer)
    payload = schema1.build_payload(name or repo, tag, "amd64", digests, _history(len(digests)))
    return schema1.sign(payload, _key()), payload, digests


async def test_c99_signed_schema1_put(client: Client) -> None:
    document, payload, _ = await _signed(client)
    resp = await put_manifest(client, REPO, "latest", document, media_type=SCHEMA1_SIGNED)
    assert resp.status == 201, await resp.text()
    assert resp.headers["Docker-Content-Digest"] == sha256(payload)
    assert resp.headers["Docker-Content-Digest"] != sha256(document)
    assert path_of(resp.headers["Location"]) == f"/v2/{REPO}/manifests/{sha256(payload)}"


async def test_c100_get_schema1(client: Client) -> None:
    document, payload, digests = await _signed(client)
    resp = await put_manifest(client, REPO, "latest", document, media_type=SCHEMA1_SIGNED)
    assert resp.status == 201, await resp.text()
    for ref in ("latest", sha256(payload)):
        resp = await client.get(f"/v2/{REPO}/manifests/{ref}", headers={"Accept": ACCEPT_ALL})
        assert resp.status == 200
        assert resp.headers["Content-Type"] == SCHEMA1_SIGNED
        assert resp.headers["Docker-Content-Digest"] == sha256(payload)
        served = await resp.read()
        # Decision §7.4: the pushed bytes are served as-is, and they verify.
        assert served == document
        checked = schema1.verify(served)
        assert checked.payload == payload
        assert checked.blob_sums == digests
    resp = await client.head(f"/v2/{REPO}/manifests/latest")
    assert resp.status == 200
    assert resp.headers["Content-Length"] == str(len(document))
    assert resp.headers["Docker-Content-Digest"] == sha256(payload)


async def test_c99_put_by_payload_digest(client: Client) -> None:
    document, payload, _ = await _signed(client)
    resp = await put_manifest(client, REPO, sha256(payload), document, media_type=SCHEMA1_SIGNED)
    assert resp.status == 201, await resp.text()
    assert resp.headers["Docker-Content-Digest"] == sha256(payload)


async def test_c99_put_by_document_digest_is_invalid(client: Client) -> None:
    document, _, _ = await _signed(client)
    resp = await put_manifest(client, REPO, sha256(document), document, media_type=SCHEMA1_SIGNED)
    await assert_error(resp, 400, "DIGEST_INVALID")


async def test_c99_schema1_detected_from_body(client: Client) -> None:
    # P-5: application/json (or no type) with schemaVersion 1 and no mediaType -> schema 1.
    document, payload, _ = await _signed(client)
    resp = await put_manifest(client, REPO, "latest", document, media_type="application/json")
    assert resp.status == 201, await resp.text()
    assert resp.headers["Docker-Content-Digest"] == sha256(payload)
    resp = await client.get(f"/v2/{REPO}/manifests/latest", headers={"Accept": ACCEPT_ALL})
    assert resp.headers["Content-Type"] == SCHEMA1_SIGNED


async def test_c101_tampered_payload(client: Client) -> None:
    document, _, _ = await _signed(client)
    tampered = document.replace(b'"amd64"', b'"arm64"', 1)
    assert tampered != document
    resp = await put_manifest(client, REPO, "latest", tampered, media_type=SCHEMA1_SIGNED)
    await assert_error(resp, 400, "MANIFEST_UNVERIFIED")
    resp = await client.get(f"/v2/{REPO}/manifests/latest", headers={"Accept": ACCEPT_ALL})
    await assert_error(resp, 404)


async def test_c101_signature_from_other_payload(client: Client) -> None:
    document, _, _ = await _signed(client)
    other, _, _ = await _signed(client)
    mixed = json.loads(document)
    mixed["signatures"] = json.loads(other)["signatures"]
    body = json.dumps(mixed, indent=3).encode()
    resp = await put_manifest(client, REPO, "latest", body, media_type=SCHEMA1_SIGNED)
    body_json = await assert_error(resp, 400)
    assert body_json["errors"][0]["code"] in ("MANIFEST_UNVERIFIED", "MANIFEST_INVALID")


async def test_c101_no_signatures(client: Client) -> None:
    _, payload, _ = await _signed(client)
    resp = await put_manifest(client, REPO, "latest", payload, media_type=SCHEMA1_SIGNED)
    body = await assert_error(resp, 400)
    assert body["errors"][0]["code"] in ("MANIFEST_UNVERIFIED", "MANIFEST_INVALID")


async def test_c102_missing_fs_layer_blob(client: Client) -> None:
    await push_blob(client, REPO, random_bytes(10))
    document, _, digests = await _signed(client, push_layers=False)
    resp = await put_manifest(client, REPO, "latest", document, media_type=SCHEMA1_SIGNED)
    body = await assert_error(resp, 400, "MANIFEST_BLOB_UNKNOWN")
    details = json.dumps([entry.get("detail") for entry in body["errors"]])
    assert all(digest in details for digest in digests)


async def test_c103_name_mismatch(client: Client) -> None:
    document, _, _ = await _signed(client, name="legacy/other")
    resp = await put_manifest(client, REPO, "latest", document, media_type=SCHEMA1_SIGNED)
    await assert_error(resp, 400, "NAME_INVALID")


async def test_c103_tag_mismatch(client: Client) -> None:
    document, _, _ = await _signed(client, tag="v1")
    resp = await put_manifest(client, REPO, "v2", document, media_type=SCHEMA1_SIGNED)
    await assert_error(resp, 400, "TAG_INVALID")
    resp = await client.get(f"/v2/{REPO}/manifests/v2", headers={"Accept": ACCEPT_ALL})
    await assert_error(resp, 404, "MANIFEST_UNKNOWN")


async def test_c103_tag_not_checked_by_digest(client: Client) -> None:
    document, payload, _ = await _signed(client, tag="whatever")
    resp = await put_manifest(client, REPO, sha256(payload), document, media_type=SCHEMA1_SIGNED)
    assert resp.status == 201, await resp.text()


async def test_c104_schema1_disabled(make_client) -> None:  # type: ignore[no-untyped-def]
    client = await make_client(manifests={"schema1": False})
    document, _, _ = await _signed(client)
    for media_type in (SCHEMA1_SIGNED, "application/json"):
        resp = await put_manifest(client, REPO, "latest", document, media_type=media_type)
        await assert_error(resp, 400, "MANIFEST_INVALID")


async def test_c104_unsigned_schema1_disabled(make_client) -> None:  # type: ignore[no-untyped-def]
    client = await make_client(manifests={"schema1": False})
    _, payload, _ = await _signed(client)
    resp = await put_manifest(client, REPO, "latest", payload, media_type=SCHEMA1_UNSIGNED)
    await assert_error(resp, 400, "MANIFEST_INVALID")


async def test_s72_unsigned_schema1_enabled(client: Client) -> None:
    # §7.2: accepted when schema1 is on; digest over the bytes.
    _, payload, _ = await _signed(client)
    resp = await put_manifest(client, REPO, "latest", payload, media_type=SCHEMA1_UNSIGNED)
    assert resp.status == 201, await resp.text()
    assert resp.headers["Docker-Content-Digest"] == sha256(payload)
    resp = await client.get(f"/v2/{REPO}/manifests/latest", headers={"Accept": ACCEPT_ALL})
    assert resp.headers["Content-Type"] == SCHEMA1_UNSIGNED
    assert await resp.read() == payload
