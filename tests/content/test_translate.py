"""v1 <-> v2 translation: shapes, orders, deterministic bytes and ids, schema 1 payloads."""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from moorage.content import manifests, schema1, translate
from moorage.content.translate import EMPTY_LAYER_DIGEST, TranslationError, V1Layer


def sha(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def hex_of(digest: str) -> str:
    return digest.partition(":")[2]


# --- a v1 ancestry as a Docker 1.2 daemon pushes it -------------------------------------------

ROOT_ID = hashlib.sha256(b"root image").hexdigest()
MID_ID = hashlib.sha256(b"mid image").hexdigest()
TOP_ID = hashlib.sha256(b"top image").hexdigest()
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def run_config(cmd: list[str] | None, image: str = "") -> dict[str, Any]:
    """A Docker 1.2 runconfig.Config, keys in the daemon's order."""
    return {
        "Hostname": "8a4e5a6fd2c1",
        "Domainname": "",
        "User": "",
        "Memory": 0,
        "MemorySwap": 0,
        "CpuShares": 0,
        "Cpuset": "",
        "AttachStdin": False,
        "AttachStdout": False,
        "AttachStderr": False,
        "PortSpecs": None,
        "ExposedPorts": None,
        "Tty": False,
        "OpenStdin": False,
        "StdinOnce": False,
        "Env": ["HOME=/", PATH_ENV],
        "Cmd": cmd,
        "Image": image,
        "Volumes": None,
        "WorkingDir": "",
        "Entrypoint": None,
        "NetworkDisabled": False,
        "OnBuild": None,
    }


def v1_json(
    image_id: str, parent: str | None, created: str, step: list[str], **extra: Any
) -> dict[str, Any]:
    document: dict[str, Any] = {"id": image_id}
    if parent:
        document["parent"] = parent
    document.update(
        {
            "created": created,
            "container": hashlib.sha256(image_id.encode()).hexdigest(),
            "container_config": run_config(step, parent or ""),
            "docker_version": "1.2.0",
            "config": run_config(["/bin/bash"], parent or ""),
            "architecture": "amd64",
            "os": "linux",
            "Size": 2433303,
        }
    )
    document.update(extra)
    return document


ROOT_STEP = ["/bin/sh", "-c", "#(nop) ADD file:5f0d3c5b0e2f0e1c in /"]
MID_STEP = ["/bin/sh", "-c", "apt-get update && apt-get install -y curl"]
TOP_STEP = ["/bin/sh", "-c", "#(nop) CMD [/bin/bash]"]

ROOT = v1_json(ROOT_ID, None, "2014-09-23T20:41:28.110373718Z", ROOT_STEP)
MID = v1_json(
    MID_ID,
    ROOT_ID,
    "2014-09-24T09:12:01.5+02:00",
    MID_STEP,
    author="Jane Doe <jane@example.com>",
    comment="curl for <all> & more",
)
TOP = v1_json(
    TOP_ID,
    MID_ID,
    "2014-09-24T09:13:44.000000000Z",
    TOP_STEP,
    checksum="tarsum.dev+sha256:" + "ab" * 32,
    parent_id="sha256:" + "cd" * 32,
    layer_id="sha256:" + "ef" * 32,
    throwaway=False,
)
# A key no daemon writes, with a number Python would re-format (1.50 -> 1.5): kept verbatim.
TOP_BYTES = json.dumps(TOP).encode()[:-1] + b', "x-extra": {"ratio": 1.50, "n": 1e3}}'


def layer(document: dict[str, Any], raw: bytes | None = None, compressed: bool = True) -> V1Layer:
    data = b"layer of " + document["id"].encode()
    return V1Layer(
        id=document["id"],
        json=raw if raw is not None else json.dumps(document).encode(),
        blob_digest=sha(data),
        size=len(data),
        diff_id=sha(b"tar of " + document["id"].encode()),
        compressed=compressed,
    )


def ancestry() -> list[V1Layer]:
    return [layer(ROOT), layer(MID, compressed=False), layer(TOP, TOP_BYTES)]


# --- v1 -> v2 ---------------------------------------------------------------------------------


def test_v1_to_v2_builds_a_docker_schema2_manifest() -> None:
    chain = ancestry()
    built = translate.v1_to_v2(chain)
    assert built.config_digest == sha(built.config)
    assert built.manifest_digest == sha(built.manifest)
    document = json.loads(built.manifest)
    assert list(document) == ["schemaVersion", "mediaType", "config", "layers"]
    assert document["schemaVersion"] == 2
    assert document["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert document["config"] == {
        "mediaType": "application/vnd.docker.container.image.v1+json",
        "size": len(built.config),
        "digest": built.config_digest,
    }
    assert document["layers"] == [
        {
            "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "size": chain[0].size,
            "digest": chain[0].blob_digest,
        },
        {
            "mediaType": "application/vnd.docker.image.rootfs.diff.tar",
            "size": chain[1].size,
            "digest": chain[1].blob_digest,
        },
        {
            "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "size": chain[2].size,
            "digest": chain[2].blob_digest,
        },
    ]
    # Compact, and acceptable to the manifest validator the content layer stores it through.
    assert b" " not in built.manifest
    parsed = manifests.parse(built.manifest, None, 1 << 20, schema1=False)
    assert parsed.media_type == manifests.DOCKER_MANIFEST
    assert parsed.blobs == [built.config_digest] + [x.blob_digest for x in chain]


def test_v1_to_v2_config_has_rootfs_and_history_root_first() -> None:
    chain = ancestry()
    config = json.loads(translate.v1_to_v2(chain).config)
    assert config["rootfs"] == {"type": "layers", "diff_ids": [x.diff_id for x in chain]}
    assert config["history"] == [
        {"created": "2014-09-23T20:41:28.110373718Z", "created_by": " ".join(ROOT_STEP)},
        {
            # Written back as Go writes a parsed time: trailing zeros gone.
            "created": "2014-09-24T09:12:01.5+02:00",
            "author": "Jane Doe <jane@example.com>",
            "created_by": " ".join(MID_STEP),
            "comment": "curl for <all> & more",
        },
        {"created": "2014-09-24T09:13:44Z", "created_by": " ".join(TOP_STEP)},
    ]
    # The run configuration and the rest come from the top image.
    assert config["config"] == TOP["config"]
    assert config["container_config"] == TOP["container_config"]
    assert config["created"] == TOP["created"]  # top-level members are kept verbatim
    assert (config["architecture"], config["os"], config["docker_version"]) == (
        "amd64",
        "linux",
        "1.2.0",
    )


def test_v1_to_v2_drops_v1_keys_and_keeps_unknown_ones_verbatim() -> None:
    built = translate.v1_to_v2(ancestry())
    config = json.loads(built.config)
    for key in ("id", "parent", "Size", "checksum", "parent_id", "layer_id", "throwaway"):
        assert key not in config
    assert b'"x-extra":{"ratio":1.50,"n":1e3}' in built.config
    # Go's map order and escaping, as Docker writes the config.
    assert list(config) == sorted(config)
    assert b"\\u003call\\u003e \\u0026 more" in built.config


def test_v1_to_v2_is_deterministic() -> None:
    first = translate.v1_to_v2(ancestry())
    second = translate.v1_to_v2(ancestry())
    assert first == second
    # Whitespace in the pushed JSON does not matter: values are compacted.
    spaced = json.dumps(TOP, indent=4).encode()[:-2]
    spaced += b',\n    "x-extra" : { "ratio" : 1.50 ,\n "n": 1e3 }\n}\n'
    chain = ancestry()
    chain[2] = layer(TOP, spaced)
    assert translate.v1_to_v2(chain) == first
    # Anything that matters does.
    chain[2] = layer(TOP, TOP_BYTES.replace(b"1.50", b"1.5"))
    assert translate.v1_to_v2(chain).config_digest != first.config_digest


def test_v1_to_v2_fills_in_a_missing_platform() -> None:
    old = {k: v for k, v in ROOT.items() if k not in ("architecture", "os")}
    config = json.loads(translate.v1_to_v2([layer(old)]).config)
    assert (config["architecture"], config["os"]) == ("amd64", "linux")


@pytest.mark.parametrize(
    "broken",
    [
        lambda chain: list(reversed(chain)),  # top first
        lambda chain: [chain[0], chain[2]],  # a gap
        lambda chain: [*chain[:2], V1Layer(**{**vars(chain[2]), "id": ROOT_ID})],
        lambda chain: [*chain[:2], V1Layer(**{**vars(chain[2]), "diff_id": ""})],
        lambda chain: [*chain[:2], V1Layer(**{**vars(chain[2]), "json": b"[1]"})],
        lambda chain: [],
    ],
)
def test_v1_to_v2_refuses_a_broken_ancestry(broken: Any) -> None:
    with pytest.raises(TranslationError):
        translate.v1_to_v2(broken(ancestry()))


# --- v2 -> v1 ---------------------------------------------------------------------------------

BASE_LAYERS = [b"base rootfs", b"apt-get install"]


def v2_image(
    top: bytes = b"app files",
    top_step: str = "/bin/sh -c #(nop) COPY dir:1234 in /app",
    env: str = "APP=1",
    media_type: str = manifests.OCI_MANIFEST,
) -> tuple[dict[str, Any], bytes]:
    """Three layers, one empty-layer history entry (a CMD) between the first two."""
    blobs = [*BASE_LAYERS, top]
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-05-01T10:00:03.123456789Z",
        "author": "ops@example.com",
        "docker_version": "24.0.7",
        "config": {"Env": [PATH_ENV, env], "Cmd": ["/app/run"], "WorkingDir": "/app"},
        "rootfs": {"type": "layers", "diff_ids": [sha(b"tar " + b) for b in blobs]},
        "history": [
            {
                "created": "2024-04-01T00:00:00Z",
                "created_by": "/bin/sh -c #(nop) ADD file:abc in / ",
            },
            {
                "created": "2024-04-01T00:00:01Z",
                "created_by": '/bin/sh -c #(nop)  CMD ["bash"]',
                "empty_layer": True,
            },
            {
                "created": "2024-04-02T08:30:00.250+00:00",
                "created_by": "/bin/sh -c apt-get install -y curl",
                "comment": "buildkit.dockerfile.v0",
            },
            {"created": "2024-05-01T10:00:03.123456789Z", "created_by": top_step},
        ],
    }
    config_bytes = json.dumps(config, indent=2).encode()
    gzip_type = translate.OCI_LAYER_GZIP
    config_type = translate.OCI_CONFIG
    if media_type == manifests.DOCKER_MANIFEST:
        gzip_type, config_type = translate.DOCKER_LAYER_GZIP, translate.DOCKER_CONFIG
    manifest = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {
            "mediaType": config_type,
            "size": len(config_bytes),
            "digest": sha(config_bytes),
        },
        "layers": [{"mediaType": gzip_type, "size": len(b), "digest": sha(b)} for b in blobs],
    }
    return manifest, config_bytes


