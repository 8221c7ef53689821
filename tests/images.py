"""Every test and benchmark image is built here, with no network.

- OCI image layouts (`make_image`, `make_busybox_image`, `make_index`, `make_artifact`,
  `make_layered_image`): a directory with `oci-layout`, `index.json` and
  `blobs/sha256/<hex>`; every builder adds to one (creating it if needed) and tags what it adds
  with `org.opencontainers.image.ref.name`, so `skopeo copy oci:DIR:TAG ...` finds it.
- Layers: tar entries (`file`, `directory`, `symlink`, `random_file`, `stream_file`), a tar in
  memory (`make_tar`) or a gzip tar written to a file in one pass at flat memory (`write_layer`),
  with the digests a client computes on the way: the blob digest, the diff_id, and for the v1
  protocol TarSum v0 and the payload checksum (`tarsum_v0`, `TarSum`; our own code, not the
  server's).
- Small images held in memory (`memory_image`) for clients that push bytes.

Everything is reproducible: layer data comes from `random.Random(seed)` (or the caller's
chunks), tar entries are ustar with fixed owners and mtimes, gzip headers carry no name and
mtime 0, and JSON is written with sorted keys. The same call gives the same digests on every
run (the busybox image also depends on the installed busybox binary). Layers are gzip level 0
(stored, not compressed), so a layer's blob is the size asked for plus a few KiB of tar and gzip
framing, and so are the bytes on the wire.

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
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

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

    def put_layer(self, entries: Iterable[Entry]) -> tuple[Blob, str]:
        """Write a gzip (level 0) tar layer; return its blob and diff_id."""
        fd, tmp_name = tempfile.mkstemp(dir=self.root / "blobs" / "sha256", prefix=".layer-")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            layer = write_layer(tmp, entries)
            path = self.blob_path(layer.digest)
            if path.exists():
                tmp.unlink()
            else:
                tmp.replace(path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return Blob(layer.digest, layer.size, OCI_LAYER_GZIP, path), layer.diff_id

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
# Layers: tar entries, tars in memory, gzip tars streamed to a file with their digests


class Entry:
    """One tar member of a layer."""

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


@dataclass(frozen=True)
class _Dir(Entry):
    name: str
    mode: int

    def add_to(self, tar: tarfile.TarFile) -> None:
        tar.addfile(_info(self.name, tarfile.DIRTYPE, self.mode))


@dataclass(frozen=True)
class _Symlink(Entry):
    name: str
    target: str

    def add_to(self, tar: tarfile.TarFile) -> None:
        info = _info(self.name, tarfile.SYMTYPE, 0o777)
        info.linkname = self.target
        tar.addfile(info)


@dataclass(frozen=True)
class _File(Entry):
    """A regular file of `size` bytes read from the iterator `chunks()` gives."""

    name: str
    size: int
    chunks: Callable[[], Iterator[bytes]]
    mode: int = 0o644

    def add_to(self, tar: tarfile.TarFile) -> None:
        info = _info(self.name, tarfile.REGTYPE, self.mode)
        info.size = self.size
        tar.addfile(info, _ChunkReader(self.chunks()))


def file(name: str, data: bytes, mode: int = 0o644) -> Entry:
    return _File(name, len(data), lambda: iter((data,)), mode)


def directory(name: str, mode: int = 0o755) -> Entry:
    return _Dir(name, mode)


def symlink(name: str, target: str) -> Entry:
    return _Symlink(name, target)


def random_file(name: str, size: int, seed: int | str) -> Entry:
    """`size` bytes from random.Random(seed), made in fixed 1 MiB steps: the bytes do not depend
    on how tarfile reads them, and a 1 GiB layer never sits in memory."""

    def chunks() -> Iterator[bytes]:
        rng = random.Random(seed)
        for at in range(0, size, _CHUNK):
            yield rng.randbytes(min(_CHUNK, size - at))

    return _File(name, size, chunks)


def stream_file(name: str, size: int, chunks: Callable[[], Iterator[bytes]]) -> Entry:
    """A file of `size` bytes made by the caller's generator (the benchmark's cheap data)."""
    return _File(name, size, chunks)


def file_entries(files: dict[str, bytes]) -> list[Entry]:
    """The parent directories of `files`, then the files, in name order."""
    dirs = sorted({name.rsplit("/", 1)[0] for name in files if "/" in name})
    return [*(directory(d) for d in dirs), *(file(n, d) for n, d in sorted(files.items()))]


def make_tar(entries: Iterable[Entry], *, end_blocks: bool = True) -> bytes:
    """A ustar archive of `entries` in memory. Without `end_blocks` the two zero blocks (and the
    record padding) are left out, as Docker 1.2's push stream did (its TarSum writer never
    closed the archive)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for entry in entries:
            entry.add_to(tar)
        end = tar.offset
    return out.getvalue() if end_blocks else out.getvalue()[:end]


