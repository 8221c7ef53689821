"""ResumableSha256: same digests as hashlib, a state that survives export/restore (also into
another process), strict rejection of malformed states, and use from several threads."""

from __future__ import annotations

import ctypes.util
import hashlib
import itertools
import random
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator

import pytest

from moorage.content import sha256state
from moorage.content.digest import Hasher
from moorage.content.sha256state import ResumableSha256

EDGES = [0, 1, 2, 55, 56, 57, 63, 64, 65, 119, 120, 127, 128, 129, 1000, 4096]
MiB = 1 << 20


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@pytest.fixture
def rng() -> random.Random:
    return random.Random(20240610)


def test_library_is_available_here() -> None:
    # The project's machines have OpenSSL 3: the resumable path must be the one in use.
    assert sha256state.available()
    assert isinstance(Hasher()._hashes["sha256"], ResumableSha256)


@pytest.mark.parametrize("length", EDGES)
def test_digest_matches_hashlib_at_block_edges(length: int, rng: random.Random) -> None:
    data = rng.randbytes(length)
    assert ResumableSha256(data).digest() == hashlib.sha256(data).digest()
    for _ in range(20):
        cuts = [rng.randint(0, length) for _ in range(rng.randint(0, 5))]
        h = ResumableSha256()
        for piece in chunks(data, cuts):
            h.update(piece)
        assert h.hexdigest() == hashlib.sha256(data).hexdigest()
        assert h.size == length


def test_digest_matches_hashlib_for_random_inputs_and_buffer_types(rng: random.Random) -> None:
    for _ in range(200):
        data = rng.randbytes(rng.randint(0, 3000))
        h = ResumableSha256()
        for i, piece in enumerate(chunks(data, [rng.randint(0, len(data)) for _ in range(4)])):
            # bytes, a writable bytearray, a read-only memoryview slice
            h.update([piece, bytearray(piece), memoryview(b"." + piece)[1:]][i % 3])
        assert h.digest() == hashlib.sha256(data).digest()


def test_multi_mib_input_with_random_splits(rng: random.Random) -> None:
    data = rng.randbytes(5 * MiB + 77)
    cuts = [rng.randint(0, len(data)) for _ in range(12)] + [MiB, 2 * MiB + 1]
    h = ResumableSha256()
    for piece in chunks(data, cuts):
        h.update(piece)
    assert h.digest() == hashlib.sha256(data).digest()
    assert h.size == len(data)


def test_digest_does_not_end_the_hash() -> None:
    h = ResumableSha256(b"abc")
    assert h.digest() == h.digest() == hashlib.sha256(b"abc").digest()
    h.update(b"def")
    assert h.digest() == hashlib.sha256(b"abcdef").digest()
    assert h.size == 6


def test_export_restore_at_every_split_point(rng: random.Random) -> None:
    data = rng.randbytes(300)
    for i in range(len(data) + 1):
        h = ResumableSha256(data[:i])
        state = h.export()
        assert len(state) == 45 + i % 64
        restored = ResumableSha256.restore(state)  # a fresh object, as on another node
        assert restored.size == i
        assert restored.export() == state  # the form is canonical
        restored.update(data[i:])
        h.update(data[i:])  # exporting left the original usable
        assert restored.digest() == h.digest() == hashlib.sha256(data).digest()


def test_state_hops_through_many_restores(rng: random.Random) -> None:
    """Like an upload whose every PATCH lands on another node."""
    data = rng.randbytes(3 * MiB + 5)
    state = ResumableSha256().export()
    for piece in chunks(data, [rng.randint(0, len(data)) for _ in range(30)]):
        h = ResumableSha256.restore(state)
        h.update(piece)
        state = h.export()
    assert ResumableSha256.restore(state).digest() == hashlib.sha256(data).digest()


CHILD = """
import sys
from moorage.content.sha256state import ResumableSha256
state, rest = sys.stdin.buffer.read().split(b"|", 1)
h = ResumableSha256.restore(bytes.fromhex(state.decode()))
h.update(rest)
sys.stdout.write(h.hexdigest() + " " + h.export().hex())
"""


def test_state_is_portable_to_another_process(rng: random.Random) -> None:
    data = rng.randbytes(MiB + 100)
    first, second, third = data[:70001], data[70001:900003], data[900003:]
    state = ResumableSha256(first).export()
    child = subprocess.run(
        [sys.executable, "-c", CHILD],
        input=state.hex().encode() + b"|" + second,
        capture_output=True,
        timeout=60,
        check=True,
    )
    digest, exported = child.stdout.decode().split()
    assert digest == hashlib.sha256(first + second).hexdigest()
    back = ResumableSha256.restore(bytes.fromhex(exported))  # and back from the child
    back.update(third)
    assert back.digest() == hashlib.sha256(data).digest()


