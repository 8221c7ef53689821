"""The test client's own checksums against the contract's vectors (docs/contracts/v1-protocol.md
sections 5.1 and 5.2), and against the server's TarSum, so the v1 tests do not rest on the code
they test; a layer written to a file in one pass has the checksums of the same layer in
memory."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

from moorage.content.tarsum import tarsum as server_tarsum
from tests.images import (
    TarSum,
    directory,
    file,
    make_tar,
    random_file,
    symlink,
    tarsum_v0,
    write_layer,
)
from tests.v1.client import make_image, payload_checksum, sha256

# The 73-byte JSON of the contract's vectors.
J = b'{"id":"' + b"a" * 64 + b'"}'


def _two_entries() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        d = tarfile.TarInfo("./")
        d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, 1371157405
        tar.addfile(d)
        f = tarfile.TarInfo("hello.txt")
        f.mode, f.uid, f.gid, f.size, f.mtime = 0o644, 1000, 1000, 6, 1400000000
        f.uname = f.gname = "user"
        tar.addfile(f, io.BytesIO(b"hello\n"))
    return out.getvalue()


def test_payload_checksum_vectors() -> None:
    assert len(J) == 73
    assert payload_checksum(J, b"abc") == (
        "sha256:72fbd97d962d370157220cce5f374f1dcf7aec8cd5453bb242c281c813c3b12b"
    )
    assert payload_checksum(J, b"") == (
        "sha256:dc5829850d2bc0c40e36773efc83ce1b66e35c57af73609e17929156ef522c1c"
    )


def test_tarsum_v0_vectors() -> None:
    archive = _two_entries()
    assert tarsum_v0(archive, J) == (
        "tarsum+sha256:6c0d6d995d6826b386bbac6dd341c41a24a771112ff7bd187939ba5cedfb8ba5"
    )
    assert tarsum_v0(archive) == (
        "tarsum+sha256:3d5221c25fd308caadda33999686ad7f5f05a013dcd15956085fa09e445314b7"
    )
    assert tarsum_v0(b"", J) == (
        "tarsum+sha256:d561730190e99254d474d840d9013e14ceef3005414abfdb62dcbfb9f5e44823"
    )


def test_tarsum_agrees_with_the_server_on_built_layers() -> None:
    image = make_image(files={"etc/a.conf": b"a\n", "usr/bin/tool": b"\0" * 700})
    assert image.tarsum == server_tarsum(image.tar, image.json)
    cut = make_tar([directory("x"), file("x/y", b"y" * 513)], end_blocks=False)
    assert len(cut) == 512 * 4  # dir header, file header, two data blocks; no end blocks
    assert tarsum_v0(cut, J) == server_tarsum(cut, J)


def test_tarsum_fed_in_pieces_is_the_tarsum_of_the_whole() -> None:
    archive = make_tar([directory("d"), file("d/a", b"a" * 1500), symlink("d/l", "a")])
    for piece in (1, 511, 512, 700, len(archive)):
        tarsum = TarSum(J)
        for at in range(0, len(archive), piece):
            tarsum.update(archive[at : at + piece])
        assert tarsum.result() == tarsum_v0(archive, J) == server_tarsum(archive, J)


def test_a_layer_written_in_one_pass_has_the_checksums_of_the_layer(tmp_path: Path) -> None:
    entries = [directory("etc"), file("etc/a", b"a\n"), random_file("big.bin", 3 << 20, 9)]
    written = write_layer(tmp_path / "layer.gz", entries, v1_json=J)
    sent = written.path.read_bytes()
    tar = gzip.decompress(sent)
    assert tar == make_tar(entries)
    assert (written.digest, written.size) == (sha256(sent), len(sent))
    assert written.diff_id == sha256(tar)
    assert written.payload == payload_checksum(J, sent)
    assert written.tarsum == server_tarsum(tar, J)
