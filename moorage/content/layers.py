"""Every checksum of a v1 layer upload, computed in one pass while the body streams in.

`LayerAnalyzer` is fed the request body (chunked framing already removed) piece by piece and
computes, without a second read (docs/contracts/v1-protocol.md sections 4.4.3, 5.1-5.3, 11):
- the payload checksum `sha256(json || LF || body)` (`X-Docker-Checksum-Payload`);
- the v2 blob digest `sha256(body)` and the body's length;
- the v2 `diff_id` `sha256(decompressed tar)` and the decompressed length;
- TarSum v0 with the image JSON as prefix (`X-Docker-Checksum`), and on request `tarsum.v1`
  and `tarsum.dev` (no prefix, their usual use). TarSum v0 can be left out (`tarsum=False`):
  it hashes the decompressed content a second time, and only clients older than Docker 0.10
  check a layer by it (section 5.3); the tar is still parsed and checked the same.

The body must be a gzip-compressed or plain tar archive, told apart by magic bytes; bzip2, xz
and zstd are refused (section 13), and so is anything that does not parse as tar. An empty tar
stream (no entries, not even the end-of-archive blocks), plain or gzip'ed, is accepted as an
archive with no entries, as Go's tar reader (Docker's pull side) reads it.

Bounds, so that a hostile layer costs neither disk nor memory nor unbounded CPU: nothing is
buffered beyond one decompression step (`step` bytes of output per inflate call; the inflate
is ISA-L's, through `isal_zlib`); the decompressed stream may not exceed `max_uncompressed`
bytes, nor, once past `ratio_floor` bytes, `max_ratio` times the compressed bytes received so
far (a gzip bomb expands about 1000:1; real layers rarely pass 10:1, though large zero-filled
files can); tar extended headers and the number of entries are bounded as in
`moorage.content.tarsum`. A limit hit raises `LayerTooLarge`, any other refusal `LayerInvalid`.

Pure CPU and synchronous: meant to run in a worker thread (`asyncio.to_thread(a.update, c)`),
one call at a time per analyzer, or split in parts that run on threads at once (`hash_body`,
or `hash_payload` and `hash_blob`, beside `read_content`), each part fed the blocks in order.
It does no I/O and does not store the layer.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import cast

from isal import isal_zlib

from moorage.content.tarsum import (
    DEFAULT_MAX_ENTRIES,
    DEFAULT_MAX_HEADER_RECORD,
    TarError,
    TarLimitError,
    TarReader,
    TarSum,
    Version,
    format_sum,
)

GiB = 1 << 30
DEFAULT_MAX_UNCOMPRESSED = 64 * GiB
DEFAULT_MAX_RATIO = 200
DEFAULT_RATIO_FLOOR = 4 * GiB
DEFAULT_STEP = 256 * 1024
_INPUT_SLICE = 64 * 1024

FORMAT_NOT_SUPPORTED = "Layer format not supported"
TOO_LARGE = "Layer too large when decompressed"

_GZIP = b"\x1f\x8b"
_INFLATE_ERROR = cast(type[Exception], isal_zlib.error)  # its stub calls it an instance
_REFUSED = {
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
}
_MAGIC_LEN = 6  # enough bytes to recognise every magic above


class LayerInvalid(Exception):
    """The layer is refused. `message` is the contract's client-facing error text (section
    4.4.3), `detail` says what exactly was wrong; `str()` gives both."""

    def __init__(self, detail: str, message: str = FORMAT_NOT_SUPPORTED) -> None:
        super().__init__(f"{message}: {detail}")
        self.message = message
        self.detail = detail


class LayerTooLarge(LayerInvalid):
    """The layer exceeds a decompression or tar-parsing limit (a bomb, or a configured cap)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, TOO_LARGE)


@dataclass(frozen=True, slots=True)
class LayerSums:
    payload_checksum: str  # "sha256:<hex>" of json || LF || body
    blob_digest: str  # "sha256:<hex>" of the body as sent
    diff_id: str  # "sha256:<hex>" of the decompressed tar stream
    tarsum: str | None  # "tarsum+sha256:<hex>", Version 0 with the JSON as prefix; if asked
    size: int  # body bytes
    uncompressed_size: int  # decompressed tar bytes (== size for a plain tar)
    compressed: bool  # gzip (True) or plain tar (False)
    entries: int  # tar entries
    tarsum_v1: str | None = None  # "tarsum.v1+sha256:<hex>", no prefix; when requested
    tarsum_dev: str | None = None  # "tarsum.dev+sha256:<hex>", no prefix; when requested


