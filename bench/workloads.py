"""The workloads. Each one is run against both registries in alternation by bench.py.

Life cycle, driven by bench.py for every workload:

    prepare(ctx)                       once, shared data (not timed)
    setup(ctx, server)                 once per server (not timed; may report "setup" metrics)
    for each round r:
        prepare_round(ctx, r)          shared data for the round (not timed)
        for each server (A, B):
            run(ctx, server, r)        THE TIMED PART -> {metric: value}; RSS/CPU sampled
            verify(ctx, server, r)     correctness checks on what run did (not timed)
        finish_round(ctx, r)
    teardown(ctx)

`run` raises BenchError on any wrong status or digest; so does `verify`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import aiohttp
import client
import psutil
from client import BenchError
from datagen import (
    BLOCK,
    CREATED,
    OCI_MANIFEST,
    Blob,
    Image,
    build_image,
    layer_sizes,
    sha256_digest,
    verify_layout,
)
from limits import DURABLE_WRITE, SENDFILE, SHA256
from servers import Server

from tests.images import memory_image, stream_file
from tests.v1.client import PullResult, RemoteHttp, V1Client, V1FileImage, write_image

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
MANIFEST_ACCEPT = ", ".join(
    [
        OCI_MANIFEST,
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)


@dataclass(frozen=True)
class Profile:
    """Sizes and durations: `full` (the default) or `quick` (CI: proves the script works)."""

    name: str
    rounds: int
    big_blob: int
    many_blob: int
    many_clients: int
    many_repeat: int  # each client pulls the blob this many times
    uploads: int
    upload_size: int
    upload_chunk: int
    image_layers: int
    layer_min: int
    layer_max: int
    wrk_seconds: float
    wrk_connections: int
    wrk_threads: int
    populate: int
    populate_concurrency: int
    v1_layers: int
    v1_layer_min: int
    v1_layer_max: int
    mirror_layers: int
    mirror_layer: int
    mirror_clients: int
    limits_size: int  # bytes written with fdatasync and hashed to measure the limits
    mix_clients: tuple[int, ...]  # the mixed load's client counts, one set of phases each
    mix_sizes: tuple[int, ...]  # its image sizes (one layer each)
    mix_seconds: float  # how long each phase keeps starting operations
    mix_pool: int  # images per size pushed before, for the pulls of the 75/25 mix
    mix_stall_size: int  # the stalled upload's declared size
    mix_stall_sent: int  # what it sends before it stalls
    mix_procs: int = 1  # processes the mixed load's clients run in (0: one per core)
    mix_open_rate: float = 10.0  # the open phase: operations started per second


FULL = Profile(
    name="full",
    rounds=3,
    big_blob=1 * GiB,
    many_blob=64 * MiB,
    many_clients=32,
    many_repeat=2,
    uploads=200,
    upload_size=8 * MiB,
    upload_chunk=1 * MiB,
    image_layers=40,
    layer_min=256 * KiB,
    layer_max=8 * MiB,
    wrk_seconds=10,
    wrk_connections=64,
    wrk_threads=2,
    populate=10_000,
    populate_concurrency=32,
    v1_layers=5,
    v1_layer_min=4 * MiB,
    v1_layer_max=32 * MiB,
    mirror_layers=4,
    mirror_layer=64 * MiB,
    mirror_clients=16,
    limits_size=1 * GiB,
    mix_clients=(10, 100),
    mix_sizes=(1_000_000, 10_000_000, 100_000_000),
    mix_seconds=30,
    mix_pool=2,
    mix_stall_size=1 * GiB,
    mix_stall_sent=4 * MiB,
)
QUICK = Profile(
    name="quick",
    rounds=1,
    big_blob=64 * MiB,
    many_blob=4 * MiB,
    many_clients=32,
    many_repeat=1,
    uploads=40,
    upload_size=2 * MiB,
    upload_chunk=512 * KiB,
    image_layers=10,  # skopeo into Distribution on a slow Swift took 40 s for 40 (cluster quick)
    layer_min=4 * KiB,
    layer_max=64 * KiB,
    wrk_seconds=2,
    wrk_connections=64,
    wrk_threads=2,
    populate=100,
    populate_concurrency=16,
    v1_layers=5,
    v1_layer_min=16 * KiB,
    v1_layer_max=256 * KiB,
    mirror_layers=4,
    mirror_layer=4 * MiB,
    mirror_clients=16,
    limits_size=64 * MiB,
    mix_clients=(4,),
    mix_sizes=(100_000, 300_000, 1_000_000),
    mix_seconds=3,
    mix_pool=2,
    mix_stall_size=1 * GiB,
    mix_stall_sent=256 * KiB,
    mix_procs=2,  # the full profile runs its clients on one loop; here the processes are proven
    mix_open_rate=20.0,
)


@dataclass
class Context:
    profile: Profile
    tmp: Path
    session: aiohttp.ClientSession
    # Per-server state shared between workloads (the small image, populated repositories).
    state: dict[str, dict[str, Any]] = field(default_factory=dict)

    def of(self, server: Server) -> dict[str, Any]:
        return self.state.setdefault(server.name, {})


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    better: str  # "higher" or "lower"
    # An absolute target besides the ratio: (">=" or "<=", value in `unit`).
    target: tuple[str, float] | None = None
    # The machine's limits this throughput needs (bench/limits.py): reported as a fraction of
    # the smallest of them.
    limits: tuple[str, ...] = ()


MBPS = "MB/s"  # 10^6 bytes per second
# A push is bounded by the disk (the blob is fsynced before it exists) and by one core's
# SHA-256 (an upload is hashed in one stream); a pull from a file by sendfile over loopback.
PUSH_LIMITS = (DURABLE_WRITE, SHA256)
PULL_LIMITS = (SENDFILE,)


def mbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6


class Workload:
    name = "?"
    title = "?"
    metrics: tuple[Metric, ...] = ()
    setup_metrics: tuple[Metric, ...] = ()
    # Peak RSS target (MiB) for the whole Moorage process tree during `run`, if any.
    rss_target_mib: float | None = None
    # Rounds at least, in full mode (short runs are noisy: more rounds, steadier medians).
    min_rounds = 3
    # Rounds at most, unless --rounds says otherwise (a workload whose round is long and
    # already many operations).
    max_rounds: int | None = None

    def metrics_for(self, p: Profile) -> tuple[Metric, ...]:
        """The metrics reported (some workloads' depend on the profile)."""
        return self.metrics

    def extra_record(self, p: Profile) -> dict[str, Any]:
        """What the report needs besides the metrics (kept in the JSON record)."""
        return {}

    def skip_reason(self, ctx: Context) -> str | None:
        return None

    def describe(self, p: Profile) -> str:
        return ""

    async def prepare(self, ctx: Context) -> None:
        pass

    async def setup(self, ctx: Context, server: Server) -> dict[str, float]:
        return {}

    async def prepare_round(self, ctx: Context, r: int) -> None:
        pass

    async def run(self, ctx: Context, server: Server, r: int) -> dict[str, float]:
        raise NotImplementedError

    async def verify(self, ctx: Context, server: Server, r: int) -> None:
        pass

    async def finish_round(self, ctx: Context, r: int) -> None:
        pass

    async def teardown(self, ctx: Context) -> None:
        pass


def _fmt_size(n: int) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"


# --- large blobs -----------------------------------------------------------------------------


class BlobPush(Workload):
    name = "blob_push"
    title = "Push one large blob"
    metrics = (Metric("push_mbps", "push", MBPS, "higher", (">=", 1000.0), PUSH_LIMITS),)
    rss_target_mib = 150

    def describe(self, p: Profile) -> str:
        return (
            f"one {_fmt_size(p.big_blob)} blob, monolithic: POST, then PUT ?digest= with the "
            "body streamed by curl from a file (page cache); the stored blob removed after "
            "each round"
        )

    async def prepare_round(self, ctx: Context, r: int) -> None:
        self.path = ctx.tmp / "big-push.bin"
        self.blob = Blob(f"big-push-{r}", ctx.profile.big_blob)
        await asyncio.to_thread(self.blob.write, self.path)

    async def run(self, ctx: Context, server: Server, r: int) -> dict[str, float]:
        repo = f"bench/big-push-{r}"
        t0 = time.perf_counter()
        location = await client.start_upload(ctx.session, server, repo)
        await client.curl_put_file(location, self.blob.digest, self.path)
        return {"push_mbps": mbps(self.blob.size, time.perf_counter() - t0)}

    async def verify(self, ctx: Context, server: Server, r: int) -> None:
        await client.head_blob(
            ctx.session, server, f"bench/big-push-{r}", self.blob.digest, self.blob.size
        )
        # Then its stored bytes go, and with them their page cache: every round (and each
        # server) then writes into memory the previous ones freed, as the first one did. On
        # a VM whose host takes back free memory, pages not used for a while cost several
        # times more system time to fill (docs/performance.md), and each round would pay
        # more of that than the last.
        await asyncio.to_thread(_drop_stored, server, self.blob.digest.split(":", 1)[1])

    async def finish_round(self, ctx: Context, r: int) -> None:
        self.path.unlink(missing_ok=True)


def _drop_stored(server: Server, hex_digest: str) -> None:
    """Remove what `server` stored under its data directory for the blob `hex_digest`."""
    for path in list((server.root / "data").rglob(f"{hex_digest}*")):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


class BlobPull(Workload):
    min_rounds = 5
    name = "blob_pull"
    title = "Pull one large blob"
    metrics = (Metric("pull_mbps", "pull", MBPS, "higher", (">=", 1000.0), PULL_LIMITS),)
    rss_target_mib = 150
    repo = "bench/big-pull"

    def describe(self, p: Profile) -> str:
        return (
            f"one {_fmt_size(p.big_blob)} blob, plain GET by curl to /dev/null; then an untimed "
            "GET hashed by the client checks the digest"
        )

    async def prepare(self, ctx: Context) -> None:
        self.path = ctx.tmp / "big-pull.bin"
        self.blob = Blob("big-pull", ctx.profile.big_blob)
        await asyncio.to_thread(self.blob.write, self.path)

    async def setup(self, ctx: Context, server: Server) -> dict[str, float]:
        location = await client.start_upload(ctx.session, server, self.repo)
        await client.curl_put_file(location, self.blob.digest, self.path)
        return {}

    async def run(self, ctx: Context, server: Server, r: int) -> dict[str, float]:
        url = f"{server.url}/v2/{self.repo}/blobs/{self.blob.digest}"
        t0 = time.perf_counter()
        await client.curl_get([url], self.blob.size)
        return {"pull_mbps": mbps(self.blob.size, time.perf_counter() - t0)}

    async def verify(self, ctx: Context, server: Server, r: int) -> None:
        url = f"{server.url}/v2/{self.repo}/blobs/{self.blob.digest}"
        digest, size, resp = await client.fetch_digest(ctx.session, url)
        if (digest, size) != (self.blob.digest, self.blob.size):
            raise BenchError(f"GET {url}: got {digest} ({size} bytes)")
        client.check_digest_header(resp, self.blob.digest)

    async def teardown(self, ctx: Context) -> None:
        self.path.unlink(missing_ok=True)


class ConcurrentPulls(Workload):
    min_rounds = 5
    name = "concurrent_pulls"
    title = "Concurrent pulls of one blob"
    metrics = (Metric("aggregate_mbps", "aggregate", MBPS, "higher", limits=PULL_LIMITS),)
    repo = "bench/many-pull"

    def describe(self, p: Profile) -> str:
        return (
            f"{p.many_clients} concurrent GETs of one {_fmt_size(p.many_blob)} blob "
            f"({p.many_clients * p.many_repeat} in all, {p.many_clients} at a time, one curl "
            "--parallel); aggregate bytes / wall time"
        )

    async def prepare(self, ctx: Context) -> None:
        self.path = ctx.tmp / "many-pull.bin"
        self.blob = Blob("many-pull", ctx.profile.many_blob)
        await asyncio.to_thread(self.blob.write, self.path)

    async def setup(self, ctx: Context, server: Server) -> dict[str, float]:
        location = await client.start_upload(ctx.session, server, self.repo)
        await client.curl_put_file(location, self.blob.digest, self.path)
        return {}

    async def run(self, ctx: Context, server: Server, r: int) -> dict[str, float]:
        p = ctx.profile
        url = f"{server.url}/v2/{self.repo}/blobs/{self.blob.digest}"
        count = p.many_clients * p.many_repeat
        t0 = time.perf_counter()
        await client.curl_get([url] * count, self.blob.size, parallel=p.many_clients)
        return {"aggregate_mbps": mbps(self.blob.size * count, time.perf_counter() - t0)}

    async def verify(self, ctx: Context, server: Server, r: int) -> None:
        url = f"{server.url}/v2/{self.repo}/blobs/{self.blob.digest}"
        digest, size, _ = await client.fetch_digest(ctx.session, url)
        if (digest, size) != (self.blob.digest, self.blob.size):
            raise BenchError(f"GET {url}: got {digest} ({size} bytes)")

    async def teardown(self, ctx: Context) -> None:
        self.path.unlink(missing_ok=True)


# --- chunked uploads -------------------------------------------------------------------------


class ChunkedUploads(Workload):
    name = "chunked_uploads"
    title = "Concurrent chunked uploads"
    metrics = (
        Metric("uploads_per_s", "uploads", "uploads/s", "higher"),
        Metric("upload_mbps", "throughput", MBPS, "higher", limits=PUSH_LIMITS),
    )

    def describe(self, p: Profile) -> str:
        return (
            f"{p.uploads} concurrent uploads of {_fmt_size(p.upload_size)}, each POST, "
            f"{p.upload_size // p.upload_chunk} PATCHes of {_fmt_size(p.upload_chunk)} "
            "(Content-Range start-end, following the latest Location), PUT ?digest= (aiohttp)"
        )

    async def prepare_round(self, ctx: Context, r: int) -> None:
        p = ctx.profile
        self.blobs = [Blob(f"up-{r}-{i}", p.upload_size, p.upload_chunk) for i in range(p.uploads)]

        def digests() -> None:
            for b in self.blobs:
                _ = b.digest

        await asyncio.to_thread(digests)

    async def _one(self, ctx: Context, server: Server, repo: str, blob: Blob) -> None:
        session = ctx.session
        location = await client.start_upload(session, server, repo)
        offset = 0
        for i in range(blob.nblocks):
            data = blob.chunk(i)
            end = offset + len(data) - 1
            async with session.patch(
                client.URL(location, encoded=True),
                data=data,
                headers={"Content-Type": client.OCTET, "Content-Range": f"{offset}-{end}"},
            ) as resp:
                await client.expect(resp, 202)
                location = client.absolute(server, resp.headers["Location"])
                if resp.headers.get("Range") != f"0-{end}":
                    raise BenchError(f"PATCH {resp.url}: Range {resp.headers.get('Range')}")
            offset = end + 1
        async with session.put(client.with_digest(location, blob.digest)) as resp:
            await client.expect(resp, 201)
            client.check_digest_header(resp, blob.digest)

    async def run(self, ctx: Context, server: Server, r: int) -> dict[str, float]:
        repo = f"bench/chunked-{r}"
        t0 = time.perf_counter()
        await asyncio.gather(*(self._one(ctx, server, repo, b) for b in self.blobs))
        elapsed = time.perf_counter() - t0
        total = sum(b.size for b in self.blobs)
        return {"uploads_per_s": len(self.blobs) / elapsed, "upload_mbps": mbps(total, elapsed)}

    async def verify(self, ctx: Context, server: Server, r: int) -> None:
        repo = f"bench/chunked-{r}"
        sem = asyncio.Semaphore(32)

        async def one(b: Blob) -> None:
            async with sem:
                await client.head_blob(ctx.session, server, repo, b.digest, b.size)

        await asyncio.gather(*(one(b) for b in self.blobs))
        # And the content of one of them, end to end.
        b = self.blobs[len(self.blobs) // 2]
        digest, size, _ = await client.fetch_digest(
            ctx.session, f"{server.url}/v2/{repo}/blobs/{b.digest}"
        )
        if (digest, size) != (b.digest, b.size):
            raise BenchError(f"chunked upload {b.digest} reads back as {digest} ({size} bytes)")


# --- a many-layer image with skopeo ----------------------------------------------------------

SKOPEO = ["skopeo", "--insecure-policy", "copy", "--quiet"]


def _sizes(p: Profile) -> list[int]:
    return layer_sizes(p.image_layers, p.layer_min, p.layer_max)


def _image_desc(p: Profile) -> str:
    total = sum(_sizes(p))
    size = f"{total / MiB:.0f} MiB" if total >= MiB else f"{total / KiB:.0f} KiB"
    return (
        f"{p.image_layers} layers of {_fmt_size(p.layer_min)}-{_fmt_size(p.layer_max)} "
        f"({size} in all, tar + gzip level 0), OCI layout, skopeo copy"
    )


class ImagePush(Workload):
    min_rounds = 9  # skopeo's own time dominates and varies: see docs/performance.md
    name = "image_push"
    title = "Push a many-layer image (skopeo)"
    metrics = (Metric("push_s", "push", "s", "lower"),)

    def describe(self, p: Profile) -> str:
        return _image_desc(p) + " oci: -> docker:// into a new repository; new layers each round"

    async def prepare_round(self, ctx: Context, r: int) -> None:
        layout = ctx.tmp / f"image-push-{r}"
        self.image: Image = await asyncio.to_thread(
            build_image, layout, "v1", f"image-push-{r}", _sizes(ctx.profile)
        )

    async def run(self, ctx: Context, server: Server, r: int) -> dict[str, float]:
        t0 = time.perf_counter()
        await client.run_tool(
            *SKOPEO,
            "--dest-tls-verify=false",
            self.image.ref,
            f"docker://{server.host}/bench/image-push-{r}:v1",
        )
        return {"push_s": time.perf_counter() - t0}

    async def verify(self, ctx: Context, server: Server, r: int) -> None:
        url = f"{server.url}/v2/bench/image-push-{r}/manifests/v1"
        digest, _, resp = await client.fetch_digest(
            ctx.session, url, headers={"Accept": MANIFEST_ACCEPT}
        )
        if digest != self.image.manifest.digest:
            raise BenchError(f"GET {url}: manifest {digest}, pushed {self.image.manifest.digest}")
        client.check_digest_header(resp, digest)
        for layer in (self.image.config, *self.image.layers):
            await client.head_blob(
                ctx.session, server, f"bench/image-push-{r}", layer.digest, layer.size
            )

    async def finish_round(self, ctx: Context, r: int) -> None:
        shutil.rmtree(self.image.layout, ignore_errors=True)


class ImagePull(Workload):
    min_rounds = 9  # skopeo's own time dominates and varies: see docs/performance.md
    name = "image_pull"
    title = "Pull a many-layer image (skopeo)"
    metrics = (Metric("pull_s", "pull", "s", "lower"),)
    repo = "bench/image-pull"

    def describe(self, p: Profile) -> str:
        return _image_desc(p) + " docker:// -> a new oci: layout; pulled layout re-hashed"

    async def prepare(self, ctx: Context) -> None:
        self.image: Image = await asyncio.to_thread(
            build_image, ctx.tmp / "image-pull-src", "v1", "image-pull", _sizes(ctx.profile)
        )

    async def setup(self, ctx: Context, server: Server) -> dict[str, float]:
        await client.run_tool(
            *SKOPEO,
            "--dest-tls-verify=false",
            self.image.ref,
            f"docker://{server.host}/{self.repo}:v1",
        )
        return {}

    def _dest(self, ctx: Context, server: Server, r: int) -> Path:
        return ctx.tmp / f"image-pull-{server.name}-{r}"

    async def run(self, ctx: Context, server: Server, r: int) -> dict[str, float]:
        dest = self._dest(ctx, server, r)
        t0 = time.perf_counter()
        await client.run_tool(
            *SKOPEO,
            "--src-tls-verify=false",
            f"docker://{server.host}/{self.repo}:v1",
            f"oci:{dest}:v1",
        )
        return {"pull_s": time.perf_counter() - t0}

    async def verify(self, ctx: Context, server: Server, r: int) -> None:
        dest = self._dest(ctx, server, r)
        try:
            await asyncio.to_thread(verify_layout, dest, "v1", self.image.manifest.digest)
        except AssertionError as exc:
            raise BenchError(f"skopeo pull from {server.name}: {exc}") from None
        finally:
            shutil.rmtree(dest, ignore_errors=True)

    async def teardown(self, ctx: Context) -> None:
        shutil.rmtree(self.image.layout, ignore_errors=True)


# --- small requests under load (wrk) ---------------------------------------------------------

SMALL_REPO = "bench/small"


SMALL = memory_image("bench-small", (4 * KiB,), "the small image of the request workloads")
SMALL_LAYER = SMALL.layers[0]
SMALL_BLOBS = (sha256_digest(SMALL.config), sha256_digest(SMALL_LAYER))


async def ensure_small(ctx: Context, server: Server) -> None:
    """Push the small image to bench/small:latest once per server."""
    state = ctx.of(server)
    if state.get("small"):
        return
    await client.push_bytes(ctx.session, server, SMALL_REPO, SMALL.config)
    await client.push_bytes(ctx.session, server, SMALL_REPO, SMALL_LAYER)
    await client.push_manifest(
        ctx.session, server, SMALL_REPO, "latest", SMALL.manifest, OCI_MANIFEST
    )
    state["small"] = True


async def bounded(limit: int, coros: list[Any]) -> None:
    sem = asyncio.Semaphore(limit)

    async def one(coro: Any) -> None:
        async with sem:
            await coro

    await asyncio.gather(*(one(c) for c in coros))


class _WrkWorkload(Workload):
    method = "GET"
    tool = "wrk"
    metrics = (
        Metric("req_per_s", "throughput", "req/s", "higher"),
        Metric("p99_ms", "p99 latency", "ms", "lower"),
    )

    def path(self, ctx: Context) -> str:
        raise NotImplementedError

    def headers(self) -> dict[str, str]:
        return {}

    def describe(self, p: Profile) -> str:
        if self.tool == "hey":
            return f"hey -c {p.wrk_connections} -z {p.wrk_seconds:g}s -m {self.method}: "
        return f"wrk -t{p.wrk_threads} -c{p.wrk_connections} -d{p.wrk_seconds:g}s --latency: "

    async def run(self, ctx: Context, server: Server, r: int) -> dict[str, float]:
        p = ctx.profile
        if self.tool == "hey":
            stats = await client.hey(
                server.url + self.path(ctx),
                method=self.method,
                headers=self.headers(),
                duration=p.wrk_seconds,
                connections=p.wrk_connections,
            )
            return {"req_per_s": stats["req_per_s"], "p99_ms": stats["p99_ms"]}
        stats = await client.wrk(
            server.url + self.path(ctx),
            ctx.tmp,
            method=self.method,
            headers=self.headers(),
            duration=p.wrk_seconds,
            connections=p.wrk_connections,
            threads=p.wrk_threads,
        )
        out = {"req_per_s": stats["req_per_s"], "p99_ms": stats["p99_ms"]}
        if stats.get("timeouts"):
            out["timeouts"] = stats["timeouts"]
        return out


class ManifestGet(_WrkWorkload):
    name = "manifest_get"
    title = "Manifest GET by tag"
    metrics = (
        Metric("req_per_s", "throughput", "req/s", "higher", (">=", 5000.0)),
        Metric("p99_ms", "p99 latency", "ms", "lower"),
    )

    def describe(self, p: Profile) -> str:
        return super().describe(p) + "GET /v2/bench/small/manifests/latest, Accept: OCI + Docker"

    def path(self, ctx: Context) -> str:
        return f"/v2/{SMALL_REPO}/manifests/latest"

    def headers(self) -> dict[str, str]:
        return {"Accept": MANIFEST_ACCEPT}

    async def setup(self, ctx: Context, server: Server) -> dict[str, float]:
        await ensure_small(ctx, server)
        await self.verify(ctx, server, -1)
        return {}

    async def verify(self, ctx: Context, server: Server, r: int) -> None:
        url = server.url + self.path(ctx)
        digest, _, resp = await client.fetch_digest(ctx.session, url, self.headers())
        if digest != SMALL.digest:
            raise BenchError(f"GET {url}: body {digest}, expected {SMALL.digest}")
        client.check_digest_header(resp, digest)
        if resp.headers.get("Content-Type") != OCI_MANIFEST:
            raise BenchError(f"GET {url}: Content-Type {resp.headers.get('Content-Type')}")


class BlobHead(_WrkWorkload):
    name = "blob_head"
    title = "Blob HEAD"
    method = "HEAD"
    # wrk 4.1 cannot time HEAD: it waits for the body that Content-Length announces.
    tool = "hey"

    def describe(self, p: Profile) -> str:
        return super().describe(p) + "HEAD /v2/bench/small/blobs/<layer digest>"

    def path(self, ctx: Context) -> str:
        return f"/v2/{SMALL_REPO}/blobs/{SMALL_BLOBS[1]}"

    async def setup(self, ctx: Context, server: Server) -> dict[str, float]:
        await ensure_small(ctx, server)
        await self.verify(ctx, server, -1)
        return {}

    async def verify(self, ctx: Context, server: Server, r: int) -> None:
        await client.head_blob(ctx.session, server, SMALL_REPO, SMALL_BLOBS[1], len(SMALL_LAYER))


class _Populated(_WrkWorkload):
    """A wrk workload over a registry populated with `profile.populate` items through the API
    (a bounded pool of `populate_concurrency` requests). bench.py times the first tenth on each
    server alone (the "populate" rate reported) and then adds the rest to both servers at once,
    untimed, to keep the run short."""

    noun = "items"
    setup_metrics = (Metric("populate_per_s", "populate (first 10%)", "items/s", "higher"),)

    def items(self, ctx: Context) -> list[str]:
        raise NotImplementedError

    async def add(self, ctx: Context, server: Server, item: str) -> None:
        raise NotImplementedError

    def sample_size(self, ctx: Context) -> int:
        return max(1, ctx.profile.populate // 10)

    async def setup(self, ctx: Context, server: Server) -> dict[str, float]:
        await ensure_small(ctx, server)
        return {}

    async def populate(self, ctx: Context, server: Server, items: list[str]) -> None:
        await bounded(ctx.profile.populate_concurrency, [self.add(ctx, server, i) for i in items])


TAGS_REPO = "bench/tags"


class TagsList(_Populated):
    name = "tags_list"
    title = "Tag listing"
    noun = "tags"
    setup_metrics = (Metric("populate_per_s", "populate (first 10%)", "tags/s", "higher"),)

    def describe(self, p: Profile) -> str:
        return (
            super().describe(p)
            + f"GET /v2/{TAGS_REPO}/tags/list (no n: the whole list) on a repository with "
            f"{p.populate:,} tags (populated with {p.populate_concurrency} concurrent manifest "
            "PUTs of one manifest)"
        )

    def items(self, ctx: Context) -> list[str]:
        return [f"t{i:05d}" for i in range(ctx.profile.populate)]

    def path(self, ctx: Context) -> str:
        return f"/v2/{TAGS_REPO}/tags/list"

    async def setup(self, ctx: Context, server: Server) -> dict[str, float]:
        await ensure_small(ctx, server)
        for digest in SMALL_BLOBS:
            await client.mount(ctx.session, server, TAGS_REPO, digest, SMALL_REPO)
        return {}

    async def add(self, ctx: Context, server: Server, item: str) -> None:
        await client.push_manifest(
            ctx.session, server, TAGS_REPO, item, SMALL.manifest, OCI_MANIFEST
        )

    async def verify(self, ctx: Context, server: Server, r: int) -> None:
        url = server.url + self.path(ctx)
        async with ctx.session.get(url) as resp:
            await client.expect(resp, 200)
            body = await resp.json(content_type=None)
        if sorted(body.get("tags") or []) != self.items(ctx) or "Link" in resp.headers:
            raise BenchError(
                f"GET {url}: {len(body.get('tags') or [])} tags, expected {ctx.profile.populate}"
            )


class Catalog(_Populated):
    name = "catalog"
    title = "Catalog page"
    noun = "repositories"
    setup_metrics = (Metric("populate_per_s", "populate (first 10%)", "repos/s", "higher"),)

    def items(self, ctx: Context) -> list[str]:
        return [f"bench/r/{i:05d}" for i in range(ctx.profile.populate)]

    def page(self, ctx: Context) -> tuple[str, int, list[str]]:
        """The middle page: (last, n, the names expected)."""
        repos = self.items(ctx)
        n = min(100, len(repos) // 4)
        mid = len(repos) // 2
        return repos[mid - 1], n, repos[mid : mid + n]

    def describe(self, p: Profile) -> str:
        n = min(100, p.populate // 4)
        return (
            super().describe(p)
            + f"GET /v2/_catalog?n={n}&last=<the middle one> on a registry with {p.populate:,} "
            f"repositories (populated with {p.populate_concurrency} concurrent repositories: "
            "two cross-repository mounts and a manifest PUT each)"
        )

    def path(self, ctx: Context) -> str:
        last, n, _ = self.page(ctx)
        return f"/v2/_catalog?n={n}&last={last}"

    async def add(self, ctx: Context, server: Server, item: str) -> None:
        for digest in SMALL_BLOBS:
            await client.mount(ctx.session, server, item, digest, SMALL_REPO)
        await client.push_manifest(
            ctx.session, server, item, "latest", SMALL.manifest, OCI_MANIFEST
        )

    async def verify(self, ctx: Context, server: Server, r: int) -> None:
        url = server.url + self.path(ctx)
        _, _, expected = self.page(ctx)
        async with ctx.session.get(url) as resp:
            await client.expect(resp, 200)
            body = await resp.json(content_type=None)
        if body.get("repositories") != expected:
            got = body.get("repositories") or []
            raise BenchError(f"GET {url}: {got[:3]}... ({len(got)}), expected {expected[:3]}...")


# --- the legacy v1 protocol (Moorage alone) --------------------------------------------------

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
V1_TAG = "latest"


def _v1_image(path: Path, seed: str, index: int, parent: str | None, size: int) -> V1FileImage:
    """One v1 image: an id from the seed, Docker 1.2 style JSON, and a gzip-0 tar layer of one
    file of `size` generated bytes written to `path`, its v1 checksums computed on the way."""
    blob = Blob(f"{seed}/{index}", size, min(BLOCK, max(64, size)))
    return write_image(
        path,
        [stream_file(f"layer{index}.bin", size, blob.chunks)],
        image_id=hashlib.sha256(f"moorage-bench-v1/{seed}/{index}".encode()).hexdigest(),
        parent=parent,
        size=size,
        created=CREATED,
        container=hashlib.sha256(f"container/{seed}/{index}".encode()).hexdigest(),
        cmd=f"#(nop) ADD file:layer{index}.bin in /",
    )


def _sizes_v1(p: Profile) -> list[int]:
    return layer_sizes(p.v1_layers, p.v1_layer_min, p.v1_layer_max, seed="v1-sizes")


class V1PushPull(Workload):
    """`docker push` then `docker pull` of a new image through the v1 protocol, request by
    request as Docker 1.2 makes them against a standalone registry without authentication
    (docs/contracts/v1-protocol.md 7.2 and 7.3; the tests' v1 client, tests/v1/client.py),
    except that connections are kept alive.

    Each round builds a new chain of `v1_layers` images (fresh ids, fresh layer content, so
    nothing deduplicates): each layer a tar of one generated file, gzip level 0, written to a
    file with its v1 checksums computed on the way (untimed).

    Push: `PUT /v1/repositories/R/` declaring the images (the top one tagged), then per image
    from the root up the existence probe `GET /v1/images/ID/json` (404), `PUT .../json`,
    `PUT .../layer` (the file streamed, chunked), `PUT .../checksum` with both checksum
    headers, then `PUT /v1/repositories/R/tags/latest` and `PUT /v1/repositories/R/images`
    (204). Pull: `GET /v1/repositories/R/images`, `GET .../tags`, `GET /v1/images/TOP/ancestry`,
    then per image from the root `GET .../json` and `GET .../layer` (hashed as it streams, not
    kept). MB/s counts layer bytes only.

    Verify: every pulled layer and JSON has the pushed digest, the ancestry is the pushed
    chain top first, the tag names the top image, and the same tag read through v2 is a Docker
    schema 2 manifest of exactly the pushed layers, whose config lists their diff_ids (one
    store for both protocols). Distribution has no v1, so this runs on Moorage alone (no ratio:
    compare with Moorage's own v2 numbers)."""

    min_rounds = 5
    name = "v1_push_pull"
    title = "v1 push and pull"
    servers = ("moorage",)
    metrics = (
        Metric("push_s", "push", "s", "lower"),
        Metric("pull_s", "pull", "s", "lower"),
        Metric("push_mbps", "push", MBPS, "higher", limits=PUSH_LIMITS),
        Metric("pull_mbps", "pull", MBPS, "higher", limits=PULL_LIMITS),
    )

    def describe(self, p: Profile) -> str:
        total = sum(_sizes_v1(p))
        return (
            f"a new chain of {p.v1_layers} v1 images per round, layers "
            f"{_fmt_size(p.v1_layer_min)}-{_fmt_size(p.v1_layer_max)} ({total / MiB:.0f} MiB in "
            "all, tar + gzip level 0): Docker 1.2's v1 push (repository PUT, per image probe, "
            "json, chunked layer, checksum; tag; images PUT) then v1 pull (images, tags, "
            "ancestry, json + layer per image), aiohttp; v2 manifest of the tag checked"
        )

    def _repo(self, r: int) -> str:
        return f"bench/v1-push-{r}"

    async def prepare_round(self, ctx: Context, r: int) -> None:
        self.dir = ctx.tmp / f"v1-push-{r}"
        self.dir.mkdir(parents=True, exist_ok=True)
        seed = f"v1-push-{r}"

        def build() -> list[V1FileImage]:
            chain: list[V1FileImage] = []
            for i, size in enumerate(_sizes_v1(ctx.profile)):
                parent = chain[-1].id if chain else None
                chain.append(_v1_image(self.dir / f"layer{i}.tar.gz", seed, i, parent, size))
            return chain

        self.chain: list[V1FileImage] = await asyncio.to_thread(build)
        self.pulled: dict[str, PullResult] = {}

    @property
    def _layer_bytes(self) -> int:
        return sum(i.size for i in self.chain)

    async def _push(self, ctx: Context, server: Server, repo: str) -> None:
        v1 = V1Client(RemoteHttp(ctx.session, server.url))
        pushed = await v1.push(repo, self.chain, {self.chain[-1].id: [V1_TAG]})
        if pushed.uploaded != [i.id for i in self.chain]:  # new ids: every probe must be a 404
            raise BenchError(f"v1 push of {repo}: {pushed.uploaded} uploaded, {pushed.skipped} not")

    async def _pull(self, ctx: Context, server: Server, repo: str) -> PullResult:
        """The pull, layers hashed as they stream and not kept."""
        v1 = V1Client(RemoteHttp(ctx.session, server.url))
        return await v1.pull(repo, V1_TAG, resume=False, keep_layers=False)

    async def run(self, ctx: Context, server: Server, r: int) -> dict[str, float]:
        repo = self._repo(r)
        nbytes = self._layer_bytes
        t0 = time.perf_counter()
        await self._push(ctx, server, repo)
        t1 = time.perf_counter()
        self.pulled[server.name] = await self._pull(ctx, server, repo)
        t2 = time.perf_counter()
        return {
            "push_s": t1 - t0,
            "pull_s": t2 - t1,
            "push_mbps": mbps(nbytes, t1 - t0),
            "pull_mbps": mbps(nbytes, t2 - t1),
        }

    async def verify(self, ctx: Context, server: Server, r: int) -> None:
        repo, got = self._repo(r), self.pulled[server.name]
        ids = [i.id for i in self.chain]
        top = ids[-1]
        if got.tags != {V1_TAG: top}:
            raise BenchError(f"v1 tags of {repo}: {got.tags}, pushed {V1_TAG} -> {top}")
        if got.ancestries[top] != ids[::-1]:
            raise BenchError(
                f"v1 ancestry of {top[:12]}: {got.ancestries[top]}, pushed {ids[::-1]}"
            )
        listed = {e.get("id") for e in got.image_list if isinstance(e, dict)}
        if not set(ids) <= listed:
            raise BenchError(f"v1 image list of {repo} lacks {sorted(set(ids) - listed)}")
        for image in self.chain:
            pulled = got.images[image.id]
            if (pulled.digest, pulled.length) != (image.blob_digest, image.size):
                raise BenchError(
                    f"v1 layer of {image.id[:12]}: {pulled.digest} ({pulled.length} bytes), "
                    f"pushed {image.blob_digest} ({image.size} bytes)"
                )
            if pulled.size != image.size:
                raise BenchError(
                    f"v1 json of {image.id[:12]}: X-Docker-Size {pulled.size}, layer {image.size}"
                )
            if pulled.json != image.json:
                raise BenchError(f"v1 json of {image.id[:12]} differs from what was pushed")
        url = f"{server.url}/v1/repositories/{repo}/tags/{V1_TAG}"
        async with ctx.session.get(url) as resp:
            await client.expect(resp, 200)
            if await resp.json(content_type=None) != top:
                raise BenchError(f"GET {url}: {await resp.text()}, pushed {top}")
        # One store: the tag pushed through v1 reads through v2 as a schema 2 manifest.
        url = f"{server.url}/v2/{repo}/manifests/{V1_TAG}"
        async with ctx.session.get(url, headers={"Accept": DOCKER_MANIFEST}) as resp:
            await client.expect(resp, 200)
            body = await resp.read()
            client.check_digest_header(resp, sha256_digest(body))
        manifest = json.loads(body)
        layers = [(d.get("digest"), d.get("size")) for d in manifest.get("layers") or []]
        pushed = [(i.blob_digest, i.size) for i in self.chain]
        if (manifest.get("schemaVersion"), manifest.get("mediaType")) != (2, DOCKER_MANIFEST):
            raise BenchError(f"GET {url}: not a schema 2 manifest: {body[:300]!r}")
        if layers != pushed:
            raise BenchError(f"GET {url}: layers {layers}, pushed {pushed}")
        config = manifest["config"]["digest"]
        async with ctx.session.get(f"{server.url}/v2/{repo}/blobs/{config}") as resp:
            await client.expect(resp, 200)
            config_bytes = await resp.read()
        diff_ids = json.loads(config_bytes).get("rootfs", {}).get("diff_ids")
        if sha256_digest(config_bytes) != config or diff_ids != [i.diff_id for i in self.chain]:
            raise BenchError(f"v2 config {config} of {repo}: diff_ids {diff_ids}")

    async def finish_round(self, ctx: Context, r: int) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


# --- the pull-through cache -------------------------------------------------------------------

MIRROR_PREFIX = "mirror"  # Moorage mirrors the Distribution under test under this prefix
MIRROR_METRIC = "moorage_mirror_upstream_requests_total"


@dataclass
class _MirrorImage:
    repo: str
    manifest: bytes
    config: bytes
    layers: list[Blob]


class MirrorPull(Workload):
    """Moorage as a pull-through cache of the Distribution under test (`proxy.upstreams`,
    prefix `mirror`). Each round pushes fresh images (blobs of their own, nothing deduplicated)
    straight into Distribution, then, timed apart:

    - cold: the first pull of an image through Moorage (fetched, streamed while verified and
      stored), against a direct pull of a like image from Distribution: `cold_vs_direct` is
      the overhead of the tee (target: within 10%). On loopback the upstream sends from its
      page cache at several GB/s and the figure says how much CPU the machine has left for
      the tee; `link_cold_vs_direct` is the same with the upstream over a network link
      (bench/link.py: a gigabit link with a 10 ms round trip, the direct pull through it too);
    - warm: the same image again through Moorage (served from the cache), against a pull of a
      like image pushed to Moorage itself: `warm_vs_local`;
    - concurrent: `mirror_clients` clients pull one more fresh image through Moorage at once;
      `fetches_per_blob` is what Moorage reports it sent upstream (its
      `moorage_mirror_upstream_requests_total`) per blob of that image (target: 1).

    A pull: the manifest and config with aiohttp, the layers with one curl, all at once.
    Runs on Moorage alone (Distribution is the upstream)."""

    min_rounds = 3
    name = "mirror_pull"
    title = "Pull through the cache"
    servers = ("moorage",)
    metrics = (
        Metric(
            "cold_mbps", "cold through the mirror", MBPS, "higher", limits=(*PUSH_LIMITS, SENDFILE)
        ),
        Metric("direct_mbps", "direct from the upstream", MBPS, "higher"),
        Metric("cold_vs_direct", "cold / direct time", "x", "lower", ("<=", 1.10)),
        Metric("link_cold_mbps", "cold through the mirror, upstream over a link", MBPS, "higher"),
        Metric("link_direct_mbps", "direct from the upstream over the link", MBPS, "higher"),
        Metric(
            "link_cold_vs_direct", "cold / direct time over the link", "x", "lower", ("<=", 1.10)
        ),
        Metric("warm_mbps", "warm through the mirror", MBPS, "higher", limits=PULL_LIMITS),
        Metric("local_mbps", "local image", MBPS, "higher", limits=PULL_LIMITS),
        Metric("warm_vs_local", "warm / local time", "x", "lower"),
        Metric("concurrent_mbps", "concurrent cold, aggregate", MBPS, "higher"),
        Metric("fetches_per_blob", "upstream fetches per blob", "", "lower", ("<=", 1.0)),
    )

    def skip_reason(self, ctx: Context) -> str | None:
        if not ctx.state.get("moorage", {}).get("mirror_upstream"):
            return "Moorage runs without a mirror here (cluster mode, or a revision without one)"
        return None

    def describe(self, p: Profile) -> str:
        return (
            f"images of {p.mirror_layers} layers of {_fmt_size(p.mirror_layer)}: cold pull "
            "through Moorage vs direct from Distribution, warm pull vs a local one, "
            f"{p.mirror_clients} concurrent cold pulls and the upstream fetches per blob"
        )

    def _image(self, p: Profile, repo: str, tag: str) -> _MirrorImage:
        layers = [Blob(f"{tag}-{i}", p.mirror_layer) for i in range(p.mirror_layers)]
        config = json.dumps({"architecture": "amd64", "os": "linux", "note": tag}).encode()
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": sha256_digest(config),
                    "size": len(config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": b.digest,
                        "size": b.size,
                    }
                    for b in layers
                ],
            }
        ).encode()
        return _MirrorImage(repo, manifest, config, layers)

    async def _push(self, ctx: Context, url: str, image: _MirrorImage) -> None:
        async def upload(digest: str, path: Path | None, data: bytes = b"") -> None:
            async with ctx.session.post(f"{url}/v2/{image.repo}/blobs/uploads/") as resp:
                await client.expect(resp, 202)
                location = resp.headers["Location"]
            if location.startswith("/"):
                location = url + location
            if path is not None:
                await client.curl_put_file(location, digest, path)
                return
            async with ctx.session.put(
                client.with_digest(location, digest),
                data=data,
                headers={"Content-Type": "application/octet-stream"},
            ) as resp:
                await client.expect(resp, 201)

        await upload(sha256_digest(image.config), None, image.config)
        for blob in image.layers:
            path = ctx.tmp / f"mirror-{blob.digest[7:19]}.bin"
            await asyncio.to_thread(blob.write, path)
            try:
                await upload(blob.digest, path)
            finally:
                path.unlink(missing_ok=True)
        async with ctx.session.put(
            f"{url}/v2/{image.repo}/manifests/v1",
            data=image.manifest,
            headers={"Content-Type": OCI_MANIFEST},
        ) as resp:
            await client.expect(resp, 201)

    async def _pull(self, ctx: Context, base: str, images: list[_MirrorImage]) -> float:
        """Seconds to pull every image at once (manifest, config, then all layers)."""
        t0 = time.perf_counter()

        async def head(image: _MirrorImage) -> None:
            url = f"{base}/v2/{image.repo}/manifests/v1"
            async with ctx.session.get(url, headers={"Accept": MANIFEST_ACCEPT}) as resp:
                await client.expect(resp, 200)
                if await resp.read() != image.manifest:
                    raise BenchError(f"GET {url}: not the pushed manifest")
            config = sha256_digest(image.config)
            digest, _, _ = await client.fetch_digest(
                ctx.session, f"{base}/v2/{image.repo}/blobs/{config}"
            )
            if digest != config:
                raise BenchError(f"config of {image.repo} from {base}: {digest}")

        await asyncio.gather(*(head(i) for i in images))
        urls = [f"{base}/v2/{i.repo}/blobs/{b.digest}" for i in images for b in i.layers]
        await client.curl_get(urls, ctx.profile.mirror_layer, parallel=len(urls))
        return time.perf_counter() - t0

    async def _upstream_blob_gets(self, ctx: Context, server: Server, upstream: str) -> float:
        # Each worker adds its counts to the shared ones within a second.
        await asyncio.sleep(1.5)
        async with ctx.session.get(f"{server.url}/metrics") as resp:
            await client.expect(resp, 200)
            text = await resp.text()
        total = 0.0
        for line in text.splitlines():
            if (
                line.startswith(MIRROR_METRIC + "{")
                and f'upstream="{upstream}"' in line
                and 'method="GET"' in line
                and 'object="blob"' in line
            ):
                total += float(line.rsplit(" ", 1)[1])
        return total

    async def setup(self, ctx: Context, server: Server) -> dict[str, float]:
        p = ctx.profile
        self.upstream = str(ctx.of(server)["mirror_upstream"])
        self.link = str(ctx.of(server).get("mirror_link") or "")
        self.local = self._image(p, "bench/mirror-local", "mirror-local")
        await self._push(ctx, server.url, self.local)
        return {}

    async def prepare_round(self, ctx: Context, r: int) -> None:
        p = ctx.profile
        self.cold = self._image(p, f"bench/mirror-cold-{r}", f"mirror-cold-{r}")
        self.direct = self._image(p, f"bench/mirror-direct-{r}", f"mirror-direct-{r}")
        self.shared = self._image(p, f"bench/mirror-shared-{r}", f"mirror-shared-{r}")
        self.link_cold = self._image(p, f"bench/mirror-link-cold-{r}", f"mirror-link-cold-{r}")
        self.link_direct = self._image(p, f"bench/mirror-link-dir-{r}", f"mirror-link-dir-{r}")
        images = [self.cold, self.direct, self.shared]
        if self.link:
            images += [self.link_cold, self.link_direct]
        for image in images:
            await self._push(ctx, self.upstream, image)

    async def run(self, ctx: Context, server: Server, r: int) -> dict[str, float]:
        p = ctx.profile
        size = p.mirror_layers * p.mirror_layer
        mirrored = dataclasses.replace(self.cold, repo=f"{MIRROR_PREFIX}/{self.cold.repo}")
        shared = dataclasses.replace(self.shared, repo=f"{MIRROR_PREFIX}/{self.shared.repo}")
        direct_s = await self._pull(ctx, self.upstream, [self.direct])
        cold_s = await self._pull(ctx, server.url, [mirrored])
        warm_s = await self._pull(ctx, server.url, [mirrored])
        local_s = await self._pull(ctx, server.url, [self.local])
        before = await self._upstream_blob_gets(ctx, server, self.upstream)
        t0 = time.perf_counter()
        await asyncio.gather(
            *(self._pull(ctx, server.url, [shared]) for _ in range(p.mirror_clients))
        )
        concurrent_s = time.perf_counter() - t0
        fetched = await self._upstream_blob_gets(ctx, server, self.upstream) - before
        link = {}
        if self.link:
            over_link = f"{MIRROR_PREFIX}-link/{self.link_cold.repo}"
            link_direct_s = await self._pull(ctx, self.link, [self.link_direct])
            link_cold_s = await self._pull(
                ctx, server.url, [dataclasses.replace(self.link_cold, repo=over_link)]
            )
            link = {
                "link_cold_mbps": mbps(size, link_cold_s),
                "link_direct_mbps": mbps(size, link_direct_s),
                "link_cold_vs_direct": link_cold_s / link_direct_s,
            }
        return {
            **link,
            "cold_mbps": mbps(size, cold_s),
            "direct_mbps": mbps(size, direct_s),
            "cold_vs_direct": cold_s / direct_s,
            "warm_mbps": mbps(size, warm_s),
            "local_mbps": mbps(size, local_s),
            "warm_vs_local": warm_s / local_s,
            "concurrent_mbps": mbps(size * p.mirror_clients, concurrent_s),
            "fetches_per_blob": fetched / (p.mirror_layers + 1),
        }


# --- mixed load (issue 14) ---------------------------------------------------------------------

TAIL = 32  # the bytes of its own at the end of each fresh blob


class FreshBlob:
    """`size` bytes new to the registry: a body shared by every fresh blob of that size, then
    32 bytes of its own. Its digest is new, so the registry takes in and stores every byte,
    yet the client hashes only the 32 (the body's SHA-256 state is computed once per size and
    copied): with a hundred clients pushing, the client's own hashing would otherwise take a
    core of the two."""

    _bodies: dict[int, tuple[Blob, Any]] = {}

    def __init__(self, tag: str, size: int) -> None:
        self.size = size
        self.tail = hashlib.sha256(tag.encode()).digest()[:TAIL]
        self.body, state = self._body(size)
        h = state.copy()
        h.update(self.tail)
        self.digest = "sha256:" + h.hexdigest()

    @classmethod
    def _body(cls, size: int) -> tuple[Blob, Any]:
        if size not in cls._bodies:
            body = Blob(f"mix-body-{size}", size - TAIL)
            h = hashlib.sha256()
            for chunk in body.chunks():
                h.update(chunk)
            cls._bodies[size] = (body, h)
        return cls._bodies[size]

    async def stream(self) -> Any:
        """The bytes, 1 MiB at a time (an aiohttp body: sent chunked, as docker does)."""
        for chunk in self.body.chunks():
            yield chunk
        yield self.tail


@dataclass
class _MixImage:
    repo: str
    tag: str
    layer: FreshBlob
    config: bytes
    manifest: bytes


def _mix_image(repo: str, tag: str, size: int) -> _MixImage:
    layer = FreshBlob(f"{repo}:{tag}", size)
    config = json.dumps({"architecture": "amd64", "os": "linux", "mix": f"{repo}:{tag}"}).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha256_digest(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer.digest,
                    "size": size,
                }
            ],
        }
    ).encode()
    return _MixImage(repo, tag, layer, config, manifest)


