"""One store, both protocols, proven with real clients.

Images pushed through the v1 registry protocol (Docker 1.2's flow, `tests/v1/client.py`)
pull through v2 with skopeo, podman and docker; images pushed through v2 with skopeo and docker
pull through v1; a tag moved on either side is seen on the other; docker-registry-client reads
both (v1 mode, and v2 mode where the server converts schema 2 to signed schema 1 for it); and
`docker search` finds repositories through `/v1/_ping` + `/v1/search`.

Contract: docs/contracts/v1-protocol.md sections 4, 5, 7 and 11; docs/design/v1-v2-translation.md.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
import requests
from docker_registry_client import DockerRegistryClient
from docker_registry_client._BaseClient import BaseClientV1, BaseClientV2

from moorage.content import schema1, translate
from tests.clients.conftest import ContainersTool, Docker, Registry
from tests.images import (
    Image,
    blob_bytes,
    busybox_path,
    directory,
    file,
    layer_file,
    make_image,
    random_file,
    sha256_digest,
    symlink,
    tagged_digest,
)
from tests.v1.client import PullResult, PushResult, RemoteHttp, V1Client, V1Image
from tests.v1.client import make_image as make_v1_image

pytestmark = pytest.mark.clients

DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
NOTLS = "--tls-verify=false"
T = TypeVar("T")

#: The run configuration of the v1-pushed busybox image (every image of its chain carries it).
RUN_CONFIG = {"Cmd": ["/bin/busybox", "echo", "hello from v1"], "Env": ["PATH=/bin"]}
COMMANDS = (
    ["/bin/sh", "-c", "#(nop) ADD file:5a0d7d3a1f9c in /"],
    ["/bin/sh", "-c", "echo pushed through v1 > /etc/motd"],
    ["/bin/sh", "-c", "#(nop) ADD file:busybox in /bin/busybox"],
)
#: Docker 1.2 streamed a layer as an unterminated tar, gzip-flushed after every 32 KiB.
DOCKER12_FLUSH = 32 * 1024


def busybox_chain(parent: V1Image | None = None, docker12_stream: bool = False) -> list[V1Image]:
    """Three v1 images, root first: a base with some files, a small layer on it, and a top
    layer holding /bin/busybox (from busybox-static) and /bin/sh -> busybox. With
    `docker12_stream` the layers are sent as Docker 1.2 streamed them (unterminated tars,
    gzip flushed every 32 KiB)."""
    base = [
        directory("etc"),
        directory("tmp", 0o1777),
        file("etc/hostname", b"moorage\n"),
        random_file("etc/random.bin", 96 * 1024, "v1-translation-base"),
    ]
    middle = [directory("etc"), file("etc/motd", b"pushed through v1\n")]
    top = [
        directory("bin"),
        file("bin/busybox", busybox_path().read_bytes(), 0o755),
        symlink("bin/sh", "busybox"),
    ]
    chain: list[V1Image] = []
    for i, (entries, cmd) in enumerate(zip([base, middle, top], COMMANDS, strict=True)):
        chain.append(
            make_v1_image(
                chain[-1] if chain else parent,
                entries=entries,
                cmd=cmd,
                config=RUN_CONFIG,
                created=f"2014-09-24T09:12:{i + 1:02d}.5+00:00",
                author="moorage tests <tests@moorage.invalid>",
                end_blocks=not docker12_stream,
                flush_every=DOCKER12_FLUSH if docker12_stream else None,
            )
        )
    return chain


@dataclass(frozen=True)
class Pushed:
    repository: str  # as typed by the v1 client
    tag: str
    chain: list[V1Image]  # root first
    result: PushResult

    @property
    def top(self) -> V1Image:
        return self.chain[-1]

    @property
    def diff_ids(self) -> list[str]:
        return [image.diff_id for image in self.chain]

    @property
    def blob_digests(self) -> list[str]:
        return [image.blob_digest for image in self.chain]


@pytest.fixture(scope="module")
def v1_pushed(registry: Registry) -> Pushed:
    """The busybox chain pushed once through v1 into `v1x/busybox`, tagged `latest`, with
    layer bodies exactly as Docker 1.2 streamed them."""
    chain = busybox_chain(docker12_stream=True)
    result = asyncio.run(
        with_v1(registry, lambda v1: v1.push("v1x/busybox", chain, {chain[-1].id: ["latest"]}))
    )
    return Pushed("v1x/busybox", "latest", chain, result)


async def with_v1(registry: Registry, work: Callable[[V1Client], Awaitable[T]]) -> T:
    """Run `work` with a v1 client on a session of its own."""
    async with aiohttp.ClientSession() as session:
        return await work(V1Client(RemoteHttp(session, registry.url), context=registry.log_tail))


@pytest.fixture
async def v1(registry: Registry) -> AsyncIterator[V1Client]:
    """The v1 client; its failures show the server's log tail."""
    async with aiohttp.ClientSession() as session:
        yield V1Client(RemoteHttp(session, registry.url), context=registry.log_tail)


