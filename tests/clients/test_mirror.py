"""The pull-through cache with real clients and real upstreams (docs/mirror.md): skopeo and
podman pull by tag and by digest through a Moorage that mirrors a CNCF Distribution (htpasswd,
Basic) and a second Moorage (token authentication); a docker daemon started with
`registry-mirrors` pulls an unprefixed name through the default upstream; containerd pulls
Docker Hub and ghcr.io names through the mirror by the hosts.toml files of docs/mirror.md."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.clients.conftest import (
    PASSWORD,
    USER,
    ContainersRun,
    Registry,
    ServerFactory,
    private_containerd,
    run,
    running_dockerd,
)
from tests.images import make_busybox_image, make_image, verify_layout
from tests.mirror.conftest import AuthDistribution

pytestmark = pytest.mark.clients

NOTLS = "--tls-verify=false"
CREDS = f"{USER}:{PASSWORD}"


def upstream_entry(prefix: str, url: str) -> dict[str, Any]:
    return {"prefix": prefix, "url": url, "username": USER, "password": PASSWORD}


def test_skopeo_and_podman_pull_through_distribution_and_moorage_upstreams(
    moorage_server: ServerFactory,
    containers_for: Callable[[Registry], ContainersRun],
    htpasswd: Path,
    tmp_path: Path,
) -> None:
    token_upstream = moorage_server("token", tls=False)
    distribution = AuthDistribution(tmp_path / "distribution", htpasswd)
    distribution.start_sync()
    try:
        mirror = moorage_server(
            tls=False,
            config={
                "proxy": {
                    "upstreams": [
                        upstream_entry("tok", token_upstream.url),
                        upstream_entry("dist", distribution.url),
                    ]
                }
            },
        )
        state = containers_for(mirror)
        skopeo, podman = state.skopeo(), state.podman()
        img = make_image(tmp_path / "src", layers=[3 << 20, 70_000], seed=1101, tag="v1")
        for host in (token_upstream.host, distribution.host):
            skopeo(
                "copy",
                "--dest-tls-verify=false",
                "--dest-creds",
                CREDS,
                img.ref,
                f"docker://{host}/team/app:v1",
            )
        for prefix in ("tok", "dist"):
            by_tag = tmp_path / f"{prefix}-tag"
            skopeo(
                "copy",
                "--src-tls-verify=false",
                mirror.ref(f"{prefix}/team/app", "v1"),
                f"oci:{by_tag}:v1",
            )
            verify_layout(by_tag, "v1", img.digest)
            by_digest = tmp_path / f"{prefix}-digest"
            skopeo(
                "copy",
                "--src-tls-verify=false",
                mirror.ref(f"{prefix}/team/app", digest=img.digest),
                f"oci:{by_digest}:d",
            )
            verify_layout(by_digest, "d", img.digest)
        # podman, by tag and by digest, from what the mirror now holds.
        podman("pull", NOTLS, mirror.name("dist/team/app", "v1"))
        podman("pull", NOTLS, mirror.name("tok/team/app", digest=img.digest))
        listed = json.loads(podman("image", "inspect", mirror.name("dist/team/app", "v1")).stdout)
        assert listed[0]["Digest"] == img.digest
        assert listed[0]["Id"] == img.config.digest.partition(":")[2]
        # The cache is listed like local content.
        tags = mirror.request("GET", "/v2/tok/team/app/tags/list")
        assert json.loads(tags.body)["tags"] == ["v1"]
        catalog = json.loads(mirror.request("GET", "/v2/_catalog").body)["repositories"]
        assert {"tok/team/app", "dist/team/app"} <= set(catalog)
        # A push into a mirror is refused, saying why.
        refused = skopeo(
            "copy",
            "--dest-tls-verify=false",
            img.ref,
            mirror.ref("tok/team/other", "v1"),
            check=False,
        )
        assert refused.returncode != 0
        assert "is a mirror of" in refused.stderr, refused.stderr
    finally:
        distribution.cleanup()


def test_docker_registry_mirror_pulls_through_the_default_upstream(
    moorage_server: ServerFactory,
    containers_for: Callable[[Registry], ContainersRun],
    tmp_path: Path,
) -> None:
    upstream = moorage_server("token", tls=False)
    mirror = moorage_server(
        tls=False, config={"proxy": {"upstreams": [upstream_entry("", upstream.url)]}}
    )
    skopeo = containers_for(mirror).skopeo()
    img = make_busybox_image(tmp_path / "src", "latest")
    skopeo(
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        CREDS,
        "--format",
        "v2s2",
        img.ref,
        f"docker://{upstream.host}/library/mirrorbox:latest",
    )
    # Short: containerd's sockets under it must fit in 104 bytes.
    base = Path(tempfile.mkdtemp(prefix="mrg-mirror-"))
    try:
        with running_dockerd(base, mirror, daemon={"registry-mirrors": [mirror.url]}) as docker:
            # An unprefixed Docker Hub name: the daemon asks the mirror for
            # library/mirrorbox, and there is no other way to Docker Hub from here.
            pulled = docker("pull", "mirrorbox").stdout
            assert "Downloaded newer image for mirrorbox:latest" in pulled, pulled
            out = docker(
                "run", "--rm", "--network", "none", "mirrorbox", "/bin/busybox", "echo", "ok"
            )
            assert out.stdout.strip() == "ok"
    finally:
        shutil.rmtree(base, ignore_errors=True)
    cached = mirror.request("GET", "/v2/library/mirrorbox/tags/list")
    assert json.loads(cached.body)["tags"] == ["latest"]


def test_containerd_pulls_through_the_mirror_by_hosts_toml(
    moorage_server: ServerFactory,
    containers_for: Callable[[Registry], ContainersRun],
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The two hosts.toml forms of docs/mirror.md, on plain HTTP: Docker Hub through the default
    upstream, ghcr.io through a prefix with `override_path`. Neither upstream host is reachable
    from here, so a pull that succeeds came through the mirror."""
    upstream = moorage_server("token", tls=False)
    entries = [upstream_entry("", upstream.url), upstream_entry("ghcr", upstream.url)]
    mirror = moorage_server(tls=False, config={"proxy": {"upstreams": entries}})
    skopeo = containers_for(mirror).skopeo()
    hub = make_busybox_image(tmp_path / "hub", "latest")
    app = make_image(tmp_path / "app", layers=[1 << 20, 4096], seed=1131, tag="v1")
    for img, name in ((hub, "library/ctrbox:latest"), (app, "owner/ctrapp:v1")):
        skopeo(
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            CREDS,
            img.ref,
            f"docker://{upstream.host}/{name}",
        )
    hosts = tmp_path / "certs.d"
    (hosts / "docker.io").mkdir(parents=True)
    (hosts / "docker.io" / "hosts.toml").write_text(
        'server = "https://registry-1.docker.io"\n\n'
        f'[host."{mirror.url}"]\n  capabilities = ["pull", "resolve"]\n'
    )
    (hosts / "ghcr.io").mkdir()
    (hosts / "ghcr.io" / "hosts.toml").write_text(
        'server = "https://ghcr.io"\n\n'
        f'[host."{mirror.url}/v2/ghcr"]\n  capabilities = ["pull", "resolve"]\n'
        "  override_path = true\n"
    )
    with private_containerd(tmp_path_factory.mktemp("ctd")) as ctr:
        pull = [*ctr, "images", "pull", "--hosts-dir", str(hosts), "--snapshotter", "native"]
        for ref, img in (
            ("docker.io/library/ctrbox:latest", hub),
            ("ghcr.io/owner/ctrapp:v1", app),
        ):
            run([*pull, ref])
            listed = run([*ctr, "images", "list"]).stdout
            line = next(x for x in listed.splitlines() if x.startswith(ref + " "))
            assert img.digest in line, listed
    for path, tag in (("library/ctrbox", "latest"), ("ghcr/owner/ctrapp", "v1")):
        cached = mirror.request("GET", f"/v2/{path}/tags/list")
        assert json.loads(cached.body)["tags"] == [tag]
