"""A SHA-256 hasher whose running state can be exported and restored in another process.

PATCHes of one upload may land on different nodes, and a node must not re-read bytes it did
not receive, so the hash state travels with the upload session. hashlib (OpenSSL 3 EVP
contexts) cannot export its state; OpenSSL's low-level `SHA256_Init`/`SHA256_Update`/
`SHA256_Final` (deprecated in 3.0, still exported by libcrypto.so.3) work on a plain
`SHA256_CTX` struct and run the same SHA-NI/AVX2 block code as EVP. They are called here
through ctypes, which releases the GIL for the call, so hashing a block in a thread runs in
parallel with the event loop. See docs/design/sha256-state.md.

When libcrypto or its low-level SHA-256 is missing, or the struct does not look like the one
this module knows (checked once, at first use), `available()` is False and constructing a
hasher raises `Unavailable`: callers fall back to re-hashing the stored bytes (what they did
before), not to a slow pure-Python SHA-256.

Exported form (version 1), independent of OpenSSL's struct layout and of byte order:

    version (1 byte, 0x01) | h[0..7] (8 x uint32 BE) | size in bytes (uint64 BE)
    | the unhashed tail of the last block (size % 64 bytes) | CRC-32 of all before (uint32 BE)

Only the size and the tail come from the input; `restore` rebuilds `Nl`/`Nh`, `num` and
`md_len` from them, so an inconsistent struct cannot be restored. This module must not do I/O.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import struct
import threading
import zlib
from functools import cache
from typing import Any, Self

VERSION = 1
BLOCK = 64
_HEAD = struct.Struct(">B8IQ")  # version, h[8], size
_CRC = struct.Struct(">I")
_MIN = _HEAD.size + _CRC.size
MAX_SIZE = (1 << 61) - 1  # SHA-256 counts bits in 64 bits
_IV = (
    0x6A09E667,
    0xBB67AE85,
    0x3C6EF372,
    0xA54FF53A,
    0x510E527F,
    0x9B05688C,
    0x1F83D9AB,
    0x5BE0CD19,
)


class Unavailable(RuntimeError):
    """libcrypto's low-level SHA-256 cannot be used on this machine."""


class _Ctx(ctypes.Structure):
    """OpenSSL's SHA256_CTX (include/openssl/sha.h): SHA_LONG is a 32-bit unsigned int."""

    _fields_ = [
        ("h", ctypes.c_uint32 * 8),
        ("Nl", ctypes.c_uint32),
        ("Nh", ctypes.c_uint32),
        ("data", ctypes.c_uint32 * 16),
        ("num", ctypes.c_uint32),
        ("md_len", ctypes.c_uint32),
    ]


_SIZE = ctypes.sizeof(_Ctx)


class _Lib:
    def __init__(self, cdll: ctypes.CDLL) -> None:
        self.init = cdll.SHA256_Init
        self.update = cdll.SHA256_Update
        self.final = cdll.SHA256_Final
        self.init.argtypes = [ctypes.c_void_p]
        self.update.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        self.final.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        for fn in (self.init, self.update, self.final):
            fn.restype = ctypes.c_int


def _candidates() -> list[str]:
    """libcrypto by name, then the one Python's own _hashlib is linked with."""
    found = [name] if (name := ctypes.util.find_library("crypto")) else []
    import _hashlib  # noqa: F401  (maps the libcrypto Python uses)

    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split(maxsplit=5)[-1].strip()
                if "/libcrypto" in path and path not in found:
                    found.append(path)
    except OSError:
        pass
    return found