def pulled_chain(pulled: PullResult, tag: str) -> tuple[list[str], list[Any]]:
    """The ancestry (top first) of the pulled tag, and its images root first."""
    top = pulled.tags[tag]
    return pulled.ancestries[top], pulled.chain(top)


def v2_manifest(registry: Registry, repository: str, reference: str) -> tuple[bytes, str]:
    """The manifest bytes a schema-2 client gets, and the digest header."""
    resp = registry.request(
        "GET", f"/v2/{repository}/manifests/{reference}", headers={"Accept": DOCKER_V2}
    )
    assert resp.status == 200, f"{resp.status} {resp.body[:300]!r}\n{registry.log_tail()}"
    return resp.body, resp.headers["Docker-Content-Digest"]


def v2_blob(registry: Registry, repository: str, digest: str) -> bytes:
    resp = registry.request("GET", f"/v2/{repository}/blobs/{digest}")
    assert resp.status == 200, f"blob {digest} of {repository}: {resp.status}"
    assert sha256_digest(resp.body) == digest
    return resp.body


def skopeo_layers(skopeo: ContainersTool, registry: Registry, repository: str, tag: str) -> Any:
    inspected = json.loads(skopeo("inspect", NOTLS, registry.ref(repository, tag)).stdout)
    return inspected["Layers"]


def gunzip_digest(layer: bytes) -> str:
    return sha256_digest(gzip.decompress(layer))


def check_v2_view_of_v1_image(registry: Registry, repository: str, pushed: Pushed) -> str:
    """The v2 manifest and config built from a v1 push (contract 11): layers are the v1
    layer bytes (root first), diff_ids the sha256 of the uncompressed tars, the config the
    top JSON without the v1 bookkeeping. Returns the config digest (docker's image id)."""
    raw, digest = v2_manifest(registry, repository, pushed.tag)
    assert digest == sha256_digest(raw)
    manifest = json.loads(raw)
    assert manifest["mediaType"] == DOCKER_V2
    assert manifest["config"]["mediaType"] == DOCKER_CONFIG
    assert [(x["mediaType"], x["size"], x["digest"]) for x in manifest["layers"]] == [
        (DOCKER_GZIP, len(image.layer), image.blob_digest) for image in pushed.chain
    ]
    for image in pushed.chain:
        assert v2_blob(registry, repository, image.blob_digest) == image.layer
    config = json.loads(v2_blob(registry, repository, manifest["config"]["digest"]))
    assert config["rootfs"] == {"type": "layers", "diff_ids": pushed.diff_ids}
    assert config["config"] == RUN_CONFIG
    assert (config["architecture"], config["os"]) == ("amd64", "linux")
    for dropped in ("id", "parent", "Size"):
        assert dropped not in config, f"{dropped} leaked into the v2 config"
    assert [h["created_by"] for h in config["history"]] == [" ".join(c) for c in COMMANDS]
    # Built once when the tag was written: the same bytes on every read.
    assert v2_manifest(registry, repository, pushed.tag) == (raw, digest)
    return str(manifest["config"]["digest"])


# ---------------------------------------------------------------------------------------------
# 1. v1 push -> v2 pull


