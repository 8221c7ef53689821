"""Deterministic test images, written as OCI image layouts with no network.

A layout is a directory with `oci-layout`, `index.json` and `blobs/sha256/<hex>`; every builder
here adds to one (creating it if needed) and tags what it adds with
`org.opencontainers.image.ref.name`, so `skopeo copy oci:DIR:TAG ...` finds it.

Everything is reproducible: layer data comes from `random.Random(seed)`, tar entries have fixed
owners and mtimes, gzip headers carry no name and mtime 0, and JSON is written with sorted keys.
The same call gives the same digests on every run (the busybox image also depends on the
installed busybox binary). Layers are gzip level 0 (stored, not compressed), so a layer's blob
is the size asked for plus a few KiB of tar and gzip framing, and so are the bytes on the wire.

    from tests.images import make_image, make_busybox_image, make_index, make_artifact

    img = make_image(tmp_path / "layout", layers=[1 << 20, 4096], seed=1, tag="v1")
    img.manifest.digest, img.layer_digests, img.ref   # "oci:/.../layout:v1"
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import shutil
import tarfile
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

OCI_LAYOUT = "application/vnd.oci.image.layout.v1.0.0"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"

#: Fixed timestamp for tar entries and image configs (2024-01-01T00:00:00Z).
EPOCH = 1704067200
CREATED = "2024-01-01T00:00:00Z"

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Blob:
    """A blob stored in a layout: its descriptor fields and where its bytes are."""

    digest: str
    size: int
    media_type: str
    path: Path

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}

    def read(self) -> bytes:
        return self.path.read_bytes()


@dataclass(frozen=True)
class Image:
    """One image manifest in a layout."""

    layout: Path
    tag: str | None
    manifest: Blob
    config: Blob
    layers: tuple[Blob, ...]
    diff_ids: tuple[str, ...]
    os: str
    architecture: str

    @property
    def digest(self) -> str:
        return self.manifest.digest

    @property
    def layer_digests(self) -> list[str]:
        return [b.digest for b in self.layers]

    @property
    def ref(self) -> str:
        """skopeo reference to this image in its layout: `oci:DIR:TAG`."""
        if not self.tag:
            raise ValueError("untagged image (an index child): copy the index, or tag it")
        return f"oci:{self.layout}:{self.tag}"

    @property
    def blobs(self) -> list[Blob]:
        return [self.manifest, self.config, *self.layers]


@dataclass(frozen=True)
class Index:
    """An image index over several platform images, all in one layout."""

    layout: Path
    tag: str
    index: Blob
    images: tuple[Image, ...]

    @property
    def digest(self) -> str:
        return self.index.digest

    @property
    def ref(self) -> str:
        return f"oci:{self.layout}:{self.tag}"

    def platform(self, os_: str, architecture: str) -> Image:
        for img in self.images:
            if (img.os, img.architecture) == (os_, architecture):
                return img
        raise KeyError(f"{os_}/{architecture}")

    @property
    def blobs(self) -> list[Blob]:
        out = [self.index]
        for img in self.images:
            out.extend(img.blobs)
        return out


@dataclass(frozen=True)
class Artifact:
    """An artifact manifest (empty config, one layer) whose `subject` is another manifest."""

    layout: Path
    tag: str | None
    manifest: Blob
    config: Blob
    layers: tuple[Blob, ...]
    artifact_type: str
    subject: Blob

    @property
    def digest(self) -> str:
        return self.manifest.digest

    @property
    def ref(self) -> str:
        if not self.tag:
            raise ValueError("untagged artifact: pass a tag to make_artifact")
        return f"oci:{self.layout}:{self.tag}"


@dataclass
class Layout:
    """An OCI image layout directory. Creating one on an existing layout adds to it."""

    root: Path
    _index: dict[str, Any] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        marker = self.root / "oci-layout"
        if not marker.exists():
            marker.write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        index_path = self.root / "index.json"
        if index_path.exists():
            self._index = json.loads(index_path.read_text())
        else:
            self._index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
            self._save()

    def blob_path(self, digest: str) -> Path:
        algo, _, hexpart = digest.partition(":")
        return self.root / "blobs" / algo / hexpart

    def put_bytes(self, data: bytes, media_type: str) -> Blob:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        if not path.exists():
            _atomic_write(path, data)
        return Blob(digest, len(data), media_type, path)

    def put_json(self, doc: dict[str, Any], media_type: str) -> Blob:
        return self.put_bytes(canonical_json(doc), media_type)

    def put_layer(self, entries: Iterable[_Entry]) -> tuple[Blob, str]:
        """Write a gzip (level 0) tar layer; return its blob and diff_id."""
        blobs_dir = self.root / "blobs" / "sha256"
        fd, tmp_name = tempfile.mkstemp(dir=blobs_dir, prefix=".layer-")
        compressed = hashlib.sha256()
        uncompressed = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as raw:
                outer = _HashingWriter(raw, compressed)
                with gzip.GzipFile(
                    filename="", mode="wb", fileobj=outer, compresslevel=0, mtime=0
                ) as gz:
                    inner = _HashingWriter(gz, uncompressed)
                    with tarfile.open(
                        fileobj=cast(IO[bytes], inner), mode="w|", format=tarfile.PAX_FORMAT
                    ) as tar:
                        for entry in entries:
                            entry.add_to(tar)
                size = outer.count
            digest = "sha256:" + compressed.hexdigest()
            path = self.blob_path(digest)
            if path.exists():
                os.unlink(tmp_name)
            else:
                os.replace(tmp_name, path)
        except BaseException:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
            raise
        return Blob(digest, size, OCI_LAYER_GZIP, path), "sha256:" + uncompressed.hexdigest()

    def tag(self, blob: Blob, tag: str, **extra: Any) -> None:
        """Point `tag` at `blob` in index.json (replacing an older entry with that tag)."""
        manifests = [
            m for m in self._index["manifests"] if m.get("annotations", {}).get(REF_NAME) != tag
        ]
        manifests.append(blob.descriptor(annotations={REF_NAME: tag}, **extra))
        self._index["manifests"] = manifests
        self._save()

    def _save(self) -> None:
        _atomic_write(self.root / "index.json", canonical_json(self._index))


# ---------------------------------------------------------------------------------------------
# Builders


def make_image(
    layout_dir: Path | str,
    layers: Sequence[int] = (1024,),
    seed: int = 0,
    tag: str | None = "latest",
    *,
    os_: str = "linux",
    architecture: str = "amd64",
    cmd: Sequence[str] | None = None,
    labels: dict[str, str] | None = None,
) -> Image:
    """An image whose layer i holds one file `layer-<i>.bin` of `layers[i]` seeded random bytes.

    Different seeds give different bytes (and digests); the same seed gives the same image.
    """
    layout = Layout(Path(layout_dir))
    rng = random.Random(f"moorage-test-image:{seed}")
    layer_blobs: list[Blob] = []
    diff_ids: list[str] = []
    for i, size in enumerate(layers):
        layer_seed = rng.getrandbits(64)
        blob, diff_id = layout.put_layer([_RandomFile(f"layer-{i}.bin", size, layer_seed)])
        layer_blobs.append(blob)
        diff_ids.append(diff_id)
    config = _image_config(
        os_,
        architecture,
        diff_ids,
        cmd=cmd,
        labels={"moorage.test.seed": str(seed), **(labels or {})},
    )
    return _finish_image(layout, config, layer_blobs, diff_ids, tag, os_, architecture)


def busybox_path() -> Path:
    """The static busybox binary from Debian's busybox-static."""
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(candidate):
            return Path(candidate)
    found = shutil.which("busybox")
    if not found:
        raise FileNotFoundError("busybox not found: install busybox-static")
    return Path(found)


