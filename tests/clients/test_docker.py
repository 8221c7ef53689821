"""Docker Engine (a private dockerd) against a real Moorage process: load, push, pull back,
cross-repository push that mounts, login. No `docker run`: the engine has no networking here."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.clients.conftest import (
    ContainersTool,
    Docker,
    Registry,
    layer_statuses,
    pushed_digest,
)
from tests.images import make_image

pytestmark = pytest.mark.clients

DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"


def test_push_pull_and_mounting_second_push(
    dockerd: Docker, skopeo: ContainersTool, registry: Registry, tmp_path: Path
) -> None:
    img = make_image(
        tmp_path / "layout",
        layers=[512 * 1024, 65536, 4096],
        seed=301,
        tag="v1",
        cmd=["/bin/true"],
    )
    archive = tmp_path / "image.tar"
    local = "moorage-test/docker:v1"
    skopeo("copy", img.ref, f"docker-archive:{archive}:{local}")

    remote = registry.name("docker/img", "v1")
    copy = registry.name("docker/img-copy", "v1")
    try:
        loaded = dockerd("load", "-i", archive)
        assert local in loaded.stdout
        image_id = dockerd("image", "inspect", "--format", "{{.Id}}", local).stdout.strip()
        assert image_id == img.config.digest

        dockerd("tag", local, remote)
        pushed_out = dockerd("push", remote).stdout
        digest = pushed_digest(pushed_out, "v1")
        statuses = layer_statuses(pushed_out)
        assert len(statuses) == len(img.layers), pushed_out
        assert set(statuses.values()) == {"Pushed"}, pushed_out

        # The registry has that manifest under the tag, byte for byte.
        resp = registry.request("GET", "/v2/docker/img/manifests/v1", headers={"Accept": DOCKER_V2})
        assert resp.status == 200, resp
        assert "sha256:" + hashlib.sha256(resp.body).hexdigest() == digest
        assert resp.headers.get("Docker-Content-Digest") == digest
        manifest = json.loads(resp.body)
        assert manifest["config"]["digest"] == image_id
        assert len(manifest["layers"]) == len(img.layers)

        # Remove it locally and pull it back: same image ID, same digest.
        dockerd("rmi", local, remote)
        assert dockerd("image", "inspect", remote, check=False).returncode != 0
        pulled_out = dockerd("pull", remote).stdout
        assert f"Digest: {digest}" in pulled_out, pulled_out
        info = json.loads(dockerd("image", "inspect", remote).stdout)[0]
        assert info["Id"] == image_id
        assert f"{registry.host}/docker/img@{digest}" in info["RepoDigests"]
        assert info["RootFS"]["Layers"] == list(img.diff_ids)

        # A push of the same image to another repository moves no layer data: the engine
        # mounts each layer from docker/img (or finds it already there).
        dockerd("tag", remote, copy)
        second_out = dockerd("push", copy).stdout
        assert pushed_digest(second_out, "v1") == digest
        statuses = layer_statuses(second_out)
        assert len(statuses) == len(img.layers), second_out
        for short_id, status in statuses.items():
            assert status == "Mounted from docker/img" or status == "Layer already exists", (
                f"layer {short_id}: {status!r}\n{second_out}"
            )
        resp = registry.request(
            "HEAD", "/v2/docker/img-copy/manifests/v1", headers={"Accept": DOCKER_V2}
        )
        assert resp.status == 200
        assert resp.headers.get("Docker-Content-Digest") == digest
        for layer in manifest["layers"]:
            blob = registry.request("HEAD", f"/v2/docker/img-copy/blobs/{layer['digest']}")
            assert blob.status == 200, f"{layer['digest']} not in docker/img-copy"
    finally:
        dockerd("rmi", "--force", local, remote, copy, check=False)


def test_login_against_open_registry(dockerd: Docker, registry: Registry) -> None:
    """No authentication configured: `docker login` succeeds and logout works."""
    result = dockerd("login", "-u", "moorage", "-p", "not-checked", registry.host)
    assert "Login Succeeded" in result.stdout, result.stdout + result.stderr
    auths = json.loads((dockerd.config_dir / "config.json").read_text())["auths"]
    assert registry.host in auths
    dockerd("logout", registry.host)
    auths = json.loads((dockerd.config_dir / "config.json").read_text()).get("auths", {})
    assert registry.host not in auths