async def test_v1_push_follows_docker_1_2_and_builds_the_v2_image(
    v1_pushed: Pushed, registry: Registry, v1: V1Client
) -> None:
    result = v1_pushed.result
    assert result.endpoints == [registry.host]
    assert "repository=" in result.token and "access=write" in result.token
    assert not result.token.lower().startswith("token")
    assert result.uploaded == [image.id for image in v1_pushed.chain]
    assert result.skipped == []

    check_v2_view_of_v1_image(registry, "v1x/busybox", v1_pushed)

    # The v1 side reads back what was pushed, byte for byte, with the client's checksum.
    pulled = await v1.pull("v1x/busybox", "latest")
    ancestry, chain = pulled_chain(pulled, "latest")
    assert ancestry == [image.id for image in reversed(v1_pushed.chain)]
    for got, image in zip(chain, v1_pushed.chain, strict=True):
        assert got.json == image.json
        assert got.layer == image.layer
        assert got.size == len(image.layer)
    listed = {entry["id"]: entry for entry in pulled.image_list}
    assert set(listed) == {image.id for image in v1_pushed.chain}
    assert all("Tag" not in entry for entry in pulled.image_list)
    assert listed[v1_pushed.top.id].get("checksum") == v1_pushed.top.tarsum
    for image in v1_pushed.chain:
        resp = await v1.call("GET", f"/v1/images/{image.id}/json")
        assert resp.headers.get("X-Docker-Checksum-Payload") == image.payload
        assert resp.headers.get("X-Docker-Checksum") == image.tarsum

    # A second push of the same chain under another tag moves no data: every existence
    # probe answers 200, and the new tag reaches the same v2 manifest.
    again = await v1.push("v1x/busybox", v1_pushed.chain, {v1_pushed.top.id: ["again"]})
    assert again.uploaded == []
    assert again.skipped == [image.id for image in v1_pushed.chain]
    assert v2_manifest(registry, "v1x/busybox", "again") == v2_manifest(
        registry, "v1x/busybox", "latest"
    )


def test_v1_push_pulls_with_skopeo(
    v1_pushed: Pushed, skopeo: ContainersTool, registry: Registry, tmp_path: Path
) -> None:
    out = tmp_path / "pulled"
    skopeo("copy", "--src-tls-verify=false", registry.ref("v1x/busybox", "latest"), f"oci:{out}:x")
    manifest = json.loads(blob_bytes(out, tagged_digest(out, "x")))
    assert [layer["digest"] for layer in manifest["layers"]] == v1_pushed.blob_digests
    for image in v1_pushed.chain:
        assert blob_bytes(out, image.blob_digest) == image.layer, f"layer of {image.id}"
    config = json.loads(blob_bytes(out, manifest["config"]["digest"]))
    assert config["rootfs"]["diff_ids"] == v1_pushed.diff_ids
    assert config["config"]["Cmd"] == RUN_CONFIG["Cmd"]
    # It is a real image: the top layer carries the busybox binary.
    top = blob_bytes(out, v1_pushed.top.blob_digest)
    assert layer_file(top, "bin/busybox") == busybox_path().read_bytes()


def test_v1_push_pulls_with_podman(
    v1_pushed: Pushed, podman: ContainersTool, registry: Registry
) -> None:
    name = registry.name("v1x/busybox", "latest")
    podman("pull", NOTLS, name)
    info = json.loads(podman("image", "inspect", name).stdout)[0]
    assert info["RootFS"]["Layers"] == v1_pushed.diff_ids
    assert info["Config"]["Cmd"] == RUN_CONFIG["Cmd"]
    _, digest = v2_manifest(registry, "v1x/busybox", "latest")
    assert info["Digest"] == digest


def test_v1_push_pulls_with_docker(v1_pushed: Pushed, dockerd: Docker, registry: Registry) -> None:
    name = registry.name("v1x/busybox", "latest")
    config_digest = check_v2_view_of_v1_image(registry, "v1x/busybox", v1_pushed)
    _, digest = v2_manifest(registry, "v1x/busybox", "latest")
    try:
        pulled = dockerd("pull", name).stdout
        assert f"Digest: {digest}" in pulled, pulled
        info = json.loads(dockerd("image", "inspect", name).stdout)[0]
        assert info["Id"] == config_digest
        assert info["RootFS"]["Layers"] == v1_pushed.diff_ids
        assert info["Config"]["Cmd"] == RUN_CONFIG["Cmd"]
        assert info["Architecture"] == "amd64" and info["Os"] == "linux"
        history = dockerd("history", "--no-trunc", "--format", "{{.CreatedBy}}", name).stdout
        assert history.splitlines() == [" ".join(c) for c in reversed(COMMANDS)]
        # A real image: the busybox of the top v1 layer runs (no network needed).
        ran = dockerd("run", "--rm", "--network", "none", name)
        assert ran.stdout == "hello from v1\n"
    finally:
        dockerd("rmi", "--force", name, check=False)


