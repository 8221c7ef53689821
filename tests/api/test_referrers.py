"""§16 cases 121-131: the referrers API (§9)."""

from __future__ import annotations

from typing import Any

from tests.api.helpers import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    Client,
    assert_error,
    descriptor,
    encode,
    make_oci_index,
    push_artifact,
    push_image,
    push_manifest,
    random_digest,
    sha256,
)
from tests.api.pagination import next_link

REPO = "team/app"
SIG = "application/vnd.example.signature"
SBOM = "application/vnd.example.sbom"


async def _referrers(client: Client, digest: str, query: str = "", repo: str = REPO):  # type: ignore[no-untyped-def]
    resp = await client.get(f"/v2/{repo}/referrers/{digest}{query}")
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].split(";")[0] == OCI_INDEX
    body = await resp.json()
    assert body["schemaVersion"] == 2
    assert body["mediaType"] == OCI_INDEX
    assert isinstance(body["manifests"], list)
    return resp, body


def _by_digest(body: Any) -> dict[str, dict[str, Any]]:
    entries = {entry["digest"]: entry for entry in body["manifests"]}
    assert len(entries) == len(body["manifests"]), "duplicate referrer entries"
    return entries


async def test_c121_no_referrers(client: Client) -> None:
    image = await push_image(client, REPO, "v1")
    resp, body = await _referrers(client, image.digest)
    assert body["manifests"] == []
    assert "OCI-Filters-Applied" not in resp.headers


async def test_r4_unknown_repository_is_empty(client: Client) -> None:
    _, body = await _referrers(client, random_digest(), repo="nosuch/repo")
    assert body["manifests"] == []


async def test_c122_two_referrers(client: Client) -> None:
    image = await push_image(client, REPO, "v1")
    one, one_body = await push_artifact(
        client, REPO, image.descriptor, SIG, annotations={"org.example.k": "v1"}
    )
    two, two_body = await push_artifact(
        client, REPO, image.descriptor, SBOM, annotations={"org.opencontainers.x": "y", "b": "c"}
    )
    _, body = await _referrers(client, image.digest)
    entries = _by_digest(body)
    assert set(entries) == {one, two}
    assert entries[one] == {
        "mediaType": OCI_MANIFEST,
        "digest": one,
        "size": len(one_body),
        "artifactType": SIG,
        "annotations": {"org.example.k": "v1"},
    }
    assert entries[two]["artifactType"] == SBOM
    assert entries[two]["annotations"] == {"org.opencontainers.x": "y", "b": "c"}
    assert entries[two]["size"] == len(two_body)
    assert entries[two]["mediaType"] == OCI_MANIFEST
    # R-8 Decision: push order, oldest first.
    assert [entry["digest"] for entry in body["manifests"]] == [one, two]


async def test_c123_artifact_type_from_config(client: Client) -> None:
    image = await push_image(client, REPO, "v1")
    digest, _ = await push_artifact(
        client, REPO, image.descriptor, None, config_media_type="application/vnd.example.cfg"
    )
    _, body = await _referrers(client, image.digest)
    assert _by_digest(body)[digest]["artifactType"] == "application/vnd.example.cfg"


async def test_c123_image_referrer_uses_oci_config_type(client: Client) -> None:
    subject = await push_image(client, REPO, "v1")
    referrer = await push_image(client, REPO, None, subject=subject.descriptor)
    _, body = await _referrers(client, subject.digest)
    assert _by_digest(body)[referrer.digest]["artifactType"] == OCI_CONFIG


async def test_c124_index_referrer_without_artifact_type(client: Client) -> None:
    subject = await push_image(client, REPO, "v1")
    child = await push_image(client, REPO, None)
    index = encode(make_oci_index([child.descriptor], subject=subject.descriptor))
    resp = await client.put(
        f"/v2/{REPO}/manifests/{sha256(index)}", data=index, headers={"Content-Type": OCI_INDEX}
    )
    assert resp.status == 201, await resp.text()
    assert resp.headers["OCI-Subject"] == subject.digest
    _, body = await _referrers(client, subject.digest)
    entry = _by_digest(body)[sha256(index)]
    assert entry["mediaType"] == OCI_INDEX
    assert entry["size"] == len(index)
    assert "artifactType" not in entry


