"""TarSum and the incremental tar reader: the v1 contract's vectors
(docs/contracts/v1-protocol.md section 5.2), Docker's own test vectors, raw header fields,
extended headers, and the parsing limits."""

from __future__ import annotations

import hashlib
import io
import tarfile

import pytest

from moorage.content.tarsum import (
    TarError,
    TarHeader,
    TarLimitError,
    TarReader,
    TarSum,
    Version,
    header_string,
    tarsum,
)

# The 73-byte image JSON of the contract's vectors (section 5.1).
J = b'{"id":"' + b"a" * 64 + b'"}'

# The JSON of the historical empty base image 511136ea3c5a..., byte-exact as in moby's
# pkg/tarsum/testdata/511136ea3c5a64f264b78b5433614aec563103b4d4702f3ba7d4d2698e22c158/json
# (573 bytes, no trailing newline).
J_511136 = (
    b'{"id":"511136ea3c5a64f264b78b5433614aec563103b4d4702f3ba7d4d2698e22c158",'
    b'"comment":"Imported from -","created":"2013-06-13T14:03:50.821769-07:00",'
    b'"container_config":{"Hostname":"","Domainname":"","User":"","Memory":0,"MemorySwap":0,'
    b'"CpuShares":0,"AttachStdin":false,"AttachStdout":false,"AttachStderr":false,'
    b'"PortSpecs":null,"ExposedPorts":null,"Tty":false,"OpenStdin":false,"StdinOnce":false,'
    b'"Env":null,"Cmd":null,"Image":"","Volumes":null,"WorkingDir":"","Entrypoint":null,'
    b'"NetworkDisabled":false,"OnBuild":null},"docker_version":"0.4.0",'
    b'"architecture":"x86_64","Size":0}'
)


def raw_header(
    name: bytes,
    *,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    size: int = 0,
    mtime: int = 0,
    typeflag: bytes = b"0",
    linkname: bytes = b"",
    uname: bytes = b"",
    gname: bytes = b"",
    magic: bytes = b"ustar\x0000",
    prefix: bytes = b"",
    signed_checksum: bool = False,
) -> bytes:
    """A ustar header block written by hand, so that every field is exactly as given (tarfile
    would mask the mode and rewrite the typeflag)."""

    def octal(value: int, width: int) -> bytes:
        return b"%0*o\x00" % (width - 1, value)

    block = bytearray(512)
    block[0:100] = name.ljust(100, b"\x00")
    block[100:108] = octal(mode, 8)
    block[108:116] = octal(uid, 8)
    block[116:124] = octal(gid, 8)
    block[124:136] = octal(size, 12)
    block[136:148] = octal(mtime, 12)
    block[148:156] = b" " * 8
    block[156:157] = typeflag
    block[157:257] = linkname.ljust(100, b"\x00")
    block[257:265] = magic
    block[265:297] = uname.ljust(32, b"\x00")
    block[297:329] = gname.ljust(32, b"\x00")
    block[329:337] = octal(0, 8)
    block[337:345] = octal(0, 8)
    block[345:500] = prefix.ljust(155, b"\x00")
    # Historic writers summed signed chars; readers must accept both forms.
    checksum = sum(b - 256 if b >= 128 and signed_checksum else b for b in block)
    block[148:156] = b"%06o\x00 " % checksum
    return bytes(block)


def entry(header: bytes, content: bytes = b"") -> bytes:
    return header + content + bytes(-len(content) % 512)


END = bytes(1024)