def test_v2_to_v1_gives_one_image_per_layer_in_a_parent_chain() -> None:
    manifest, config = v2_image()
    images = translate.v2_to_v1(manifest, config)
    assert len(images) == 3
    assert images[0].parent is None
    assert [x.parent for x in images[1:]] == [x.id for x in images[:-1]]
    for image, descriptor in zip(images, manifest["layers"], strict=True):
        document = json.loads(image.json)
        assert document["id"] == image.id
        assert len(image.id) == 64 and int(image.id, 16) >= 0
        assert document.get("parent") == image.parent
        assert (image.blob_digest, image.size) == (descriptor["digest"], descriptor["size"])
    assert "parent" not in json.loads(images[0].json)
    assert len({x.id for x in images}) == 3


def test_v2_to_v1_image_json() -> None:
    manifest, config = v2_image()
    root, mid, top = (json.loads(x.json) for x in translate.v2_to_v1(manifest, config))
    assert root == {
        "id": root["id"],
        "created": "2024-04-01T00:00:00Z",
        "container_config": {"Cmd": ["/bin/sh -c #(nop) ADD file:abc in / "]},
    }
    # The empty-layer CMD entry is dropped, not attributed to the next layer.
    assert mid == {
        "id": mid["id"],
        "parent": root["id"],
        "created": "2024-04-02T08:30:00.25Z",
        "comment": "buildkit.dockerfile.v0",
        "container_config": {"Cmd": ["/bin/sh -c apt-get install -y curl"]},
    }
    source = json.loads(config)
    assert top["parent"] == mid["id"]
    assert top["config"] == source["config"]
    for key in ("architecture", "os", "docker_version", "author", "created"):
        assert top[key] == source[key]
    assert top["container_config"] == {"Cmd": ["/bin/sh -c #(nop) COPY dir:1234 in /app"]}
    assert "rootfs" not in top and "history" not in top
    for image in translate.v2_to_v1(manifest, config):
        assert b"CMD" not in image.json
        assert list(json.loads(image.json)) == sorted(json.loads(image.json))


