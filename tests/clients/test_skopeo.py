"""skopeo (containers/image) against a real Moorage process: push, pull, inspect, list-tags,
delete, multi-arch `copy --all`, artifacts with a subject, and cross-repository mounts."""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.clients.conftest import ContainersRun, ContainersTool, Registry, serve
from tests.images import (
    Image,
    blob_bytes,
    make_artifact,
    make_image,
    make_index,
    read_index,
    sha256_digest,
    tagged_digest,
)

pytestmark = pytest.mark.clients

PUSH = ("copy", "--dest-tls-verify=false", "--preserve-digests")
PULL = ("copy", "--src-tls-verify=false", "--preserve-digests")
NOTLS = "--tls-verify=false"


def push(skopeo: ContainersTool, src: str, dest: str, *extra: str) -> None:
    skopeo(*PUSH, *extra, src, dest)


def raw_manifest(skopeo: ContainersTool, ref: str) -> bytes:
    return skopeo("inspect", NOTLS, "--raw", ref).stdout.encode()


def test_push_and_pull_back_are_byte_identical(
    skopeo: ContainersTool, registry: Registry, tmp_path: Path
) -> None:
    img = make_image(tmp_path / "src", layers=[1 << 20, 65536, 300], seed=101, tag="v1")
    ref = registry.ref("skopeo/roundtrip", "v1")
    push(skopeo, img.ref, ref)

    # What the registry serves is exactly what was pushed.
    served = raw_manifest(skopeo, ref)
    assert served == img.manifest.read()
    assert sha256_digest(served) == img.digest
    for blob in [img.config, *img.layers]:
        resp = registry.request("GET", f"/v2/skopeo/roundtrip/blobs/{blob.digest}")
        assert resp.status == 200, resp
        assert resp.body == blob.read(), f"blob {blob.digest} differs"

    out = tmp_path / "pulled"
    skopeo(*PULL, ref, f"oci:{out}:v1")
    assert tagged_digest(out, "v1") == img.digest
    for blob in img.blobs:
        assert blob_bytes(out, blob.digest) == blob.read(), f"pulled {blob.digest} differs"

    # And by digest, not only by tag.
    by_digest = tmp_path / "by-digest"
    skopeo(*PULL, registry.ref("skopeo/roundtrip", digest=img.digest), f"oci:{by_digest}:d")
    assert tagged_digest(by_digest, "d") == img.digest


def test_large_layer_round_trip(skopeo: ContainersTool, registry: Registry, tmp_path: Path) -> None:
    """A 64 MiB incompressible layer goes up as one streamed PATCH and comes back intact."""
    img = make_image(tmp_path / "src", layers=[64 << 20], seed=110, tag="big")
    assert img.layers[0].size > 64 << 20
    ref = registry.ref("skopeo/large", "big")
    push(skopeo, img.ref, ref)
    head = registry.request("HEAD", f"/v2/skopeo/large/blobs/{img.layers[0].digest}")
    assert head.status == 200
    assert int(head.headers["Content-Length"]) == img.layers[0].size

    out = tmp_path / "pulled"
    skopeo(*PULL, ref, f"oci:{out}:big")
    assert tagged_digest(out, "big") == img.digest
    pulled = blob_bytes(out, img.layers[0].digest)
    assert sha256_digest(pulled) == img.layers[0].digest
    assert len(pulled) == img.layers[0].size


def test_inspect_reports_digest_layers_and_config(
    skopeo: ContainersTool, registry: Registry, tmp_path: Path
) -> None:
    img = make_image(tmp_path / "src", layers=[4096, 8192], seed=102, tag="v1", cmd=["/bin/true"])
    ref = registry.ref("skopeo/inspect", "v1")
    push(skopeo, img.ref, ref)

    info = json.loads(skopeo("inspect", NOTLS, ref).stdout)
    assert info["Digest"] == img.digest
    assert info["Layers"] == img.layer_digests
    assert info["Architecture"] == "amd64"
    assert info["Os"] == "linux"
    assert info["Labels"] == {"moorage.test.seed": "102"}
    assert info["Name"] == f"{registry.host}/skopeo/inspect"
    assert "v1" in info["RepoTags"]

    config = skopeo("inspect", NOTLS, "--config", "--raw", ref).stdout.encode()
    assert config == img.config.read()
    assert json.loads(config)["rootfs"]["diff_ids"] == list(img.diff_ids)