class Corrupt(BenchError):
    """A wrong answer under load (bytes or digests): fails the run, unlike an error status or a
    failed connection, which are counted."""


def _same_digest(resp: aiohttp.ClientResponse, digest: str) -> None:
    got = resp.headers.get("Docker-Content-Digest")
    if got != digest:
        raise Corrupt(f"{resp.method} {resp.url}: Docker-Content-Digest {got}, expected {digest}")


def _percentile(values: list[float], q: float) -> float:
    """Nearest rank: the smallest value with at least q of them at or below it."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(len(ordered) * q) - 1))]


def _size_label(size: int) -> str:
    return f"{size / 1_000_000:g}MB"


@dataclass
class _Op:
    op: str  # "push" or "pull"
    size: int
    seconds: float
    error: str | None = None
    steps: dict[str, float] = field(default_factory=dict)  # a push's: seconds per request


# A push's requests, in order (the keys of _Op.steps): the layer's upload started, its body
# sent in one PATCH, the upload committed, the config blob put, the manifest put.
PUSH_STEPS = ("start", "patch", "commit", "config", "manifest")


class MixedLoad(Workload):
    """Many clients at once, each doing different things, judged by tail latency per operation
    (as Zot's `zb` and the OpenStack registry study measure): for each client count N of the
    profile, three phases of `mix_seconds` each (clients start operations until then and finish
    the one in flight):

    - `loopN`: N clients, each looping: push a fresh image (one layer of 1, 10 or 100 MB in
      turn; POST, PATCH streamed chunked, PUT ?digest=; the config; the manifest), then pull it
      (manifest, config, layer);
    - `mixN`: N clients, each operation a pull (75%) of one of the images pushed before the
      run (`mix_pool` per size) or a push (25%) of a fresh one, sizes drawn at random;
    - `stallN`: the same mix with one more client that starts a PATCH declaring 1 GiB, sends
      a few MiB and then nothing, holding the connection for the whole phase: the others must
      not notice;
    - `openR`, once after them: the same mix, each operation started at its own moment (a
      Poisson process of R a second, the same moments for both servers) however many are
      running, so that both servers are judged under the same offered load.

    Per phase and operation: p50, p90, p99 of the whole operation's time (all sizes; per size
    in the detail table), the count, errors (an error status or a failed connection: counted,
    not failed; wrong bytes fail the run), operations and MB/s, and the client's and server's
    CPU seconds. Every pull checks the manifest and config bytes, the layer's length and
    `Docker-Content-Digest` and its tail (the 32 bytes that make it fresh); after the round one
    image per size pushed under load is pulled again and hashed whole.

    The clients are aiohttp coroutines on the benchmark's event loop (`mix_procs` spreads them
    over processes, each with a loop of its own). Per phase it also reports how late the
    clients' loop ran, the share of the phase it waited for a core, and how many pulls and
    pushes ran at once: on two cores shared with the server the clients are short of CPU, and
    in the closed phases a server that ends pushes sooner has more of its clients pulling at
    once, each pull with a smaller share (docs/performance.md, "Closed and open mixes")."""

    name = "mixed_load"
    title = "Mixed load"
    min_rounds = 1
    max_rounds = 1

    def phases(self, p: Profile) -> list[tuple[str, int, str]]:
        """(name, clients, kind) in the order run; the open phase has no fixed clients."""
        closed = [
            (f"{kind}{n}", n, kind) for n in p.mix_clients for kind in ("loop", "mix", "stall")
        ]
        return [*closed, (f"open{p.mix_open_rate:g}", 0, "open")]

    def metrics_for(self, p: Profile) -> tuple[Metric, ...]:
        out: list[Metric] = []
        for phase, _, _ in self.phases(p):
            for op in ("push", "pull"):
                out.append(Metric(f"{phase}.{op}.p50_ms", f"{phase} {op} p50", "ms", "lower"))
                out.append(Metric(f"{phase}.{op}.p99_ms", f"{phase} {op} p99", "ms", "lower"))
            out.append(Metric(f"{phase}.mbps", f"{phase} push + pull", MBPS, "higher"))
            out.append(
                Metric(f"{phase}.errors", f"{phase} errors", "operations", "lower", ("<=", 0.0))
            )
        return tuple(out)

    def extra_record(self, p: Profile) -> dict[str, Any]:
        return {
            "phases": [phase for phase, _, _ in self.phases(p)],
            "sizes": [_size_label(s) for s in p.mix_sizes],
        }

    def describe(self, p: Profile) -> str:
        sizes = "/".join(_size_label(s) for s in p.mix_sizes)
        procs = self.procs(p)
        return (
            f"{' and '.join(map(str, p.mix_clients))} clients at once, {p.mix_seconds:g} s per "
            f"phase: push then pull of fresh {sizes} images in a loop; a 75/25 pull/push mix; "
            f"the mix with one more client holding a {_fmt_size(p.mix_stall_size)} upload "
            f"stalled after {_fmt_size(p.mix_stall_sent)}; then the mix open, "
            f"{p.mix_open_rate:g} operations started a second; p50/p90/p99 per operation, "
            f"errors; the clients in {procs} process{'es' if procs > 1 else ''}"
        )

    async def prepare(self, ctx: Context) -> None:
        p = ctx.profile
        self.pool = _pool_images(p)
        self.fresh: list[_MixImage] = []  # the images pushed (or tried) in the phase running
        self.pool_of_clients: concurrent.futures.ProcessPoolExecutor | None = None
        self.errors: dict[str, list[str]] = {}

    async def setup(self, ctx: Context, server: Server) -> dict[str, float]:
        for images in self.pool.values():
            for image in images:
                await self._push(ctx, server, image)
                await self._pull(ctx, server, image)
        return {}

    async def _push(
        self, ctx: Context, server: Server, image: _MixImage, steps: dict[str, float] | None = None
    ) -> None:
        """Push `image`; `steps` gets the seconds of each of its requests (PUSH_STEPS)."""
        session = ctx.session
        steps = {} if steps is None else steps
        names = iter(PUSH_STEPS)
        t = time.perf_counter()

        def step() -> None:
            nonlocal t
            now = time.perf_counter()
            steps[next(names)] = now - t
            t = now

        location = await client.start_upload(session, server, image.repo)
        step()
        async with session.patch(
            client.URL(location, encoded=True),
            data=image.layer.stream(),
            headers={"Content-Type": client.OCTET},
        ) as resp:
            await client.expect(resp, 202)
            location = client.absolute(server, resp.headers["Location"])
        step()
        async with session.put(client.with_digest(location, image.layer.digest)) as resp:
            await client.expect(resp, 201)
            _same_digest(resp, image.layer.digest)
        step()
        config = sha256_digest(image.config)
        location = await client.start_upload(session, server, image.repo)
        async with session.put(
            client.with_digest(location, config),
            data=image.config,
            headers={"Content-Type": client.OCTET},
        ) as resp:
            await client.expect(resp, 201)
            _same_digest(resp, config)
        step()
        async with session.put(
            f"{server.url}/v2/{image.repo}/manifests/{image.tag}",
            data=image.manifest,
            headers={"Content-Type": OCI_MANIFEST},
        ) as resp:
            await client.expect(resp, 201)
            _same_digest(resp, sha256_digest(image.manifest))
        step()

    async def _pull(self, ctx: Context, server: Server, image: _MixImage) -> None:
        session = ctx.session
        base = f"{server.url}/v2/{image.repo}"
        async with session.get(
            f"{base}/manifests/{image.tag}", headers={"Accept": MANIFEST_ACCEPT}
        ) as resp:
            await client.expect(resp, 200)
            if await resp.read() != image.manifest:
                raise Corrupt(f"GET {resp.url}: not the manifest pushed")
        async with session.get(f"{base}/blobs/{sha256_digest(image.config)}") as resp:
            await client.expect(resp, 200)
            if await resp.read() != image.config:
                raise Corrupt(f"GET {resp.url}: not the config pushed")
        layer = image.layer
        async with session.get(f"{base}/blobs/{layer.digest}") as resp:
            await client.expect(resp, 200)
            n, last = 0, b""
            async for piece in resp.content.iter_any():
                n += len(piece)
                last = piece[-TAIL:] if len(piece) >= TAIL else (last + piece)[-TAIL:]
            header = resp.headers.get("Docker-Content-Digest")
            if (n, last, header) != (layer.size, layer.tail, layer.digest):
                raise Corrupt(
                    f"GET {resp.url}: {n} bytes ending {last.hex()}, digest header {header}; "
                    f"pushed {layer.size} ending {layer.tail.hex()}"
                )

    async def _timed(
        self, ops: list[_Op], op: str, size: int, coro: Any, steps: dict[str, float] | None = None
    ) -> bool:
        t0 = time.perf_counter()
        error = None
        try:
            await coro
        except Corrupt:
            raise
        except (BenchError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {str(exc)[:300]}"
        ops.append(_Op(op, size, time.perf_counter() - t0, error, steps or {}))
        if error is not None:
            await asyncio.sleep(0.05)  # no tight loop against a refusing server
        return error is None

    async def _client(
        self,
        ctx: Context,
        server: Server,
        r: int,
        phase: str,
        kind: str,
        i: int,
        deadline: float,
        ops: list[_Op],
    ) -> None:
        p = ctx.profile
        rng = random.Random(f"{phase}/{i}")
        repo = f"bench/mix-{r}/{phase}/c{i}"
        k = 0
        while time.monotonic() < deadline:
            if kind == "loop":
                size = p.mix_sizes[(i + k) % len(p.mix_sizes)]
                image = _mix_image(repo, f"t{k}", size)
                self.fresh.append(image)
                steps: dict[str, float] = {}
                pushed = self._push(ctx, server, image, steps)
                if await self._timed(ops, "push", size, pushed, steps):
                    await self._timed(ops, "pull", size, self._pull(ctx, server, image))
            else:
                await self._mix_op(ctx, server, rng, repo, f"t{k}", ops)
            k += 1

    async def _mix_op(
        self,
        ctx: Context,
        server: Server,
        rng: random.Random,
        repo: str,
        tag: str,
        ops: list[_Op],
    ) -> None:
        """One operation of the 75/25 mix: a pull of a pool image or a push of a fresh one."""
        sizes = ctx.profile.mix_sizes
        if rng.random() < 0.25:
            size = rng.choice(sizes)
            image = _mix_image(repo, tag, size)
            self.fresh.append(image)
            steps: dict[str, float] = {}
            await self._timed(ops, "push", size, self._push(ctx, server, image, steps), steps)
        else:
            size = rng.choice(sizes)
            image = rng.choice(self.pool[size])
            await self._timed(ops, "pull", size, self._pull(ctx, server, image))

    async def _open(
        self, ctx: Context, server: Server, r: int, phase: str, deadline: float
    ) -> _ClientsDone:
        """The open phase: operations of the 75/25 mix started at random times (a Poisson
        process of `mix_open_rate` a second, the same times for both servers) until the
        deadline, each on its own, however many are still running. In the closed phases a
        server that finishes pushes sooner has more of its clients pulling at once, and each
        pull gets a smaller share; here both servers get the same operations at the same
        moments, and a server that keeps up keeps its latencies."""
        rng = random.Random(phase)
        ops: list[_Op] = []
        cpu0, wait0 = _own_cpu(), _run_queue_wait()
        running: list[asyncio.Future[None]] = []
        at = time.monotonic()
        k = 0
        while True:
            at += rng.expovariate(ctx.profile.mix_open_rate)
            if at >= deadline:
                break
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            op_rng = random.Random(f"{phase}/{k}")
            repo = f"bench/mix-{r}/{phase}/o{k}"
            running.append(asyncio.ensure_future(self._mix_op(ctx, server, op_rng, repo, "t", ops)))
            k += 1
        await asyncio.gather(*running)
        return _ClientsDone(ops, [], [], _own_cpu() - cpu0, _run_queue_wait() - wait0, 0.0)

    async def _stall(
        self, ctx: Context, server: Server, repo: str, stop: asyncio.Event
    ) -> dict[str, float]:
        """Start a PATCH declaring `mix_stall_size` bytes, send `mix_stall_sent`, then nothing
        until `stop`. Returns how long the connection was held and whether the server closed
        it (or answered) first."""
        p = ctx.profile
        location = await client.start_upload(ctx.session, server, repo)
        url = client.URL(location, encoded=True)
        reader, writer = await asyncio.open_connection(url.host, url.port)
        head = (
            f"PATCH {url.raw_path_qs} HTTP/1.1\r\nHost: {url.host}:{url.port}\r\n"
            f"Content-Type: {client.OCTET}\r\nContent-Length: {p.mix_stall_size}\r\n\r\n"
        )
        writer.write(head.encode())
        blob = Blob(f"mix-stall-{repo}", p.mix_stall_sent)
        for chunk in blob.chunks():
            writer.write(chunk)
            await writer.drain()
        t0 = time.perf_counter()
        answer = asyncio.ensure_future(reader.read(4096))
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({answer, stopped}, return_when=asyncio.FIRST_COMPLETED)
        held = time.perf_counter() - t0
        closed = answer.done()
        answer.cancel()
        stopped.cancel()
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return {"stall_held_s": held, "stall_closed_by_server": 1.0 if closed else 0.0}

    async def _phase(
        self, ctx: Context, server: Server, r: int, phase: str, n: int, kind: str
    ) -> dict[str, float]:
        p = ctx.profile
        ops: list[_Op] = []
        stop = asyncio.Event()
        stall = None
        if kind == "stall":
            stall = asyncio.ensure_future(
                self._stall(ctx, server, f"bench/mix-{r}/{phase}/stalled", stop)
            )
            await asyncio.sleep(0.2)  # let it start and stall before the others begin
        procs = max(1, min(n, self.procs(p)))
        remote = procs > 1  # the clients in processes of the pool, not on this loop
        # Every process's clients start at `start`: the processes of the pool are up, and each
        # builds its images (its first phase) before it.
        start = time.monotonic() + (START_MARGIN if remote else 0.0)
        deadline = start + p.mix_seconds
        jobs = [
            _Clients(server.url, p, r, phase, kind, list(range(j, n, procs)), start, deadline)
            for j in range(procs)
        ]
        lags: list[float] = []
        lagging = asyncio.ensure_future(_loop_lag(lags))
        loop = asyncio.get_running_loop()
        try:
            if remote:
                assert self.pool_of_clients is not None
                running = [
                    loop.run_in_executor(self.pool_of_clients, _run_clients, job) for job in jobs
                ]
                await asyncio.sleep(max(0.0, start - time.monotonic()))
            cpu0, server0, t0 = _own_cpu(), _tree_cpu(server), time.perf_counter()
            if remote:
                done = await asyncio.gather(*running)
            elif kind == "open":
                done = [await self._open(ctx, server, r, phase, deadline)]
            else:
                done = [await _clients(self, ctx.session, jobs[0])]
        finally:
            lagging.cancel()
        wall = time.perf_counter() - t0
        client_cpu = _own_cpu() - cpu0
        for result in done:
            ops.extend(result.ops)
        if remote:
            # This loop ran only the stalled upload: the clients' loops, CPU and images count.
            lags = [lag for result in done for lag in result.lags]
            client_cpu += sum(result.cpu_s for result in done)
            self.fresh.extend(_mix_image(*fresh) for result in done for fresh in result.fresh)
            late = max(result.late_s for result in done)
            if late > LATE:
                print(f"    {phase}: a client process started {late:.2f} s late")
        waits = [result.wait_s for result in done]
        out = {
            f"{phase}.wall_s": wall,
            f"{phase}.client_cpu_s": client_cpu,
            f"{phase}.server_cpu_s": _tree_cpu(server) - server0,
            f"{phase}.client_procs": float(procs),
            # The share of the phase a client loop spent waiting for a core (the mean of the
            # processes'): near 1, the clients were short of CPU, whoever had it.
            f"{phase}.client_wait": sum(waits) / len(waits) / wall,
        }
        if lags:
            out[f"{phase}.client_lag_p50_ms"] = _percentile(lags, 0.5)
            out[f"{phase}.client_lag_p99_ms"] = _percentile(lags, 0.99)
        if stall is not None:
            stop.set()
            out.update({f"{phase}.{k}": v for k, v in (await stall).items()})
        await self._check_and_drop(ctx, server)
        ok = [o for o in ops if o.error is None]
        moved = sum(o.size for o in ok)
        out[f"{phase}.errors"] = float(len(ops) - len(ok))
        out[f"{phase}.ops_per_s"] = len(ok) / wall
        out[f"{phase}.mbps"] = mbps(moved, wall)
        for op in ("push", "pull"):
            done = [o.seconds * 1000 for o in ok if o.op == op]
            out[f"{phase}.{op}.count"] = float(len(done))
            # Operations of this kind running at once, on average (Little's law: their summed
            # time over the phase's). In the closed phases the two kinds share the clients.
            out[f"{phase}.{op}.in_flight"] = sum(done) / 1000 / wall
            for q in (50, 90, 99):
                if done:
                    out[f"{phase}.{op}.p{q}_ms"] = _percentile(done, q / 100)
            for size in p.mix_sizes:
                of_size = [o.seconds * 1000 for o in ok if o.op == op and o.size == size]
                label = _size_label(size)
                out[f"{phase}.{op}.{label}.count"] = float(len(of_size))
                for q in (50, 90, 99):
                    if of_size:
                        out[f"{phase}.{op}.{label}.p{q}_ms"] = _percentile(of_size, q / 100)
                # Where a push of this size spends its time: each request's median.
                for name in PUSH_STEPS if op == "push" else ():
                    took = [
                        o.steps[name] * 1000
                        for o in ok
                        if o.op == op and o.size == size and name in o.steps
                    ]
                    if took:
                        out[f"{phase}.{op}.{label}.{name}_p50_ms"] = _percentile(took, 0.5)
        # Where the slowest push spent its time, request by request (the tail of the push p99).
        pushes = [o for o in ok if o.op == "push"]
        if pushes:
            slowest = max(pushes, key=lambda o: o.seconds)
            out[f"{phase}.push.slowest_ms"] = slowest.seconds * 1000
            out[f"{phase}.push.slowest.size"] = float(slowest.size)
            for name, seconds in slowest.steps.items():
                out[f"{phase}.push.slowest.{name}_ms"] = seconds * 1000
        self.errors.setdefault(server.name, []).extend(
            f"{phase} {o.op} {_size_label(o.size)}: {o.error}" for o in ops if o.error
        )
        return out

    @staticmethod
    def procs(p: Profile) -> int:
        return p.mix_procs or os.cpu_count() or 1

    async def run(self, ctx: Context, server: Server, r: int) -> dict[str, float]:
        values: dict[str, float] = {}
        procs = min(self.procs(ctx.profile), max(ctx.profile.mix_clients))
        if procs > 1:
            # Spawned, not forked: this process runs an event loop and holds connections.
            self.pool_of_clients = concurrent.futures.ProcessPoolExecutor(
                procs, mp_context=multiprocessing.get_context("spawn")
            )
        try:
            for phase, n, kind in self.phases(ctx.profile):
                values.update(await self._phase(ctx, server, r, phase, n, kind))
        finally:
            if self.pool_of_clients is not None:
                self.pool_of_clients.shutdown(cancel_futures=True)
                self.pool_of_clients = None
        return values

    async def _check_and_drop(self, ctx: Context, server: Server) -> None:
        """After a phase (untimed): the last image of each size pushed in it, pulled and hashed
        whole; then the layers the phase pushed are deleted from the server's blob store,
        straight from its data directory. A full run pushes tens of GB of fresh images, which
        kept would fill the disk, and freeing them through the registries would take their
        garbage collection (Distribution's blob DELETE only unlinks a blob from a repository;
        its collector runs offline), which is not what is measured. Nothing reads them again."""
        last: dict[int, _MixImage] = {}
        for image in self.fresh:
            last[image.layer.size] = image
        for size, image in sorted(last.items()):
            url = f"{server.url}/v2/{image.repo}/blobs/{image.layer.digest}"
            try:
                digest, n, _ = await client.fetch_digest(ctx.session, url)
            except BenchError:
                continue  # that push failed: counted as an error already
            if (digest, n) != (image.layer.digest, size):
                raise Corrupt(f"GET {url}: {digest} ({n} bytes), pushed {image.layer.digest}")
        store = _blob_store(server)
        if store is None:
            raise BenchError(f"no blob store found in {server.root / 'data'}")
        layers = [image.layer.digest.removeprefix("sha256:") for image in self.fresh]
        await asyncio.to_thread(_drop_blobs, store, layers)
        self.fresh = []

    async def verify(self, ctx: Context, server: Server, r: int) -> None:
        for errors in self.errors.get(server.name, [])[:10]:
            print(f"    {server.name}: {errors}", flush=True)


START_MARGIN = 1.0  # seconds between handing a phase to the client processes and its start
LATE = 0.1  # a client process that starts its clients later than this is reported


@dataclass
class _Endpoint:
    """What a client needs of a server (bench/client.py reads `url`), sent to a process."""

    name: str
    url: str


@dataclass
class _Clients:
    """Some of a phase's clients, for one process: `clients` are their indices."""

    url: str
    profile: Profile
    r: int
    phase: str
    kind: str
    clients: list[int]
    start: float  # time.monotonic() (the same clock in every process)
    deadline: float


