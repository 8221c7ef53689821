"""Cheap, deterministic benchmark data, and the benchmark's images built from it by the
project's one image builder (tests/images.py).

A blob's bytes are one shared random block (1 MiB by default) repeated, each copy stamped at its
start with the blob's tag and the block's index, so every block of every blob differs (nothing
can be deduplicated or compressed away) while generating a GiB costs a few memcpys (the tests'
seeded random bytes cost a hundred times more). Nothing is ever held whole in memory: blobs are
produced block by block, hashed on the fly, and written to a file when a tool (curl, skopeo)
needs one.

`build_image` writes an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/...`) that
skopeo copies with `oci:DIR:TAG`: each layer is a tar holding one file of blob bytes, gzip level
0 (stored), written at flat memory. Same arguments, same digests.
"""

from __future__ import annotations

import hashlib
import random
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.images import (
    CREATED,
    OCI_MANIFEST,
    Image,
    make_layered_image,
    sha256_digest,
    stream_file,
    verify_layout,
)

__all__ = [
    "BLOCK",
    "CREATED",
    "OCI_MANIFEST",
    "Blob",
    "Image",
    "build_image",
    "layer_sizes",
    "sha256_digest",
    "verify_layout",
]

BLOCK = 1 << 20


@cache
def _base_block(size: int) -> bytes:
    return random.Random(f"moorage-bench-{size}").randbytes(size)


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


def build_image(layout: Path, tag: str, seed: str, layer_sizes: list[int]) -> Image:
    """Write an image with one layer per size into the OCI layout `layout` (created)."""
    layers = []
    for i, size in enumerate(layer_sizes):
        blob = Blob(f"{seed}/{i}", size, min(BLOCK, max(64, size)))
        layers.append([stream_file(f"layer{i:03d}.bin", size, blob.chunks)])
    return make_layered_image(layout, layers, tag, labels={"bench.seed": seed})


def layer_sizes(count: int, low: int, high: int, seed: str = "sizes") -> list[int]:
    """`count` layer sizes in [low, high], the same for every round (content varies by seed)."""
    rng = random.Random(seed)
    return [rng.randint(low, high) for _ in range(count)]