async def test_one_component_v1_name_pulls_as_library_via_v2(
    registry: Registry, dockerd: Docker, skopeo: ContainersTool, v1: V1Client
) -> None:
    """Docker 1.2 pushes `host/busybox` as `PUT /v1/repositories/busybox/` and tags without
    `library/`; v1 readers use `library/busybox`; v2 clients pull `host/busybox`."""
    chain = busybox_chain()
    result = await v1.push("busybox", chain, {chain[-1].id: ["v1"]})
    assert "library/busybox" in result.token
    assert (await v1.tags("library/busybox", "Token "))["v1"] == chain[-1].id
    assert await v1.tag("busybox", "v1", "Token ") == chain[-1].id
    # Docker 1.2's pull: index call with the name as typed, tags with library/.
    pulled = await v1.pull("busybox", "v1")
    assert [got.layer for got in pulled_chain(pulled, "v1")[1]] == [i.layer for i in chain]

    pushed = Pushed("busybox", "v1", chain, result)
    config_digest = check_v2_view_of_v1_image(registry, "busybox", pushed)
    assert v2_manifest(registry, "library/busybox", "v1") == v2_manifest(registry, "busybox", "v1")
    inspected = json.loads(skopeo("inspect", NOTLS, registry.ref("busybox", "v1")).stdout)
    assert inspected["Layers"] == pushed.blob_digests

    name = registry.name("busybox", "v1")
    try:
        dockerd("pull", name)
        info = json.loads(dockerd("image", "inspect", name).stdout)[0]
        assert info["Id"] == config_digest
        assert info["RootFS"]["Layers"] == pushed.diff_ids
        assert name in info["RepoTags"]
    finally:
        dockerd("rmi", "--force", name, check=False)


# ---------------------------------------------------------------------------------------------
# 2. v2 push -> v1 pull


async def check_v1_view_of_v2_image(
    v1: V1Client, registry: Registry, repository: str, tag: str, expected_diff_ids: list[str]
) -> list[Any]:
    """Pull `repository:tag` the way Docker 1.2 does and compare every v1 answer with the v2
    manifest and blobs: same layer bytes, ancestry = manifest layers top first, X-Docker-Size =
    layer size, parents chained, the top JSON carries the image config."""
    raw, _ = v2_manifest(registry, repository, tag)
    manifest = json.loads(raw)
    layers = manifest["layers"]
    config = json.loads(v2_blob(registry, repository, manifest["config"]["digest"]))

    pulled = await v1.pull(repository, tag)
    ancestry, chain = pulled_chain(pulled, tag)
    assert len(ancestry) == len(layers)
    assert len(set(ancestry)) == len(layers)
    assert {entry["id"] for entry in pulled.image_list} >= set(ancestry)
    assert all("Tag" not in entry for entry in pulled.image_list)
    parent = None
    for got, descriptor, diff_id in zip(chain, layers, expected_diff_ids, strict=True):
        blob = v2_blob(registry, repository, descriptor["digest"])
        assert got.layer == blob, f"v1 layer of {got.id} differs from {descriptor['digest']}"
        assert got.size == descriptor["size"] == len(blob)
        assert gunzip_digest(got.layer) == diff_id
        document = got.document
        assert document["id"] == got.id
        assert document.get("parent") == parent
        parent = got.id
    top = chain[-1].document
    assert top["config"] == config["config"]
    assert (top["architecture"], top["os"]) == (config["architecture"], config["os"])
    return chain


async def test_skopeo_v2s2_push_pulls_through_v1(
    skopeo: ContainersTool, registry: Registry, tmp_path: Path, v1: V1Client
) -> None:
    img = make_image(
        tmp_path / "layout", layers=[256 * 1024, 4096, 300], seed=731, tag="v2s2", cmd=["/x"]
    )
    skopeo(
        "copy",
        "--dest-tls-verify=false",
        "--format",
        "v2s2",
        img.ref,
        registry.ref("v1x/from-skopeo", "v2s2"),
    )
    raw, _ = v2_manifest(registry, "v1x/from-skopeo", "v2s2")
    manifest = json.loads(raw)
    assert manifest["mediaType"] == DOCKER_V2
    assert [x["digest"] for x in manifest["layers"]] == img.layer_digests

    chain = await check_v1_view_of_v2_image(
        v1, registry, "v1x/from-skopeo", "v2s2", list(img.diff_ids)
    )
    # Root last in the ancestry, and each v1 layer is the layout's blob.
    assert [got.layer for got in reversed(chain)] == [b.read() for b in reversed(img.layers)]
    assert chain[-1].document["config"]["Cmd"] == ["/x"]
    # The v1 view is persisted: asking again gives the same ids.
    assert await v1.tags("v1x/from-skopeo", "Token ") == {"v2s2": chain[-1].id}


