#!/usr/bin/env python3
"""hashlib.sha256 vs moorage's ResumableSha256 (libcrypto's low-level SHA256_* via ctypes).

Measures, pinned to one core: MB/s for 1 MiB updates over 1 GiB (and smaller updates, where
the ctypes call overhead shows), the same with an export + restore after every MiB (an upload
whose every PATCH lands on another node), the cost of one export and one restore, and a rough
pure-Python SHA-256 for scale. Then, unpinned, two threads hashing at once, to show the GIL is
released. Rates use CPU time of the hashing thread (steady on a shared machine) and wall time.
Rounds alternate A B A B; the best round is reported. Nothing is asserted: digests are checked.

    python bench/sha256state.py            # 1 GiB, 3 rounds (a minute or two)
    python bench/sha256state.py --quick    # 64 MiB, 1 round
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moorage.content import sha256state
from moorage.content.sha256state import ResumableSha256

MiB = 1 << 20
_K = (
    "428a2f98 71374491 b5c0fbcf e9b5dba5 3956c25b 59f111f1 923f82a4 ab1c5ed5 "
    "d807aa98 12835b01 243185be 550c7dc3 72be5d74 80deb1fe 9bdc06a7 c19bf174 "
    "e49b69c1 efbe4786 0fc19dc6 240ca1cc 2de92c6f 4a7484aa 5cb0a9dc 76f988da "
    "983e5152 a831c66d b00327c8 bf597fc7 c6e00bf3 d5a79147 06ca6351 14292967 "
    "27b70a85 2e1b2138 4d2c6dfc 53380d13 650a7354 766a0abb 81c2c92e 92722c85 "
    "a2bfe8a1 a81a664b c24b8b70 c76c51a3 d192e819 d6990624 f40e3585 106aa070 "
    "19a4c116 1e376c08 2748774c 34b0bcb5 391c0cb3 4ed8aa4a 5b9cca4f 682e6ff3 "
    "748f82ee 78a5636f 84c87814 8cc70208 90befffa a4506ceb bef9a3f7 c67178f2"
)


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(cpu seconds of this thread, wall seconds)."""
    cpu, wall = time.thread_time(), time.perf_counter()
    fn()
    return time.thread_time() - cpu, time.perf_counter() - wall