def build(*members: tuple[tarfile.TarInfo, bytes | None], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as archive:
        for info, content in members:
            archive.addfile(info, io.BytesIO(content) if content is not None else None)
    return out.getvalue()


def info(name: str, **fields: object) -> tarfile.TarInfo:
    result = tarfile.TarInfo(name)
    for key, value in fields.items():
        setattr(result, key, value)
    return result


def e1() -> tuple[tarfile.TarInfo, None]:
    return info("./", type=tarfile.DIRTYPE, mode=0o755, mtime=1371157405), None


def e2() -> tuple[tarfile.TarInfo, bytes]:
    hello = info(
        "hello.txt", mode=0o644, uid=1000, gid=1000, size=6, mtime=1400000000, uname="user"
    )
    hello.gname = "user"
    return hello, b"hello\n"


def two_entries() -> bytes:
    return build(e1(), e2())


class Recorder:
    """A sink that keeps what the reader reports."""

    def __init__(self) -> None:
        self.headers: list[TarHeader] = []
        self.contents: list[bytes] = []
        self.open = False

    def begin_entry(self, header: TarHeader) -> None:
        assert not self.open
        self.open = True
        self.headers.append(header)
        self.contents.append(b"")

    def entry_data(self, data: memoryview) -> None:
        assert self.open
        self.contents[-1] += bytes(data)

    def end_entry(self) -> None:
        assert self.open
        self.open = False


def read(archive: bytes, **limits: int) -> Recorder:
    recorder = Recorder()
    reader = TarReader(recorder, **limits)
    reader.feed(archive)
    reader.close()
    assert not recorder.open
    return recorder


def summed(archive: bytes, version: Version = Version.V0) -> TarSum:
    summer = TarSum(version)
    reader = TarReader(summer)
    reader.feed(archive)
    reader.close()
    return summer


# -- section 5.2 vectors ---------------------------------------------------------------------

DIR_16877 = entry(
    raw_header(b"./", mode=0o40755, mtime=1371157405, typeflag=b"5", magic=b"ustar\x0000")
)


def test_directory_entry_string_and_sums() -> None:
    recorder = read(DIR_16877 + END)
    (header,) = recorder.headers
    assert header.mode == 16877
    assert header_string(header) == (
        b"name./mode16877uid0gid0size0mtime1371157405typeflag5linknameunamegnamedevmajor0devminor0"
    )
    summer = summed(DIR_16877 + END)
    assert summer.entry_sums() == [
        "27843b24001e0e6656ae113560d496fe109c152e0cd139db778b556f0a45cda3"
    ]
    assert summer.sum() == (
        "tarsum+sha256:2a7812e636235448785062100bb9103096aa6655a8f6bb9ac9b13fe8290f66df"
    )


def test_historical_base_image_vector() -> None:
    assert len(J_511136) == 573
    assert tarsum(DIR_16877 + END, J_511136) == (
        "tarsum+sha256:ac672ee85da9ab7f9667ae3c32841d3e42f33cc52c273c23341dabba1c8b0c8b"
    )


def test_two_entry_archive_entry_sums() -> None:
    archive = two_entries()
    headers = read(archive).headers
    assert [h.mode for h in headers] == [493, 420]  # tarfile stores permission bits only
    v0 = summed(archive, Version.V0).entry_sums()
    v1 = summed(archive, Version.V1).entry_sums()
    assert set(v0) == {
        "a641b700d0bd52f4ee52327ee50b3a3992d5f354c098376f5264b03a6ec9336e",
        "1f00b5a787dabe3962c5faf3365f1311b03fe11aeb48706e4903e511acb50a03",
    }
    assert set(v1) == {
        "ed168b7f2fafaef679dc2a38b945ee26a22d6809bf2887d8c18d5a1c1574c24f",
        "1951c9305edb9dfdf5ced9081f0a35fd6c2af0d3737b2bf7a70a1072102e1a6b",
    }
    assert v0 == sorted(v0) and v1 == sorted(v1)


def test_two_entry_archive_totals() -> None:
    archive = two_entries()
    assert tarsum(archive, J) == (
        "tarsum+sha256:6c0d6d995d6826b386bbac6dd341c41a24a771112ff7bd187939ba5cedfb8ba5"
    )
    assert tarsum(archive) == (
        "tarsum+sha256:3d5221c25fd308caadda33999686ad7f5f05a013dcd15956085fa09e445314b7"
    )
    assert tarsum(archive, J, Version.V1) == (
        "tarsum.v1+sha256:e55c8b31a07edb4863db4f8041bb71491a70194d93e4ba04453d71b397147c0b"
    )
    # tarsum.dev has the rules of v1 in the versions studied: same hex, other label.
    assert tarsum(archive, J, Version.DEV) == (
        "tarsum.dev+sha256:e55c8b31a07edb4863db4f8041bb71491a70194d93e4ba04453d71b397147c0b"
    )


@pytest.mark.parametrize("archive", [build(), END, b""], ids=["tarfile", "zero-blocks", "no-bytes"])
def test_empty_archive(archive: bytes) -> None:
    assert tarsum(archive, J) == (
        "tarsum+sha256:d561730190e99254d474d840d9013e14ceef3005414abfdb62dcbfb9f5e44823"
    )
    assert tarsum(archive) == "tarsum+sha256:" + hashlib.sha256().hexdigest()


# -- Docker's own vectors (moby pkg/tarsum TestIteration, tarsum.dev ignores mtime) -----------


def _dev_single(
    name: str, content: bytes, xattrs: dict[str, str] | None = None, **fields: object
) -> str:
    member = info(name, size=len(content), mode=0, **fields)
    member.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in (xattrs or {}).items()}
    return tarsum(build((member, content)), version=Version.DEV)