def _reseal(body: bytes) -> bytes:
    return body + struct.pack(">I", zlib.crc32(body))


def test_restore_rejects_malformed_states() -> None:
    good = ResumableSha256(b"z" * 70).export()  # a 6-byte tail
    body = good[:-4]
    bad: list[object] = [
        b"",
        b"\x01",
        good[:-1],
        good + b"\x00",
        good[:44],
        _reseal(b"\x02" + body[1:]),  # unknown version
        _reseal(b"\x00" + body[1:]),
        _reseal(body[:-1]),  # tail shorter than size % 64
        _reseal(body + b"z"),  # tail longer than size % 64
        _reseal(body[:33] + struct.pack(">Q", 64) + body[41:]),  # size says no tail
        _reseal(body[:33] + struct.pack(">Q", (1 << 61) + 6) + body[41:]),  # beyond 2**61
        _reseal(body[:33] + struct.pack(">Q", (1 << 64) - 58) + body[41:]),
        "not bytes",
        None,
        good.hex().encode(),
    ]
    for blob in bad:
        with pytest.raises(ValueError):
            ResumableSha256.restore(blob)  # type: ignore[arg-type]
    # Every single-byte change anywhere is caught (the version byte, h, size, tail, CRC).
    for i in range(len(good)):
        for flip in (0x01, 0x80, 0xFF):
            tampered = bytearray(good)
            tampered[i] ^= flip
            with pytest.raises(ValueError):
                ResumableSha256.restore(bytes(tampered))
    # Every truncation too.
    for n in range(len(good)):
        with pytest.raises(ValueError):
            ResumableSha256.restore(good[:n])
    assert ResumableSha256.restore(bytearray(good)).size == 70  # buffers from a DB driver
    assert ResumableSha256.restore(memoryview(good)).size == 70


def test_threads_hash_their_own_streams_correctly(rng: random.Random) -> None:
    streams = [rng.randbytes(4 * MiB + i) for i in range(6)]
    results: dict[int, bytes] = {}

    def work(i: int) -> None:
        h = ResumableSha256()
        for piece in chunks(streams[i], [MiB, 2 * MiB, 3 * MiB]):
            h.update(piece)
            h = ResumableSha256.restore(h.export())
        results[i] = h.digest()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(streams))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert results == {i: hashlib.sha256(s).digest() for i, s in enumerate(streams)}


def test_threads_sharing_one_hasher_do_not_corrupt_it(rng: random.Random) -> None:
    # Every thread adds the same block, so any order gives the same digest; overlapping
    # updates of one SHA256_CTX would not.
    block = rng.randbytes(MiB + 3)
    h = ResumableSha256()

    def work() -> None:
        for _ in range(8):
            h.update(block)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert h.size == 32 * len(block)
    assert h.digest() == hashlib.sha256(block * 32).digest()


def test_hasher_exports_and_restores_its_sha256() -> None:
    hasher = Hasher(("sha256", "sha512"))
    hasher.update(b"a" * 100)
    state = hasher.export_sha256()
    assert state is not None
    restored = Hasher.restore_sha256(state)
    assert restored.size == 100
    assert not restored.has("sha512")  # sha512 is not in the state: callers re-hash for it
    restored.update(b"b" * 50)
    assert restored.digest() == "sha256:" + hashlib.sha256(b"a" * 100 + b"b" * 50).hexdigest()
    with pytest.raises(ValueError):
        Hasher.restore_sha256(state[:-1])


@pytest.fixture
def fresh_lookup() -> Iterator[None]:
    sha256state._lib.cache_clear()
    yield
    sha256state._lib.cache_clear()


def test_libcrypto_found_through_python_when_not_by_name(
    monkeypatch: pytest.MonkeyPatch, fresh_lookup: None
) -> None:
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    assert any("/libcrypto" in path for path in sha256state._candidates())
    assert sha256state.available()
    assert ResumableSha256(b"abc").digest() == hashlib.sha256(b"abc").digest()


def test_without_low_level_sha256_it_is_unavailable_and_hasher_falls_back(
    monkeypatch: pytest.MonkeyPatch, fresh_lookup: None
) -> None:
    libc = ctypes.util.find_library("c")  # a real library without SHA256_Init
    assert libc
    monkeypatch.setattr(sha256state, "_candidates", lambda: [libc])
    assert not sha256state.available()
    with pytest.raises(sha256state.Unavailable):
        ResumableSha256()
    with pytest.raises(sha256state.Unavailable):
        ResumableSha256.restore(b"\x01" * 45)
    hasher = Hasher()
    hasher.update(b"abc")
    assert hasher.digest() == "sha256:" + hashlib.sha256(b"abc").hexdigest()
    assert hasher.export_sha256() is None