async def test_docker_push_pulls_through_v1(
    dockerd: Docker, skopeo: ContainersTool, registry: Registry, tmp_path: Path, v1: V1Client
) -> None:
    img = make_image(tmp_path / "layout", layers=[128 * 1024, 2048], seed=732, tag="d", cmd=["/y"])
    archive = tmp_path / "image.tar"
    local = "moorage-test/v1x-docker:d"
    remote = registry.name("v1x/from-docker", "d")
    skopeo("copy", img.ref, f"docker-archive:{archive}:{local}")
    try:
        dockerd("load", "-i", archive)
        dockerd("tag", local, remote)
        dockerd("push", remote)
        info = json.loads(dockerd("image", "inspect", remote).stdout)[0]
        assert info["RootFS"]["Layers"] == list(img.diff_ids)
    finally:
        dockerd("rmi", "--force", local, remote, check=False)
    # docker compressed the layers itself: the v1 layers are its blobs, and they unpack to
    # the same diff_ids.
    chain = await check_v1_view_of_v2_image(
        v1, registry, "v1x/from-docker", "d", list(img.diff_ids)
    )
    assert chain[-1].document["config"]["Cmd"] == ["/y"]


async def test_predictable_v1_ids_cannot_be_squatted(
    skopeo: ContainersTool, registry: Registry, tmp_path: Path, v1: V1Client
) -> None:
    """v1 ids of v2 content are computable by anyone (design doc, "Hazard"): someone who
    pushes other content under such an id through v1 before the image is first read through
    v1 must not become that image's v1 view."""
    img = make_image(tmp_path / "layout", layers=[4096, 1024], seed=735, tag="sq")
    ref = registry.ref("v1x/squat-target", "sq")
    skopeo("copy", "--dest-tls-verify=false", "--format", "v2s2", img.ref, ref)
    raw, _ = v2_manifest(registry, "v1x/squat-target", "sq")
    manifest = json.loads(raw)
    config = v2_blob(registry, "v1x/squat-target", manifest["config"]["digest"])
    root_id = translate.v2_to_v1(manifest, config)[0].id

    # The squatter: a root image with that id and other bytes, pushed into its own repository.
    squat = make_v1_image(image_id=root_id, entries=[file("evil", b"not the real layer\n")])
    await v1.push("v1x/squatter", [squat], {root_id: ["latest"]})

    assert await v1.tags("v1x/squatter", "Token ") == {"latest": root_id}
    tags = await v1.tags("v1x/squat-target", "Token ")
    if "sq" in tags:  # a v1 view, if any, must be the real image
        pulled = await v1.pull("v1x/squat-target", "sq")
        assert [got.layer for got in pulled_chain(pulled, "sq")[1]] == [
            b.read() for b in img.layers
        ]


