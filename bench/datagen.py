"""Cheap, deterministic benchmark data, and OCI image layouts built from it.

A blob's bytes are one shared random block (1 MiB by default) repeated, each copy stamped at its
start with the blob's tag and the block's index, so every block of every blob differs (nothing
can be deduplicated or compressed away) while generating a GiB costs a few memcpys. Nothing is
ever held whole in memory: blobs are produced block by block, hashed on the fly, and written to a
file when a tool (curl, skopeo) needs one.

Layouts are OCI image layouts (`oci-layout`, `index.json`, `blobs/sha256/...`) that skopeo copies
with `oci:DIR:TAG`: each layer is a tar holding one file, gzip level 0 (stored), and the config
lists the layers' uncompressed digests in `rootfs.diff_ids`. Same arguments, same digests.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

BLOCK = 1 << 20
EPOCH = 1704067200  # 2024-01-01T00:00:00Z: tar mtimes
CREATED = "2024-01-01T00:00:00Z"

OCI_LAYOUT = "application/vnd.oci.image.layout.v1.0.0"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"


@cache
def _base_block(size: int) -> bytes:
    return random.Random(f"moorage-bench-{size}").randbytes(size)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Blob:
    """`size` bytes identified by `tag`, produced block by block."""

    def __init__(self, tag: str, size: int, block: int = BLOCK) -> None:
        if block < 64:
            raise ValueError("block too small")
        self.tag = tag
        self.size = size
        self.block = block
        self._stamp = hashlib.sha256(tag.encode()).digest()[:16]
        self._digest: str | None = None

    @property
    def nblocks(self) -> int:
        return (self.size + self.block - 1) // self.block

    def chunk(self, index: int) -> bytes:
        start = index * self.block
        if not 0 <= start < self.size:
            raise IndexError(index)
        stamp = self._stamp + index.to_bytes(8, "big")
        data = stamp + _base_block(self.block)[len(stamp) :]
        n = min(self.block, self.size - start)
        return data if n == self.block else data[:n]

    def chunks(self) -> Iterator[bytes]:
        for i in range(self.nblocks):
            yield self.chunk(i)

    @property
    def digest(self) -> str:
        if self._digest is None:
            h = hashlib.sha256()
            for chunk in self.chunks():
                h.update(chunk)
            self._digest = "sha256:" + h.hexdigest()
        return self._digest

    def write(self, path: Path) -> str:
        """Write the blob to `path` (hashing as it goes); returns its digest."""
        h = hashlib.sha256()
        with open(path, "wb") as f:
            for chunk in self.chunks():
                h.update(chunk)
                f.write(chunk)
        self._digest = "sha256:" + h.hexdigest()
        return self._digest


class _Reader:
    """A file-like read() over a Blob, for tarfile."""

    def __init__(self, blob: Blob) -> None:
        self._chunks = blob.chunks()
        self._buf = memoryview(b"")

    def read(self, n: int = -1) -> bytes:
        out = bytearray()
        while n < 0 or len(out) < n:
            if not self._buf:
                nxt = next(self._chunks, None)
                if nxt is None:
                    break
                self._buf = memoryview(nxt)
            take = len(self._buf) if n < 0 else min(len(self._buf), n - len(out))
            out += self._buf[:take]
            self._buf = self._buf[take:]
        return bytes(out)


class _HashingWriter:
    def __init__(self, f: object) -> None:
        self._f = f
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._f.write(data)
        self.hash.update(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        pass


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int

    def json(self) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class Image:
    layout: Path
    tag: str
    manifest: Descriptor
    manifest_bytes: bytes
    config: Descriptor
    config_bytes: bytes
    layers: tuple[Descriptor, ...]

    @property
    def ref(self) -> str:
        return f"oci:{self.layout}:{self.tag}"

    @property
    def total_bytes(self) -> int:
        return self.config.size + sum(d.size for d in self.layers) + self.manifest.size

    def blob_path(self, digest: str) -> Path:
        return self.layout / "blobs" / "sha256" / digest.split(":", 1)[1]


def _put_blob(layout: Path, data: bytes) -> str:
    digest = sha256_digest(data)
    path = layout / "blobs" / "sha256" / digest.split(":", 1)[1]
    path.write_bytes(data)
    return digest


def _write_layer(layout: Path, name: str, content: Blob) -> tuple[Descriptor, str]:
    """One gzip-0 tar layer holding `name` with `content`; returns (descriptor, diff_id)."""
    tmp = layout / "blobs" / f".layer-{os.getpid()}.tmp"
    with open(tmp, "wb") as raw:
        outer = _HashingWriter(raw)
        with gzip.GzipFile(filename="", mode="wb", fileobj=outer, compresslevel=0, mtime=0) as gz:
            inner = _HashingWriter(gz)
            with tarfile.open(
                fileobj=inner, mode="w", format=tarfile.USTAR_FORMAT, copybufsize=BLOCK
            ) as tar:
                info = tarfile.TarInfo(name)
                info.size = content.size
                info.mtime = EPOCH
                info.mode = 0o644
                info.uname = info.gname = "root"
                tar.addfile(info, _Reader(content))
    digest = "sha256:" + outer.hash.hexdigest()
    tmp.rename(layout / "blobs" / "sha256" / digest.split(":", 1)[1])
    return Descriptor(OCI_LAYER_GZIP, digest, outer.size), "sha256:" + inner.hash.hexdigest()


class _HashingReader(_Reader):
    """A _Reader that also feeds what it hands out to `sink`."""

    def __init__(self, blob: Blob, sink: hashlib._Hash) -> None:
        super().__init__(blob)
        self.hash = sink

    def read(self, n: int = -1) -> bytes:
        data = super().read(n)
        self.hash.update(data)
        return data


@dataclass(frozen=True)
class V1Layer:
    """A v1 layer file and the checksums a Docker 1.x client sends or a registry computes."""

    path: Path
    digest: str  # sha256 of the bytes sent (the v2 blob digest)
    size: int
    diff_id: str  # sha256 of the uncompressed tar
    payload: str  # X-Docker-Checksum-Payload: sha256(JSON || LF || layer)
    tarsum: str  # X-Docker-Checksum: TarSum v0 with the JSON as prefix


def write_v1_layer(path: Path, name: str, content: Blob, image_json: bytes) -> V1Layer:
    """Write a v1 layer to `path` in one pass: a gzip-0 tar holding `name` with `content`,
    hashed on the way for the v1 checksums of the image whose JSON is `image_json` (contract
    v1-protocol.md 5.1 and 5.2; one regular file, so TarSum v0 is one entry sum)."""
    info = tarfile.TarInfo(name)
    info.size = content.size
    info.mtime = EPOCH
    info.mode = 0o644
    info.uname = info.gname = "root"
    header = (
        f"name{info.name}mode{info.mode}uid{info.uid}gid{info.gid}size{info.size}"
        f"mtime{info.mtime}typeflag{info.type.decode()}linkname{info.linkname}"
        f"uname{info.uname}gname{info.gname}devmajor0devminor0"
    )
    entry = hashlib.sha256(header.encode())
    with open(path, "wb") as raw:
        blob = _HashingWriter(raw)
        payload = _HashingWriter(blob)
        payload.hash = hashlib.sha256(image_json + b"\n")
        with gzip.GzipFile(filename="", mode="wb", fileobj=payload, compresslevel=0, mtime=0) as gz:
            inner = _HashingWriter(gz)
            with tarfile.open(
                fileobj=inner, mode="w", format=tarfile.USTAR_FORMAT, copybufsize=BLOCK
            ) as tar:
                tar.addfile(info, _HashingReader(content, entry))
    tarsum = hashlib.sha256(image_json + entry.hexdigest().encode())
    return V1Layer(
        path,
        "sha256:" + blob.hash.hexdigest(),
        blob.size,
        "sha256:" + inner.hash.hexdigest(),
        "sha256:" + payload.hash.hexdigest(),
        "tarsum+sha256:" + tarsum.hexdigest(),
    )


def build_image(layout: Path, tag: str, seed: str, layer_sizes: list[int]) -> Image:
    """Write an image with one layer per size into the OCI layout `layout` (created)."""
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    layers, diff_ids = [], []
    for i, size in enumerate(layer_sizes):
        block = min(BLOCK, max(64, size))
        desc, diff_id = _write_layer(layout, f"layer{i:03d}.bin", Blob(f"{seed}/{i}", size, block))
        layers.append(desc)
        diff_ids.append(diff_id)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": CREATED,
        "config": {"Env": ["PATH=/usr/bin:/bin"], "Labels": {"bench.seed": seed}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": CREATED, "created_by": f"layer {i}"} for i in range(len(layers))],
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_desc = Descriptor(OCI_CONFIG, _put_blob(layout, config_bytes), len(config_bytes))
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_desc.json(),
        "layers": [d.json() for d in layers],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    manifest_desc = Descriptor(OCI_MANIFEST, _put_blob(layout, manifest_bytes), len(manifest_bytes))
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{**manifest_desc.json(), "annotations": {REF_NAME: tag}}],
    }
    (layout / "index.json").write_text(json.dumps(index, sort_keys=True))
    return Image(
        layout, tag, manifest_desc, manifest_bytes, config_desc, config_bytes, tuple(layers)
    )


def layer_sizes(count: int, low: int, high: int, seed: str = "sizes") -> list[int]:
    """`count` layer sizes in [low, high], the same for every round (content varies by seed)."""
    rng = random.Random(seed)
    return [rng.randint(low, high) for _ in range(count)]


def verify_layout(layout: Path, tag: str, manifest_digest: str) -> None:
    """Check a pulled layout: `tag` names `manifest_digest`, and every blob it references is
    present with the digest it is stored under. Raises AssertionError otherwise."""
    index = json.loads((layout / "index.json").read_text())
    found = [
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get(REF_NAME) == tag or len(index["manifests"]) == 1
    ]
    assert found, f"{layout}: no manifest tagged {tag}"
    assert found[0]["digest"] == manifest_digest, (
        f"pulled manifest {found[0]['digest']} != pushed {manifest_digest}"
    )

    def check(digest: str, size: int | None = None) -> bytes | None:
        path = layout / "blobs" / "sha256" / digest.split(":", 1)[1]
        h = hashlib.sha256()
        n = 0
        with open(path, "rb") as f:
            while chunk := f.read(BLOCK):
                h.update(chunk)
                n += len(chunk)
        assert "sha256:" + h.hexdigest() == digest, f"{path}: content does not match its digest"
        assert size is None or n == size, f"{path}: {n} bytes, expected {size}"
        return path.read_bytes() if n < (1 << 20) else None

    manifest = json.loads(check(manifest_digest) or b"{}")
    check(manifest["config"]["digest"], manifest["config"]["size"])
    for layer in manifest["layers"]:
        check(layer["digest"], layer["size"])