@dataclass
class _ClientsDone:
    ops: list[_Op]
    fresh: list[tuple[str, str, int]]  # (repo, tag, size) of each image pushed or tried
    lags: list[float]
    cpu_s: float
    wait_s: float  # the loop's thread's time runnable but not running (waiting for a core)
    late_s: float


_in_process: MixedLoad | None = None  # a client process's workload, its images built once


def _run_clients(job: _Clients) -> _ClientsDone:
    """In a client process: run `job`'s clients on an event loop and a session of its own."""
    global _in_process
    if _in_process is None:
        _in_process = MixedLoad()
        _in_process.pool = _pool_images(job.profile)
        _in_process.fresh = []
    workload = _in_process

    async def main() -> _ClientsDone:
        async with client.session() as session:
            await asyncio.sleep(max(0.0, job.start - time.monotonic()))
            lags: list[float] = []
            lagging = asyncio.ensure_future(_loop_lag(lags))
            try:
                done = await _clients(workload, session, job)
            finally:
                lagging.cancel()
            done.lags.extend(lags)
            return done

    return asyncio.run(main())


async def _clients(
    workload: MixedLoad, session: aiohttp.ClientSession, job: _Clients
) -> _ClientsDone:
    """Run `job`'s clients until its deadline (in this process, on its loop)."""
    late = max(0.0, time.monotonic() - job.start)
    cpu0, wait0 = _own_cpu(), _run_queue_wait()
    ctx = Context(job.profile, Path(os.devnull), session)
    server = cast(Server, _Endpoint("clients", job.url))
    ops: list[_Op] = []
    fresh_before = len(workload.fresh)
    await asyncio.gather(
        *(
            workload._client(ctx, server, job.r, job.phase, job.kind, i, job.deadline, ops)
            for i in job.clients
        )
    )
    fresh = [(i.repo, i.tag, i.layer.size) for i in workload.fresh[fresh_before:]]
    if _in_process is workload:
        workload.fresh = []  # the parent keeps them
    return _ClientsDone(ops, fresh, [], _own_cpu() - cpu0, _run_queue_wait() - wait0, late)