async def test_docker_built_image_round_trips_through_v1(
    dockerd: Docker, skopeo: ContainersTool, registry: Registry, tmp_path: Path, v1: V1Client
) -> None:
    """`docker build` writes empty-layer history (ENV, LABEL, CMD): the v1 view has one image
    per real layer, each with its own step; a v1 client that pulled it and pushes it into
    another repository moves no data, and that copy pulls and runs through v2."""
    context = tmp_path / "context"
    context.mkdir()
    (context / "busybox").write_bytes(busybox_path().read_bytes())
    (context / "busybox").chmod(0o755)  # COPY keeps the mode: it must be executable
    (context / "Dockerfile").write_text(
        "FROM scratch\n"
        "COPY busybox /bin/busybox\n"
        "ENV GREETING=hello\n"
        "LABEL org.example.built=by-docker\n"
        "COPY Dockerfile /Dockerfile\n"
        'CMD ["/bin/busybox", "echo", "built by docker"]\n'
    )
    name = registry.name("v1x/built", "b")
    copy = registry.name("v1x/built-copy", "b")
    try:
        dockerd("build", "-t", name, context)
        dockerd("push", name)
        info = json.loads(dockerd("image", "inspect", name).stdout)[0]
        dockerd("rmi", "--force", name)
        diff_ids = info["RootFS"]["Layers"]
        assert len(diff_ids) == 2

        pulled = await check_v1_view_of_v2_image(v1, registry, "v1x/built", "b", diff_ids)
        raw, _ = v2_manifest(registry, "v1x/built", "b")
        config_digest = json.loads(raw)["config"]["digest"]
        config = json.loads(v2_blob(registry, "v1x/built", config_digest))
        steps = [h["created_by"] for h in config["history"] if not h.get("empty_layer")]
        # Lower images carry their own build step; the top carries the image's whole
        # config, container_config included (Docker's MakeV1ConfigFromConfig).
        assert [got.document["container_config"]["Cmd"] for got in pulled[:-1]] == [
            [step] for step in steps[:-1]
        ]
        assert pulled[-1].document["container_config"] == config["container_config"]
        top = pulled[-1].document
        assert "GREETING=hello" in top["config"]["Env"]
        assert top["config"]["Labels"] == {"org.example.built": "by-docker"}

        # A v1 client pushes what it pulled into another repository: every image is found.
        chain = [
            V1Image(
                got.id, got.document.get("parent"), got.json, gzip.decompress(got.layer), got.layer
            )
            for got in pulled
        ]
        again = await v1.push("v1x/built-copy", chain, {pulled[-1].id: ["b"]})
        assert again.uploaded == []
        assert again.skipped == [image.id for image in chain]
        assert skopeo_layers(skopeo, registry, "v1x/built-copy", "b") == [
            x["digest"] for x in json.loads(raw)["layers"]
        ]
        dockerd("pull", copy)
        copied = json.loads(dockerd("image", "inspect", copy).stdout)[0]
        assert copied["RootFS"]["Layers"] == diff_ids
        assert copied["Config"]["Cmd"] == ["/bin/busybox", "echo", "built by docker"]
        ran = dockerd("run", "--rm", "--network", "none", copy)
        assert ran.stdout == "built by docker\n"
    finally:
        dockerd("rmi", "--force", name, copy, check=False)


# ---------------------------------------------------------------------------------------------
# 3. Tags are shared


async def test_tags_moved_on_one_side_are_seen_on_the_other(
    skopeo: ContainersTool, registry: Registry, tmp_path: Path, v1: V1Client
) -> None:
    repo = "v1x/moving"
    first = busybox_chain()
    await v1.push(repo, first, {first[-1].id: ["current", "first"]})
    assert skopeo_layers(skopeo, registry, repo, "current") == [i.blob_digest for i in first]

    # A second image on the same base, pushed under its own tag: the base is not uploaded.
    second = [first[0], *busybox_chain(parent=first[0])[:1]]
    result = await v1.push(repo, second, {second[-1].id: ["second"]})
    assert result.skipped == [first[0].id]
    assert result.uploaded == [second[-1].id]

    # Move `current` with a bare v1 tag write: skopeo sees the other image at once.
    token = await v1.open_push(repo, [])
    v1.expect(await v1.put_tag(repo, "current", second[-1].id, token), 200)
    layers = skopeo_layers(skopeo, registry, repo, "current")
    assert layers == [i.blob_digest for i in second]
    assert v2_manifest(registry, repo, "current") == v2_manifest(registry, repo, "second")

    # Move it with skopeo: the v1 tag list follows, and names an image whose layers are the
    # new ones; the untouched tags stay where they were.
    img = make_image(tmp_path / "layout", layers=[8192, 512], seed=733, tag="c")
    skopeo(
        "copy",
        "--dest-tls-verify=false",
        "--format",
        "v2s2",
        img.ref,
        registry.ref(repo, "current"),
    )
    tags = await v1.tags(repo, "Token ")
    assert tags["first"] == first[-1].id
    assert tags["second"] == second[-1].id
    moved = tags["current"]
    assert moved not in (first[-1].id, second[-1].id)
    ancestry = await v1.ancestry(moved, "Token ")
    assert len(ancestry) == len(img.layers)
    layers_read = [(await v1.get_layer(i, "Token "))[0] for i in reversed(ancestry)]
    assert layers_read == [b.read() for b in img.layers]