def test_docker_iteration_vectors() -> None:
    assert _dev_single("file.txt", b"") == (
        "tarsum.dev+sha256:6ffd43a1573a9913325b4918e124ee982a99c0f3cba90fc032a65f5e20bdd465"
    )
    user = {"uid": 1000, "gid": 1000, "uname": "slartibartfast", "gname": "users"}
    assert _dev_single("another.txt", b"test", **user) == (
        "tarsum.dev+sha256:b38166c059e11fb77bef30bf16fba7584446e80fcc156ff46d47e36c5305d8ef"
    )
    assert _dev_single(
        "xattrs.txt", b"test", xattrs={"user.key1": "value1", "user.key2": "value2"}, **user
    ) == ("tarsum.dev+sha256:4cc2e71ac5d31833ab2be9b4f7842a14ce595ec96a37af4ed08f87bc374228cd")
    assert _dev_single(
        "xattrs.txt", b"test", xattrs={"user.KEY1": "value1", "user.key2": "value2"}, **user
    ) == ("tarsum.dev+sha256:65f4284fa32c0d4112dd93c3637697805866415b570587e4fd266af241503760")


# -- raw fields ------------------------------------------------------------------------------


def test_raw_typeflag_nul_and_type_bits_are_kept() -> None:
    old = entry(raw_header(b"old.txt", mode=0o100644, size=2, typeflag=b"\x00"), b"hi")
    recorder = read(old + END)
    (header,) = recorder.headers
    assert header.typeflag == b"\x00"
    assert header.mode == 0o100644
    assert recorder.contents == [b"hi"]
    assert b"typeflag\x00linkname" in header_string(header)


def test_directory_keeps_its_trailing_slash() -> None:
    archive = build((info("dir/", type=tarfile.DIRTYPE, mode=0o755), None))
    assert read(archive).headers[0].name == b"dir/"


def test_header_only_types_have_no_content() -> None:
    link = raw_header(b"link", typeflag=b"2", linkname=b"target", size=0)
    after = entry(raw_header(b"after", size=3), b"abc")
    recorder = read(link + after + END)
    assert [h.name for h in recorder.headers] == [b"link", b"after"]
    assert recorder.headers[0].linkname == b"target"
    assert recorder.contents == [b"", b"abc"]


def test_devices_numbers_read_for_devices_only() -> None:
    dev = info("null", type=tarfile.CHRTYPE, devmajor=1, devminor=3)
    reg = info("file", size=0)
    headers = read(build((dev, None), (reg, None))).headers
    assert (headers[0].devmajor, headers[0].devminor) == (1, 3)
    assert (headers[1].devmajor, headers[1].devminor) == (0, 0)


