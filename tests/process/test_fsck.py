"""`moorage fsck` from another process, beside a running server, on the embedded default
(SQLite + filesystem) and on PostgreSQL + S3: a consistent store, each kind of damage, orphans
old and new, a live upload's object, and `--delete` while images are being pushed.

The damage is done through the server's own storage driver and metadata (opened here from the
same settings), so the same test reads the same on both backends. Ages are set with the grace
period (`MOORAGE_GC_GRACE` of the fsck process): an object store's times cannot be set back.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import pty
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from moorage import config
from moorage.app import open_storage
from moorage.metadata import BlobRow, MetadataStore
from moorage.storage import paths
from moorage.storage.objects import ObjectDriver
from tests.harness import MakeServer, MoorageProcess, command_env
from tests.images import MemoryImage, manifest_for, memory_image
from tests.process.registry import Registry, sha256
from tests.services.fixtures import ScaleOut

pytestmark = pytest.mark.timeout(300)

NO_GC = {"MOORAGE_GC_INTERVAL": "0"}  # the server collects nothing on its own


@pytest.fixture(params=["embedded", "scaleout"])
def placement(request: pytest.FixtureRequest) -> ScaleOut | None:
    """Where the server keeps metadata and blobs: the embedded default (None), or a
    PostgreSQL database and a bucket prefix of its own."""
    if request.param == "embedded":
        return None
    scaleout: ScaleOut = request.getfixturevalue("scaleout")
    return scaleout


async def started(make_server: MakeServer, placement: ScaleOut | None) -> MoorageProcess:
    server = make_server(env=NO_GC)
    if placement is not None:
        server.config = dict(await placement.settings_for(server.data_dir))
    await server.start()
    return server


def _options(server: MoorageProcess) -> list[str]:
    options = ["--data-dir", str(server.data_dir)]
    if server.config is not None:
        options += ["--config", str(server.log_dir / "config.yml")]
    return options


async def fsck(server: MoorageProcess, *args: str, grace: str | None = None) -> tuple[int, str]:
    """Run `moorage fsck` on the server's data; its exit status and standard output."""
    env = command_env()
    if grace is not None:
        env["MOORAGE_GC_GRACE"] = grace
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "moorage",
        "fsck",
        *_options(server),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode in (0, 1), err.decode()
    assert "Traceback" not in err.decode(), err.decode()
    return proc.returncode, out.decode()


class Stored:
    """The server's storage and metadata, opened here from the server's settings."""

    def __init__(self, storage: ObjectDriver, metadata: MetadataStore) -> None:
        self.storage = storage
        self.metadata = metadata

    async def key(self, digest: str) -> str:
        row = await self.metadata.blob(digest)
        assert row is not None, digest
        return row.storage_key

    async def replace(self, key: str, data: bytes) -> None:
        await self.storage.delete(key)
        await self.storage.put(key, data)

    async def keys(self) -> dict[str, int]:
        return {found.key: found.size async for found in self.storage.walk()}


@pytest.fixture
async def stored_of() -> AsyncIterator[Any]:
    opened: list[Stored] = []

    async def open_(server: MoorageProcess) -> Stored:
        config_file = server.log_dir / "config.yml" if server.config is not None else None
        settings = config.load(config_file, datadir=server.data_dir)
        metadata = MetadataStore(settings.metadata_url)
        await metadata.open()
        stored = Stored(await open_storage(settings), metadata)
        opened.append(stored)
        return stored

    yield open_
    for stored in opened:
        await stored.metadata.close()
        await stored.storage.close()


async def push_sha512_blob(reg: Registry, repo: str, data: bytes) -> str:
    """A blob pushed under its sha512 digest: two blob rows (sha512 and sha256) name one
    stored object."""
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    await reg.finish(await reg.start_upload(repo), digest, data)
    return digest


def line_of(out: str, start: str) -> str:
    found = [line for line in out.splitlines() if line.startswith(start)]
    assert len(found) == 1, out
    return found[0]