# ---------------------------------------------------------------------------------------------
# 4. docker-registry-client (PyPI), v1 and v2 modes


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """requests honours proxy variables: keep loopback traffic on loopback."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def test_docker_registry_client_v1_mode(
    v1_pushed: Pushed, registry: Registry, no_proxy: None
) -> None:
    client = DockerRegistryClient(registry.url, api_version=1)
    assert client.api_version == 1
    base = client._base_client
    assert isinstance(base, BaseClientV1)
    assert base.check_status() is True  # GET /v1/_ping

    repository = client.repository("v1x/busybox")
    assert "latest" in repository.tags()
    image = repository.image("latest")
    assert image.image_id == v1_pushed.top.id
    assert image.get_json() == v1_pushed.top.document
    assert image.get_data("parent") == v1_pushed.chain[-2].id
    assert image.ancestry() == [i.id for i in reversed(v1_pushed.chain)]
    # Tag metadata comes from the User-Agent of the Docker 1.2 tag write.
    data = repository.data("latest")
    assert data["docker_version"] == "1.2.0"
    assert data["os"] == "linux" and data["arch"] == "amd64"
    # `Image.get_layer()` JSON-decodes the answer (a library bug for any real layer), so read
    # the layer through the library's raw call.
    for pushed in v1_pushed.chain:
        resp = base._http_response(BaseClientV1.IMAGE_LAYER, requests.get, image_id=pushed.id)
        assert resp.content == pushed.layer
    # /v1/search, as the library calls it (it reads only the first page, hence the term).
    found = base.search("v1x/busy")
    assert "v1x/busybox" in [result["name"] for result in found["results"]]


def test_docker_registry_client_v2_mode_gets_signed_schema1(
    skopeo: ContainersTool, registry: Registry, tmp_path: Path, no_proxy: None
) -> None:
    img: Image = make_image(tmp_path / "layout", layers=[65536, 1024, 77], seed=734, tag="s1")
    skopeo(
        "copy",
        "--dest-tls-verify=false",
        "--format",
        "v2s2",
        img.ref,
        registry.ref("v1x/schema1", "s1"),
    )
    client = DockerRegistryClient(registry.url, api_version=2)
    assert client.api_version == 2
    repository = client.repository("v1x/schema1")
    assert repository.tags() == ["s1"]
    content, digest = repository.manifest("s1")
    assert content["schemaVersion"] == 1
    assert content["name"] == "v1x/schema1" and content["tag"] == "s1"

    # The same request as the library's, keeping the bytes to check the signature.
    base = client._base_client
    assert isinstance(base, BaseClientV2)
    resp = base._http_response(
        BaseClientV2.MANIFEST,
        requests.get,
        name="v1x/schema1",
        reference="s1",
        schema=BaseClientV2.schema_1_signed,
    )
    assert resp.headers["Content-Type"] == SCHEMA1_SIGNED
    # Signed anew on each conversion (ECDSA is randomised): only the signatures may differ.
    unsigned = {k: v for k, v in json.loads(resp.content).items() if k != "signatures"}
    assert unsigned == {k: v for k, v in content.items() if k != "signatures"}
    assert resp.headers["Docker-Content-Digest"] == digest
    verified = schema1.verify(resp.content)
    assert verified.digest == digest == sha256_digest(verified.payload)
    assert (verified.name, verified.tag) == ("v1x/schema1", "s1")
    # fsLayers are top first and name real blobs: the manifest's layers (no empty layers).
    assert verified.blob_sums == list(reversed(img.layer_digests))
    for blob_sum in set(verified.blob_sums):
        got = requests.get(f"{registry.url}/v2/v1x/schema1/blobs/{blob_sum}", timeout=30)
        assert got.status_code == 200, blob_sum
        assert sha256_digest(got.content) == blob_sum
    history = [json.loads(h["v1Compatibility"]) for h in content["history"]]
    assert len(history) == len(img.layers)
    assert history[0]["config"]["Env"] == ["PATH=/bin"]
    assert [h.get("parent") for h in history[:-1]] == [h["id"] for h in history[1:]]
    # Stable: the same digest on every conversion.
    assert repository.manifest("s1")[1] == digest


# ---------------------------------------------------------------------------------------------
# 5. docker search


async def test_docker_search_finds_the_repository(
    dockerd: Docker, registry: Registry, tmp_path: Path, v1: V1Client
) -> None:
    chain = busybox_chain()
    await v1.push("v1x/searchable-narwhal", chain[:1], {chain[0].id: ["latest"]})
    found = dockerd("search", "--format", "{{.Name}}", f"{registry.host}/searchable-narwhal")
    assert "v1x/searchable-narwhal" in found.stdout.split(), found.stdout
    none = dockerd("search", "--format", "{{.Name}}", f"{registry.host}/no-such-okapi")
    assert none.stdout.split() == []
