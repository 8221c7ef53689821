"""LayerAnalyzer: every checksum of a v1 layer upload in one streaming pass
(docs/contracts/v1-protocol.md sections 4.4.3, 5.1-5.3), and the refusals: bombs, corrupt gzip,
non-tar bodies."""

from __future__ import annotations

import asyncio
import bz2
import dataclasses
import gzip
import hashlib
import io
import lzma
import os
import random
import tarfile
import zlib

import pytest

from moorage.content.layers import (
    FORMAT_NOT_SUPPORTED,
    LayerAnalyzer,
    LayerInvalid,
    LayerSums,
    LayerTooLarge,
    payload_checksum,
)
from moorage.content.tarsum import Version, tarsum
from tests.content.test_tarsum import DIR_16877, END, J_511136, J, raw_header, two_entries

EMPTY_SHA256 = hashlib.sha256().hexdigest()


def analyze(body: bytes, piece: int | None = None, **options: object) -> LayerSums:
    analyzer = LayerAnalyzer(J, **options)  # type: ignore[arg-type]
    piece = piece or max(len(body), 1)
    for start in range(0, len(body), piece):
        analyzer.update(body[start : start + piece])
    return analyzer.finish()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def sample_tar(size: int) -> bytes:
    """A tar with a few entries, one of `size` bytes of half-random (so half-compressible)
    content, to make the gzip stream span many chunks."""
    rng = random.Random(size)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, content in [
            ("etc/", None),
            ("etc/hostname", b"moorage\n"),
            ("big.bin", rng.randbytes(size // 2) + bytes(size - size // 2)),
            ("l" * 180, b"long name"),
        ]:
            member = tarfile.TarInfo(name)
            if content is None:
                member.type = tarfile.DIRTYPE
                member.mode = 0o755
            else:
                member.size = len(content)
            archive.addfile(member, io.BytesIO(content) if content is not None else None)
    return out.getvalue()


# -- section 5.1 vectors ---------------------------------------------------------------------


def test_payload_checksum_vectors() -> None:
    assert len(J) == 73
    assert payload_checksum(J, b"abc") == (
        "sha256:72fbd97d962d370157220cce5f374f1dcf7aec8cd5453bb242c281c813c3b12b"
    )
    assert payload_checksum(J, b"") == (
        "sha256:dc5829850d2bc0c40e36773efc83ce1b66e35c57af73609e17929156ef522c1c"
    )


def test_empty_body_is_an_empty_archive() -> None:
    sums = analyze(b"")
    assert sums.payload_checksum == (
        "sha256:dc5829850d2bc0c40e36773efc83ce1b66e35c57af73609e17929156ef522c1c"
    )
    assert sums.blob_digest == sums.diff_id == "sha256:" + EMPTY_SHA256
    assert sums.tarsum == (
        "tarsum+sha256:d561730190e99254d474d840d9013e14ceef3005414abfdb62dcbfb9f5e44823"
    )
    assert (sums.size, sums.uncompressed_size, sums.entries, sums.compressed) == (0, 0, 0, False)


# -- every sum of a gzip layer ---------------------------------------------------------------


def test_gzip_layer_sums() -> None:
    tar = two_entries()
    body = gz(tar)
    sums = analyze(body)
    assert sums.payload_checksum == payload_checksum(J, body)
    assert sums.blob_digest == sha(body)
    assert sums.diff_id == sha(tar)
    assert sums.tarsum == (
        "tarsum+sha256:6c0d6d995d6826b386bbac6dd341c41a24a771112ff7bd187939ba5cedfb8ba5"
    )
    assert (sums.size, sums.uncompressed_size) == (len(body), len(tar))
    assert sums.compressed and sums.entries == 2
    assert sums.tarsum_v1 is None and sums.tarsum_dev is None


def test_v1_and_dev_tarsums_on_request() -> None:
    tar = two_entries()
    sums = analyze(gz(tar), extra_tarsums=True)
    assert sums.tarsum_v1 == tarsum(tar, version=Version.V1)
    assert sums.tarsum_dev == tarsum(tar, version=Version.DEV)
    assert sums.tarsum_dev is not None and sums.tarsum_dev.startswith("tarsum.dev+sha256:")


def test_plain_tar_layer() -> None:
    tar = two_entries()
    sums = analyze(tar)
    assert not sums.compressed
    assert sums.blob_digest == sums.diff_id == sha(tar)
    assert sums.size == sums.uncompressed_size == len(tar)
    assert sums.tarsum == tarsum(tar, J)


def test_historical_base_image_layer() -> None:
    analyzer = LayerAnalyzer(J_511136)
    analyzer.update(gz(DIR_16877 + END))
    assert analyzer.finish().tarsum == (
        "tarsum+sha256:ac672ee85da9ab7f9667ae3c32841d3e42f33cc52c273c23341dabba1c8b0c8b"
    )


def test_diff_id_covers_the_whole_decompressed_stream() -> None:
    # tarfile pads to a 10240-byte record; Docker's diff_id hashes the padding too.
    tar = sample_tar(3000)
    assert len(tar) % 10240 == 0
    sums = analyze(gz(tar))
    assert sums.diff_id == sha(tar)
    assert sums.uncompressed_size == len(tar)


def test_layer_without_end_blocks_accepted() -> None:
    tar = two_entries()[: 3 * 512]
    sums = analyze(gz(tar))
    assert sums.diff_id == sha(tar)
    assert sums.tarsum == (
        "tarsum+sha256:6c0d6d995d6826b386bbac6dd341c41a24a771112ff7bd187939ba5cedfb8ba5"
    )


def test_concatenated_gzip_members() -> None:
    tar = sample_tar(5000)
    body = gz(tar[:7000]) + gz(tar[7000:])
    sums = analyze(body, piece=1000)
    assert sums.diff_id == sha(tar)
    assert sums.tarsum == tarsum(tar, J)


def test_without_tarsum_the_rest_is_the_same() -> None:
    # The upload path leaves TarSum v0 out; every other sum, and the tar's checks, stay.
    tar = sample_tar(50_000)
    for body in (gz(tar), tar):
        full, lean = analyze(body, piece=4096), analyze(body, piece=4096, tarsum=False)
        assert lean.tarsum is None and full.tarsum == tarsum(tar, J)
        assert dataclasses.replace(lean, tarsum=full.tarsum) == full
        assert lean.entries == full.entries == 4
    for cut in (gz(tar)[:-40], tar[: len(tar) // 2]):
        with pytest.raises(LayerInvalid):
            analyze(cut, tarsum=False)


# -- streaming -------------------------------------------------------------------------------


@pytest.mark.parametrize("piece", [1, 7, 1 << 20])
def test_streaming_equivalence(piece: int) -> None:
    tar = sample_tar(40_000 if piece < 1000 else 6_000_000)
    body = gz(tar)
    whole = analyze(body, extra_tarsums=True)
    assert analyze(body, piece=piece, extra_tarsums=True) == whole
    assert whole.diff_id == sha(tar)
    assert whole.tarsum == tarsum(tar, J)
    if piece == 1 << 20:
        assert len(body) > 2 * piece  # many chunks
        assert analyze(body, piece=7, extra_tarsums=True) == whole


def test_small_decompression_steps() -> None:
    body = gz(sample_tar(200_000))
    assert analyze(body, step=1) == analyze(body)


def test_usable_from_a_thread() -> None:
    body = gz(two_entries())

    async def run() -> LayerSums:
        analyzer = LayerAnalyzer(J)
        for start in range(0, len(body), 50):
            await asyncio.to_thread(analyzer.update, body[start : start + 50])
        return await asyncio.to_thread(analyzer.finish)

    assert asyncio.run(run()) == analyze(body)


# -- bombs -----------------------------------------------------------------------------------


def test_gzip_bomb_refused() -> None:
    body = gz(bytes(10 << 20))
    analyzer = LayerAnalyzer(J, max_uncompressed=1 << 20)
    with pytest.raises(LayerTooLarge, match="limit of 1048576 bytes") as caught:
        analyzer.update(body)
    assert caught.value.message == "Layer too large when decompressed"
    assert isinstance(caught.value, LayerInvalid)
    # The analyzer stays refused.
    with pytest.raises(LayerTooLarge):
        analyzer.finish()


def test_gzip_bomb_refused_by_ratio() -> None:
    body = gz(bytes(20 << 20))
    assert len(body) < 100_000
    with pytest.raises(LayerTooLarge, match="times its size"):
        analyze(body, max_ratio=50, ratio_floor=1 << 20)


def test_ratio_limit_spares_a_compressible_layer_under_the_floor() -> None:
    zeros = analyze(gz(bytes(2 << 20)), max_ratio=50, ratio_floor=4 << 20)
    assert (zeros.entries, zeros.uncompressed_size) == (0, 2 << 20)  # zero blocks: empty tar
    tar = two_entries() + bytes(2 << 20)
    assert analyze(gz(tar), max_ratio=50, ratio_floor=4 << 20).uncompressed_size == len(tar)


def test_pax_header_bomb_refused() -> None:
    bomb = raw_header(b"././@PaxHeader", typeflag=b"x", size=1 << 40)
    body = gz(bomb + b"7 a=bc\n" * 100_000)
    with pytest.raises(LayerTooLarge, match="PAX"):
        analyze(body)


def test_many_entries_refused() -> None:
    tiny = raw_header(b"f")
    with pytest.raises(LayerTooLarge, match="entries"):
        analyze(gz(tiny * 101), max_entries=100)


# -- corrupt and unsupported bodies ----------------------------------------------------------


def test_corrupt_gzip_refused() -> None:
    body = bytearray(gz(sample_tar(20_000)))
    body[len(body) // 2] ^= 0xFF
    body[len(body) // 2 + 1] ^= 0x55
    with pytest.raises(LayerInvalid) as caught:
        analyze(bytes(body))
    assert caught.value.message == FORMAT_NOT_SUPPORTED
    assert not isinstance(caught.value, LayerTooLarge)


def test_gzip_crc_mismatch_refused() -> None:
    body = bytearray(gz(two_entries()))
    body[-8] ^= 1  # CRC32 of the trailer
    with pytest.raises(LayerInvalid, match="gzip"):
        analyze(bytes(body))


def test_truncated_gzip_refused() -> None:
    body = gz(two_entries())
    with pytest.raises(LayerInvalid, match="truncated"):
        analyze(body[:-4])
    with pytest.raises(LayerInvalid, match="truncated"):
        analyze(body[:2])


def test_trailing_garbage_after_gzip_refused() -> None:
    with pytest.raises(LayerInvalid, match="trailing"):
        analyze(gz(two_entries()) + b"garbage!")


def test_gzip_of_something_else_refused() -> None:
    with pytest.raises(LayerInvalid, match="checksum"):
        analyze(gz(os.urandom(5000)))


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"hello world", "truncated"),
        (b"hello world" * 100, "checksum"),
        (bz2.compress(two_entries()), "bzip2"),
        (lzma.compress(two_entries()), "xz"),
        (b"\x28\xb5\x2f\xfd" + bytes(600), "zstd"),
    ],
    ids=["hello-world", "text", "bzip2", "xz", "zstd"],
)
def test_non_tar_bodies_refused(body: bytes, detail: str) -> None:
    for piece in (None, 1):
        with pytest.raises(LayerInvalid, match=detail) as caught:
            analyze(body, piece=piece)
        assert caught.value.message == FORMAT_NOT_SUPPORTED
        assert str(caught.value).startswith("Layer format not supported: ")


def test_zlib_stream_without_gzip_wrapper_is_not_gzip() -> None:
    # A raw zlib stream starts 78 9c: no gzip magic, so it is read as a tar and refused.
    with pytest.raises(LayerInvalid):
        analyze(zlib.compress(two_entries()))


@pytest.mark.parametrize("compress", [True, False])
async def test_the_three_parts_on_three_threads_give_the_sums_of_update(compress: bool) -> None:
    """`hash_payload`, `hash_blob` and `read_content` fed each piece at the same time on three
    threads (as the v1 layer PUT does) give exactly what `update` gives."""
    tar = sample_tar(3 << 20)
    body = gz(tar) if compress else tar
    analyzer = LayerAnalyzer(J, extra_tarsums=True)
    piece = 256 * 1024 + 7  # ragged pieces: gzip members and tar blocks cut anywhere
    for start in range(0, len(body), piece):
        chunk = body[start : start + piece]
        await asyncio.gather(
            asyncio.to_thread(analyzer.hash_payload, chunk),
            asyncio.to_thread(analyzer.hash_blob, chunk),
            asyncio.to_thread(analyzer.read_content, chunk),
        )
    split = analyzer.finish()
    assert split == analyze(body, piece, extra_tarsums=True)
    assert split.blob_digest == sha(body) and split.diff_id == sha(tar)
    assert split.payload_checksum == payload_checksum(J, body)
    assert split.tarsum == tarsum(tar, J, Version.V0)


def test_a_refusal_in_read_content_stops_the_other_parts() -> None:
    analyzer = LayerAnalyzer(J)
    with pytest.raises(LayerInvalid):
        analyzer.read_content(b"BZh91AY&SY" + bytes(100))
    with pytest.raises(LayerInvalid):
        analyzer.hash_blob(b"more")
    with pytest.raises(LayerInvalid):
        analyzer.finish()
