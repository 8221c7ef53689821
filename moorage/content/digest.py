"""Content digests: parsing, validation and incremental hashing.

Grammar (OCI image-spec): `algorithm ":" encoded`. Only sha256 and sha512 are supported,
because only they can be verified; any other algorithm is `DIGEST_INVALID`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from moorage.content import sha256state
from moorage.errors import DigestInvalid

_GRAMMAR = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
_ENCODED = {"sha256": re.compile(r"^[a-f0-9]{64}$"), "sha512": re.compile(r"^[a-f0-9]{128}$")}
ALGORITHMS = tuple(_ENCODED)
EMPTY_SHA256 = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@dataclass(frozen=True, slots=True)
class Digest:
    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def parse(value: str) -> Digest:
    """Parse a digest string; raise DigestInvalid unless it is a well-formed sha256/sha512."""
    if not _GRAMMAR.match(value):
        raise DigestInvalid("invalid digest", {"digest": value})
    algorithm, _, encoded = value.partition(":")
    pattern = _ENCODED.get(algorithm)
    if pattern is None:
        raise DigestInvalid("unsupported digest algorithm", {"digest": value})
    if not pattern.match(encoded):
        raise DigestInvalid("invalid digest", {"digest": value})
    return Digest(algorithm, encoded)


def is_valid(value: str) -> bool:
    try:
        parse(value)
    except DigestInvalid:
        return False
    return True


def of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def _new_hash(algorithm: str) -> Any:
    if algorithm == "sha256" and sha256state.available():
        return sha256state.ResumableSha256()
    return hashlib.new(algorithm)


class Hasher:
    """Hashes a stream once for every algorithm asked for (sha256 always). Its sha256 state
    can be exported and restored elsewhere when `sha256state.available()`."""

    def __init__(self, algorithms: tuple[str, ...] = ("sha256",)) -> None:
        names = dict.fromkeys(("sha256", *algorithms))
        self._hashes: dict[str, Any] = {name: _new_hash(name) for name in names}
        self.size = 0

    def update(self, data: bytes | memoryview) -> None:
        for h in self._hashes.values():
            h.update(data)
        self.size += len(data)

    def has(self, algorithm: str) -> bool:
        return algorithm in self._hashes

    def digest(self, algorithm: str = "sha256") -> str:
        return f"{algorithm}:{self._hashes[algorithm].hexdigest()}"

    def export_sha256(self) -> bytes | None:
        """The sha256 state of the bytes hashed so far (see sha256state), None when it cannot
        be exported here. Other algorithms are not in it."""
        sha256 = self._hashes["sha256"]
        return sha256.export() if isinstance(sha256, sha256state.ResumableSha256) else None

    @classmethod
    def restore_sha256(cls, state: bytes) -> Hasher:
        """A sha256-only hasher continuing from `export_sha256()`'s state. ValueError for a
        malformed state, sha256state.Unavailable where it cannot be restored: then hash the
        stored bytes again instead."""
        hasher = cls()
        sha256 = sha256state.ResumableSha256.restore(state)
        hasher._hashes["sha256"], hasher.size = sha256, sha256.size
        return hasher
