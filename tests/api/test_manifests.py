"""§16 cases 71-98: manifest push and pull (§4, §7). Schema 1 (99-104) is in test_schema1.py."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.api.helpers import (
    ACCEPT_ALL,
    DOCKER_CONFIG,
    DOCKER_FOREIGN_LAYER,
    DOCKER_LAYER,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    EMPTY_JSON_DIGEST,
    OCI_CONFIG,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    Client,
    assert_error,
    descriptor,
    encode,
    error_codes,
    make_config,
    make_oci_index,
    make_oci_manifest,
    path_of,
    push_blob,
    push_image,
    push_manifest,
    put_manifest,
    random_bytes,
    random_digest,
    raw_request,
    sha256,
    sha512,
)

REPO = "team/app"


async def _config_and_layer(
    client: Client, repo: str = REPO
) -> tuple[dict[str, Any], dict[str, Any]]:
    config = make_config()
    layer = random_bytes(128)
    await push_blob(client, repo, config)
    await push_blob(client, repo, layer)
    return descriptor(config, OCI_CONFIG), descriptor(layer, OCI_LAYER)


async def _oci_body(client: Client, repo: str = REPO) -> bytes:
    config, layer = await _config_and_layer(client, repo)
    return encode(make_oci_manifest(config, [layer]))


async def _docker_manifest(client: Client, repo: str = REPO) -> bytes:
    config = make_config()
    layer = random_bytes(128)
    await push_blob(client, repo, config)
    await push_blob(client, repo, layer)
    return encode(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": descriptor(config, DOCKER_CONFIG),
            "layers": [descriptor(layer, DOCKER_LAYER)],
        }
    )


async def _get(client: Client, repo: str, ref: str, **headers: str):  # type: ignore[no-untyped-def]
    return await client.get(
        f"/v2/{repo}/manifests/{ref}", headers={"Accept": ACCEPT_ALL, **headers}
    )


async def _tags(client: Client, repo: str = REPO) -> list[str]:
    resp = await client.get(f"/v2/{repo}/tags/list")
    assert resp.status == 200, await resp.text()
    tags: list[str] = (await resp.json())["tags"]
    return tags


# --- 71-79: push and pull -----------------------------------------------------------------


async def test_c71_put_by_tag(client: Client) -> None:
    body = await _oci_body(client)
    resp = await put_manifest(client, REPO, "v1", body)
    assert resp.status == 201, await resp.text()
    digest = sha256(body)
    assert resp.headers["Docker-Content-Digest"] == digest
    assert path_of(resp.headers["Location"]) == f"/v2/{REPO}/manifests/{digest}"
    assert resp.headers["Content-Length"] == "0"
    assert "OCI-Subject" not in resp.headers


async def test_c72_get_by_tag(client: Client) -> None:
    body = await _oci_body(client)
    digest = await push_manifest(client, REPO, "v1", body)
    resp = await client.get(f"/v2/{REPO}/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert resp.status == 200
    assert await resp.read() == body
    assert resp.headers["Content-Type"] == OCI_MANIFEST
    assert resp.headers["Docker-Content-Digest"] == digest
    assert resp.headers["Content-Length"] == str(len(body))
    assert resp.headers["ETag"] == f'"{digest}"'


async def test_c73_get_by_digest(client: Client) -> None:
    body = await _oci_body(client)
    digest = await push_manifest(client, REPO, "v1", body)
    resp = await _get(client, REPO, digest)
    assert resp.status == 200
    assert await resp.read() == body
    assert resp.headers["Docker-Content-Digest"] == digest
    assert resp.headers["Content-Type"] == OCI_MANIFEST


async def test_c74_head(client: Client) -> None:
    body = await _oci_body(client)
    digest = await push_manifest(client, REPO, "v1", body)
    for ref in ("v1", digest):
        resp = await client.head(f"/v2/{REPO}/manifests/{ref}", headers={"Accept": ACCEPT_ALL})
        assert resp.status == 200
        assert resp.headers["Content-Type"] == OCI_MANIFEST
        assert resp.headers["Content-Length"] == str(len(body))
        assert resp.headers["Docker-Content-Digest"] == digest
        assert resp.headers["ETag"] == f'"{digest}"'
        assert await resp.read() == b""


async def test_c75_get_without_accept(client: Client) -> None:
    body = await _oci_body(client)
    await push_manifest(client, REPO, "v1", body)
    resp = await client.get(f"/v2/{REPO}/manifests/v1", skip_auto_headers=["Accept"])
    assert resp.status == 200
    assert resp.headers["Content-Type"] == OCI_MANIFEST
    assert await resp.read() == body


async def test_s42_accept_ignored(client: Client) -> None:
    # Decision §4.2: the stored manifest whatever Accept says.
    body = await _oci_body(client)
    await push_manifest(client, REPO, "v1", body)
    resp = await client.get(f"/v2/{REPO}/manifests/v1", headers={"Accept": DOCKER_MANIFEST})
    assert resp.status == 200
    assert resp.headers["Content-Type"] == OCI_MANIFEST
    assert await resp.read() == body


async def test_c76_if_none_match(client: Client) -> None:
    body = await _oci_body(client)
    digest = await push_manifest(client, REPO, "v1", body)
    resp = await _get(client, REPO, "v1", **{"If-None-Match": f'"{digest}"'})
    assert resp.status == 304
    assert await resp.read() == b""
    # M-5: quoted or not.
    resp = await _get(client, REPO, digest, **{"If-None-Match": digest})
    assert resp.status == 304
    resp = await _get(client, REPO, "v1", **{"If-None-Match": f'"{sha256(b"x")}"'})
    assert resp.status == 200


async def test_c77_put_by_digest_creates_no_tag(client: Client) -> None:
    await push_image(client, REPO, "other")
    body = await _oci_body(client)
    digest = sha256(body)
    resp = await put_manifest(client, REPO, digest, body)
    assert resp.status == 201, await resp.text()
    assert resp.headers["Docker-Content-Digest"] == digest
    assert path_of(resp.headers["Location"]) == f"/v2/{REPO}/manifests/{digest}"
    assert await _tags(client) == ["other"]
    resp = await _get(client, REPO, digest)
    assert await resp.read() == body


async def test_c78_put_by_wrong_digest(client: Client) -> None:
    body = await _oci_body(client)
    wrong = sha256(body + b" ")
    resp = await put_manifest(client, REPO, wrong, body)
    await assert_error(resp, 400, "DIGEST_INVALID")
    await assert_error(await _get(client, REPO, wrong), 404, "MANIFEST_UNKNOWN")
    await assert_error(await _get(client, REPO, sha256(body)), 404, "MANIFEST_UNKNOWN")


async def test_put_by_malformed_or_unsupported_digest(client: Client) -> None:
    body = await _oci_body(client)
    for ref in ["sha256:abc", "md5:" + "a" * 32, "sha256:" + sha256(body)[7:].upper()]:
        resp = await put_manifest(client, REPO, ref, body)
        await assert_error(resp, 400, "DIGEST_INVALID")


async def test_c79_put_by_sha512(client: Client) -> None:
    body = await _oci_body(client)
    digest = sha512(body)
    resp = await put_manifest(client, REPO, digest, body)
    assert resp.status == 201, await resp.text()
    assert resp.headers["Docker-Content-Digest"] == digest
    resp = await _get(client, REPO, digest)
    assert resp.status == 200
    assert await resp.read() == body
    assert resp.headers["Docker-Content-Digest"] == digest


# --- 80-84: invalid manifests ----------------------------------------------------------------


async def test_c80_not_json(client: Client) -> None:
    resp = await put_manifest(client, REPO, "v1", b"{not json")
    await assert_error(resp, 400, "MANIFEST_INVALID")
    await assert_error(await _get(client, REPO, "v1"), 404)


@pytest.mark.parametrize(
    "body",
    [b"", b"[]", b'"string"', b"null", b"\xff\xfe{}", b'{"schemaVersion": 2}'],
    ids=["empty", "array", "string", "null", "not-utf8", "no-config"],
)
async def test_c80_not_a_manifest_object(client: Client, body: bytes) -> None:
    resp = await put_manifest(client, REPO, "v1", body)
    await assert_error(resp, 400, "MANIFEST_INVALID")


async def test_c81_schema_version_1_with_oci_type(client: Client) -> None:
    config, layer = await _config_and_layer(client)
    manifest = make_oci_manifest(config, [layer])
    manifest["schemaVersion"] = 1
    await assert_error(await put_manifest(client, REPO, "v1", manifest), 400, "MANIFEST_INVALID")


async def test_c81_missing_config(client: Client) -> None:
    config, layer = await _config_and_layer(client)
    manifest = make_oci_manifest(config, [layer])
    del manifest["config"]
    await assert_error(await put_manifest(client, REPO, "v1", manifest), 400, "MANIFEST_INVALID")


async def test_c81_missing_schema_version(client: Client) -> None:
    config, layer = await _config_and_layer(client)
    manifest = make_oci_manifest(config, [layer])
    del manifest["schemaVersion"]
    await assert_error(await put_manifest(client, REPO, "v1", manifest), 400, "MANIFEST_INVALID")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda m: m.update(layers="nope"),
        lambda m: m["layers"][0].update(size=-1),
        lambda m: m["layers"][0].update(size="12"),
        lambda m: m["layers"][0].pop("digest"),
        lambda m: m["config"].pop("mediaType"),
        lambda m: m["layers"][0].update(digest="sha256:nothex"),
        lambda m: m.update(annotations={"a": 1}),
    ],
    ids=[
        "layers-not-array",
        "negative-size",
        "string-size",
        "no-digest",
        "no-media-type",
        "bad-digest",
        "annotation-not-string",
    ],
)
async def test_s73_bad_descriptors(client: Client, mutate: Any) -> None:
    config, layer = await _config_and_layer(client)
    manifest = make_oci_manifest(config, [layer])
    mutate(manifest)
    resp = await put_manifest(client, REPO, "v1", manifest)
    body = await assert_error(resp, 400)
    assert error_codes(body)[0] in ("MANIFEST_INVALID", "DIGEST_INVALID")


async def test_c82_content_type_and_media_type_disagree(client: Client) -> None:
    config, layer = await _config_and_layer(client)
    manifest = make_oci_manifest(config, [layer], media_type=DOCKER_MANIFEST)
    resp = await put_manifest(client, REPO, "v1", manifest, media_type=OCI_MANIFEST)
    await assert_error(resp, 400, "MANIFEST_INVALID")


async def test_c82_oci_index_media_type_under_manifest_type(client: Client) -> None:
    image = await push_image(client, REPO, None)
    index = make_oci_index([image.descriptor])
    resp = await put_manifest(client, REPO, "v1", index, media_type=OCI_MANIFEST)
    await assert_error(resp, 400, "MANIFEST_INVALID")


async def test_c83_image_manifest_with_manifests_field(client: Client) -> None:
    image = await push_image(client, REPO, None)
    config, layer = await _config_and_layer(client)
    manifest = make_oci_manifest(config, [layer])
    manifest["manifests"] = [image.descriptor]
    await assert_error(await put_manifest(client, REPO, "v1", manifest), 400, "MANIFEST_INVALID")


async def test_c84_index_with_layers(client: Client) -> None:
    image = await push_image(client, REPO, None)
    _, layer = await _config_and_layer(client)
    index = make_oci_index([image.descriptor])
    index["layers"] = [layer]
    resp = await put_manifest(client, REPO, "v1", index, media_type=OCI_INDEX)
    await assert_error(resp, 400, "MANIFEST_INVALID")


async def test_c84_index_with_config(client: Client) -> None:
    image = await push_image(client, REPO, None)
    config, _ = await _config_and_layer(client)
    index = make_oci_index([image.descriptor])
    index["config"] = config
    resp = await put_manifest(client, REPO, "v1", index, media_type=OCI_INDEX)
    await assert_error(resp, 400, "MANIFEST_INVALID")


# --- 85-91: references, artifacts, size -------------------------------------------------


async def test_c85_missing_layer(client: Client) -> None:
    config, layer = await _config_and_layer(client)
    missing = descriptor(random_bytes(50), OCI_LAYER)
    manifest = make_oci_manifest(config, [layer, missing])
    body = await assert_error(await put_manifest(client, REPO, "v1", manifest), 400)
    assert error_codes(body) == ["MANIFEST_BLOB_UNKNOWN"]
    assert missing["digest"] in json.dumps(body["errors"][0].get("detail"))
    await assert_error(await _get(client, REPO, "v1"), 404)


async def test_c86_three_missing_blobs(client: Client) -> None:
    await push_blob(client, REPO, random_bytes(10))
    config = descriptor(make_config(), OCI_CONFIG)
    layers = [descriptor(random_bytes(50), OCI_LAYER), descriptor(random_bytes(60), OCI_LAYER)]
    manifest = make_oci_manifest(config, layers)
    body = await assert_error(await put_manifest(client, REPO, "v1", manifest), 400)
    assert error_codes(body) == ["MANIFEST_BLOB_UNKNOWN"] * 3
    details = json.dumps([entry.get("detail") for entry in body["errors"]])
    for desc in [config, *layers]:
        assert desc["digest"] in details


async def test_p6_blob_linked_only_in_other_repository(client: Client) -> None:
    config = make_config()
    await push_blob(client, "elsewhere", config)
    manifest = make_oci_manifest(descriptor(config, OCI_CONFIG), [])
    await push_blob(client, REPO, random_bytes(10))
    resp = await put_manifest(client, REPO, "v1", manifest)
    await assert_error(resp, 400, "MANIFEST_BLOB_UNKNOWN")


async def test_c87_foreign_layer_with_urls(client: Client) -> None:
    config, layer = await _config_and_layer(client)
    foreign = descriptor(
        random_bytes(70),
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        urls=["https://example.invalid/layer.tar.gz"],
    )
    manifest = make_oci_manifest(config, [foreign, layer])
    resp = await put_manifest(client, REPO, "v1", manifest)
    assert resp.status == 201, await resp.text()


async def test_c87_docker_foreign_layer(client: Client) -> None:
    config = make_config()
    await push_blob(client, REPO, config)
    foreign = descriptor(
        random_bytes(70), DOCKER_FOREIGN_LAYER, urls=["https://example.invalid/layer"]
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": descriptor(config, DOCKER_CONFIG),
        "layers": [foreign],
    }
    resp = await put_manifest(client, REPO, "v1", manifest, media_type=DOCKER_MANIFEST)
    assert resp.status == 201, await resp.text()


async def test_c88_empty_layers(client: Client) -> None:
    config, _ = await _config_and_layer(client)
    body = encode(make_oci_manifest(config, []))
    digest = await push_manifest(client, REPO, "v1", body)
    assert await (await _get(client, REPO, digest)).read() == body


async def test_c89_artifact_manifest(client: Client) -> None:
    await push_blob(client, REPO, b"{}")
    payload = random_bytes(33)
    await push_blob(client, REPO, payload)
    manifest = make_oci_manifest(
        descriptor(b"{}", OCI_EMPTY),
        [descriptor(payload, "application/vnd.example.thing.v1+custom")],
        artifact_type="application/vnd.example.unknown.type",
        annotations={"org.example.anything": "value"},
    )
    body = encode(manifest)
    digest = await push_manifest(client, REPO, "artifact", body)
    resp = await _get(client, REPO, "artifact")
    assert resp.status == 200
    assert resp.headers["Docker-Content-Digest"] == digest
    assert await resp.read() == body


async def test_c89_artifact_with_empty_config_and_no_artifact_type(client: Client) -> None:
    # §7.3 Decision: artifactType with the empty config is not enforced.
    await push_blob(client, REPO, b"{}")
    manifest = make_oci_manifest(descriptor(b"{}", OCI_EMPTY, digest=EMPTY_JSON_DIGEST), [])
    resp = await put_manifest(client, REPO, "v1", manifest)
    assert resp.status == 201, await resp.text()


async def test_c90_subject_not_in_registry(client: Client) -> None:
    config, layer = await _config_and_layer(client)
    subject = {"mediaType": OCI_MANIFEST, "digest": random_digest(), "size": 1234}
    manifest = make_oci_manifest(
        config, [layer], subject=subject, artifact_type="application/x.sig"
    )
    resp = await put_manifest(client, REPO, sha256(encode(manifest)), manifest)
    assert resp.status == 201, await resp.text()
    assert resp.headers["OCI-Subject"] == subject["digest"]


async def test_c90_index_with_subject(client: Client) -> None:
    image = await push_image(client, REPO, None)
    subject = {"mediaType": OCI_MANIFEST, "digest": random_digest(), "size": 10}
    index = make_oci_index([image.descriptor], subject=subject)
    resp = await put_manifest(client, REPO, "idx", index, media_type=OCI_INDEX)
    assert resp.status == 201, await resp.text()
    assert resp.headers["OCI-Subject"] == subject["digest"]


def _padded_manifest(config: dict[str, Any], size: int) -> bytes:
    manifest = make_oci_manifest(config, [], annotations={"pad": ""})
    base = len(encode(manifest))
    manifest["annotations"]["pad"] = "x" * (size - base)
    body = encode(manifest)
    assert len(body) == size
    return body


async def test_c91_size_limit(client: Client) -> None:
    config, _ = await _config_and_layer(client)
    limit = 4 * 1024 * 1024
    exact = _padded_manifest(config, limit)
    resp = await put_manifest(client, REPO, "exact", exact)
    assert resp.status == 201, (await resp.text())[:300]
    resp = await _get(client, REPO, "exact")
    assert await resp.read() == exact

    over = _padded_manifest(config, limit + 1)
    body = await assert_error(
        await put_manifest(client, REPO, "over", over), 413, "MANIFEST_INVALID"
    )
    assert body["errors"][0]["detail"] == {"limit": limit}
    await assert_error(await _get(client, REPO, "over"), 404, "MANIFEST_UNKNOWN")


async def test_c91_configured_size_limit(make_client) -> None:  # type: ignore[no-untyped-def]
    client = await make_client(manifests={"maxsize": 4096})
    config, _ = await _config_and_layer(client)
    resp = await put_manifest(client, REPO, "exact", _padded_manifest(config, 4096))
    assert resp.status == 201
    resp = await put_manifest(client, REPO, "over", _padded_manifest(config, 4097))
    body = await assert_error(resp, 413, "MANIFEST_INVALID")
    assert body["errors"][0]["detail"] == {"limit": 4096}


async def test_c91_oversize_chunked_body(make_client) -> None:  # type: ignore[no-untyped-def]
    client = await make_client(manifests={"maxsize": 4096})
    config, _ = await _config_and_layer(client)
    body = _padded_manifest(config, 10_000)
    resp = await raw_request(
        client,
        "PUT",
        f"/v2/{REPO}/manifests/big",
        headers={"Content-Type": OCI_MANIFEST},
        chunks=[body[i : i + 1000] for i in range(0, len(body), 1000)],
    )
    assert resp is not None and resp.status == 413, resp and resp.status


# --- 92-98: media types, indexes, retagging, unknowns ------------------------------------


async def test_c92_docker_schema2(client: Client) -> None:
    body = await _docker_manifest(client)
    digest = await push_manifest(client, REPO, "v1", body, media_type=DOCKER_MANIFEST)
    resp = await _get(client, REPO, "v1")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == DOCKER_MANIFEST
    assert resp.headers["Docker-Content-Digest"] == digest
    assert await resp.read() == body


async def test_c92_docker_schema2_missing_layer(client: Client) -> None:
    config = make_config()
    await push_blob(client, REPO, config)
    missing = descriptor(random_bytes(10), DOCKER_LAYER)
    manifest = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": descriptor(config, DOCKER_CONFIG),
        "layers": [missing],
    }
    body = await assert_error(
        await put_manifest(client, REPO, "v1", manifest, media_type=DOCKER_MANIFEST),
        400,
        "MANIFEST_BLOB_UNKNOWN",
    )
    assert missing["digest"] in json.dumps(body["errors"][0].get("detail"))


async def test_c93_docker_manifest_list(client: Client) -> None:
    children = []
    for arch in ("amd64", "arm64"):
        body = await _docker_manifest(client)
        digest = await push_manifest(client, REPO, sha256(body), body, media_type=DOCKER_MANIFEST)
        children.append(
            {
                "mediaType": DOCKER_MANIFEST,
                "digest": digest,
                "size": len(body),
                "platform": {"architecture": arch, "os": "linux"},
            }
        )
    listing = encode({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": children})
    digest = await push_manifest(client, REPO, "multi", listing, media_type=DOCKER_LIST)
    resp = await _get(client, REPO, "multi")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == DOCKER_LIST
    assert resp.headers["Docker-Content-Digest"] == digest
    assert await resp.read() == listing
    for child in children:
        assert (await _get(client, REPO, child["digest"])).status == 200


async def test_oci_index_with_attestation(client: Client) -> None:
    image = await push_image(client, REPO, None)
    await push_blob(client, REPO, b"{}")
    statement = random_bytes(40)
    await push_blob(client, REPO, statement)
    attestation = encode(
        make_oci_manifest(
            descriptor(b"{}", OCI_EMPTY),
            [descriptor(statement, "application/vnd.in-toto+json")],
        )
    )
    att_digest = await push_manifest(client, REPO, sha256(attestation), attestation)
    index = make_oci_index(
        [
            {**image.descriptor, "platform": {"architecture": "amd64", "os": "linux"}},
            {
                **descriptor(attestation, OCI_MANIFEST, digest=att_digest),
                "platform": {"architecture": "unknown", "os": "unknown"},
                "annotations": {"vnd.docker.reference.type": "attestation-manifest"},
            },
        ]
    )
    body = encode(index)
    digest = await push_manifest(client, REPO, "v1", body, media_type=OCI_INDEX)
    resp = await _get(client, REPO, "v1")
    assert resp.headers["Content-Type"] == OCI_INDEX
    assert resp.headers["Docker-Content-Digest"] == digest
    assert await resp.read() == body


async def test_c94_index_child_in_other_repository(client: Client) -> None:
    image = await push_image(client, "elsewhere", "v1")
    await push_image(client, REPO, "base")
    index = make_oci_index([image.descriptor])
    resp = await put_manifest(client, REPO, "idx", index, media_type=OCI_INDEX)
    body = await assert_error(resp, 400, "MANIFEST_BLOB_UNKNOWN")
    assert image.digest in json.dumps(body["errors"][0].get("detail"))


async def test_c94_index_child_is_only_a_blob(client: Client) -> None:
    # A manifest's bytes uploaded as a blob do not make it a manifest (B-7, P-6).
    body = await _oci_body(client)
    await push_blob(client, REPO, body)
    index = make_oci_index([descriptor(body, OCI_MANIFEST)])
    resp = await put_manifest(client, REPO, "idx", index, media_type=OCI_INDEX)
    await assert_error(resp, 400, "MANIFEST_BLOB_UNKNOWN")


async def test_c95_application_json_uses_body_media_type(client: Client) -> None:
    body = await _oci_body(client)
    digest = await push_manifest(client, REPO, "v1", body, media_type="application/json")
    resp = await _get(client, REPO, "v1")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == OCI_MANIFEST
    assert resp.headers["Docker-Content-Digest"] == digest


async def test_p5_no_content_type_uses_body(client: Client) -> None:
    body = await _oci_body(client)
    await push_manifest(client, REPO, "typed", body, media_type=None)
    resp = await _get(client, REPO, "typed")
    assert resp.headers["Content-Type"] == OCI_MANIFEST


async def test_p5_no_media_type_anywhere_config_means_image(client: Client) -> None:
    config, layer = await _config_and_layer(client)
    body = encode(make_oci_manifest(config, [layer], media_type=None))
    resp = await raw_request(client, "PUT", f"/v2/{REPO}/manifests/bare", body=body)
    assert resp is not None and resp.status == 201, resp and resp.body
    resp2 = await _get(client, REPO, "bare")
    assert resp2.headers["Content-Type"] == OCI_MANIFEST
    assert await resp2.read() == body


async def test_p5_no_media_type_anywhere_manifests_means_index(client: Client) -> None:
    image = await push_image(client, REPO, None)
    index = {"schemaVersion": 2, "manifests": [image.descriptor]}
    body = encode(index)
    resp = await put_manifest(client, REPO, "bareidx", body, media_type="application/json")
    assert resp.status == 201, await resp.text()
    resp = await _get(client, REPO, "bareidx")
    assert resp.headers["Content-Type"] == OCI_INDEX


async def test_p5_oci_manifest_without_media_type_field(client: Client) -> None:
    config, layer = await _config_and_layer(client)
    body = encode(make_oci_manifest(config, [layer], media_type=None))
    await push_manifest(client, REPO, "v1", body, media_type=OCI_MANIFEST)
    resp = await _get(client, REPO, "v1")
    assert resp.headers["Content-Type"] == OCI_MANIFEST


async def test_p5_content_type_parameters_ignored(client: Client) -> None:
    body = await _oci_body(client)
    resp = await put_manifest(client, REPO, "v1", body, media_type=OCI_MANIFEST + "; charset=utf-8")
    assert resp.status == 201, await resp.text()
    resp = await _get(client, REPO, "v1")
    assert resp.headers["Content-Type"] == OCI_MANIFEST


async def test_c96_unknown_content_type(client: Client) -> None:
    body = await _oci_body(client)
    resp = await put_manifest(client, REPO, "v1", body, media_type="application/x-unknown")
    await assert_error(resp, 400, "MANIFEST_INVALID")


async def test_c97_retag(client: Client) -> None:
    first = await push_image(client, REPO, "v1")
    second = await push_image(client, REPO, "v1")
    assert first.digest != second.digest
    resp = await _get(client, REPO, "v1")
    assert resp.headers["Docker-Content-Digest"] == second.digest
    assert await resp.read() == second.body
    resp = await _get(client, REPO, first.digest)
    assert resp.status == 200
    assert await resp.read() == first.body
    assert await _tags(client) == ["v1"]


async def test_p1_push_same_manifest_twice(client: Client) -> None:
    body = await _oci_body(client)
    one = await push_manifest(client, REPO, "a", body)
    two = await push_manifest(client, REPO, "b", body)
    assert one == two
    assert await _tags(client) == ["a", "b"]


async def test_c98_unknown_tag_and_repository(client: Client) -> None:
    await push_image(client, REPO, "v1")
    await assert_error(await _get(client, REPO, "nosuchtag"), 404, "MANIFEST_UNKNOWN")
    await assert_error(await _get(client, REPO, random_digest()), 404, "MANIFEST_UNKNOWN")
    body = await assert_error(await _get(client, "nosuchrepo", "x"), 404)
    assert error_codes(body)[0] in ("NAME_UNKNOWN", "MANIFEST_UNKNOWN")
    resp = await client.head(f"/v2/{REPO}/manifests/nosuchtag")
    assert resp.status == 404
    assert await resp.read() == b""


async def test_manifest_truncated_body_stores_nothing(client: Client) -> None:
    body = await _oci_body(client)
    resp = await raw_request(
        client,
        "PUT",
        f"/v2/{REPO}/manifests/cut",
        headers={"Content-Type": OCI_MANIFEST},
        body=body[: len(body) // 2],
        declared_length=len(body),
        hang_up=True,
    )
    if resp is not None:
        assert resp.status >= 400
    await assert_error(await _get(client, REPO, "cut"), 404)