def payload_checksum(image_json: bytes, body: bytes) -> str:
    """The payload checksum of a whole body (section 5.1); `LayerAnalyzer` computes the same
    incrementally."""
    return "sha256:" + hashlib.sha256(image_json + b"\n" + body).hexdigest()


class LayerAnalyzer:
    """Feed the layer body with `update`, then call `finish` once at its end."""

    def __init__(
        self,
        json_prefix: bytes,
        *,
        max_uncompressed: int = DEFAULT_MAX_UNCOMPRESSED,
        max_ratio: int = DEFAULT_MAX_RATIO,
        ratio_floor: int = DEFAULT_RATIO_FLOOR,
        max_header_record: int = DEFAULT_MAX_HEADER_RECORD,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        tarsum: bool = True,
        extra_tarsums: bool = False,
        step: int = DEFAULT_STEP,
    ) -> None:
        self._json = bytes(json_prefix)
        self.max_uncompressed = max_uncompressed
        self.max_ratio = max_ratio
        self.ratio_floor = ratio_floor
        self._step = step
        self._payload = hashlib.sha256(self._json + b"\n")
        self._blob = hashlib.sha256()
        self._diff = hashlib.sha256()
        self._size = 0  # body bytes hashed (hash_blob)
        self._fed = 0  # body bytes read (read_content)
        self._uncompressed = 0
        self._head = bytearray()  # the first bytes, until the format is known
        self._compressed: bool | None = None
        self._inflate: isal_zlib.Decompress | None = None
        self._members = 0  # gzip members begun, counting the current one
        self._member_fed = False  # whether the current member has been given input
        self._member_head = b""  # its first two bytes (ISA-L reads a header only once whole)
        self._tarsum = TarSum(Version.V0) if tarsum else None
        # tarsum.dev has the same rules as v1 in every version studied: one sum serves both.
        self._tarsum_v1 = TarSum(Version.V1) if extra_tarsums else None
        sinks = [sink for sink in (self._tarsum, self._tarsum_v1) if sink is not None]
        self._tar = TarReader(*sinks, max_header_record=max_header_record, max_entries=max_entries)
        self._failed: LayerInvalid | None = None
        self._finished = False

    @property
    def size(self) -> int:
        """Body bytes received so far."""
        return self._size

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        """Feed the next piece of the body to every sum (`hash_payload`, `hash_blob` and
        `read_content` in turn)."""
        self.hash_payload(chunk)
        self.hash_blob(chunk)
        self.read_content(chunk)

    # The three parts of `update` touch disjoint state: with the same piece they may run at
    # the same time on three threads (hashlib and zlib release the GIL on large pieces), each
    # part one call at a time and every part fed every piece in order. One layer is then taken
    # in at the speed of its slowest part instead of the sum of all.

    def hash_payload(self, chunk: bytes | bytearray | memoryview) -> None:
        """The payload checksum's part: sha256 of json || LF || body."""
        self._check_usable()
        self._payload.update(chunk)

    def hash_blob(self, chunk: bytes | bytearray | memoryview) -> None:
        """The v2 blob digest's part: sha256 of the body, and its length."""
        self._check_usable()
        self._blob.update(chunk)
        self._size += memoryview(chunk).nbytes

    def hash_body(self, chunk: bytes | bytearray | memoryview) -> None:
        """`hash_payload` and `hash_blob`: the two sums of the body as sent, on one thread."""
        self.hash_payload(chunk)
        self.hash_blob(chunk)

    def read_content(self, chunk: bytes | bytearray | memoryview) -> None:
        """Everything read from the content: the format, gunzip, the diff_id, the tarsums."""
        self._check_usable()
        try:
            self._read(memoryview(chunk).cast("B"))
        except LayerInvalid as exc:
            self._failed = exc
            raise

    def finish(self) -> LayerSums:
        self._check_usable()
        try:
            sums = self._finish()
        except LayerInvalid as exc:
            self._failed = exc
            raise
        self._finished = True
        return sums

    # -- internals ---------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._failed is not None:
            raise self._failed
        if self._finished:
            raise RuntimeError("LayerAnalyzer used after finish()")

    def _read(self, chunk: memoryview) -> None:
        if not chunk:
            return
        self._fed += len(chunk)
        if self._compressed is None:
            self._head += chunk
            if len(self._head) < _MAGIC_LEN:
                return
            self._detect()
            chunk = memoryview(bytes(self._head))
            self._head = bytearray()
        if self._compressed:
            self._inflate_chunk(chunk)
        else:
            self._tar_chunk(chunk)

    def _detect(self) -> None:
        head = bytes(self._head)
        for magic, name in _REFUSED.items():
            if head.startswith(magic):
                raise LayerInvalid(f"{name}-compressed layers are not accepted")
        self._compressed = head.startswith(_GZIP)
        if self._compressed:
            self._new_member()

    def _new_member(self) -> None:
        self._inflate = _gzip_member()
        self._members += 1
        self._member_fed = False
        self._member_head = b""

    def _inflate_chunk(self, chunk: memoryview) -> None:
        # zlib copies the unconsumed input into a new bytes object after every bounded call;
        # feeding small input slices keeps that copying small for highly compressed data.
        for start in range(0, len(chunk), _INPUT_SLICE):
            self._inflate_slice(chunk[start : start + _INPUT_SLICE])

    def _inflate_slice(self, data: memoryview | bytes) -> None:
        step = self._step
        while True:
            assert self._inflate is not None
            inflate = self._inflate
            self._member_fed = self._member_fed or bool(data)
            if len(self._member_head) < 2:
                self._member_head += bytes(data[: 2 - len(self._member_head)])
            try:
                out = inflate.decompress(data, step)
            except _INFLATE_ERROR as exc:
                if self._members > 1:
                    raise LayerInvalid(
                        f"corrupt gzip member, or trailing data that is not one, after gzip "
                        f"member {self._members - 1} ({exc})"
                    ) from exc
                raise LayerInvalid(f"corrupt gzip stream ({exc})") from exc
            if out:
                self._tar_chunk(memoryview(out))
            if inflate.eof:
                # Concatenated gzip members form one stream (Go's reader, used on pull, reads
                # them all); anything else after a member is an error there, so here too.
                data = inflate.unused_data
                self._new_member()
                if not data:
                    return
                continue
            data = inflate.unconsumed_tail
            # An output of exactly `step` bytes may leave output pending inside zlib even
            # with no input left: call again until it returns less.
            if not data and len(out) < step:
                return

    def _tar_chunk(self, data: memoryview) -> None:
        self._uncompressed += len(data)
        total = self._uncompressed
        if total > self.max_uncompressed:
            raise LayerTooLarge(
                f"decompresses to more than the limit of {self.max_uncompressed} bytes"
            )
        if total > self.ratio_floor and total > self.max_ratio * self._fed:
            raise LayerTooLarge(
                f"decompresses to {total} bytes from {self._fed}, more than "
                f"{self.max_ratio} times its size"
            )
        self._diff.update(data)
        try:
            self._tar.feed(data)
        except TarLimitError as exc:
            raise LayerTooLarge(str(exc)) from exc
        except TarError as exc:
            raise LayerInvalid(str(exc)) from exc

    def _finish(self) -> LayerSums:
        if self._compressed is None:
            self._detect()
            head, self._head = memoryview(bytes(self._head)), bytearray()
            if head:
                if self._compressed:
                    self._inflate_chunk(head)
                else:
                    self._tar_chunk(head)
        if self._compressed:
            assert self._inflate is not None
            # A fresh member object that has seen no input means the last member ended
            # cleanly; one that has seen some but not reached its end is a cut stream.
            if self._member_fed and not self._inflate.eof:
                if self._members > 1 and not _GZIP.startswith(self._member_head):
                    raise LayerInvalid(
                        f"trailing data that is not a gzip member after gzip member "
                        f"{self._members - 1}"
                    )
                raise LayerInvalid("gzip stream is truncated")
        try:
            self._tar.close()
        except TarError as exc:
            raise LayerInvalid(str(exc)) from exc
        v1 = self._tarsum_v1.hexdigest() if self._tarsum_v1 is not None else None
        return LayerSums(
            payload_checksum="sha256:" + self._payload.hexdigest(),
            blob_digest="sha256:" + self._blob.hexdigest(),
            diff_id="sha256:" + self._diff.hexdigest(),
            tarsum=self._tarsum.sum(self._json) if self._tarsum is not None else None,
            size=self._size,
            uncompressed_size=self._uncompressed,
            compressed=bool(self._compressed),
            entries=self._tar.entries,
            tarsum_v1=format_sum(Version.V1, v1) if v1 is not None else None,
            tarsum_dev=format_sum(Version.DEV, v1) if v1 is not None else None,
        )


def _gzip_member() -> isal_zlib.Decompress:
    # ISA-L's inflate: twice zlib's speed on a layer's blocks, the same stream interface.
    return isal_zlib.decompressobj(16 + isal_zlib.MAX_WBITS)
