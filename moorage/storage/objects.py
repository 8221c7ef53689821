"""The storage driver protocol, in the shape object stores have.

A driver stores opaque byte strings at slash-separated keys, in the shape object stores have:
stat, ranged read, small get/put, a resumable append-only writer whose `commit` makes the
object whole *at its own key* (on S3 the multipart upload simply becomes the object: no byte
is copied), a move, a delete (of a key or a prefix), a listing (`walk`, for `moorage fsck`:
nothing else decides from a listing) and an optional presigned URL. It must
not know about digests, manifests or HTTP; keys are computed in `moorage.storage.paths`.

Design and the reasoning behind each rule: docs/design/storage-drivers.md. What defines a
driver is the suite every driver runs: tests/storage/test_driver_suite.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol

from moorage.storage.base import StorageError

REDIRECT_EXPIRES = 1200  # seconds a presigned URL stays valid unless asked otherwise


class Listed(NamedTuple):
    """One object found by `ObjectDriver.walk`."""

    key: str
    size: int
    modified: float  # seconds since the epoch: when the object was last written or put in place


class StaleWriter(StorageError):
    """The writer's object was written to by someone else since its state was taken (a writer
    that lost its lease), or it is gone (cancelled, committed, expired). Nothing was
    committed; the upload must start again."""


class ObjectWriter(Protocol):
    """Appends to one object being written. Bytes become visible at the key only on `commit`."""

    @property
    def size(self) -> int:
        """Bytes written so far, from the first writer of this object on."""

    async def write(self, data: bytes) -> None: ...

    def expect(self, size: int) -> None:
        """A hint: the object will be at least `size` bytes long once what comes now is
        written (a body of declared length follows). A driver may choose how to write by it
        (the filesystem's direct writes); nothing may depend on it being true."""

    def blocking_write(self) -> Callable[[memoryview], None] | None:
        """`write` as a blocking call for a worker thread (a local file), or None where writes
        must go through the event loop (a store over the network). The caller calls it from
        one thread at a time and calls nothing else of the writer meanwhile."""

    async def state(self) -> bytes:
        """Make what was written so far resumable and return a small opaque state (JSON) that
        `ObjectDriver.writer(key, state)` resumes from, on this node or any other. The caller
        stores it with the upload session after each chunk. Async because a driver may first
        have to store bytes it still holds in memory (S3: a tail smaller than a part)."""

    async def close(self) -> None:
        """Let go of the object without committing (a chunk is done); resume with the state.
        Bytes written after the last `state()` are lost."""

    async def commit(self, target: str | None = None) -> str:
        """Make the object whole and durable at its key; return the key where it now lives.

        A content-addressed key (`paths.is_content_addressed`) that already holds an object
        keeps it (same content by definition) and this writer's bytes are dropped. Raises
        `StaleWriter` if another writer's bytes got in the way: nothing is committed then.

        `target`: a content-addressed key the caller knows to be this object's (its digest was
        verified) and free to be linked (no deletion pending, `blobs.place`). A driver that
        can put the object there in the same step (a filesystem: one link, one directory
        sync) does, unless something is there already, and returns it; the others ignore it,
        and the object is at its own key as without it."""

    async def cancel(self) -> None:
        """Drop the object and free everything it holds (S3: abort the multipart upload)."""


class ObjectDriver(Protocol):
    async def stat(self, key: str) -> int | None:
        """Size of the object, or None if absent."""

    def reader(self, key: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """Stream `length` bytes (all when None) from `offset`; a range past the end yields
        what there is (maybe nothing). PathNotFound if absent (raised on first iteration)."""

    async def get(self, key: str) -> bytes:
        """A small object whole; PathNotFound if absent."""

    async def put(self, key: str, data: bytes) -> None:
        """Store a small object whole. A content-addressed key that exists is left alone."""

    async def writer(self, key: str, state: bytes | None = None) -> ObjectWriter:
        """A new writer for `key`, or the continuation of one from what its `state()` returned
        (possibly on another node). A resumed writer never lets bytes that an older writer of
        the same state writes late into the committed object (see the design note)."""

    async def move(self, source: str, target: str) -> bool:
        """Move an object. A content-addressed `target` that exists is kept, and so is the
        source then: False (the caller decides which to use; garbage collection may be
        deleting that target). PathNotFound if `source` is absent."""

    async def delete(self, key: str) -> None:
        """Remove an object, or everything below a prefix, and any unfinished writer data of
        them; absent is not an error."""

    def walk(self, prefix: str = "", after: str | None = None) -> AsyncIterator[Listed]:
        """Every object whose key is `prefix` or below `prefix/` (everything when ""), in key
        order (by code point: S3's UTF-8 byte order), only those after `after` when given (a
        long listing resumes there), holding at most a page of them in memory. Unfinished
        writer data (filesystem hidden files, S3 tail objects and multipart uploads) are no
        objects and are not listed; neither are names the driver could not address as keys.
        `modified` is the latest of when the object's bytes were written and when it was put
        at its key (a commit or a move), so an object just put in place never looks old."""

    async def redirect_url(
        self, key: str, method: Literal["GET", "HEAD"] = "GET", expires: int = REDIRECT_EXPIRES
    ) -> str | None:
        """A URL a client may fetch the object from directly (presigned), or None."""

    def local_path(self, key: str) -> Path | None:
        """A local file holding the object, for zero-copy sending; None if not local."""

    async def check(self) -> None:
        """Raise StorageError unless the store answers and is usable (a node's readiness):
        not whether any object is there."""

    async def close(self) -> None:
        """Release connections."""


def encode_state(driver: str, **fields: Any) -> bytes:
    return json.dumps({"driver": driver, "v": 1, **fields}, separators=(",", ":")).encode()


def decode_state(driver: str, state: bytes) -> dict[str, Any]:
    try:
        data = json.loads(state)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StorageError("unreadable writer state") from exc
    if not isinstance(data, dict) or data.get("driver") != driver or data.get("v") != 1:
        raise StorageError(f"not a {driver} writer state")
    return data