def gzip_bytes(data: bytes, flush_every: int | None = None) -> bytes:
    """gzip of `data`; with `flush_every`, a sync flush after every that many input bytes, as
    Docker 1.2's push wrote layers (a gzip writer flushed after every chunk)."""
    if flush_every is None:
        return gzip.compress(data, compresslevel=6, mtime=0)
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    out = bytearray()
    for offset in range(0, len(data), flush_every):
        out += compressor.compress(data[offset : offset + flush_every])
        out += compressor.flush(zlib.Z_SYNC_FLUSH)
    out += compressor.flush(zlib.Z_FINISH)
    return bytes(out)


class TarSum:
    """TarSum Version 0 of an uncompressed ustar archive fed in pieces (no PAX or GNU extensions:
    the layers built here have none), with `extra` hashed first (the v1 image JSON). Our own
    parser, so the tests do not rest on the server's code; `tests/v1/test_client.py` checks it
    against known vectors."""

    def __init__(self, extra: bytes = b"") -> None:
        self._extra = extra
        self._sums: list[str] = []
        self._header = bytearray()
        self._entry: Any = None  # the running hash of the entry whose content is coming
        self._content = 0  # content bytes of that entry still to come
        self._padding = 0  # bytes to skip before the next header
        self._ended = False

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view and not self._ended:
            if self._content:
                take = min(self._content, len(view))
                self._entry.update(view[:take])
                self._content -= take
                view = view[take:]
                if not self._content:
                    self._close_entry()
            elif self._padding:
                take = min(self._padding, len(view))
                self._padding -= take
                view = view[take:]
            else:
                take = 512 - len(self._header)
                self._header += view[:take]
                view = view[take:]
                if len(self._header) == 512:
                    self._start_entry(bytes(self._header))
                    self._header.clear()

    def _start_entry(self, block: bytes) -> None:
        if block == bytes(512):
            self._ended = True
            return
        name = _text(block[0:100])
        if block[257:263] == b"ustar\0" and _text(block[345:500]):
            name = _text(block[345:500]) + b"/" + name
        size = _octal(block[124:136])
        typeflag = block[156:157]
        device = typeflag in (b"3", b"4")
        header = b"".join(
            [
                b"name" + name,
                b"mode%d" % _octal(block[100:108]),
                b"uid%d" % _octal(block[108:116]),
                b"gid%d" % _octal(block[116:124]),
                b"size%d" % size,
                b"mtime%d" % _octal(block[136:148]),
                b"typeflag" + typeflag,
                b"linkname" + _text(block[157:257]),
                b"uname" + _text(block[265:297]),
                b"gname" + _text(block[297:329]),
                b"devmajor%d" % (_octal(block[329:337]) if device else 0),
                b"devminor%d" % (_octal(block[337:345]) if device else 0),
            ]
        )
        self._entry = hashlib.sha256(header)
        if typeflag in (b"1", b"2", b"3", b"4", b"5", b"6") or not size:
            self._close_entry()
        else:
            self._content = size
            self._padding = -size % 512

    def _close_entry(self) -> None:
        self._sums.append(self._entry.hexdigest())
        self._entry = None

    def result(self) -> str:
        sums = [*self._sums, *([self._entry.hexdigest()] if self._entry else [])]
        final = hashlib.sha256(self._extra)
        for entry in sorted(sums):
            final.update(entry.encode())
        return "tarsum+sha256:" + final.hexdigest()