def test_v2_to_v1_ids_are_deterministic() -> None:
    manifest, config = v2_image()
    first = translate.v2_to_v1(manifest, config)
    assert translate.v2_to_v1(json.loads(json.dumps(manifest)), config) == first
    # A Docker schema 2 manifest of the same content: same layers, same config, same ids.
    docker = v2_image(media_type=manifests.DOCKER_MANIFEST)
    assert [x.id for x in translate.v2_to_v1(*docker)] == [x.id for x in first]


def test_v2_to_v1_id_recipe() -> None:
    # Persisted ids: the recipe in docs/design/v1-v2-translation.md must not drift.
    manifest, config = v2_image()
    diff_ids = json.loads(config)["rootfs"]["diff_ids"]
    images = translate.v2_to_v1(manifest, config)
    for i, image in enumerate(images):
        without_id = image.json.replace(f'"id":"{image.id}"'.encode(), b"")
        without_id = without_id.replace(b",,", b",").replace(b"{,", b"{").replace(b",}", b"}")
        top = manifest["config"]["digest"] if i == len(images) - 1 else ""
        head = f"moorage v1 id 1\n{image.blob_digest}\n{diff_ids[i]}\n{top}\n"
        assert image.id == hashlib.sha256(head.encode() + without_id).hexdigest()


