"""TarSum (Docker's tar checksum, docs/contracts/v1-protocol.md section 5.2) over an incremental
tar parser.

`TarReader` parses an uncompressed tar stream fed in pieces of any size and reports each entry
(long names and PAX records already applied) with its content to one or more sinks; `TarSum`
is such a sink and computes the `tarsum`, `tarsum.v1` or `tarsum.dev` value of the archive.

Header fields are reported exactly as stored: the raw mode including file-type bits, the raw
typeflag byte (NUL for old-style files), names as bytes with any trailing `/`. This is why the
module parses tar itself instead of using `tarfile`, which normalises all three.

Where readers disagree, this one follows Go's `archive/tar` as vendored by the Docker clients
that computed v1 push checksums (0.7 to 1.x), since it is their TarSum we compare against:
- a PAX global header (`g`) is an entry of its own (its records are its content) and is not
  applied to the entries after it;
- `devmajor`/`devminor` are read only for character and block devices (0 otherwise);
- the ustar `prefix` field is joined to the name only for POSIX ustar headers, not GNU ones
  (where those bytes hold times);
- after the first zero block, the next block must be zero too (or the stream must end).
Known divergence: a GNU sparse entry (`S`) is summed as stored (size and data of the packed
chunks), whereas Go expands the holes.

Memory stays bounded: file contents are streamed to the sinks, never buffered; an extended
header (PAX `x`, GNU `L`/`K`) chain is buffered only up to `max_header_record` bytes and the
number of entries is capped by `max_entries` (TarSum keeps about 150 bytes per entry until the
end, because the entry sums must be sorted). Exceeding a limit raises `TarLimitError`.

This module does no decompression and no I/O, and knows nothing of HTTP or layers' storage.
"""

from __future__ import annotations

import binascii
import enum
import hashlib
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
DEFAULT_MAX_HEADER_RECORD = 1 << 20
DEFAULT_MAX_ENTRIES = 1_000_000

# Types whose data section is empty whatever their size field says (Go's isHeaderOnlyType and
# tarfile agree): hard link, symlink, char/block device, directory, FIFO.
_HEADER_ONLY = frozenset(b"123456")
_DEVICES = frozenset(b"34")
_XATTR_PREFIX = b"SCHILY.xattr."
_DECIMAL = re.compile(rb"^[+-]?[0-9]+$")
_PAX_TIME = re.compile(rb"^([+-]?)([0-9]+)(?:\.([0-9]*))?$")


class TarError(ValueError):
    """The stream is not a well-formed tar archive (corrupt, truncated or not a tar at all)."""


class TarLimitError(TarError):
    """The archive exceeds a configured parsing limit (a header or entry-count bomb)."""


class Version(enum.Enum):
    """TarSum versions; the value is the label of the string form."""

    V0 = "tarsum"
    V1 = "tarsum.v1"
    DEV = "tarsum.dev"


class TarHeader(NamedTuple):
    """One archive entry as a tar library reports it: extended headers applied, fields raw.

    A named tuple rather than a frozen dataclass: one is built per entry, and archives with
    a million entries are legitimate."""

    name: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    typeflag: bytes
    linkname: bytes = b""
    uname: bytes = b""
    gname: bytes = b""
    devmajor: int = 0
    devminor: int = 0
    xattrs: tuple[tuple[bytes, bytes], ...] = ()  # PAX SCHILY.xattr.<name>, sorted by name

    @property
    def has_data(self) -> bool:
        return not (len(self.typeflag) == 1 and self.typeflag[0] in _HEADER_ONLY)


# Spec 5.2 step 2: `key + value` for each field, in this order, no separators.
_V0_FIELDS = (
    b"name%smode%duid%dgid%dsize%dmtime%dtypeflag%slinkname%suname%sgname%sdevmajor%ddevminor%d"
)
_V1_FIELDS = _V0_FIELDS.replace(b"mtime%d", b"")


