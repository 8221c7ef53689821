"""The machine's own limits that bound the benchmark's workloads, measured in the same run
(issue 14): a registry cannot take in a durable push faster than the data root's disk writes
back with `fdatasync`, nor faster than one core hashes SHA-256 (each upload is hashed in one
stream); and a pull served with `sendfile` is bounded by what the kernel moves over loopback.
bench.py measures them before and after the workloads and reports each Moorage throughput as a
fraction of its limit.

    python bench/limits.py [--data-root DIR] [--size 1G]   # just the limits, printed as JSON
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

from datagen import Blob

MiB = 1 << 20

# What bounds each kind of work; a metric names the kinds it needs, and its limit is the
# smallest of them.
DURABLE_WRITE = "durable_write"
SHA256 = "sha256"
SENDFILE = "sendfile"
LABELS = {
    DURABLE_WRITE: "durable write (write + fdatasync, data root)",
    SHA256: "SHA-256 on one core (hashlib, CPU time)",
    SENDFILE: "loopback sendfile (page cache -> 127.0.0.1 TCP -> recv)",
}
SHORT = {DURABLE_WRITE: "disk", SHA256: "sha256", SENDFILE: "sendfile"}


def durable_write(path: Path, nbytes: int) -> float:
    """MB/s of writing `nbytes` of fresh data to `path` in 1 MiB blocks, then `fdatasync`: the
    cost of a blob that must be on disk before its metadata says it exists. The file is kept
    (in the page cache) for `sendfile_loopback`."""
    blob = Blob(f"limits-{time.time_ns()}", nbytes)
    os.sync()  # others' dirty pages are not ours to flush
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for chunk in blob.chunks():
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
        os.fdatasync(fd)
    finally:
        os.close(fd)
    return nbytes / (time.perf_counter() - t0) / 1e6


def sha256_one_core(nbytes: int) -> float:
    """MB/s of hashlib's SHA-256 over 1 MiB updates, per CPU second of the hashing thread (a
    shared machine's other load then skews it little)."""
    block = Blob("limits-sha", MiB).chunk(0)
    h = hashlib.sha256()
    t0 = time.thread_time()
    for _ in range(max(1, nbytes // MiB)):
        h.update(block)
    h.digest()
    return max(1, nbytes // MiB) * MiB / (time.thread_time() - t0) / 1e6


def sendfile_loopback(path: Path, repeat: int = 2) -> float:
    """MB/s of sending `path` (in the page cache) `repeat` times with `os.sendfile` over a TCP
    connection on 127.0.0.1 to a reader that discards it with `recv_into`: what a pull served
    with `sendfile` could reach here, reader's cost included."""
    size = path.stat().st_size
    listener = socket.create_server(("127.0.0.1", 0))
    errors: list[BaseException] = []

    def send() -> None:
        try:
            conn, _ = listener.accept()
            with conn, open(path, "rb") as f:
                for _ in range(repeat):
                    offset = 0
                    while offset < size:
                        offset += os.sendfile(conn.fileno(), f.fileno(), offset, size - offset)
        except OSError as exc:
            errors.append(exc)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    buf = bytearray(MiB)
    got = 0
    try:
        with socket.create_connection(listener.getsockname()) as sock:
            t0 = time.perf_counter()
            while got < size * repeat:
                n = sock.recv_into(buf)
                if n == 0:
                    break
                got += n
            elapsed = time.perf_counter() - t0
    finally:
        sender.join(timeout=60)
        listener.close()
    if errors or got != size * repeat:
        raise OSError(f"sendfile over loopback: {got} of {size * repeat} bytes, {errors}")
    return got / elapsed / 1e6


def measure(directory: Path, nbytes: int) -> dict[str, float]:
    """All three limits (MB/s), the file written in `directory` (the data root) and removed."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "limits.bin"
    try:
        write = durable_write(path, nbytes)
        sha = sha256_one_core(nbytes)
        send = sendfile_loopback(path)
    finally:
        path.unlink(missing_ok=True)
    return {DURABLE_WRITE: write, SHA256: sha, SENDFILE: send}


def limit_of(kinds: tuple[str, ...], limits: dict[str, float]) -> tuple[str, float] | None:
    """The binding limit of work that needs every one of `kinds`: (its name, MB/s)."""
    known = [(k, limits[k]) for k in kinds if k in limits]
    return min(known, key=lambda kv: kv[1]) if known else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data-root", help="directory on the disk to measure (default $TMPDIR)")
    ap.add_argument("--size", type=int, default=1024, help="MiB written and hashed (1024)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.data_root) as d:
        print(json.dumps(measure(Path(d), args.size * MiB), indent=1))


if __name__ == "__main__":
    main()