def test_v2_to_v1_images_on_the_same_base_share_the_lower_ids() -> None:
    one = translate.v2_to_v1(*v2_image())
    other = translate.v2_to_v1(*v2_image(b"other files", "/bin/sh -c make", env="APP=2"))
    assert [x.id for x in one[:2]] == [x.id for x in other[:2]]
    assert [x.json for x in one[:2]] == [x.json for x in other[:2]]
    assert one[2].id != other[2].id
    # Same layers, another config: only the top changes.
    reconfigured = translate.v2_to_v1(*v2_image(env="APP=3"))
    assert [x.id for x in reconfigured[:2]] == [x.id for x in one[:2]]
    assert reconfigured[2].id != one[2].id


def test_v2_to_v1_ids_name_the_content() -> None:
    # The same base layers with another history for them serve other JSON: other ids.
    manifest, config = v2_image()
    document = json.loads(config)
    document["history"][0]["created_by"] = "/bin/sh -c #(nop) ADD file:other in /"
    changed = json.dumps(document).encode()
    manifest["config"] = {**manifest["config"], "size": len(changed), "digest": sha(changed)}
    before = translate.v2_to_v1(*v2_image())
    after = translate.v2_to_v1(manifest, changed)
    assert all(a.id != b.id for a, b in zip(before, after, strict=True))


def test_v2_to_v1_ignores_history_that_does_not_pair_with_the_layers() -> None:
    manifest, config = v2_image()
    document = json.loads(config)
    del document["history"][2]
    short = json.dumps(document).encode()
    manifest["config"] = {**manifest["config"], "size": len(short), "digest": sha(short)}
    root, mid, top = (json.loads(x.json) for x in translate.v2_to_v1(manifest, short))
    assert set(root) == {"id"}
    assert set(mid) == {"id", "parent"}
    assert "container_config" not in top and top["created"] == document["created"]


def test_v2_to_v1_of_a_v1_push_is_deterministic() -> None:
    built = translate.v1_to_v2(ancestry())
    manifest = json.loads(built.manifest)
    images = translate.v2_to_v1(manifest, built.config)
    assert images == translate.v2_to_v1(manifest, built.config)
    assert [x.blob_digest for x in images] == [x.blob_digest for x in ancestry()]
    mid = json.loads(images[1].json)
    assert mid["container_config"] == {"Cmd": [" ".join(MID_STEP)]}
    assert mid["author"] == MID["author"]
    top = json.loads(images[2].json)
    assert top["config"] == TOP["config"]
    assert top["container_config"] == TOP["container_config"]


def _with_layer_type(media_type: str) -> tuple[dict[str, Any], bytes]:
    manifest, config = v2_image()
    manifest["layers"][1] = {**manifest["layers"][1], "mediaType": media_type}
    return manifest, config


@pytest.mark.parametrize(
    "image",
    [
        lambda: (v2_image()[0], v2_image()[1] + b" "),  # config does not match its digest
        lambda: _with_layer_type("application/vnd.oci.image.layer.v1.tar+zstd"),
        lambda: _with_layer_type("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"),
        lambda: ({**v2_image()[0], "layers": v2_image()[0]["layers"][:2]}, v2_image()[1]),
        lambda: (
            {**v2_image()[0], "config": {**v2_image()[0]["config"], "mediaType": "x/y"}},
            v2_image()[1],
        ),
    ],
)
def test_v2_to_v1_refuses_what_has_no_v1_form(image: Any) -> None:
    with pytest.raises(TranslationError):
        translate.v2_to_v1(*image())
    with pytest.raises(ValueError):  # what the content layer catches
        translate.v2_to_v1(*image())