def run_hash(make: Callable[[], object], block: bytes, total: int, hop: bool = False) -> bytes:
    h: object = make()
    for _ in range(total // len(block)):
        h.update(block)  # type: ignore[attr-defined]
        if hop:
            h = ResumableSha256.restore(h.export())  # type: ignore[attr-defined]
    return h.digest()  # type: ignore[attr-defined,no-any-return]


def pure_python_sha256(data: bytes) -> bytes:
    """FIPS 180-4, straightforwardly: what a no-libcrypto fallback would cost."""
    k = [int(x, 16) for x in _K.split()]
    h = list(sha256state._IV)
    m = 0xFFFFFFFF
    msg = data + b"\x80" + b"\x00" * ((55 - len(data)) % 64) + struct.pack(">Q", len(data) * 8)
    for off in range(0, len(msg), 64):
        w = list(struct.unpack_from(">16I", msg, off))
        for i in range(16, 64):
            x, y = w[i - 15], w[i - 2]
            s0 = ((x >> 7 | x << 25) ^ (x >> 18 | x << 14) ^ (x >> 3)) & m
            s1 = ((y >> 17 | y << 15) ^ (y >> 19 | y << 13) ^ (y >> 10)) & m
            w.append((w[i - 16] + s0 + w[i - 7] + s1) & m)
        a, b, c, d, e, f, g, hh = h
        for i in range(64):
            s1 = ((e >> 6 | e << 26) ^ (e >> 11 | e << 21) ^ (e >> 25 | e << 7)) & m
            t1 = (hh + s1 + ((e & f) ^ (~e & g)) + k[i] + w[i]) & m
            s0 = ((a >> 2 | a << 30) ^ (a >> 13 | a << 19) ^ (a >> 22 | a << 10)) & m
            t2 = (s0 + ((a & b) ^ (a & c) ^ (b & c))) & m
            a, b, c, d, e, f, g, hh = (t1 + t2) & m, a, b, c, (d + t1) & m, e, f, g
        h = [(x + y) & m for x, y in zip(h, (a, b, c, d, e, f, g, hh), strict=True)]
    return struct.pack(">8I", *h)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int)
    args = parser.parse_args()
    total = 64 * MiB if args.quick else 1024 * MiB
    rounds = args.rounds or (1 if args.quick else 3)
    if not sha256state.available():
        print("ResumableSha256 is not available on this machine (no libcrypto SHA256_*)")
        return 1
    flags = Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n")[0].split()
    print(f"python {platform.python_version()}, {ssl.OPENSSL_VERSION}, cpu: ", end="")
    print(", ".join(f for f in ("sha_ni", "avx2") if f in flags) or "no sha_ni/avx2")
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[-1]})
    print(f"pinned to cpu {cpus[-1]}; {total // MiB} MiB per run, best of {rounds} rounds\n")

    block = os.urandom(MiB)
    want = hashlib.sha256(block * (total // MiB)).digest()
    makers: dict[str, tuple[Callable[[], object], bool]] = {
        "hashlib.sha256": (hashlib.sha256, False),
        "ResumableSha256": (ResumableSha256, False),
        "ResumableSha256 + export/restore each MiB": (ResumableSha256, True),
    }
    print(f"{'1 MiB updates':44} {'MB/s cpu':>10} {'MB/s wall':>10}")
    best: dict[str, tuple[float, float]] = {}
    for _ in range(rounds):
        for name, (make, hop) in makers.items():
            out: list[bytes] = []
            cpu, wall = timed(lambda m=make, h=hop, o=out: o.append(run_hash(m, block, total, h)))
            if out[0] != want:
                print(f"WRONG DIGEST from {name}")
                return 1
            prev = best.get(name, (1e9, 1e9))
            best[name] = (min(prev[0], cpu), min(prev[1], wall))
    for name, (cpu, wall) in best.items():
        print(f"{name:44} {total / cpu / 1e6:10.0f} {total / wall / 1e6:10.0f}")

    print(f"\n{'smaller updates (best of 3)':44} {'hashlib':>10} {'Resumable':>10}")
    for size in (64 * 1024, 4096, 64):
        piece = block[:size]
        n = (64 * MiB if size > 64 else 4 * MiB) // size
        rates = []
        for make in (hashlib.sha256, ResumableSha256):
            cpu = min(timed(lambda m=make, p=piece, n=n: run_hash(m, p, n * len(p)))[0]
                      for _ in range(3))  # fmt: skip
            rates.append(n * size / cpu / 1e6)
        print(f"{f'{size} B updates (MB/s cpu)':44} {rates[0]:10.0f} {rates[1]:10.0f}")

    h = ResumableSha256(block[:1000])
    state = h.export()
    n = 100_000
    cpu_e, _ = timed(lambda: [h.export() for _ in range(n)])
    cpu_r, _ = timed(lambda: [ResumableSha256.restore(state) for _ in range(n)])
    cpu_d, _ = timed(lambda: [h.digest() for _ in range(n)])
    print(f"\nexport: {cpu_e / n * 1e6:.2f} us, restore: {cpu_r / n * 1e6:.2f} us, ", end="")
    print(f"digest: {cpu_d / n * 1e6:.2f} us; state is {len(state)} bytes (45 to 108)")

    sample = block[: 256 * 1024]
    cpu, _ = timed(lambda: pure_python_sha256(sample))
    assert pure_python_sha256(sample) == hashlib.sha256(sample).digest()
    print(f"pure-Python SHA-256: {len(sample) / cpu / 1e6:.2f} MB/s cpu")

    os.sched_setaffinity(0, set(cpus))
    if len(cpus) > 1:
        # With the GIL held during hashing, two threads could not be on a CPU at once, so
        # their CPU seconds together could not exceed the wall seconds.
        per = total // 2
        print(f"\ntwo threads, {per // MiB} MiB each, unpinned on {len(cpus)} cpus:")
        for name, make in (
            ("hashlib.sha256", hashlib.sha256),
            ("ResumableSha256", ResumableSha256),
        ):
            results: list[tuple[bytes, float]] = []

            def work(
                m: Callable[[], object] = make, r: list[tuple[bytes, float]] = results
            ) -> None:
                cpu = time.thread_time()
                digest = run_hash(m, block, per)
                r.append((digest, time.thread_time() - cpu))

            threads = [threading.Thread(target=work) for _ in range(2)]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - start
            ok = [d for d, _ in results] == [hashlib.sha256(block * (per // MiB)).digest()] * 2
            cpu = sum(c for _, c in results)
            print(f"{name:44} {total / wall / 1e6:6.0f} MB/s wall together, ", end="")
            print(f"cpu/wall {cpu / wall:.2f} (digests {'ok' if ok else 'WRONG'})")
        print("(cpu/wall above 1 means both threads hashed at once: the GIL was released)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