def _octal(field_bytes: bytes) -> int:
    text = field_bytes.rstrip(b"\0 ").strip()
    return int(text, 8) if text else 0


def _text(field_bytes: bytes) -> bytes:
    return field_bytes.split(b"\0", 1)[0]


def tarsum_v0(archive: bytes, extra: bytes = b"") -> str:
    """TarSum Version 0 of an archive in memory (see `TarSum`)."""
    tarsum = TarSum(extra)
    tarsum.update(archive)
    return tarsum.result()


@dataclass(frozen=True)
class LayerFile:
    """A layer written to a file, and its digests."""

    path: Path
    digest: str  # sha256 of the file: the v2 blob digest
    size: int
    diff_id: str  # sha256 of the uncompressed tar
    tarsum: str | None  # X-Docker-Checksum: TarSum v0 with the v1 JSON as prefix
    payload: str | None  # X-Docker-Checksum-Payload: sha256(v1 JSON || LF || file)


def write_layer(path: Path, entries: Iterable[Entry], *, v1_json: bytes | None = None) -> LayerFile:
    """Write a gzip (level 0) ustar layer of `entries` to `path` in one pass at flat memory,
    hashing it on the way. With `v1_json` (the v1 image's JSON) the two v1 checksums are
    computed in the same pass (docs/contracts/v1-protocol.md sections 5.1 and 5.2)."""
    blob, uncompressed = hashlib.sha256(), hashlib.sha256()
    tarsum = TarSum(v1_json) if v1_json is not None else None
    payload = hashlib.sha256(v1_json + b"\n") if v1_json is not None else None
    with open(path, "wb") as raw:
        outer = _HashingWriter(raw, [blob, *([payload] if payload else [])])
        with gzip.GzipFile(filename="", mode="wb", fileobj=outer, compresslevel=0, mtime=0) as gz:
            inner = _HashingWriter(gz, [uncompressed, *([tarsum] if tarsum else [])])
            with tarfile.open(
                fileobj=cast(IO[bytes], inner),
                mode="w",
                format=tarfile.USTAR_FORMAT,
                copybufsize=_CHUNK,
            ) as tar:
                for entry in entries:
                    entry.add_to(tar)
    return LayerFile(
        path,
        "sha256:" + blob.hexdigest(),
        outer.count,
        "sha256:" + uncompressed.hexdigest(),
        tarsum.result() if tarsum else None,
        "sha256:" + payload.hexdigest() if payload else None,
    )


class _HashingWriter:
    """Write-through file object that feeds what passes to `hashers` and counts it."""

    def __init__(self, target: IO[bytes] | gzip.GzipFile, hashers: Sequence[Any]) -> None:
        self._target = target
        self._hashers = hashers
        self.count = 0

    def write(self, data: Any) -> int:
        for hasher in self._hashers:
            hasher.update(data)
        self._target.write(data)
        self.count += len(data)
        return len(data)

    def tell(self) -> int:
        return self.count

    def flush(self) -> None:
        self._target.flush()