def test_ustar_prefix_is_joined() -> None:
    name = "d" * 90 + "/" + "f" * 90
    archive = build((info(name, size=1), b"x"), fmt=tarfile.USTAR_FORMAT)
    assert archive[345:436] == b"d" * 90 + b"\x00"  # really split into prefix and name
    assert read(archive).headers[0].name == name.encode()


def test_gnu_long_name_and_link() -> None:
    long_name = "n" * 300
    long_link = "l" * 200
    members = (
        (info(long_name, size=5), b"hello"),
        (info("sym", type=tarfile.SYMTYPE, linkname=long_link), None),
    )
    archive = build(*members, fmt=tarfile.GNU_FORMAT)
    recorder = read(archive)
    assert [h.name for h in recorder.headers] == [long_name.encode(), b"sym"]
    assert recorder.headers[1].linkname == long_link.encode()
    assert recorder.contents[0] == b"hello"


def test_pax_records_are_applied() -> None:
    member = info("p" * 200, size=4, uid=5, mtime=7, uname="u" * 40)
    member.pax_headers = {"mtime": "1400000000.75", "SCHILY.xattr.user.a": "1"}
    recorder = read(build((member, b"data")))
    (header,) = recorder.headers
    assert header.name == b"p" * 200
    assert header.uname == b"u" * 40
    assert header.mtime == 1400000000
    assert header.xattrs == ((b"user.a", b"1"),)
    assert recorder.contents == [b"data"]


def test_base256_numbers() -> None:
    member = info("big", size=0, uid=0o10000000 + 5, gid=2**40)
    header = read(build((member, None), fmt=tarfile.GNU_FORMAT)).headers[0]
    assert (header.uid, header.gid) == (0o10000000 + 5, 2**40)


def test_signed_checksum_accepted() -> None:
    name = "é".encode()  # bytes >= 0x80 make the signed and unsigned sums differ
    block = raw_header(name, signed_checksum=True)
    assert read(block + END).headers[0].name == name


def test_global_header_is_an_entry_of_its_own() -> None:
    # Go's reader (the Docker clients') reports a `g` header as an entry and does not apply
    # its records to later entries.
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", pax_headers={"comment": "x"}) as archive:
        archive.addfile(info("f", size=1), io.BytesIO(b"z"))
    recorder = read(out.getvalue())
    assert [h.typeflag for h in recorder.headers] == [b"g", b"0"]
    assert recorder.contents[0] == b"13 comment=x\n"


def with_checksum(block: bytearray) -> bytes:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\x00 " % sum(block)
    return bytes(block)


def test_gnu_sparse_extension_blocks_are_skipped() -> None:
    sparse = bytearray(raw_header(b"sparse", typeflag=b"S", size=3, magic=b"ustar  \x00"))
    sparse[482] = 1  # the sparse map continues in an extension block
    extension = bytearray(512)  # its own "continues" byte (504) is 0: the last one
    archive = with_checksum(sparse) + bytes(extension) + b"abc" + bytes(509)
    recorder = read(archive + entry(raw_header(b"next")) + END)
    assert [h.name for h in recorder.headers] == [b"sparse", b"next"]
    assert recorder.contents[0] == b"abc"


def test_reader_refuses_everything_after_an_error() -> None:
    reader = TarReader(Recorder())
    with pytest.raises(TarError):
        reader.feed(b"x" * 512)
    with pytest.raises(TarError):
        reader.feed(entry(raw_header(b"fine")))
    with pytest.raises(TarError):
        reader.close()


# -- duplicates ------------------------------------------------------------------------------


def test_duplicate_paths_keep_archive_order() -> None:
    first = entry(raw_header(b"./file", size=1, mtime=1), b"a")
    second = entry(raw_header(b"file", size=1, mtime=2), b"b")
    other = entry(raw_header(b"other", size=1), b"c")
    one = summed(first + second + other + END)
    two = summed(second + first + other + END)
    sum_first = summed(first + END).entry_sums()[0]
    sum_second = summed(second + END).entry_sums()[0]
    assert one.entry_sums().index(sum_first) < one.entry_sums().index(sum_second)
    assert two.entry_sums().index(sum_second) < two.entry_sums().index(sum_first)
    assert one.sum() != two.sum()


