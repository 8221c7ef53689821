"""moorage.chunked: a chunked body's framing followed through raw bytes cut anywhere."""

from __future__ import annotations

import itertools
import random

import pytest

from moorage.chunked import MAX_LINE, Framing, FramingError, follow


def frame(data: bytes, sizes: list[int], trailer: bytes = b"", ext: bytes = b"") -> bytes:
    out, at = bytearray(), 0
    for size in sizes:
        piece = data[at : at + size]
        out += f"{len(piece):x}".encode() + ext + b"\r\n" + piece + b"\r\n"
        at += size
    assert at == len(data)
    return bytes(out + b"0\r\n" + trailer + b"\r\n")


def decode(raw: bytes, cuts: list[int]) -> tuple[bytes, Framing, int]:
    """Feed `raw` cut at `cuts`; the body, the framing and how many raw bytes were the body's."""
    framing, body, used = Framing(), bytearray(), 0
    bounds = [0, *cuts, len(raw)]
    for a, b in itertools.pairwise(bounds):
        used += framing.feed(raw[a:b], body.extend)
    return bytes(body), framing, used


@pytest.mark.parametrize("seed", range(20))
def test_any_cut_gives_the_body_and_the_end(seed: int) -> None:
    rng = random.Random(seed)
    data = rng.randbytes(rng.randrange(0, 5000))
    sizes: list[int] = []
    left = len(data)
    while left:
        sizes.append(min(left, rng.randrange(1, 700)))
        left -= sizes[-1]
    ext = rng.choice([b"", b";name=value", b' ;a;b="c"', b"\t"])
    trailer = rng.choice([b"", b"X-Sum: 1\r\n", b"A: 1\r\nB: 2\r\n"])
    raw = frame(data, sizes, trailer, ext)
    tail = b"GET /next HTTP/1.1\r\n\r\n"  # a pipelined request: not the body's
    stream = raw + tail
    cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randrange(0, 40))))
    body, framing, used = decode(stream, cuts)
    assert body == data
    assert framing.done and framing.decoded == len(data)
    assert used == len(raw)
    # Byte by byte too.
    body, framing, used = decode(stream, list(range(1, len(stream))))
    assert body == data and framing.done and used == len(raw)


def test_not_done_until_the_trailer_section_ends() -> None:
    framing = Framing()
    framing.feed(b"3\r\nabc\r\n0\r\nX: y\r\n")
    assert not framing.done and framing.decoded == 3
    assert framing.feed(b"\r\nrest") == 2
    assert framing.done


@pytest.mark.parametrize(
    "raw",
    [
        b"zz\r\nab\r\n0\r\n\r\n",  # not hex
        b"\r\n0\r\n\r\n",  # no size
        b"-1\r\n",  # a sign
        b"0x10\r\n",  # a prefix
        b"1" * 17 + b"\r\n",  # more than 16 digits
        b"3\nabc\r\n",  # LF without CR
        b"3\r\nabcX\r\n",  # data longer than its size
        b"3\r\nabc\rX",  # CR without LF after the data
        b"3\r\nabc\r\n0\r\nBad\rTrailer\r\n\r\n",  # a bare CR in a trailer
        b"8" * 4 + b";" + b"e" * MAX_LINE + b"\r\n",  # a size line past its bound
        b"0\r\n" + b"X: y\r\n" * 20_000,  # a trailer section past its bound
    ],
)
def test_malformed_framing_is_refused(raw: bytes) -> None:
    framing = Framing()
    with pytest.raises(FramingError):
        for at in range(0, len(raw), 5):
            framing.feed(raw[at : at + 5])
    with pytest.raises(FramingError):
        framing.feed(b"0\r\n\r\n")  # and stays refused
    assert not framing.done


def test_follow_starts_after_the_head() -> None:
    head = b"PATCH /v2/a/blobs/uploads/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n"
    found = follow(head + b"5\r\nhel")
    assert found is not None
    line, framing = found
    assert line == b"PATCH /v2/a/blobs/uploads/x HTTP/1.1"
    assert framing.decoded == 3 and not framing.done
    framing.feed(b"lo\r\n0\r\n\r\n")
    assert framing.done and framing.decoded == 5
    # The head alone (a client waiting for 100-continue): the framing starts at its end.
    found = follow(head)
    assert found is not None and found[1].decoded == 0


@pytest.mark.parametrize(
    "data",
    [
        b"PUT /v1/images/x/layer HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",  # not chunked
        b"PATCH /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n",  # the head is not whole
        b"PATCH /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # bad at once
    ],
)
def test_follow_declines(data: bytes) -> None:
    assert follow(data) is None