async def test_a_consistent_store(
    make_server: MakeServer, http: aiohttp.ClientSession, placement: Any, stored_of: Any
) -> None:
    server = await started(make_server, placement)
    reg = Registry(http, server.url)
    image = memory_image(1, (3000, 6 << 20), "consistent")  # S3: a multipart object too
    await reg.push_image("fsck/app", "v1", image, chunk=1 << 20)
    await push_sha512_blob(reg, "fsck/app", b"sha512 content")

    for args in ((), ("--verify-digests",), ("--delete",)):
        status, out = await fsck(server, *args, grace="0")
        assert status == 0, out
        # config, two layers, the sha512 blob: 4 objects named by 5 rows
        assert line_of(out, "checked:").startswith("checked: 4 objects of 5 blobs"), out
        assert "found: missing 0, wrong size 0" in out
        assert "orphans 0 (0 bytes)" in out
        assert out.rstrip().endswith("no problems found")
    assert "contents hashed" in (await fsck(server, "--verify-digests"))[1]
    await reg.assert_manifest("fsck/app", "v1", image.manifest)


async def test_damage_is_found(
    make_server: MakeServer, http: aiohttp.ClientSession, placement: Any, stored_of: Any
) -> None:
    server = await started(make_server, placement)
    reg = Registry(http, server.url)
    image = memory_image(2, (4000, 5000, 6000), "damaged")
    await reg.push_image("fsck/app", "v1", image)
    shared = b"one object, two digests"
    sha512 = await push_sha512_blob(reg, "fsck/app", shared)
    stored = await stored_of(server)
    gone, short, flipped = image.layers

    await stored.storage.delete(await stored.key(sha256(gone)))
    await stored.replace(await stored.key(sha256(short)), short[:-1])
    changed = bytearray(flipped)
    changed[len(changed) // 2] ^= 0x01
    await stored.replace(await stored.key(sha256(flipped)), bytes(changed))
    await stored.replace(await stored.key(sha512), b"ONE object, two digests")  # same size

    status, out = await fsck(server)
    assert status == 1, out
    missing = line_of(out, "missing:")
    assert sha256(gone) in missing and "4000 bytes expected, no object" in missing
    wrong = line_of(out, "wrong size:")
    assert sha256(short) in wrong and "5000 bytes expected, 4999 stored" in wrong
    assert "wrong digest:" not in out  # sizes only without --verify-digests
    assert "missing 1, wrong size 1, wrong digest not checked, orphans 0" in out
    assert out.rstrip().endswith("2 problems found")

    status, out = await fsck(server, "--verify-digests")
    assert status == 1, out
    digests = [line for line in out.splitlines() if line.startswith("wrong digest:")]
    assert len(digests) == 3, out
    assert sum(sha256(flipped) in line for line in digests) == 1
    assert sum(sha512 in line for line in digests) == 1
    assert sum(sha256(shared) in line for line in digests) == 1  # the sha512 blob's sha256 row
    assert "missing 1, wrong size 1, wrong digest 3, orphans 0" in out
    assert out.rstrip().endswith("5 problems found")
    await reg.assert_blob("fsck/app", sha256(image.config), image.config)  # the rest is fine


async def test_orphans(
    make_server: MakeServer, http: aiohttp.ClientSession, placement: Any, stored_of: Any
) -> None:
    """Objects no blob row names: reported once older than the grace and removed with
    --delete; younger ones, a live upload's object and the images' blobs are left alone."""
    server = await started(make_server, placement)
    reg = Registry(http, server.url)
    image = memory_image(3, (7000,), "kept")
    await reg.push_image("fsck/app", "v1", image)
    stored = await stored_of(server)
    leftover = random.Random(3).randbytes(3333)
    orphan = paths.blob(hashlib.sha256(leftover).hexdigest())  # e.g. a crash before its row
    dead = paths.upload("0f0e0d0c-0b0a-4908-8706-050403020100")  # a session long gone
    await stored.storage.put(orphan, leftover)
    await stored.storage.put(dead, b"x" * 100)
    # A live session whose object was committed when its server died before the row.
    live_location = await reg.start_upload("fsck/app")
    live = paths.upload(live_location.rsplit("/", 1)[1])
    await stored.storage.put(live, b"y" * 200)

    status, out = await fsck(server, "--delete")  # the default grace: 2 h
    assert status == 0, out
    assert "left alone: 2 newer than gc.grace, 1 of live uploads" in out
    assert "orphans 0 (0 bytes), deleted 0" in out

    status, out = await fsck(server, grace="0")
    assert status == 1, out
    reported = [line for line in out.splitlines() if line.startswith("orphan:")]
    assert sorted(line.split()[1].rstrip(":") for line in reported) == sorted([orphan, dead]), out
    assert "orphans 2 (3.4 KiB)" in out and "1 of live uploads" in out
    assert {orphan, dead, live} <= (await stored.keys()).keys()  # reported only

    status, out = await fsck(server, "--delete", grace="0")
    assert status == 1, out
    assert "orphans 2 (3.4 KiB), deleted 2 (3.4 KiB)" in out
    remaining = await stored.keys()
    assert orphan not in remaining and dead not in remaining
    assert remaining[live] == 200
    assert await stored.metadata.gc_pending() == []  # the queue rows are gone too

    status, out = await fsck(server, "--verify-digests", grace="0")
    assert status == 0, out
    await reg.assert_manifest("fsck/app", "v1", image.manifest)
    for blob in image.blobs:
        await reg.assert_blob("fsck/app", sha256(blob), blob)


async def test_delete_beside_pushes_loses_nothing(
    make_server: MakeServer, http: aiohttp.ClientSession, placement: Any, stored_of: Any
) -> None:
    """`fsck --delete` runs again and again, with a grace of 3 s, while images are pushed
    (monolithic and chunked uploads, shared layers); orphans older than the grace keep
    appearing and are deleted; afterwards every image pulls byte-exact."""
    server = await started(make_server, placement)
    reg = Registry(http, server.url)
    stored = await stored_of(server)
    shared = random.Random(99).randbytes(20000)
    images: list[tuple[str, MemoryImage]] = []
    planted: list[str] = []

    async def push(worker: int) -> None:
        for n in range(8):
            own = memory_image(f"{worker}-{n}", (2000 + 997 * n, 150_000))
            layers = (shared, *own.layers)
            image = MemoryImage(own.config, layers, manifest_for(own.config, layers, "fsck"))
            await reg.push_image(f"fsck/w{worker}", f"t{n}", image, chunk=64 << 10)
            images.append((f"fsck/w{worker}", image))

    async def plant() -> None:
        for n in range(6):
            data = random.Random(1000 + n).randbytes(1000 + n)
            key = paths.blob(hashlib.sha256(data).hexdigest())
            await stored.storage.put(key, data)
            planted.append(key)
            await asyncio.sleep(1)

    pushing = asyncio.gather(*(push(w) for w in range(3)), plant())
    runs = deleted = 0
    while not pushing.done() or runs < 2:
        status, out = await fsck(server, "--delete", grace="3s")
        runs += 1
        deleted += int(line_of(out, "found:").split("deleted ")[1].split()[0])
        assert "missing 0, wrong size 0" in out, out
    await pushing
    await asyncio.sleep(3.5)  # the last planted orphans are older than the grace now
    status, out = await fsck(server, "--delete", grace="3s")
    deleted += int(line_of(out, "found:").split("deleted ")[1].split()[0])
    assert deleted == len(planted) == 6, out
    assert not set(planted) & (await stored.keys()).keys()

    status, out = await fsck(server, "--verify-digests", grace="3s")
    assert status == 0, out
    assert len(images) == 24
    for repo, image in images:
        await reg.assert_manifest(repo, image.digest, image.manifest)
        for blob in image.blobs:
            await reg.assert_blob(repo, sha256(blob), blob)


async def store_with(data_dir: Path, rows: list[BlobRow]) -> None:
    """A data directory whose metadata holds these blob rows, each object a sparse file of
    zeros of the row's size."""
    settings = config.load(None, datadir=data_dir)
    metadata = MetadataStore(settings.metadata_url)
    await metadata.open()
    try:
        for row in rows:
            path = settings.blob_root / row.storage_key
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as f:
                f.truncate(row.size)
            await metadata.link_blobs("r", [row])
    finally:
        await metadata.close()


def zeros(size: int) -> BlobRow:
    """The blob of `size` zero bytes, stored at its content-addressed key."""
    hex_ = hashlib.sha256(bytes(size)).hexdigest()
    return BlobRow(f"sha256:{hex_}", paths.blob(hex_), size)


def fsck_argv(data_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "moorage", "fsck", "--data-dir", str(data_dir), *args]


BIG = BlobRow("sha256:" + "ff" * 32, paths.blob("ff" * 32), 32 << 30)  # never hashed whole
SMALL = [zeros(1000), zeros(1001), zeros(1002)]  # their keys sort before BIG's


async def interrupted_while_hashing(data_dir: Path) -> tuple[str, bytes]:
    """`moorage fsck --verify-digests` on SMALL and BIG, sent SIGINT while it hashes BIG: its
    stdout and stderr, after checking that it stopped within a moment with status 130 and
    said why, without a traceback."""
    await store_with(data_dir, [*SMALL, BIG])
    proc = await asyncio.create_subprocess_exec(
        *fsck_argv(data_dir, "--verify-digests"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=command_env(),
    )
    try:
        assert proc.stderr is not None
        line = await asyncio.wait_for(proc.stderr.readline(), 30)
        assert line.startswith(b"fsck: blobs: 0/4 objects"), line
        await asyncio.sleep(1)  # hashing the big one by now
        proc.send_signal(signal.SIGINT)
        signalled = time.monotonic()
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 130, (out, err)
    assert time.monotonic() - signalled < 10  # not after hashing 32 GiB
    assert b"stopping after the objects in hand" in err
    assert b"Traceback" not in err
    return out.decode(), err


async def test_ctrl_c_stops_cleanly(tmp_path: Path) -> None:
    """SIGINT in the middle of hashing a 32 GiB blob: fsck stops within a moment, prints
    what it did and says it did not finish (status 130), no traceback."""
    out, _ = await interrupted_while_hashing(tmp_path / "data")
    assert out.splitlines()[-2:] == [
        "interrupted: the check did not finish; the same command with --resume goes on from "
        "where it stopped",
        "no problems found",
    ], out


def run_fsck(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        fsck_argv(data_dir, *args),
        capture_output=True,
        text=True,
        env=command_env(),
        timeout=120,
        check=False,
    )


async def test_an_interrupted_check_resumes_where_it_stopped(tmp_path: Path) -> None:
    """Ctrl-C while the last object (by key) is being hashed leaves a checkpoint after the
    three objects already judged; `--resume` with other options is refused and changes
    nothing; `--resume` with the same options does not look at those three again (one of them
    deleted meanwhile is not reported), judges the rest, counts all four in its summary and
    removes the checkpoint; a check without --resume starts over and finds the deleted one."""
    data_dir = tmp_path / "data"
    small, big = SMALL, BIG
    await interrupted_while_hashing(data_dir)
    state_file = data_dir / "fsck.state"
    saved = json.loads(state_file.read_text())
    assert saved["phase"] == "blobs"
    assert saved["after"] == max(row.storage_key for row in small)  # the big one sorts last
    assert saved["counts"]["objects"] == 3 and saved["counts"]["bytes"] == 3003

    refused = run_fsck(data_dir, "--resume")
    assert refused.returncode == 2, refused
    assert "ran with --verify-digests and without --delete" in refused.stderr, refused.stderr
    assert json.loads(state_file.read_text()) == saved

    blob_root = config.load(None, datadir=data_dir).blob_root
    (blob_root / small[0].storage_key).unlink()  # judged before: not seen again
    (blob_root / big.storage_key).unlink()  # not judged yet: found missing
    resumed = run_fsck(data_dir, "--verify-digests", "--resume")
    assert resumed.returncode == 1, resumed
    lines = resumed.stdout.splitlines()
    assert lines[0] == f"resuming: the blobs pass after {small[-1].storage_key}", lines
    assert [line for line in lines if line.startswith("missing:")] == [
        f"missing: {big.digest} {big.storage_key}: {big.size} bytes expected, no object"
    ]
    assert line_of(resumed.stdout, "checked:").startswith("checked: 4 objects of 4 blobs")
    assert line_of(resumed.stdout, "found:").startswith("found: missing 1,")
    assert not state_file.exists()

    nothing = run_fsck(data_dir, "--resume")
    assert nothing.returncode == 2 and "nothing to resume" in nothing.stderr, nothing

    again = run_fsck(data_dir)
    assert again.returncode == 1, again
    assert line_of(again.stdout, "found:").startswith("found: missing 2,"), again.stdout


async def test_the_orphan_pass_resumes_from_any_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second pass walks storage in key order and checkpoints as it goes (here after every
    object): resumed from a checkpoint taken before it was stopped (a killed process leaves the
    last one it saved), it judges each object exactly once in all, and finds each orphan."""
    from moorage.content import fsck as fsck_module

    monkeypatch.setattr(fsck_module, "SAVE_EVERY", 0.0)
    data_dir = tmp_path / "data"
    named = [zeros(n) for n in range(10)]
    await store_with(data_dir, named)
    settings = config.load(None, datadir=data_dir)
    orphans = []
    for n in range(30):
        data = f"orphan {n}".encode()
        key = paths.blob(sha256(data).removeprefix("sha256:"))
        (settings.blob_root / key).parent.mkdir(parents=True, exist_ok=True)
        (settings.blob_root / key).write_bytes(data)
        orphans.append(key)

    class StopAfter:
        """Sets `stop` once `limit` objects of the orphan pass were counted."""

        def __init__(self, limit: int) -> None:
            self.limit = limit
            self.stop = threading.Event()
            self.listed = 0
            self.current = ""

        def phase(self, name: str, items: int | None = None, nbytes: int = 0) -> None:
            self.current = name

        def advance(self, items: int = 0, nbytes: int = 0) -> None:
            if self.current == "orphans":
                self.listed += items
                if self.listed >= self.limit:
                    self.stop.set()

        def found(self, finding: fsck_module.Finding) -> None:
            pass

    metadata = MetadataStore(settings.metadata_url)
    await metadata.open()
    storage = await open_storage(settings)
    try:
        saved: list[fsck_module.Checkpoint] = []
        progress = StopAfter(25)
        first = fsck_module.Fsck(
            metadata, storage, 0.0, progress=progress, stop=progress.stop, save=saved.append
        )
        report = await first.run()
        assert report.interrupted and report.objects == 10
        during = [c for c in saved if c.phase == "orphans"]
        afters = [c.after for c in during]
        assert afters == sorted(afters) and len(set(afters)) == 25, afters  # one per object
        assert during[-1].counts["listed"] == 25  # the 25th, judged, then it stopped

        middle = during[len(during) // 2]  # as if killed there: later checkpoints never saved
        resumed = fsck_module.Fsck(metadata, storage, 0.0, resume=middle)
        report = await resumed.run()
        assert not report.interrupted
        assert report.objects == 10 and report.listed == 40  # each object judged once in all
        assert report.orphans == 30
        found_after = {f.key for f in report.findings}
        before = {key for key in orphans if middle.after is not None and key <= middle.after}
        assert found_after == set(orphans) - before
        assert report.problems == 30
    finally:
        await metadata.close()
        await storage.close()


def test_a_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    """With stderr on a terminal, a rich progress bar with counts and bytes; findings and the
    summary still go to stdout."""
    data_dir = tmp_path / "data"
    asyncio.run(store_with(data_dir, [zeros((3 << 20) + n) for n in range(3)]))
    master, slave = pty.openpty()
    env = {**command_env(), "COLUMNS": "160", "TERM": "xterm"}
    proc = subprocess.Popen(
        fsck_argv(data_dir), stdout=subprocess.PIPE, stderr=slave, env=env, close_fds=True
    )
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the process closed its end
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    assert proc.wait(timeout=60) == 0, (out, shown)
    screen = shown.decode(errors="replace")
    assert "blobs" in screen and "orphans" in screen, screen
    assert "3/3 objects 9.0 MiB/9.0 MiB" in screen, screen  # counts, bytes and the totals
    assert "no problems found" in out and "fsck: blobs:" not in screen


def test_a_check_that_cannot_run_exits_2(tmp_path: Path) -> None:
    """Status 2, not 1: a cron job can tell "the store is damaged" from "fsck did not run"."""
    config_file = tmp_path / "config.yml"
    config_file.write_text("storage: {driver: s3}\n")  # no bucket
    done = subprocess.run(
        fsck_argv(tmp_path / "data", "--config", str(config_file)),
        capture_output=True,
        text=True,
        env=command_env(),
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done
    assert "fsck could not finish: the s3 driver needs a bucket" in done.stderr
    assert "Traceback" not in done.stderr
