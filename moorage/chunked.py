"""The chunked transfer coding of a request body (RFC 9112 section 7.1), followed byte by byte.

A `Framing` is fed the raw bytes of a body as they come, in pieces cut anywhere, and knows at
every moment where in the framing it is: in a chunk-size line, in a chunk's data (and how much
of it is left), after the data, in the trailer section, or past the end. It hands each piece of
the body's data to a sink, or only counts it.

Two users: the connection guard follows the framing of a chunked request as aiohttp receives
it (`follow`, counting only: a size line per chunk is looked at, the data is skipped by its
length), so that a worker thread can take the rest of the body from the socket at any moment
and go on from exactly there (moorage.api.direct); and that thread, which decodes the rest.

As strict as aiohttp's own parser: a chunk size is hex digits (at most 16), optionally followed
by whitespace and extensions after `;`; every line ends with CRLF; a chunk's data is followed
by CRLF. A line, or the trailer section, longer than its bound is refused too.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

MAX_LINE = 8192  # a chunk-size line with its extensions, or one trailer field line
MAX_TRAILERS = 64 * 1024  # the whole trailer section
_HEX = frozenset(b"0123456789abcdefABCDEF")
_MAX_HEX_DIGITS = 16
_FIRST_LOOK = 64


class FramingError(ValueError):
    """The body's chunked framing is malformed."""


class _State(Enum):
    SIZE = "size"  # in a chunk-size line
    DATA = "data"  # in a chunk's data
    DATA_END = "data-end"  # the CRLF after a chunk's data
    TRAILER = "trailer"  # in the trailer section (after the last chunk)
    DONE = "done"  # past the body's end
    FAILED = "failed"  # malformed: nothing more is read


class Framing:
    """Where a chunked body is in its framing; `feed` it the raw bytes in order."""

    def __init__(self) -> None:
        self._state = _State.SIZE
        self._line = bytearray()  # the line being read (size or trailer), without its LF
        self._remaining = 0  # DATA: data bytes left in the chunk; DATA_END: bytes of CRLF left
        self._trailers = 0  # bytes of the trailer section so far
        self.decoded = 0  # the body's bytes so far (the chunks' data)

    @property
    def done(self) -> bool:
        """The last chunk and the trailer section have been read: the body is complete."""
        return self._state is _State.DONE

    def feed(
        self,
        data: bytes | bytearray | memoryview,
        sink: Callable[[memoryview], None] | None = None,
    ) -> int:
        """Read `data`, the next raw bytes; each piece of the body's data goes to `sink` (a
        view of `data`, valid during the call), or is only counted. Returns how many bytes of
        `data` were the body's: all of them, unless the body ended inside `data` (the rest
        is not this body's). Raises `FramingError`, after which nothing more may be fed."""
        view = memoryview(data).cast("B")
        end = len(view)
        pos = 0
        while pos < end:
            state = self._state
            if state is _State.DATA:
                take = min(self._remaining, end - pos)
                if sink is not None:
                    sink(view[pos : pos + take])
                pos += take
                self.decoded += take
                self._remaining -= take
                if not self._remaining:
                    self._state, self._remaining = _State.DATA_END, 2
            elif state is _State.DATA_END:
                expected = b"\r\n"[2 - self._remaining]
                if view[pos] != expected:
                    self._fail("no CRLF after a chunk's data")
                pos += 1
                self._remaining -= 1
                if not self._remaining:
                    self._state = _State.SIZE
            elif state is _State.DONE:
                return pos
            elif state is _State.FAILED:
                raise FramingError("malformed chunked request body")
            else:
                pos = self._read_line(view, pos, end)
        return pos

    def _read_line(self, view: memoryview, pos: int, end: int) -> int:
        """Take bytes of the current line up to its LF; act on the line once it is whole."""
        # A size line is a few bytes ("8000\r\n"): look at a few first, not a whole line's
        # bound (this runs once per chunk, and the chunks of a large body are its data).
        chunk = bytes(view[pos : min(end, pos + _FIRST_LOOK)])
        lf = chunk.find(b"\n")
        if lf < 0 and end - pos > _FIRST_LOOK:
            chunk = bytes(view[pos : min(end, pos + MAX_LINE + 2)])
            lf = chunk.find(b"\n")
        piece = chunk if lf < 0 else chunk[:lf]
        if len(self._line) + len(piece) > MAX_LINE + 1:  # + 1: the CR before the LF
            self._fail("a chunk-size or trailer line is too long")
        self._line += piece
        if self._state is _State.TRAILER:
            self._trailers += len(piece) + (lf >= 0)
            if self._trailers > MAX_TRAILERS:
                self._fail("the trailer section is too long")
        if lf < 0:
            return pos + len(piece)
        line, self._line = bytes(self._line), bytearray()
        if not line.endswith(b"\r"):
            self._fail("a line of the framing ends without CR")
        line = line[:-1]
        if self._state is _State.SIZE:
            size = _chunk_size(line)
            if size is None:
                self._fail(f"bad chunk size {line[:40]!r}")
            elif size:
                self._state, self._remaining = _State.DATA, size
            else:
                self._state = _State.TRAILER
        elif not line:  # the empty line that ends the trailer section
            self._state = _State.DONE
        elif b"\r" in line:
            self._fail("a trailer line holds a bare CR")
        return pos + lf + 1

    def _fail(self, reason: str) -> None:
        self._state = _State.FAILED
        raise FramingError(f"malformed chunked request body: {reason}")


def _chunk_size(line: bytes) -> int | None:
    digits = line.split(b";", 1)[0].rstrip(b" \t")
    if not digits or len(digits) > _MAX_HEX_DIGITS or not _HEX.issuperset(digits):
        return None
    return int(digits, 16)


def follow(data: bytes) -> tuple[bytes, Framing] | None:
    """For the first bytes of a request (`data`, one read from the socket): when they hold its
    whole head and it declares a chunked body, the request line and a `Framing` fed with the
    body's bytes that came with the head; None otherwise (the framing is then not followed).
    The caller checks the request line against the request aiohttp parsed before it relies
    on the framing."""
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    head = data[:head_end].lower()
    if b"transfer-encoding" not in head or b"chunked" not in head:
        return None
    line_end = data.find(b"\r\n")
    framing = Framing()
    try:
        framing.feed(memoryview(data)[head_end + 4 :])
    except FramingError:
        return None
    return data[:line_end], framing