# --- v2 -> schema 1 ---------------------------------------------------------------------------


def test_empty_layer_blob() -> None:
    assert sha(translate.EMPTY_LAYER) == EMPTY_LAYER_DIGEST
    assert gzip.decompress(translate.EMPTY_LAYER) == bytes(1024)


def test_schema1_payload_signs_and_verifies() -> None:
    manifest, config = v2_image()
    payload = translate.schema1_from_v2("library/app", "1.0", manifest, config)
    assert translate.schema1_from_v2("library/app", "1.0", manifest, config) == payload
    signed = schema1.sign(payload, ec.generate_private_key(ec.SECP256R1()))
    verified = schema1.verify(signed)
    assert verified.payload == payload
    assert (verified.name, verified.tag) == ("library/app", "1.0")
    layers = [x["digest"] for x in manifest["layers"]]
    # Top first; the empty-layer history entry is a throwaway entry on the empty gzip tar.
    assert verified.blob_sums == [layers[2], layers[1], EMPTY_LAYER_DIGEST, layers[0]]
    document = json.loads(payload)
    assert len(document["history"]) == len(document["fsLayers"]) == 4
    assert document["architecture"] == "amd64"


def test_schema1_history_follows_the_v1_chain() -> None:
    manifest, config = v2_image()
    payload = translate.schema1_from_v2("library/app", "1.0", manifest, config)
    document = json.loads(payload)
    blob_sums = [x["blobSum"] for x in document["fsLayers"]]
    entries = [json.loads(x["v1Compatibility"]) for x in document["history"]]
    for entry, below in itertools.pairwise(entries):
        assert entry["parent"] == below["id"]
    top, mid, throwaway, root = entries
    assert "parent" not in root
    # Distribution's ids: sha256(blob hex + " " + parent), the top one also over the config.
    assert root["id"] == hashlib.sha256(f"{hex_of(blob_sums[3])} ".encode()).hexdigest()
    assert (
        mid["id"]
        == hashlib.sha256(f"{hex_of(blob_sums[1])} {throwaway['id']}".encode()).hexdigest()
    )
    seed = f"{hex_of(blob_sums[0])} {mid['id']} ".encode()
    assert top["id"] == hashlib.sha256(seed + config).hexdigest()
    assert throwaway["throwaway"] is True
    assert throwaway["container_config"] == {"Cmd": ['/bin/sh -c #(nop)  CMD ["bash"]']}
    assert list(throwaway) == ["id", "parent", "created", "container_config", "throwaway"]
    assert mid["comment"] == "buildkit.dockerfile.v0"
    assert mid["created"] == "2024-04-02T08:30:00.25Z"
    # The top entry is the config without rootfs and history, keys sorted.
    source = json.loads(config)
    assert top == {
        **{k: v for k, v in source.items() if k not in ("rootfs", "history")},
        "id": top["id"],
        "parent": mid["id"],
    }
    assert list(top) == sorted(top)


def test_schema1_fills_in_a_missing_history() -> None:
    manifest, config = v2_image()
    document = json.loads(config)
    del document["history"]
    bare = json.dumps(document).encode()
    manifest["config"] = {**manifest["config"], "size": len(bare), "digest": sha(bare)}
    payload = translate.schema1_from_v2("app", "latest", manifest, bare)
    entries = [json.loads(x["v1Compatibility"]) for x in json.loads(payload)["history"]]
    assert len(entries) == 3
    assert all("throwaway" not in entry for entry in entries)
    assert entries[1]["created"] == "0001-01-01T00:00:00Z"  # Go's zero time
    assert entries[1]["container_config"] == {"Cmd": [""]}


def test_schema1_escapes_like_go() -> None:
    manifest, config = v2_image(env="A=<b> & c")
    document = json.loads(config)
    document["history"][2]["created_by"] = "/bin/sh -c echo '<b>' && true"
    changed = json.dumps(document).encode()
    manifest["config"] = {**manifest["config"], "size": len(changed), "digest": sha(changed)}
    payload = translate.schema1_from_v2("app", "latest", manifest, changed)
    top, mid, *_ = (x["v1Compatibility"] for x in json.loads(payload)["history"])
    assert "A=\\u003cb\\u003e \\u0026 c" in top
    assert "echo '\\u003cb\\u003e' \\u0026\\u0026 true" in mid


def test_schema1_refuses_mismatched_layers() -> None:
    manifest, config = v2_image()
    manifest["layers"] = manifest["layers"][:2]
    with pytest.raises(TranslationError):
        translate.schema1_from_v2("app", "latest", manifest, config)
