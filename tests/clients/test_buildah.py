"""buildah against a real Moorage process: build from scratch with no network, push, and read
the pushed image back with skopeo."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tests.clients.conftest import ContainersTool, Registry
from tests.images import (
    blob_bytes,
    busybox_path,
    layer_file,
    layer_members,
    read_index,
    sha256_digest,
    tagged_digest,
)

pytestmark = pytest.mark.clients

CMD = ["/bin/busybox", "echo", "built by buildah"]


def test_build_from_scratch_push_and_read_back(
    buildah: ContainersTool, skopeo: ContainersTool, registry: Registry, tmp_path: Path
) -> None:
    busybox = busybox_path().read_bytes()
    ctr = buildah("from", "--name", "moorage-test-build", "scratch").stdout.strip()
    assert ctr == "moorage-test-build"
    try:
        buildah("copy", ctr, busybox_path(), "/bin/busybox")
        buildah(
            "config",
            "--cmd",
            json.dumps(CMD),
            "--os",
            "linux",
            "--arch",
            "amd64",
            "--label",
            "moorage.test=buildah",
            ctr,
        )
        image_id = buildah(
            "commit", "--quiet", "--format", "oci", ctr, "localhost/moorage-test/buildah:v1"
        ).stdout.strip()
    finally:
        buildah("rm", ctr, check=False)
    assert len(image_id) == 64, image_id

    digestfile = tmp_path / "pushed.digest"
    ref = registry.ref("buildah/busybox", "v1")
    buildah(
        "push",
        "--tls-verify=false",
        "--digestfile",
        digestfile,
        "localhost/moorage-test/buildah:v1",
        ref,
    )
    pushed = digestfile.read_text().strip()

    out = tmp_path / "pulled"
    skopeo("copy", "--src-tls-verify=false", "--preserve-digests", ref, f"oci:{out}:v1")
    assert tagged_digest(out, "v1") == pushed
    manifest_bytes = blob_bytes(out, pushed)
    assert sha256_digest(manifest_bytes) == pushed
    manifest = json.loads(manifest_bytes)

    # The config is the one buildah committed (its digest is the image ID).
    assert manifest["config"]["digest"] == "sha256:" + image_id
    config = json.loads(blob_bytes(out, manifest["config"]["digest"]))
    assert config["config"]["Cmd"] == CMD
    assert config["config"]["Labels"]["moorage.test"] == "buildah"
    assert (config["os"], config["architecture"]) == ("linux", "amd64")

    # One layer, holding exactly the busybox binary we copied in, executable.
    assert len(manifest["layers"]) == 1
    layer_desc = manifest["layers"][0]
    layer = blob_bytes(out, layer_desc["digest"])
    assert len(layer) == layer_desc["size"]
    assert layer_file(layer, "bin/busybox") == busybox
    members = layer_members(layer)
    assert members["bin/busybox"].mode & 0o111
    uncompressed = gzip.decompress(layer) if layer[:2] == b"\x1f\x8b" else layer
    assert config["rootfs"]["diff_ids"] == [sha256_digest(uncompressed)]

    # The registry answers the same bytes directly.
    resp = registry.request("GET", f"/v2/buildah/busybox/blobs/{layer_desc['digest']}")
    assert resp.status == 200
    assert resp.body == layer
    assert read_index(out)["manifests"][0]["digest"] == pushed