def header_string(header: TarHeader, version: Version = Version.V0) -> bytes:
    """The bytes a TarSum feeds for an entry's header (spec 5.2 step 2), before its content."""
    h = header
    if version is Version.V0:
        return _V0_FIELDS % (
            *(h.name, h.mode, h.uid, h.gid, h.size, h.mtime, h.typeflag),
            *(h.linkname, h.uname, h.gname, h.devmajor, h.devminor),
        )
    fields = _V1_FIELDS % (
        *(h.name, h.mode, h.uid, h.gid, h.size, h.typeflag),
        *(h.linkname, h.uname, h.gname, h.devmajor, h.devminor),
    )
    return fields + b"".join(key + value for key, value in sorted(h.xattrs))


def path_key(name: bytes) -> bytes:
    """The path entries are compared by for duplicates: one leading `./` and one trailing `/`
    removed, as Docker's TarSum does."""
    if name.startswith(b"./"):
        name = name[2:]
    if name.endswith(b"/"):
        name = name[:-1]
    return name


def format_sum(version: Version, hexdigest: str) -> str:
    return f"{version.value}+sha256:{hexdigest}"


class TarSink(Protocol):
    """Receives a parsed archive: for each entry `begin_entry`, its content (possibly in many
    pieces, none for header-only types), then `end_entry`."""

    def begin_entry(self, header: TarHeader) -> None: ...

    def entry_data(self, data: memoryview) -> None: ...

    def end_entry(self) -> None: ...


class TarSum:
    """A TarSum of one version, fed as a `TarSink`."""

    def __init__(self, version: Version = Version.V0) -> None:
        self.version = version
        self._hash: hashlib._Hash | None = None
        self._key = b""
        # Raw 32-byte digests sort like their lowercase hex strings, at half the memory.
        self._sums: list[bytes] = []
        # A 16-byte digest of each path key, not the path: paths can be up to the header
        # record limit long, and only equality matters.
        self._keys: list[bytes] = []
        self._ordered: list[bytes] | None = None

    @property
    def entries(self) -> int:
        return len(self._sums)

    def begin_entry(self, header: TarHeader) -> None:
        self._hash = hashlib.sha256(header_string(header, self.version))
        self._key = hashlib.blake2b(path_key(header.name), digest_size=16).digest()

    def entry_data(self, data: memoryview) -> None:
        assert self._hash is not None
        self._hash.update(data)

    def end_entry(self) -> None:
        assert self._hash is not None
        self._sums.append(self._hash.digest())
        self._keys.append(self._key)
        self._hash = None
        self._ordered = None

    def entry_sums(self) -> list[str]:
        """The entry sums in the order they are hashed (spec 5.2 step 5), as hex."""
        return [s.hex() for s in self._order()]

    def hexdigest(self, extra: bytes = b"") -> str:
        final = hashlib.sha256(extra)
        for digest in self._order():
            final.update(binascii.hexlify(digest))
        return final.hexdigest()

    def sum(self, extra: bytes = b"") -> str:
        """The string form, e.g. `tarsum+sha256:<hex>`; `extra` is hashed first (for the v1
        push checksum it is the image JSON exactly as sent, with no separator)."""
        return format_sum(self.version, self.hexdigest(extra))

    def _order(self) -> list[bytes]:
        if self._ordered is None:
            self._ordered = _sorted_sums(self._sums, self._keys)
        return self._ordered


