"""Garbage collection with a real server running: `moorage gc --dry-run` and `moorage gc` from
another process while it serves (both on the data directory the server uses), and the
server's own cycle every `gc.interval`, run by one of its two workers. Then `moorage gc` on a
store of thousands of unreferenced blob links: its progress on standard error, and Ctrl-C."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from moorage import config
from moorage.metadata import BlobRow, MetadataStore
from moorage.progress import human_bytes
from moorage.storage import paths
from tests.harness import MakeServer, command_env
from tests.images import memory_image
from tests.process.registry import Registry, sha256

pytestmark = pytest.mark.timeout(120)


def gc_argv(data_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "moorage", "gc", "--data-dir", str(data_dir), *args]


def gc(data_dir: Path, *args: str) -> str:
    """`moorage gc ARGS`, which must succeed: its report."""
    return gc_run(data_dir, *args).stdout


def gc_run(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        gc_argv(data_dir, *args),
        capture_output=True,
        text=True,
        env=command_env(),
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done


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


async def unreferenced(data_dir: Path, count: int) -> int:
    """A store whose repository `gc/many` links `count` blobs that no manifest references
    (every one a candidate once the grace is 0; the objects themselves are not stored); the
    bytes they add up to."""
    settings = config.load(None, datadir=data_dir)
    metadata = MetadataStore(settings.metadata_url)
    await metadata.open()
    rows = []
    for n in range(count):
        hex_ = hashlib.sha256(str(n).encode()).hexdigest()
        rows.append(BlobRow(f"sha256:{hex_}", paths.blob(hex_), 1000 + n))
    try:
        await metadata.link_blobs("gc/many", rows)
    finally:
        await metadata.close()
    return sum(row.size for row in rows)


def rows(data_dir: Path) -> tuple[int, int]:
    """How many blob links and blob rows the store holds."""
    with sqlite3.connect(data_dir / "metadata.db") as db:
        links = db.execute("SELECT count(*) FROM repository_blobs").fetchone()[0]
        blobs = db.execute("SELECT count(*) FROM blobs").fetchone()[0]
    return links, blobs


async def test_a_dry_run_shows_its_stages_on_stderr(tmp_path: Path) -> None:
    """Not on a terminal: a plain line on stderr as each stage starts and ends (and every 10 s
    between), counting its candidates; stdout carries the report alone, as it always did."""
    data_dir = tmp_path / "data"
    size = human_bytes(await unreferenced(data_dir, 250))
    done = gc_run(data_dir, "--dry-run", "--grace", "0")
    lines = done.stdout.splitlines()
    assert lines[0] == f"gc/many: 0 manifests, 250 blob links ({size})", done.stdout
    assert lines[1].startswith(
        f"would free: 0 manifests, 250 blob links, 0 v1 images, 250 blobs, 250 stored objects "
        f"({size}) in "
    )
    assert len(lines) == 2, done.stdout
    stages = [line for line in done.stderr.splitlines() if line.startswith("gc: ")]
    assert stages == [
        "gc: v1 images: 0 candidates so far",
        "gc: v1 images: 0 candidates",
        "gc: links: 0 candidates so far",
        "gc: links: 250 candidates",
        "gc: blobs: 0 candidates so far",
        "gc: blobs: 250 candidates",
    ], done.stderr
    assert rows(data_dir) == (250, 250)  # a dry run

    done = gc_run(data_dir, "--grace", "0")
    assert "freed: 0 manifests, 250 blob links, 0 v1 images, 250 blobs" in done.stdout
    assert "gc: objects: 250 deleted" in done.stderr.splitlines(), done.stderr
    assert rows(data_dir) == (0, 0)


async def interrupted(data_dir: Path, *args: str) -> str:
    """`moorage gc ARGS` interrupted (SIGINT) once its links stage has begun: its stderr,
    after checking that it stopped within a moment, with status 130 and no report."""
    proc = await asyncio.create_subprocess_exec(
        *gc_argv(data_dir, *args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=command_env(),
    )
    try:
        assert proc.stderr is not None
        seen = b""
        while not seen.startswith(b"gc: links:"):
            seen = await asyncio.wait_for(proc.stderr.readline(), 60)
            assert seen, "no links stage"
        proc.send_signal(signal.SIGINT)
        signalled = time.monotonic()
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 130, (out, err)
    assert time.monotonic() - signalled < 10  # not after the thousands of candidates left
    assert b"Traceback" not in err, err
    assert out == b""  # no report of a cycle that did not finish
    return err.decode()


async def test_ctrl_c_stops_a_dry_run(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    await unreferenced(data_dir, 2000)
    err = await interrupted(data_dir, "--dry-run", "--grace", "0")
    assert "stopping the dry run, which changes nothing" in err
    assert "interrupted: a dry run changes nothing" in err
    assert rows(data_dir) == (2000, 2000)  # its transaction rolled back


async def test_ctrl_c_stops_a_cycle_between_deletions(tmp_path: Path) -> None:
    """What the interrupted cycle deleted stays deleted, the rest stays for the next one,
    which frees it all."""
    data_dir = tmp_path / "data"
    await unreferenced(data_dir, 2000)
    err = await interrupted(data_dir, "--grace", "0")
    assert "stopping between two deletions" in err
    assert "interrupted: what was deleted is deleted whole" in err
    links, blobs = rows(data_dir)
    assert 0 < links < 2000 and blobs == 2000, (links, blobs)  # stopped in the links stage
    done = gc_run(data_dir, "--grace", "0")
    assert f"freed: 0 manifests, {links} blob links, 0 v1 images, 2000 blobs" in done.stdout
    assert rows(data_dir) == (0, 0)