async def test_c124_index_referrer_with_artifact_type(client: Client) -> None:
    subject = await push_image(client, REPO, "v1")
    child = await push_image(client, REPO, None)
    index = encode(
        make_oci_index([child.descriptor], subject=subject.descriptor, artifact_type=SBOM)
    )
    await push_manifest(client, REPO, sha256(index), index, media_type=OCI_INDEX)
    _, body = await _referrers(client, subject.digest)
    assert _by_digest(body)[sha256(index)]["artifactType"] == SBOM


async def test_c125_artifact_type_filter(client: Client) -> None:
    image = await push_image(client, REPO, "v1")
    sig1, _ = await push_artifact(client, REPO, image.descriptor, SIG)
    await push_artifact(client, REPO, image.descriptor, SBOM)
    sig2, _ = await push_artifact(client, REPO, image.descriptor, SIG)
    resp, body = await _referrers(client, image.digest, f"?artifactType={SIG}")
    assert resp.headers["OCI-Filters-Applied"] == "artifactType"
    assert [entry["digest"] for entry in body["manifests"]] == [sig1, sig2]
    resp, body = await _referrers(client, image.digest, "?artifactType=application/x.none")
    assert resp.headers["OCI-Filters-Applied"] == "artifactType"
    assert body["manifests"] == []


async def test_c126_bad_digest(client: Client) -> None:
    for bad in ["sha256:bad", "md5:" + "a" * 32, "sha256:" + "A" * 64, "latest"]:
        resp = await client.get(f"/v2/{REPO}/referrers/{bad}")
        await assert_error(resp, 400, "DIGEST_INVALID")


async def test_c127_subject_never_pushed(client: Client) -> None:
    missing = {"mediaType": OCI_MANIFEST, "digest": random_digest(), "size": 99}
    digest, _ = await push_artifact(client, REPO, missing, SIG)
    _, body = await _referrers(client, missing["digest"])
    assert [entry["digest"] for entry in body["manifests"]] == [digest]
    # The subject is still unknown as a manifest.
    resp = await client.get(f"/v2/{REPO}/manifests/{missing['digest']}")
    await assert_error(resp, 404, "MANIFEST_UNKNOWN")


async def test_c128_deleted_referrer_not_listed(client: Client) -> None:
    image = await push_image(client, REPO, "v1")
    keep, _ = await push_artifact(client, REPO, image.descriptor, SIG)
    drop, _ = await push_artifact(client, REPO, image.descriptor, SIG)
    resp = await client.delete(f"/v2/{REPO}/manifests/{drop}")
    assert resp.status == 202
    _, body = await _referrers(client, image.digest)
    assert [entry["digest"] for entry in body["manifests"]] == [keep]


async def test_r7_deleting_subject_keeps_referrers(client: Client) -> None:
    image = await push_image(client, REPO, "v1")
    ref, _ = await push_artifact(client, REPO, image.descriptor, SIG)
    assert (await client.delete(f"/v2/{REPO}/manifests/{image.digest}")).status == 202
    _, body = await _referrers(client, image.digest)
    assert [entry["digest"] for entry in body["manifests"]] == [ref]


async def test_c129_pagination(make_client) -> None:  # type: ignore[no-untyped-def]
    client = await make_client(pagination={"referrersmax": 2})
    image = await push_image(client, REPO, "v1")
    pushed = [(await push_artifact(client, REPO, image.descriptor, SIG))[0] for _ in range(5)]
    seen: list[str] = []
    resp, body = await _referrers(client, image.digest)
    assert len(body["manifests"]) <= 2
    seen.extend(entry["digest"] for entry in body["manifests"])
    pages = 1
    link = next_link(resp)
    assert link is not None
    while link is not None:
        resp = await client.get(link)
        assert resp.status == 200
        body = await resp.json()
        assert len(body["manifests"]) <= 2
        seen.extend(entry["digest"] for entry in body["manifests"])
        link = next_link(resp)
        pages += 1
        assert pages < 10
    assert sorted(seen) == sorted(pushed)
    assert len(seen) == len(set(seen))