# -- streaming -------------------------------------------------------------------------------


@pytest.mark.parametrize("piece", [1, 7, 511, 513, 1 << 20])
def test_feeding_in_pieces_gives_the_same_result(piece: int) -> None:
    members = [e1(), e2()]
    content = bytes(range(256)) * 273 + b"tail"
    members.append((info("x" * 150, size=len(content)), content))
    members[-1][0].pax_headers = {"SCHILY.xattr.user.k": "v"}
    archive = build(*members)
    whole = read(archive)
    recorder = Recorder()
    summer = TarSum(Version.V1)
    reader = TarReader(recorder, summer)
    for start in range(0, len(archive), piece):
        reader.feed(archive[start : start + piece])
    reader.close()
    assert recorder.headers == whole.headers
    assert recorder.contents == whole.contents
    assert summer.sum(J) == tarsum(archive, J, Version.V1)


# -- malformed and truncated archives --------------------------------------------------------


def test_missing_end_blocks_accepted() -> None:
    archive = two_entries()
    without_end = archive[: 512 + 512 + 512]  # E1 header, E2 header, E2 content
    assert tarsum(without_end) == tarsum(archive)


def test_data_after_the_end_is_ignored() -> None:
    archive = two_entries()
    assert tarsum(archive + b"garbage after the end") == tarsum(archive)


@pytest.mark.parametrize(
    "archive",
    [
        b"hello world",
        b"x" * 512,
        DIR_16877[:300],
        entry(raw_header(b"f", size=10), b"0123456789")[:515],
        bytes(512) + DIR_16877,
    ],
    ids=["short-junk", "block-junk", "cut-header", "cut-content", "zero-then-header"],
)
def test_malformed_archives_refused(archive: bytes) -> None:
    with pytest.raises(TarError):
        tarsum(archive)


def test_bad_checksum_refused() -> None:
    block = bytearray(raw_header(b"f"))
    block[0] ^= 1
    with pytest.raises(TarError, match="checksum"):
        tarsum(bytes(block))


def test_extended_header_without_entry_refused() -> None:
    member = info("p" * 200, size=0)
    archive = build((member, None))
    pax_only = archive[:1024]  # the x header and its records, then nothing
    with pytest.raises(TarError, match="extended header"):
        tarsum(pax_only)
    with pytest.raises(TarError, match="extended header"):
        tarsum(pax_only + END)


# -- limits ----------------------------------------------------------------------------------


def test_pax_header_bomb_refused_before_buffering() -> None:
    bomb = raw_header(b"././@PaxHeader", typeflag=b"x", size=1 << 30)
    reader = TarReader(Recorder(), max_header_record=1 << 20)
    with pytest.raises(TarLimitError, match="PAX"):
        reader.feed(bomb)


def test_gnu_long_name_bomb_refused() -> None:
    bomb = raw_header(b"././@LongLink", typeflag=b"L", size=(1 << 20) + 1)
    with pytest.raises(TarLimitError):
        TarReader(Recorder()).feed(bomb)


def test_extended_header_chain_bomb_refused() -> None:
    record = b"%d path=a\n" % (len(b"00 path=a\n"))
    one = entry(raw_header(b"pax", typeflag=b"x", size=len(record)), record)
    reader = TarReader(Recorder(), max_header_record=64 * 1024)
    with pytest.raises(TarLimitError, match="chain"):
        reader.feed(one * 200)


def test_entry_count_limit() -> None:
    tiny = entry(raw_header(b"f"))
    reader = TarReader(TarSum(), max_entries=1000)
    reader.feed(tiny * 1000)
    with pytest.raises(TarLimitError, match="1000 entries"):
        reader.feed(tiny)
