#!/usr/bin/env python3
"""The garbage collection benchmark (issue 12): the time and memory `moorage gc` takes to
collect UNREFERENCED blobs among ROWS blob rows, and what it does to push latency meanwhile.

A Moorage data directory (embedded default: SQLite + filesystem) is filled straight through
SQL: ROWS blobs, each linked into one of 100 repositories; all but UNREFERENCED of them are
kept by manifests (100 layers each, tagged), the others are not referenced by anything (their
links old, so nothing waits for a grace period) and have a 1-byte stored object each. Then a
server runs on it and a client pushes small blobs one after another, first alone (the
baseline), then while `moorage gc --grace 0` runs in another process. Reported: the cycle's
wall time and peak RSS, what it freed, and push latency p50/p99/max before and during.

    python3 bench/gc.py                       # 1,000,000 rows, 100,000 unreferenced
    python3 bench/gc.py --rows 100000 --unreferenced 10000   # quick

Nothing is asserted about timings; the run fails only if the collector frees the wrong things
(every referenced blob must still be served, every unreferenced one gone).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.harness import MoorageProcess  # noqa: E402

REPOSITORIES = 100
LAYERS_PER_MANIFEST = 100
MEDIA = "application/vnd.oci.image.manifest.v1+json"


def digest_of(i: int) -> str:
    return "sha256:" + hashlib.sha256(f"gc-bench-{i}".encode()).hexdigest()


def fill(data_dir: Path, rows: int, unreferenced: int) -> None:
    """Insert the rows (the schema must exist: the server made it) and the stored objects of
    the unreferenced blobs."""
    db = sqlite3.connect(data_dir / "metadata.db")
    old = time.time() - 30 * 86400
    db.execute("PRAGMA synchronous=OFF")
    with db:
        db.executemany(
            "INSERT INTO repositories (id, name, created) VALUES (?, ?, ?)",
            [(r + 1, f"bench/r{r}", old) for r in range(REPOSITORIES)],
        )
        blobs, links = [], []
        for i in range(rows):
            digest = digest_of(i)
            key = f"blobs/sha256/{digest[7:9]}/{digest[7:]}"
            blobs.append((digest, key, 1, old, old))
            links.append((i % REPOSITORIES + 1, digest, old, old))
        db.executemany(
            "INSERT INTO blobs (digest, storage_key, size, created, touched) VALUES (?,?,?,?,?)",
            blobs,
        )
        db.executemany(
            "INSERT INTO repository_blobs (repository_id, digest, created, touched)"
            " VALUES (?,?,?,?)",
            links,
        )
        referenced = rows - unreferenced
        step = REPOSITORIES
        manifests, refs, tags = [], [], []
        for start in range(0, referenced, LAYERS_PER_MANIFEST * REPOSITORIES):
            for r in range(REPOSITORIES):
                layers = [
                    i
                    for i in range(start + r, start + LAYERS_PER_MANIFEST * REPOSITORIES, step)
                    if i < referenced
                ]
                if not layers:
                    continue
                content = json.dumps({"layers": [digest_of(i) for i in layers]}).encode()
                manifest = "sha256:" + hashlib.sha256(content).hexdigest()
                manifests.append((r + 1, manifest, MEDIA, content, old, old))
                refs += [(r + 1, manifest, digest_of(i)) for i in layers]
                tags.append((r + 1, f"t{start}", manifest, old))
        db.executemany(
            "INSERT INTO manifests (repository_id, digest, media_type, content, created, touched)"
            " VALUES (?,?,?,?,?,?)",
            manifests,
        )
        db.executemany(
            "INSERT INTO manifest_references (repository_id, digest, child) VALUES (?,?,?)", refs
        )
        db.executemany(
            "INSERT INTO tags (repository_id, name, digest, updated) VALUES (?,?,?,?)", tags
        )
    db.close()
    storage = data_dir / "storage"
    for i in range(rows - unreferenced, rows):
        digest = digest_of(i)
        path = storage / "blobs" / "sha256" / digest[7:9] / digest[7:]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


async def push_latencies(
    url: str, stop: threading.Event | asyncio.Event, seconds: float
) -> list[float]:
    """Push small blobs one after another (POST + PUT); the latency of each, in ms."""
    found: list[float] = []
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as http:
        n = 0
        while time.monotonic() < deadline and not stop.is_set():
            n += 1
            data = f"push {n} {time.time()}".encode()
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            started = time.perf_counter()
            async with http.post(f"{url}/v2/bench/pushes/blobs/uploads/") as resp:
                assert resp.status == 202, await resp.text()
                location = resp.headers["Location"]
            sep = "&" if "?" in location else "?"
            target = location if location.startswith("http") else url + location
            async with http.put(f"{target}{sep}digest={digest}", data=data) as resp:
                assert resp.status == 201, await resp.text()
            found.append((time.perf_counter() - started) * 1000)
    return found


def summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "pushes": len(ordered),
        "p50_ms": round(statistics.median(ordered), 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
        "max_ms": round(ordered[-1], 2),
    }


def run_gc(data_dir: Path) -> dict[str, Any]:
    """`moorage gc --grace 0` in its own process: wall time, peak RSS (sampled), its output."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moorage", "gc", "--grace", "0", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "MOORAGE_LOG_LEVEL": "warning"},
    )
    peak = 0
    watched = psutil.Process(proc.pid)
    while proc.poll() is None:
        with contextlib.suppress(psutil.Error):
            peak = max(peak, watched.memory_info().rss)
        time.sleep(0.05)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"moorage gc failed:\n{err}")
    return {
        "seconds": round(time.perf_counter() - started, 2),
        "peak_rss_mib": round(peak / 2**20, 1),
        "report": out.strip().splitlines()[-1],
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="moorage-gc-bench-") as tmp:
        server = MoorageProcess(
            Path(tmp) / "data",
            Path(tmp),
            env={"MOORAGE_GC_INTERVAL": "0", "MOORAGE_LOG_LEVEL": "warning"},
        )
        await server.start()  # makes the schema
        await server.stop()
        started = time.perf_counter()
        fill(server.data_dir, args.rows, args.unreferenced)
        filled = round(time.perf_counter() - started, 1)
        await server.start()
        try:
            never = asyncio.Event()
            baseline = summary(await push_latencies(server.url, never, args.baseline))
            done = threading.Event()
            pushes = asyncio.create_task(push_latencies(server.url, done, 3600))
            try:
                cycle = await asyncio.to_thread(run_gc, server.data_dir)
            finally:
                done.set()
            during = summary(await pushes)
            await server.stop()
            # Every referenced blob is still recorded; every unreferenced one is gone, its
            # object too (the benchmark's rows are the blobs of size 1).
            db = sqlite3.connect(server.data_dir / "metadata.db")
            kept = db.execute("SELECT COUNT(*) FROM blobs WHERE size = 1").fetchone()[0]
            db.close()
            stored = (server.data_dir / "storage" / "blobs").rglob("*")
            left = sum(1 for p in stored if p.is_file() and p.stat().st_size == 1)
            if kept != args.rows - args.unreferenced or left:
                raise SystemExit(f"wrong collection: {kept} referenced rows kept, {left} left")
        finally:
            server.cleanup()
    result = {
        "rows": args.rows,
        "unreferenced": args.unreferenced,
        "fill_seconds": filled,
        "gc": cycle,
        "push_before": baseline,
        "push_during_gc": during,
        "referenced_kept": kept,
    }
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--unreferenced", type=int, default=100_000)
    parser.add_argument("--baseline", type=float, default=10.0, help="seconds of pushes alone")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    results = asyncio.run(main(arguments))
    print(json.dumps(results, indent=2))
    if arguments.out:
        arguments.out.write_text(json.dumps(results, indent=2))