def _sorted_sums(sums: list[bytes], keys: list[bytes]) -> list[bytes]:
    """Sort by sum, except that entries sharing a path keep their archive order.

    Docker (>= 1.3) sorts with a comparison that orders same-path entries by position and the
    rest by sum; that comparison is not a consistent order when duplicates interleave with
    other entries, so Go's result then depends on its sort algorithm. This is the well-defined
    reading: sort by sum, then refill the slots a duplicated path occupies with its entries in
    archive order. It agrees with Docker whenever Docker's comparison is consistent, e.g. for
    archives whose entries all share one path, or whose duplicates sort next to each other.
    """
    order = sorted(range(len(sums)), key=sums.__getitem__)
    counts = Counter(keys)
    if len(counts) == len(keys):
        return [sums[i] for i in order]
    duplicated = {key for key, count in counts.items() if count > 1}
    slots: dict[bytes, list[int]] = {}
    for slot, index in enumerate(order):
        if keys[index] in duplicated:
            slots.setdefault(keys[index], []).append(slot)
    members: dict[bytes, list[int]] = {}
    for index, key in enumerate(keys):
        if key in duplicated:
            members.setdefault(key, []).append(index)
    for key, key_slots in slots.items():
        for slot, index in zip(key_slots, members[key], strict=True):
            order[slot] = index
    return [sums[i] for i in order]


class _State(enum.Enum):
    HEADER = enum.auto()  # collecting a 512-byte header block
    DATA = enum.auto()  # streaming an entry's content to the sinks
    META = enum.auto()  # buffering an extended header's content (PAX x, GNU L/K)
    SPARSE = enum.auto()  # skipping GNU sparse extension blocks
    PAD = enum.auto()  # skipping the zero padding after a data section
    ZERO = enum.auto()  # one zero block seen: the next must be zero too
    END = enum.auto()  # end-of-archive seen: the rest is ignored


@dataclass(slots=True)
class _Pending:
    """Extended header values waiting for the entry they describe."""

    name: bytes | None = None
    linkname: bytes | None = None
    records: dict[bytes, bytes] | None = None
    bytes_used: int = 0


