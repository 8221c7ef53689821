"""podman against a real Moorage process: push and pull of a loaded image, and search."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.clients.conftest import ContainersTool, Registry
from tests.images import make_busybox_image, make_image, sha256_digest

pytestmark = pytest.mark.clients


def test_push_then_pull_gives_the_same_image(
    skopeo: ContainersTool,
    podman: ContainersTool,
    registry: Registry,
    tmp_path: Path,
) -> None:
    img = make_busybox_image(tmp_path / "layout", tag="busybox")
    archive = tmp_path / "busybox.tar"
    local = "localhost/moorage-test/busybox:v1"
    skopeo("copy", img.ref, f"docker-archive:{archive}:{local}")

    loaded = podman("load", "-i", archive)
    assert local in loaded.stdout + loaded.stderr
    image_id = podman("image", "inspect", "--format", "{{.Id}}", local).stdout.strip()
    # A docker-archive keeps the config bytes, so the image ID is the config digest.
    assert "sha256:" + image_id == img.config.digest

    remote = registry.name("podman/busybox", "v1")
    digestfile = tmp_path / "pushed.digest"
    podman("tag", local, remote)
    podman("push", "--tls-verify=false", "--digestfile", digestfile, remote)
    pushed = digestfile.read_text().strip()
    assert pushed.startswith("sha256:")

    # The registry serves that manifest, and the same config podman had.
    manifest = skopeo(
        "inspect", "--tls-verify=false", "--raw", registry.ref("podman/busybox", "v1")
    )
    assert sha256_digest(manifest.stdout.encode()) == pushed
    config = skopeo(
        "inspect", "--tls-verify=false", "--config", "--raw", registry.ref("podman/busybox", "v1")
    )
    assert config.stdout.encode() == img.config.read()

    podman("rmi", "--force", local, remote)
    gone = podman("image", "exists", remote, check=False)
    assert gone.returncode == 1

    podman("pull", "--tls-verify=false", remote)
    info = json.loads(podman("image", "inspect", remote).stdout)[0]
    assert info["Id"] == image_id
    assert info["Digest"] == pushed
    assert f"{registry.host}/podman/busybox@{pushed}" in info["RepoDigests"]
    # The uncompressed layers came back bit for bit (diff_ids are verified by podman too).
    assert info["RootFS"]["Layers"] == list(img.diff_ids)

    # Pull by digest works as well and resolves to the same image.
    by_digest = registry.name("podman/busybox", digest=pushed)
    podman("pull", "--tls-verify=false", by_digest)
    assert podman("image", "inspect", "--format", "{{.Id}}", by_digest).stdout.strip() == image_id


def test_search_finds_the_repository(
    skopeo: ContainersTool, podman: ContainersTool, registry: Registry, tmp_path: Path
) -> None:
    img = make_image(tmp_path / "layout", layers=[1024], seed=201, tag="v1")
    skopeo(
        "copy",
        "--dest-tls-verify=false",
        img.ref,
        registry.ref("podman/searchable-quokka", "v1"),
    )
    found = podman(
        "search",
        "--tls-verify=false",
        "--format",
        "{{.Name}}",
        f"{registry.host}/searchable-quokka",
    )
    names = found.stdout.split()
    assert f"{registry.host}/podman/searchable-quokka" in names, found.stdout
    missing = podman(
        "search", "--tls-verify=false", "--format", "{{.Name}}", f"{registry.host}/no-such-wombat"
    )
    assert missing.stdout.split() == []