BUSYBOX_CMD = ("/bin/busybox", "echo", "hello from moorage")


def make_busybox_image(
    layout_dir: Path | str,
    tag: str | None = "busybox",
    *,
    busybox: Path | str | None = None,
    cmd: Sequence[str] = BUSYBOX_CMD,
) -> Image:
    """A runnable image: one layer with `/bin/busybox` (+ `/bin/sh` symlink), Cmd runs it.

    Deterministic for a given busybox binary (its bytes are the only input).
    """
    layout = Layout(Path(layout_dir))
    src = Path(busybox) if busybox else busybox_path()
    data = src.read_bytes()
    entries: list[_Entry] = [
        _Dir("bin"),
        _BytesFile("bin/busybox", data, mode=0o755),
        _Symlink("bin/sh", "busybox"),
        _Dir("tmp", mode=0o1777),
    ]
    blob, diff_id = layout.put_layer(entries)
    config = _image_config(
        "linux",
        "amd64",
        [diff_id],
        cmd=list(cmd),
        labels={"moorage.test.busybox.sha256": hashlib.sha256(data).hexdigest()},
    )
    return _finish_image(layout, config, [blob], [diff_id], tag, "linux", "amd64")


PLATFORMS = (("linux", "amd64"), ("linux", "arm64"))