def _self_test(lib: _Lib) -> None:
    """Check that the struct is the one _Ctx describes and that restore + final agree with
    hashlib; raise AssertionError otherwise."""
    import hashlib

    # OpenSSL must write nothing beyond sizeof(_Ctx): a canary after it stays intact.
    size = _SIZE
    canary = b"\xa5" * 64
    buf = ctypes.create_string_buffer(b"\x00" * size + canary, size + len(canary))
    assert lib.init(buf) == 1
    ctx = _Ctx.from_buffer(buf)
    assert tuple(ctx.h) == _IV and (ctx.Nl, ctx.Nh, ctx.num, ctx.md_len) == (0, 0, 0, 32)
    assert lib.update(buf, b"x" * 65, 65) == 1
    assert (ctx.Nl, ctx.Nh, ctx.num) == (65 * 8, 0, 1)
    assert bytes(ctx.data)[:1] == b"x"
    # The bit count carries from Nl into Nh.
    ctx.Nl, ctx.num = 0xFFFFFFF8, 0
    assert lib.update(buf, b"y", 1) == 1
    assert (ctx.Nl, ctx.Nh, ctx.num) == (0, 1, 1)
    md = ctypes.create_string_buffer(32)
    assert lib.final(md, buf) == 1
    assert buf.raw[size:] == canary
    del ctx
    # Known answers through export and restore at block edges.
    for n in (0, 1, 55, 56, 63, 64, 65, 200):
        data = bytes(range(256))[:n]
        h = ResumableSha256._new(lib)
        h.update(data[: n // 2])
        h = ResumableSha256._from_state(lib, h.export())
        h.update(data[n // 2 :])
        assert h.digest() == hashlib.sha256(data).digest()


@cache
def _lib() -> _Lib | None:
    for path in _candidates():
        try:
            lib = _Lib(ctypes.CDLL(path))
            _self_test(lib)
        except (OSError, AttributeError, AssertionError):
            continue
        return lib
    return None


def available() -> bool:
    """Whether ResumableSha256 works here; if not, re-hash stored bytes instead."""
    return _lib() is not None


def _need() -> _Lib:
    lib = _lib()
    if lib is None:
        raise Unavailable("libcrypto's SHA256_Init/Update/Final are not usable")
    return lib


class ResumableSha256:
    """hashlib.sha256 with `export()` and `restore()`. Safe to share between threads (one
    update at a time, like hashlib); the GIL is released while a block is hashed."""

    name = "sha256"
    digest_size = 32
    block_size = BLOCK

    def __init__(self, data: bytes | bytearray | memoryview = b"") -> None:
        self._setup(_need())
        self.update(data)

    @classmethod
    def _new(cls, lib: _Lib) -> Self:
        self = cls.__new__(cls)
        self._setup(lib)
        return self

    def _setup(self, lib: _Lib) -> None:
        self._lib, self._ctx, self._lock = lib, _Ctx(), threading.Lock()
        self._ptr = ctypes.addressof(self._ctx)  # self._ctx keeps it valid
        if lib.init(self._ptr) != 1:
            raise Unavailable("SHA256_Init failed")

    @property
    def size(self) -> int:
        """Bytes hashed so far."""
        bits: int = (self._ctx.Nh << 32) | self._ctx.Nl
        return bits >> 3

    def update(self, data: bytes | bytearray | memoryview) -> None:
        buf: Any = data
        if type(data) is bytes:
            n = len(data)
        else:
            view = memoryview(data)
            n = view.nbytes
            if view.readonly or not view.c_contiguous:
                buf = view.tobytes()  # ctypes cannot point into a read-only buffer
            elif n:
                buf = (ctypes.c_char * n).from_buffer(view)
        if n:
            with self._lock:
                if self._lib.update(self._ptr, buf, n) != 1:
                    raise RuntimeError("SHA256_Update failed")

    def digest(self) -> bytes:
        with self._lock:
            ctx = _Ctx.from_buffer_copy(self._ctx)  # SHA256_Final consumes its context
        md = ctypes.create_string_buffer(32)
        if self._lib.final(md, ctypes.byref(ctx)) != 1:
            raise RuntimeError("SHA256_Final failed")
        return md.raw

    def hexdigest(self) -> str:
        return self.digest().hex()

    def export(self) -> bytes:
        """The running state in the versioned form described in the module docstring."""
        with self._lock:
            ctx = _Ctx.from_buffer_copy(self._ctx)
        bits = (ctx.Nh << 32) | ctx.Nl
        size = bits >> 3
        if bits & 7 or ctx.num != size % BLOCK or ctx.md_len != 32:
            raise RuntimeError("SHA256_CTX is inconsistent")
        body = _HEAD.pack(VERSION, *ctx.h, size) + bytes(ctx.data)[: ctx.num]
        return body + _CRC.pack(zlib.crc32(body))

    @classmethod
    def restore(cls, blob: bytes) -> Self:
        """A hasher that continues from an exported state. ValueError if `blob` is not
        exactly a version-1 state; Unavailable if this machine cannot hash this way."""
        return cls._from_state(_need(), blob)

    @classmethod
    def _from_state(cls, lib: _Lib, blob: bytes) -> Self:
        if isinstance(blob, bytearray | memoryview):
            blob = bytes(blob)  # some database drivers hand binary columns back this way
        if not isinstance(blob, bytes) or len(blob) < _MIN:
            raise ValueError("sha256 state: too short")
        if blob[0] != VERSION:
            raise ValueError(f"sha256 state: unknown version {blob[0]}")
        body, (crc,) = blob[: -_CRC.size], _CRC.unpack(blob[-_CRC.size :])
        if zlib.crc32(body) != crc:
            raise ValueError("sha256 state: checksum mismatch")
        _, *h, size = _HEAD.unpack_from(body)
        tail = body[_HEAD.size :]
        if size > MAX_SIZE:
            raise ValueError("sha256 state: size out of range")
        if len(tail) != size % BLOCK:
            raise ValueError("sha256 state: length does not match its size")
        self = cls._new(lib)
        ctx = self._ctx
        ctx.h[:] = h
        ctx.Nl, ctx.Nh = (size << 3) & 0xFFFFFFFF, (size << 3) >> 32
        ctypes.memmove(ctypes.addressof(ctx) + _Ctx.data.offset, tail, len(tail))
        ctx.num, ctx.md_len = len(tail), 32
        return self