async def test_c129_pagination_with_filter(make_client) -> None:  # type: ignore[no-untyped-def]
    client = await make_client(pagination={"referrersmax": 2})
    image = await push_image(client, REPO, "v1")
    sigs = []
    for i in range(6):
        digest, _ = await push_artifact(client, REPO, image.descriptor, SIG if i % 2 else SBOM)
        if i % 2:
            sigs.append(digest)
    seen: list[str] = []
    link: str | None = f"/v2/{REPO}/referrers/{image.digest}?artifactType={SIG}"
    for _ in range(10):
        if link is None:
            break
        resp = await client.get(link)
        assert resp.headers["OCI-Filters-Applied"] == "artifactType"
        seen.extend(entry["digest"] for entry in (await resp.json())["manifests"])
        link = next_link(resp)
    assert sorted(seen) == sorted(sigs)


async def test_c130_fallback_tag_index(client: Client) -> None:
    # An old client kept the referrers in the `sha256-<hex>` tag (§9.3).
    image = await push_image(client, REPO, "v1")
    one, one_body = await push_artifact(client, REPO, image.descriptor, SIG)
    two, two_body = await push_artifact(client, REPO, image.descriptor, SBOM)
    fallback = make_oci_index(
        [
            {**descriptor(one_body, OCI_MANIFEST, digest=one), "artifactType": SIG},
            {**descriptor(two_body, OCI_MANIFEST, digest=two), "artifactType": SBOM},
        ]
    )
    tag = "sha256-" + image.digest.split(":", 1)[1]
    await push_manifest(client, REPO, tag, encode(fallback), media_type=OCI_INDEX)
    _, body = await _referrers(client, image.digest)
    entries = _by_digest(body)
    assert {one, two} <= set(entries)
    # The fallback index itself has no subject: it is not a referrer.
    assert sha256(encode(fallback)) not in entries


async def test_c130_fallback_tag_survives_restart(make_client, tmp_path) -> None:  # type: ignore[no-untyped-def]
    datadir = tmp_path / "shared"
    client = await make_client(datadir=datadir)
    image = await push_image(client, REPO, "v1")
    one, one_body = await push_artifact(client, REPO, image.descriptor, SIG)
    fallback = make_oci_index(
        [{**descriptor(one_body, OCI_MANIFEST, digest=one), "artifactType": SIG}]
    )
    tag = "sha256-" + image.digest.split(":", 1)[1]
    await push_manifest(client, REPO, tag, encode(fallback), media_type=OCI_INDEX)
    await client.close()
    again = await make_client(datadir=datadir)
    _, body = await _referrers(again, image.digest)
    assert [entry["digest"] for entry in body["manifests"]] == [one]


async def test_c131_repository_isolation(client: Client) -> None:
    image = await push_image(client, "a", "v1")
    await push_image(client, "b", "v1")
    await push_artifact(client, "a", image.descriptor, SIG)
    _, body = await _referrers(client, image.digest, repo="b")
    assert body["manifests"] == []
    _, body = await _referrers(client, image.digest, repo="a")
    assert len(body["manifests"]) == 1


async def test_referrers_of_sha512_subject(client: Client) -> None:
    subject = {"mediaType": OCI_MANIFEST, "digest": "sha512:" + "ab" * 64, "size": 10}
    digest, _ = await push_artifact(client, REPO, subject, SIG)
    _, body = await _referrers(client, subject["digest"])
    assert [entry["digest"] for entry in body["manifests"]] == [digest]