def make_index(
    layout_dir: Path | str,
    tag: str = "multi",
    seed: int = 0,
    layers: Sequence[int] = (2048,),
    platforms: Sequence[tuple[str, str]] = PLATFORMS,
) -> Index:
    """An OCI image index with one image per platform (default linux/amd64 + linux/arm64).

    Only the index is tagged in the layout; the children are reachable by digest.
    """
    layout = Layout(Path(layout_dir))
    images: list[Image] = []
    for n, (os_, arch) in enumerate(platforms):
        images.append(
            make_image(
                layout.root,
                layers=layers,
                seed=seed * 1000 + n + 1,
                tag=None,
                os_=os_,
                architecture=arch,
            )
        )
    # make_image wrote through its own Layout object; reload index.json before tagging.
    layout = Layout(layout.root)
    index_doc = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            img.manifest.descriptor(platform={"os": img.os, "architecture": img.architecture})
            for img in images
        ],
    }
    index_blob = layout.put_json(index_doc, OCI_INDEX)
    layout.tag(index_blob, tag)
    return Index(layout.root, tag, index_blob, tuple(images))


ARTIFACT_TYPE = "application/vnd.moorage.test.artifact"


def make_artifact(
    layout_dir: Path | str,
    subject: Image | Index | Blob,
    tag: str | None = "artifact",
    *,
    payload: bytes | None = None,
    artifact_type: str = ARTIFACT_TYPE,
    seed: int = 0,
) -> Artifact:
    """An artifact manifest (OCI 1.1 style: empty config, `artifactType`, `subject`).

    The subject must already be in the same layout if a client is to copy both from it.
    """
    layout = Layout(Path(layout_dir))
    if isinstance(subject, Image):
        subject_blob = subject.manifest
    elif isinstance(subject, Index):
        subject_blob = subject.index
    else:
        subject_blob = subject
    if payload is None:
        payload = random.Random(f"moorage-test-artifact:{seed}").randbytes(512)
    empty = layout.put_bytes(b"{}", OCI_EMPTY)
    layer = layout.put_bytes(payload, "application/vnd.moorage.test.payload")
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": empty.descriptor(),
        "layers": [layer.descriptor(annotations={"org.opencontainers.image.title": "payload.bin"})],
        "subject": {
            "mediaType": subject_blob.media_type,
            "digest": subject_blob.digest,
            "size": subject_blob.size,
        },
        "annotations": {"org.opencontainers.image.created": CREATED},
    }
    manifest = layout.put_json(doc, OCI_MANIFEST)
    if tag:
        layout.tag(manifest, tag)
    return Artifact(layout.root, tag, manifest, empty, (layer,), artifact_type, subject_blob)


# ---------------------------------------------------------------------------------------------
# Reading layouts back (for checking what a client pulled)


def read_index(layout_dir: Path | str) -> dict[str, Any]:
    return json.loads((Path(layout_dir) / "index.json").read_text())  # type: ignore[no-any-return]


def tagged_digest(layout_dir: Path | str, tag: str) -> str:
    """Digest of the manifest tagged `tag` in a layout's index.json."""
    for m in read_index(layout_dir)["manifests"]:
        if m.get("annotations", {}).get(REF_NAME) == tag:
            return m["digest"]  # type: ignore[no-any-return]
    raise KeyError(tag)


def blob_bytes(layout_dir: Path | str, digest: str) -> bytes:
    algo, _, hexpart = digest.partition(":")
    return (Path(layout_dir) / "blobs" / algo / hexpart).read_bytes()


def layer_members(layer: bytes) -> dict[str, tarfile.TarInfo]:
    """Entries of a (possibly gzip-compressed) tar layer, by name."""
    with tarfile.open(fileobj=io.BytesIO(layer), mode="r:*") as tar:
        return {m.name.removeprefix("./"): m for m in tar.getmembers()}