def _pool_images(p: Profile) -> dict[int, list[_MixImage]]:
    """The images the 75/25 mix pulls: `mix_pool` per size, pushed before the phases."""
    return {
        size: [
            _mix_image("bench/mix-pool", f"{_size_label(size).lower()}-{j}", size)
            for j in range(p.mix_pool)
        ]
        for size in p.mix_sizes
    }


def _blob_store(server: Server) -> Path | None:
    """The directory of a registry's committed blobs under the benchmark's data directory:
    Moorage's `storage/blobs/sha256` (moorage/storage/paths.py), Distribution's
    `docker/registry/v2/blobs/sha256`."""
    data = server.root / "data"
    for base in (data / "storage", data / "docker" / "registry" / "v2"):
        if (base / "blobs" / "sha256").is_dir():
            return base / "blobs" / "sha256"
    return None


def _drop_blobs(store: Path, hexes: list[str]) -> None:
    for hex_ in hexes:
        path = store / hex_[:2] / hex_
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)  # Distribution: <hex>/data
        else:
            path.unlink(missing_ok=True)  # Moorage: the blob itself


LAG_TICK = 0.02  # seconds between looks at the clients' event loop


async def _loop_lag(lags: list[float]) -> None:
    """How late the clients' event loop wakes a sleeper, in ms, every `LAG_TICK`: the clients
    share the loop, and when it is late every client's next read and write waits with it,
    whatever the server does."""
    while True:
        t = time.perf_counter()
        await asyncio.sleep(LAG_TICK)
        lags.append(max(0.0, (time.perf_counter() - t - LAG_TICK) * 1000))


def _run_queue_wait() -> float:
    """Seconds this thread has spent runnable but waiting for a core (Linux schedstat)."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def _tree_cpu(server: Server) -> float:
    total = 0.0
    for proc in server.processes():
        with contextlib.suppress(psutil.Error):
            cpu = proc.cpu_times()
            total += cpu.user + cpu.system
    return total


ALL: tuple[type[Workload], ...] = (
    BlobPush,
    BlobPull,
    ConcurrentPulls,
    ChunkedUploads,
    ImagePush,
    ImagePull,
    ManifestGet,
    BlobHead,
    TagsList,
    Catalog,
    V1PushPull,
    MirrorPull,
    MixedLoad,
)