class TarReader:
    """Incremental tar parser: `feed` bytes as they arrive, then `close` at end of stream.

    Accepts an archive that ends without its two end-of-archive zero blocks (Docker 1.2 sent
    such layers) and ignores whatever follows those blocks. Raises `TarError` on a malformed or
    truncated archive and `TarLimitError` past a limit; after an error the reader is unusable.
    """

    def __init__(
        self,
        *sinks: TarSink,
        max_header_record: int = DEFAULT_MAX_HEADER_RECORD,
        max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        self._sinks = sinks
        self.max_header_record = max_header_record
        self.max_entries = max_entries
        self.entries = 0
        self.offset = 0  # bytes of the tar stream consumed so far
        self._state = _State.HEADER
        self._block = bytearray()
        self._remaining = 0  # of the data, metadata or padding being read
        self._pad = 0  # padding to skip once the data or metadata is read
        self._meta = bytearray()
        self._meta_type = b""
        self._meta_offset = 0
        self._pending = _Pending()
        self._sparse_header: tuple[TarHeader, int] | None = None
        self._error: TarError | None = None

    # -- feeding -----------------------------------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._error is not None:
            raise self._error
        try:
            self._feed(memoryview(data).cast("B"))
        except TarError as exc:
            # The parse position is lost mid-block: refuse everything after.
            self._error = exc
            raise

    def close(self) -> None:
        """End of stream: raise `TarError` if it stopped inside a header or an entry."""
        if self._error is not None:
            raise self._error
        self._close()

    def _feed(self, view: memoryview) -> None:
        pos, end = 0, len(view)
        while pos < end:
            state = self._state
            if state is _State.DATA:
                take = min(self._remaining, end - pos)
                chunk = view[pos : pos + take]
                for sink in self._sinks:
                    sink.entry_data(chunk)
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._end_entry()
            elif state is _State.PAD:
                take = min(self._remaining, end - pos)
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = _State.HEADER
            elif state is _State.META:
                take = min(self._remaining, end - pos)
                self._meta += view[pos : pos + take]
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self.offset += take
                    self._finish_meta()
                    continue
            elif state is _State.END:
                pos = end
                break
            else:
                # HEADER, SPARSE and ZERO all consume whole blocks; skip the copy when a
                # whole block is available in the input.
                if not self._block and end - pos >= BLOCK:
                    block = view[pos : pos + BLOCK].tobytes()
                    pos += BLOCK
                else:
                    take = min(BLOCK - len(self._block), end - pos)
                    self._block += view[pos : pos + take]
                    pos += take
                    if len(self._block) < BLOCK:
                        break
                    block = bytes(self._block)
                    self._block.clear()
                self.offset += BLOCK
                self._on_block(block)
                continue
            self.offset += take
        # `offset` for blocks is counted when complete; partial block bytes are in _block.

    def _close(self) -> None:
        state = self._state
        if state in (_State.END, _State.ZERO):
            return
        if state is _State.HEADER and not self._block:
            if self._pending.bytes_used:
                raise TarError(
                    f"tar archive ends after an extended header at offset {self._meta_offset}, "
                    "without the entry it describes"
                )
            return
        if state is _State.PAD:
            # Go's reader of the studied clients accepted a stream cut inside the padding
            # of its last entry: all content is there.
            return
        where = {
            _State.HEADER: "inside a header block",
            _State.DATA: "inside an entry's content",
            _State.META: "inside an extended header",
            _State.SPARSE: "inside a sparse header",
        }[state]
        raise TarError(f"tar archive truncated {where} (at offset {self.offset})")

    # -- blocks ------------------------------------------------------------------------------

    def _on_block(self, block: bytes) -> None:
        state = self._state
        if state is _State.SPARSE:
            self._on_sparse_block(block)
            return
        if block == _ZERO_BLOCK:
            if state is _State.ZERO:
                self._state = _State.END
                return
            if self._pending.bytes_used:
                raise TarError(
                    f"extended header at offset {self._meta_offset} is followed by the end of "
                    "the archive, not by an entry"
                )
            self._state = _State.ZERO
            return
        if state is _State.ZERO:
            raise TarError(
                f"a zero block is followed by a non-zero block at offset {self.offset - BLOCK}"
            )
        self._on_header(block)

    def _on_header(self, block: bytes) -> None:
        at = self.offset - BLOCK
        _verify_checksum(block, at)
        typeflag = block[156:157]
        size = _number(block[124:136], "size", at)
        if size < 0:
            raise TarError(f"negative size in tar header at offset {at}")
        if typeflag in (b"x", b"L", b"K"):
            self._begin_meta(typeflag, size, at)
            return
        header = self._build_header(block, typeflag, size, at)
        if self.entries >= self.max_entries:
            raise TarLimitError(f"tar archive has more than {self.max_entries} entries")
        self.entries += 1
        data_size = header.size if header.has_data else 0
        if typeflag == b"S" and block[482] not in (0, 0x30) and _is_gnu(block):
            # An old GNU sparse header whose map continues in extension blocks before data.
            self._sparse_header = (header, data_size)
            self._state = _State.SPARSE
            return
        self._start_entry(header, data_size)

    def _start_entry(self, header: TarHeader, data_size: int) -> None:
        for sink in self._sinks:
            sink.begin_entry(header)
        self._remaining = data_size
        self._pad = -data_size % BLOCK
        if data_size == 0:
            self._end_entry()
        else:
            self._state = _State.DATA

    def _end_entry(self) -> None:
        for sink in self._sinks:
            sink.end_entry()
        if self._pad:
            self._remaining, self._pad = self._pad, 0
            self._state = _State.PAD
        else:
            self._state = _State.HEADER

    def _on_sparse_block(self, block: bytes) -> None:
        self._charge(BLOCK, "GNU sparse header chain")
        if block[504] in (0, 0x30):
            assert self._sparse_header is not None
            header, data_size = self._sparse_header
            self._sparse_header = None
            self._pending = _Pending()
            self._start_entry(header, data_size)

    # -- extended headers --------------------------------------------------------------------

    def _charge(self, amount: int, what: str) -> None:
        self._pending.bytes_used += amount
        if self._pending.bytes_used > self.max_header_record:
            raise TarLimitError(
                f"{what} before the entry at offset {self.offset} exceeds the limit of "
                f"{self.max_header_record} bytes"
            )

    def _begin_meta(self, typeflag: bytes, size: int, at: int) -> None:
        label = "PAX extended header" if typeflag == b"x" else "GNU long name/link header"
        if size > self.max_header_record:
            raise TarLimitError(
                f"{label} at offset {at} is {size} bytes, over the limit of "
                f"{self.max_header_record} bytes"
            )
        self._charge(BLOCK + size, "extended header chain")
        self._meta_type = typeflag
        self._meta_offset = at
        self._meta.clear()
        self._remaining = size
        self._pad = -size % BLOCK
        if size == 0:
            self._finish_meta()
        else:
            self._state = _State.META

    def _finish_meta(self) -> None:
        data = bytes(self._meta)
        self._meta.clear()
        pending = self._pending
        if self._meta_type == b"L":
            pending.name = _c_string(data)
        elif self._meta_type == b"K":
            pending.linkname = _c_string(data)
        else:
            records = _parse_pax(data, self._meta_offset)
            if pending.records is None:
                pending.records = {}
            pending.records.update(records)
            # Later extended headers override earlier ones, whichever kind they are.
            if b"path" in records:
                pending.name = None
            if b"linkpath" in records:
                pending.linkname = None
        if self._pad:
            self._remaining, self._pad = self._pad, 0
            self._state = _State.PAD
        else:
            self._state = _State.HEADER

    def _build_header(self, block: bytes, typeflag: bytes, size: int, at: int) -> TarHeader:
        name = _c_string(block[0:100])
        linkname = _c_string(block[157:257])
        uname = gname = b""
        devmajor = devminor = 0
        magic = block[257:263]
        if magic in (b"ustar\x00", b"ustar "):
            uname = _c_string(block[265:297])
            gname = _c_string(block[297:329])
            if typeflag and typeflag[0] in _DEVICES:
                devmajor = _number(block[329:337], "devmajor", at)
                devminor = _number(block[337:345], "devminor", at)
            if magic == b"ustar\x00":
                star = block[508:512] == b"tar\x00"
                prefix = _c_string(block[345:476] if star else block[345:500])
                if prefix:
                    name = prefix + b"/" + name
        mode = _number(block[100:108], "mode", at)
        uid = _number(block[108:116], "uid", at)
        gid = _number(block[116:124], "gid", at)
        mtime = _number(block[136:148], "mtime", at)
        xattrs: tuple[tuple[bytes, bytes], ...] = ()

        pending, self._pending = self._pending, _Pending()
        records = pending.records or {}
        if b"path" in records:
            name = records[b"path"]
        if pending.name is not None:
            name = pending.name
        if b"linkpath" in records:
            linkname = records[b"linkpath"]
        if pending.linkname is not None:
            linkname = pending.linkname
        if records:
            uname = records.get(b"uname", uname)
            gname = records.get(b"gname", gname)
            uid = _pax_int(records, b"uid", uid, at)
            gid = _pax_int(records, b"gid", gid, at)
            size = _pax_int(records, b"size", size, at)
            if size < 0:
                raise TarError(f"negative PAX size for the entry at offset {at}")
            if b"mtime" in records:
                mtime = _pax_time(records[b"mtime"], at)
            xattrs = tuple(
                sorted(
                    (key[len(_XATTR_PREFIX) :], value)
                    for key, value in records.items()
                    if key.startswith(_XATTR_PREFIX)
                )
            )
        return TarHeader(
            name=name,
            mode=mode,
            uid=uid,
            gid=gid,
            size=size,
            mtime=mtime,
            typeflag=typeflag,
            linkname=linkname,
            uname=uname,
            gname=gname,
            devmajor=devmajor,
            devminor=devminor,
            xattrs=xattrs,
        )


# -- field decoding --------------------------------------------------------------------------


def _c_string(field: bytes) -> bytes:
    end = field.find(b"\x00")
    return field if end < 0 else field[:end]


def _is_gnu(block: bytes) -> bool:
    return block[257:263] == b"ustar "


def _number(field: bytes, what: str, at: int) -> int:
    """A numeric header field: octal text, or base-256 when the high bit of byte 0 is set."""
    if field and field[0] & 0x80:
        if field[0] == 0xFF:
            return int.from_bytes(field, "big", signed=True)
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    body = field[:-1]
    if body.isdigit() and field[-1] in (0, 0x20):
        # The common shape, zero-padded digits then one NUL or space, parsed fast.
        try:
            return int(body, 8)
        except ValueError:
            raise TarError(f"invalid {what} field {field!r} in tar header at offset {at}") from None
    # Go trims NULs and spaces at both ends before cutting at a NUL; writers pad either way.
    text = field.strip(b" \x00")
    end = text.find(b"\x00")
    if end >= 0:
        text = text[:end]
    if not text:
        return 0
    # int() alone would also take signs, underscores, blanks and a 0o prefix.
    if text.translate(None, b"01234567"):
        raise TarError(f"invalid {what} field {field!r} in tar header at offset {at}")
    return int(text, 8)


def _verify_checksum(block: bytes, at: int) -> None:
    given = _number(block[148:156], "checksum", at)
    unsigned = sum(block) - sum(block[148:156]) + 8 * 0x20
    if given == unsigned:
        return
    # Some historic writers summed signed chars; tar readers accept both.
    high = sum(1 for b in block[:148] + block[156:] if b >= 0x80)
    if given != unsigned - 256 * high:
        raise TarError(f"invalid tar header checksum at offset {at}")


def _parse_pax(data: bytes, at: int) -> dict[bytes, bytes]:
    """PAX records `"%d %s=%s\\n"`, the length counting the whole record."""
    records: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos, pos + 24)
        if space < 0 or not data[pos:space].isdigit():
            raise TarError(f"malformed PAX record length in the header at offset {at}")
        length = int(data[pos:space])
        record_end = pos + length
        if length <= space - pos + 1 or record_end > len(data) or data[record_end - 1] != 0x0A:
            raise TarError(f"malformed PAX record in the header at offset {at}")
        key, eq, value = data[space + 1 : record_end - 1].partition(b"=")
        if not eq or not key:
            raise TarError(f"malformed PAX record in the header at offset {at}")
        records[key] = value
        pos = record_end
    return records