def layer_file(layer: bytes, name: str) -> bytes:
    """Bytes of one regular file inside a (possibly compressed) tar layer."""
    with tarfile.open(fileobj=io.BytesIO(layer), mode="r:*") as tar:
        for m in tar.getmembers():
            if m.name.removeprefix("./").lstrip("/") == name.lstrip("/"):
                f = tar.extractfile(m)
                if f is None:
                    raise KeyError(f"{name} is not a regular file")
                return f.read()
    raise KeyError(name)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


# ---------------------------------------------------------------------------------------------
# Internals


def _image_config(
    os_: str,
    architecture: str,
    diff_ids: Sequence[str],
    *,
    cmd: Sequence[str] | None,
    labels: dict[str, str],
) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "Env": ["PATH=/bin"],
        "Labels": dict(labels),
    }
    if cmd:
        cfg["Cmd"] = list(cmd)
    return {
        "created": CREATED,
        "architecture": architecture,
        "os": os_,
        "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": [
            {"created": CREATED, "created_by": f"tests.images layer {i}"}
            for i in range(len(diff_ids))
        ],
    }


def _finish_image(
    layout: Layout,
    config_doc: dict[str, Any],
    layer_blobs: list[Blob],
    diff_ids: list[str],
    tag: str | None,
    os_: str,
    architecture: str,
) -> Image:
    config = layout.put_json(config_doc, OCI_CONFIG)
    manifest_doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": [b.descriptor() for b in layer_blobs],
    }
    manifest = layout.put_json(manifest_doc, OCI_MANIFEST)
    if tag:
        layout.tag(manifest, tag)
    return Image(
        layout.root,
        tag,
        manifest,
        config,
        tuple(layer_blobs),
        tuple(diff_ids),
        os_,
        architecture,
    )


class _HashingWriter:
    """Write-through file object that hashes and counts what passes."""

    def __init__(self, target: IO[bytes] | gzip.GzipFile, hasher: Any) -> None:
        self._target = target
        self._hasher = hasher
        self.count = 0

    def write(self, data: Any) -> int:
        b = bytes(data)
        self._hasher.update(b)
        self._target.write(b)
        self.count += len(b)
        return len(b)

    def flush(self) -> None:
        self._target.flush()


class _Entry:
    def add_to(self, tar: tarfile.TarFile) -> None:
        raise NotImplementedError


def _info(name: str, type_: bytes, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.mode = mode
    info.mtime = EPOCH
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


@dataclass
class _Dir(_Entry):
    name: str
    mode: int = 0o755

    def add_to(self, tar: tarfile.TarFile) -> None:
        tar.addfile(_info(self.name, tarfile.DIRTYPE, self.mode))


@dataclass
class _Symlink(_Entry):
    name: str
    target: str

    def add_to(self, tar: tarfile.TarFile) -> None:
        info = _info(self.name, tarfile.SYMTYPE, 0o777)
        info.linkname = self.target
        tar.addfile(info)


@dataclass
class _BytesFile(_Entry):
    name: str
    data: bytes
    mode: int = 0o644

    def add_to(self, tar: tarfile.TarFile) -> None:
        info = _info(self.name, tarfile.REGTYPE, self.mode)
        info.size = len(self.data)
        tar.addfile(info, io.BytesIO(self.data))


@dataclass
class _RandomFile(_Entry):
    name: str
    size: int
    seed: int

    def add_to(self, tar: tarfile.TarFile) -> None:
        info = _info(self.name, tarfile.REGTYPE, 0o644)
        info.size = self.size
        tar.addfile(info, _RandomReader(self.size, self.seed))


class _RandomReader:
    """`size` bytes from random.Random(seed), made in fixed 1 MiB steps.

    The bytes do not depend on how the reader is read (tarfile's buffer size can change
    between Python versions), and a 1 GiB layer never sits in memory.
    """

    def __init__(self, size: int, seed: int) -> None:
        self._left = size
        self._rng = random.Random(seed)
        self._buf = b""

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self._left + len(self._buf)
        while len(self._buf) < n and self._left > 0:
            step = min(_CHUNK, self._left)
            self._buf += self._rng.randbytes(step)
            self._left -= step
        out, self._buf = self._buf[:n], self._buf[n:]
        return out


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