def test_list_tags_is_complete(skopeo: ContainersTool, registry: Registry, tmp_path: Path) -> None:
    one = make_image(tmp_path / "src", layers=[1024], seed=103, tag="one")
    two = make_image(tmp_path / "src", layers=[1024], seed=104, tag="two")
    tags = {
        "latest": one,
        "v1": one,
        "v1.0": one,
        "v1.0.1": two,
        "release_2024-01": two,
        "A": one,
        "z": two,
        "0": one,
        "sha-deadbeef": two,
        "x" * 128: one,  # longest legal tag
    }
    repo = "skopeo/tags"
    for tag, img in tags.items():
        push(skopeo, img.ref, registry.ref(repo, tag))

    listed = json.loads(skopeo("list-tags", NOTLS, registry.ref(repo)).stdout)
    assert listed["Repository"] == f"{registry.host}/{repo}"
    assert sorted(listed["Tags"]) == sorted(tags)
    assert len(listed["Tags"]) == len(set(listed["Tags"]))

    # Every tag resolves to the image it was pushed as.
    for tag in ("v1.0", "v1.0.1", "x" * 128):
        digest = sha256_digest(raw_manifest(skopeo, registry.ref(repo, tag)))
        assert digest == tags[tag].digest


def test_delete_removes_the_tag_and_manifest(
    skopeo: ContainersTool, registry: Registry, tmp_path: Path
) -> None:
    keep = make_image(tmp_path / "src", layers=[2048], seed=105, tag="keep")
    gone = make_image(tmp_path / "src", layers=[2048], seed=106, tag="gone")
    repo = "skopeo/delete"
    push(skopeo, keep.ref, registry.ref(repo, "keep"))
    push(skopeo, gone.ref, registry.ref(repo, "gone"))
    assert sorted(json.loads(skopeo("list-tags", NOTLS, registry.ref(repo)).stdout)["Tags"]) == [
        "gone",
        "keep",
    ]

    skopeo("delete", NOTLS, registry.ref(repo, "gone"))

    missing = skopeo("inspect", NOTLS, "--raw", registry.ref(repo, "gone"), check=False)
    assert missing.returncode != 0
    assert "manifest unknown" in missing.stderr.lower(), missing.stderr
    resp = registry.request(
        "GET",
        f"/v2/{repo}/manifests/{gone.digest}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert resp.status == 404, resp
    assert json.loads(skopeo("list-tags", NOTLS, registry.ref(repo)).stdout)["Tags"] == ["keep"]
    # The other image is untouched.
    assert sha256_digest(raw_manifest(skopeo, registry.ref(repo, "keep"))) == keep.digest


def test_copy_all_multi_arch_round_trip_keeps_digests(
    skopeo: ContainersTool, registry: Registry, tmp_path: Path
) -> None:
    index = make_index(tmp_path / "src", tag="multi", seed=107, layers=[65536, 1024])
    ref = registry.ref("skopeo/multi", "v1")
    push(skopeo, index.ref, ref, "--all")

    served = raw_manifest(skopeo, ref)
    assert served == index.index.read()
    doc = json.loads(served)
    assert [m["digest"] for m in doc["manifests"]] == [i.digest for i in index.images]
    for img in index.images:
        child = raw_manifest(skopeo, registry.ref("skopeo/multi", digest=img.digest))
        assert child == img.manifest.read()
        info = json.loads(
            skopeo(
                "inspect", NOTLS, "--override-os", img.os, "--override-arch", img.architecture, ref
            ).stdout
        )
        assert info["Architecture"] == img.architecture
        assert info["Layers"] == img.layer_digests

    out = tmp_path / "pulled"
    skopeo(*PULL, "--all", ref, f"oci:{out}:multi")
    assert tagged_digest(out, "multi") == index.digest
    for blob in index.blobs:
        assert blob_bytes(out, blob.digest) == blob.read(), f"pulled {blob.digest} differs"
    # Pushed back again from the pulled copy: the same index digest comes out.
    push(skopeo, f"oci:{out}:multi", registry.ref("skopeo/multi-again", "v1"), "--all")
    again = raw_manifest(skopeo, registry.ref("skopeo/multi-again", "v1"))
    assert sha256_digest(again) == index.digest


def test_artifact_with_subject_is_stored_as_pushed(
    skopeo: ContainersTool, registry: Registry, tmp_path: Path
) -> None:
    img = make_image(tmp_path / "src", layers=[1024], seed=108, tag="v1")
    art = make_artifact(tmp_path / "src", img, tag="sig", seed=108)
    repo = "skopeo/artifact"
    push(skopeo, img.ref, registry.ref(repo, "v1"))
    push(skopeo, art.ref, registry.ref(repo, "sig"))

    served = raw_manifest(skopeo, registry.ref(repo, "sig"))
    assert served == art.manifest.read()
    assert json.loads(served)["subject"]["digest"] == img.digest
    out = tmp_path / "pulled"
    skopeo(*PULL, registry.ref(repo, "sig"), f"oci:{out}:sig")
    assert tagged_digest(out, "sig") == art.digest
    assert blob_bytes(out, art.layers[0].digest) == art.layers[0].read()


def _mount_lines(debug: str, repo: str, digest: str) -> list[str]:
    enc_from = urllib.parse.quote(repo, safe="")
    enc_digest = urllib.parse.quote(digest, safe="")
    return [
        line
        for line in debug.splitlines()
        if "Trying to mount" in line and f"from={enc_from}" in line and enc_digest in line
    ]


def test_cross_repository_copy_mounts_layers(
    skopeo: ContainersTool, registry: Registry, tmp_path: Path
) -> None:
    img: Image = make_image(tmp_path / "src", layers=[262144, 131072], seed=109, tag="v1")
    push(skopeo, img.ref, registry.ref("skopeo/mount-src", "v1"))

    result = skopeo(
        "--debug",
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        registry.ref("skopeo/mount-src", "v1"),
        registry.ref("skopeo/mount-dst", "v1"),
    )
    debug = result.stderr
    for digest in img.layer_digests:
        assert _mount_lines(debug, "skopeo/mount-src", digest), (
            f"skopeo did not try to mount {digest}:\n{debug[-5000:]}"
        )
        assert f"Skipping blob {digest} (already present)" in debug, debug[-5000:]
    assert debug.count("mount OK") == len(img.layers), debug[-5000:]
    # No layer went over the wire: the only blob uploaded is the config (not in the cache).
    patches = [line for line in debug.splitlines() if re.search(r'msg="PATCH ', line)]
    assert len(patches) <= 1, "\n".join(patches)

    for layer in img.layers:
        resp = registry.request("GET", f"/v2/skopeo/mount-dst/blobs/{layer.digest}")
        assert resp.status == 200, resp
        assert resp.body == layer.read()
    assert sha256_digest(raw_manifest(skopeo, registry.ref("skopeo/mount-dst", "v1"))) == img.digest


def test_image_builder_is_deterministic(tmp_path: Path) -> None:
    """The same call gives the same digests, so tests can compare against known values."""
    a = make_image(tmp_path / "a", layers=[5000, 10], seed=7, tag="t")
    b = make_image(tmp_path / "b", layers=[5000, 10], seed=7, tag="t")
    assert a.digest == b.digest
    assert a.layer_digests == b.layer_digests
    assert read_index(tmp_path / "a") == read_index(tmp_path / "b")


def test_read_only_mode_refuses_a_push_with_a_clear_message_and_pulls_go_on(
    tmp_path: Path, containers_for: Callable[[Registry], ContainersRun]
) -> None:
    img = make_image(tmp_path / "src", layers=[4096], seed=131, tag="v1")
    base = tmp_path / "server"
    with serve(base) as server:
        push(containers_for(server).skopeo(), img.ref, server.ref("skopeo/frozen", "v1"))
    with serve(base, env={"MOORAGE_MAINTENANCE_READONLY": "true"}) as server:
        skopeo = containers_for(server).skopeo()
        other = make_image(tmp_path / "other", layers=[2048], seed=132, tag="v2")
        refused = skopeo(*PUSH, other.ref, server.ref("skopeo/frozen", "v2"), check=False)
        assert refused.returncode != 0
        assert "registry is in read-only mode" in refused.stderr, refused.stderr
        out = tmp_path / "pulled"
        skopeo(*PULL, server.ref("skopeo/frozen", "v1"), f"oci:{out}:v1")
        assert tagged_digest(out, "v1") == img.digest