def _pax_int(records: dict[bytes, bytes], key: bytes, default: int, at: int) -> int:
    value = records.get(key)
    if value is None or value == b"":
        return default
    if not _DECIMAL.match(value):
        raise TarError(f"invalid PAX {key.decode()} {value!r} for the entry at offset {at}")
    return int(value)


def _pax_time(value: bytes, at: int) -> int:
    """Whole seconds of a PAX time, rounded towards minus infinity like Go's Time.Unix."""
    match = _PAX_TIME.match(value)
    if not match:
        raise TarError(f"invalid PAX mtime {value!r} for the entry at offset {at}")
    sign, seconds, fraction = match.groups()
    whole = int(seconds)
    if sign == b"-":
        return -whole - (1 if fraction and fraction.strip(b"0") else 0)
    return whole


# -- convenience -----------------------------------------------------------------------------


def tarsum(
    archive: bytes | Iterable[bytes],
    extra: bytes = b"",
    version: Version = Version.V0,
) -> str:
    """The TarSum string of a whole uncompressed archive (bytes or an iterable of pieces)."""
    summer = TarSum(version)
    reader = TarReader(summer)
    for piece in [archive] if isinstance(archive, bytes | bytearray) else archive:
        reader.feed(piece)
    reader.close()
    return summer.sum(extra)
