"""Garbage collection with a real server running: `moorage gc --dry-run` and `moorage gc` from
another process while it serves (both on the data directory the server uses), and the
server's own cycle every `gc.interval`, run by one of its two workers."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.harness import MakeServer
from tests.images import memory_image
from tests.process.registry import Registry, sha256

pytestmark = pytest.mark.timeout(120)


def gc(data_dir: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "moorage", "gc", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def stored_files(data_dir: Path, data: bytes) -> int:
    return sum(
        1
        for path in data_dir.rglob("*")
        if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data
    )


async def test_moorage_gc_while_the_server_runs(
    make_server: MakeServer, http: aiohttp.ClientSession
) -> None:
    server = make_server(env={"MOORAGE_GC_INTERVAL": "0"})
    await server.start()
    reg = Registry(http, server.url)
    gone = memory_image(1, (3000, 5000), "gone")
    kept = memory_image(2, (4000,), "kept")
    await reg.push_image("gc/app", "old", gone)
    await reg.push_image("gc/app", "new", kept)
    async with http.delete(f"{server.url}/v2/gc/app/manifests/{gone.digest}") as resp:
        assert resp.status == 202

    # Inside the default grace period (2h): nothing to free.
    assert "would free: 0 manifests, 0 blob links, 0 v1 images, 0 blobs" in gc(
        server.data_dir, "--dry-run"
    )
    dry = gc(server.data_dir, "--dry-run", "--grace", "0")
    size = f"{sum(len(b) for b in gone.blobs) / 1024:.1f} KiB"  # config and two layers
    assert f"gc/app: 0 manifests, 3 blob links ({size})" in dry, dry
    assert "would free: 0 manifests, 3 blob links, 0 v1 images, 3 blobs, 3 stored objects" in dry
    for blob in gone.blobs:
        assert stored_files(server.data_dir, blob) == 1

    done = gc(server.data_dir, "--grace", "0")
    assert "freed: 0 manifests, 3 blob links, 0 v1 images, 3 blobs, 3 stored objects" in done
    for blob in gone.blobs:
        assert stored_files(server.data_dir, blob) == 0
        assert await reg.head_blob("gc/app", sha256(blob)) == 404
    await reg.assert_manifest("gc/app", "new", kept.manifest)
    for blob in kept.blobs:
        await reg.assert_blob("gc/app", sha256(blob), blob)


async def test_the_server_collects_on_its_own(
    make_server: MakeServer, http: aiohttp.ClientSession
) -> None:
    server = make_server(workers=2, env={"MOORAGE_GC_INTERVAL": "1", "MOORAGE_GC_GRACE": "3s"})
    await server.start()
    reg = Registry(http, server.url)
    image = memory_image(3, (6000,), "collected")
    await reg.push_image("gc/auto", "v1", image)
    async with http.delete(f"{server.url}/v2/gc/auto/manifests/{image.digest}") as resp:
        assert resp.status == 202
    deadline = time.monotonic() + 30
    while any(stored_files(server.data_dir, blob) for blob in image.blobs):
        assert time.monotonic() < deadline, server.log_tail()
        await asyncio.sleep(0.2)
    assert "garbage collection cycle" in server.log_path.read_text()