class _ChunkReader:
    """A file-like read() over an iterator of chunks, for tarfile."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
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


# ---------------------------------------------------------------------------------------------
# Small images in memory


@dataclass(frozen=True)
class MemoryImage:
    """An OCI image manifest with its config and layers, all in memory (the layers are opaque
    random bytes: a registry never looks inside them)."""

    config: bytes
    layers: tuple[bytes, ...]
    manifest: bytes

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest)

    @property
    def blobs(self) -> tuple[bytes, ...]:
        return (self.config, *self.layers)


def manifest_for(config: bytes, layers: Sequence[bytes], note: str) -> bytes:
    """An OCI image manifest of `config` and `layers`, `note` in its annotations."""
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": _descriptor(OCI_CONFIG, config),
        "layers": [_descriptor(OCI_LAYER_GZIP, layer) for layer in layers],
        "annotations": {"org.example.note": note},
    }
    return json.dumps(body, sort_keys=True, indent=2).encode()


def memory_image(seed: int | str, layer_sizes: Sequence[int], note: str = "") -> MemoryImage:
    rng = random.Random(seed)
    layers = tuple(rng.randbytes(size) for size in layer_sizes)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [sha256_digest(layer) for layer in layers]},
            "config": {"Labels": {"seed": str(seed)}},
        },
        sort_keys=True,
    ).encode()
    return MemoryImage(config, layers, manifest_for(config, layers, note or f"seed {seed}"))


def _descriptor(media_type: str, data: bytes) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": sha256_digest(data), "size": len(data)}


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
    rng = random.Random(f"moorage-test-image:{seed}")
    contents = [
        [random_file(f"layer-{i}.bin", size, rng.getrandbits(64))] for i, size in enumerate(layers)
    ]
    return make_layered_image(
        layout_dir,
        contents,
        tag,
        os_=os_,
        architecture=architecture,
        cmd=cmd,
        labels={"moorage.test.seed": str(seed), **(labels or {})},
    )


def make_layered_image(
    layout_dir: Path | str,
    layers: Sequence[Iterable[Entry]],
    tag: str | None = "latest",
    *,
    os_: str = "linux",
    architecture: str = "amd64",
    cmd: Sequence[str] | None = None,
    labels: dict[str, str] | None = None,
) -> Image:
    """An image with one layer per list of tar entries, each written at flat memory (a layer
    of generated content can be any size)."""
    layout = Layout(Path(layout_dir))
    layer_blobs: list[Blob] = []
    diff_ids: list[str] = []
    for entries in layers:
        blob, diff_id = layout.put_layer(entries)
        layer_blobs.append(blob)
        diff_ids.append(diff_id)
    config = _image_config(os_, architecture, diff_ids, cmd=cmd, labels=labels or {})
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
    src = Path(busybox) if busybox else busybox_path()
    data = src.read_bytes()
    entries = [
        directory("bin"),
        file("bin/busybox", data, mode=0o755),
        symlink("bin/sh", "busybox"),
        directory("tmp", mode=0o1777),
    ]
    return make_layered_image(
        layout_dir,
        [entries],
        tag,
        cmd=list(cmd),
        labels={"moorage.test.busybox.sha256": hashlib.sha256(data).hexdigest()},
    )


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


def verify_layout(layout: Path, tag: str, manifest_digest: str) -> None:
    """Check a pulled layout: `tag` names `manifest_digest`, and every blob it references is
    present with the digest it is stored under and the size its descriptor gives; blobs are
    hashed in 1 MiB reads (a pulled layer can be large). Raises AssertionError otherwise."""
    index = read_index(layout)
    found = [
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get(REF_NAME) == tag or len(index["manifests"]) == 1
    ]
    assert found, f"{layout}: no manifest tagged {tag}"
    assert found[0]["digest"] == manifest_digest, (
        f"pulled manifest {found[0]['digest']} != pushed {manifest_digest}"
    )

    def check(digest: str, size: int | None = None) -> None:
        path = Path(layout) / "blobs" / "sha256" / digest.split(":", 1)[1]
        h = hashlib.sha256()
        n = 0
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
                n += len(chunk)
        assert "sha256:" + h.hexdigest() == digest, f"{path}: content does not match its digest"
        assert size is None or n == size, f"{path}: {n} bytes, expected {size}"

    check(manifest_digest)
    manifest = json.loads(blob_bytes(layout, manifest_digest))
    check(manifest["config"]["digest"], manifest["config"]["size"])
    for layer in manifest["layers"]:
        check(layer["digest"], layer["size"])


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
