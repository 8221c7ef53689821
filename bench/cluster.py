"""The benchmark's cluster mode (issue 10): Moorage scaled out against CNCF Distribution on S3.

    python bench/bench.py --cluster            # full sizes (1 GiB blob, 40 layers, wrk 10 s)
    python bench/bench.py --cluster --quick    # small sizes, one round: proves it works (CI)

Side by side in one run, on one PostgreSQL and one S3 server (OpenStack Swift's s3api), both
started with the project's own scripts (tests/services), each configuration with its own fresh
database and bucket:

- `moorage-1`: one Moorage node on PostgreSQL + S3;
- `moorage-3`: three nodes on PostgreSQL + S3 behind HAProxy round-robin, sharing `http.secret`
  (so an upload started on one node continues on another);
- `distribution-s3`: Distribution 2.8 with its `s3` storage driver, on the same Swift;
- `moorage-sqlite`: one node on the embedded default (filesystem + SQLite), the reference for
  CPU per request on SQLite against PostgreSQL.

Workloads (bench/workloads.py, as they are): one large blob pushed and pulled, a 40-layer image
pushed and pulled with skopeo, manifest GET under wrk. Besides wall time and throughput, the
CPU seconds of the registry's whole side (for the cluster: every node's process tree) per
request or per GiB, and apart from it those of PostgreSQL (postmaster and backends), Swift
(its servers and memcached) and HAProxy, sampled by the pids their scripts recorded.

This machine's core count bounds throughput: three nodes on 2 cores show the cost of a
cluster, not its scaling; docs/performance.md says what N nodes on N machines should give.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import client
import psutil
import workloads as wl
from servers import REPO_ROOT, Distribution, Moorage, Server

import bench

T = TypeVar("T")
SERVICES = REPO_ROOT / "tests" / "services"
NODES = 3
GiB = wl.GiB

# The configurations, in the order each round runs them, and their names in the tables.
ONE, THREE, DIST, SQLITE = "moorage-1", "moorage-3", "distribution-s3", "moorage-sqlite"
LABELS = {
    ONE: "Moorage 1 node",
    THREE: f"Moorage {NODES} nodes",
    DIST: "Distribution (S3)",
    SQLITE: "Moorage SQLite",
}
SIDE = ("postgres", "swift", "haproxy")
# The services each configuration uses: only theirs count in its "all" (the others idle, or
# finish the previous configuration's background work, such as Swift's container updates).
USES = {ONE: ("postgres", "swift"), THREE: SIDE, DIST: ("swift",), SQLITE: ()}
# Ratios reported: (numerator, denominator).
RATIOS = ((ONE, DIST), (THREE, DIST), (THREE, ONE))
RATIO_LABELS = {
    (ONE, DIST): "1 node / Distribution",
    (THREE, DIST): f"{NODES} nodes / Distribution",
    (THREE, ONE): f"{NODES} nodes / 1 node",
}


class ManifestGet(wl.ManifestGet):
    """bench's manifest GET, also returning how many requests wrk made (for CPU per request)."""

    async def run(self, ctx: wl.Context, server: Server, r: int) -> dict[str, float]:
        p = ctx.profile
        stats = await client.wrk(
            server.url + self.path(ctx),
            ctx.tmp,
            headers=self.headers(),
            duration=p.wrk_seconds,
            connections=p.wrk_connections,
            threads=p.wrk_threads,
        )
        return {k: stats[k] for k in ("req_per_s", "p99_ms", "requests")}


WORKLOADS: tuple[type[wl.Workload], ...] = (
    wl.BlobPush,
    wl.BlobPull,
    wl.ImagePush,
    wl.ImagePull,
    ManifestGet,
)


def units(workload: wl.Workload, values: dict[str, float], profile: wl.Profile) -> float:
    """What one round's CPU seconds are divided by: requests for manifest GET, else GiB moved."""
    if isinstance(workload, wl.ManifestGet):
        return values["requests"]
    if isinstance(workload, wl.BlobPush | wl.BlobPull):
        return profile.big_blob / GiB
    image = workload.image  # type: ignore[attr-defined]
    moved = image.manifest.size + image.config.size + sum(layer.size for layer in image.layers)
    return float(moved) / GiB


def unit_of(workload: wl.Workload) -> str:
    return "request" if isinstance(workload, wl.ManifestGet) else "GiB"


# --- the services ----------------------------------------------------------------------------


def run_script(script: str, *args: str, env: dict[str, str] | None = None) -> str:
    """Run a tests/services script to its end. In its own session: a Ctrl-C meant for the
    benchmark must not cut a start in half (what it started would be unknown to its stop)."""
    done = subprocess.run(
        ["bash", str(SERVICES / script), *args],
        capture_output=True,
        text=True,
        timeout=900,  # a first start installs the Debian packages
        start_new_session=True,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


class Service:
    """A server one of tests/services' scripts starts in its own run directory: `start` returns
    the settings it printed; `stop` stops what that directory records, and nothing else."""

    def __init__(self, script: str, run_dir: Path, env: dict[str, str] | None = None) -> None:
        self.script = script
        self.run_dir = run_dir
        self.env = env
        self.settings: dict[str, str] = {}

    def start(self, *args: str) -> dict[str, str]:
        out = run_script(self.script, "start", str(self.run_dir), *args, env=self.env)
        self.settings = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        return self.settings

    def stop(self) -> None:
        run_script(self.script, "stop", str(self.run_dir))


class PidFiles:
    """The processes a service script recorded in pid files, with their descendants (each
    PostgreSQL connection is a child of the postmaster): what `Monitor` samples for it."""

    def __init__(self, name: str, files: Callable[[], list[Path]]) -> None:
        self.name = name
        self.files = files

    def processes(self) -> list[psutil.Process]:
        procs: list[psutil.Process] = []
        for path in self.files():
            try:
                proc = psutil.Process(int(path.read_text().split()[0]))
                procs += [proc, *proc.children(recursive=True)]
            except (OSError, ValueError, IndexError, psutil.Error):
                continue
        return procs


# --- the registries under test ---------------------------------------------------------------


def s3_settings(s3: dict[str, str], bucket: str) -> dict[str, str]:
    return {
        "MOORAGE_STORAGE_DRIVER": "s3",
        "MOORAGE_STORAGE_S3_ENDPOINT": s3["S3_ENDPOINT"],
        "MOORAGE_STORAGE_S3_REGION": s3["S3_REGION"],
        "MOORAGE_STORAGE_S3_BUCKET": bucket,
        "MOORAGE_STORAGE_S3_ACCESSKEY": s3["S3_ACCESS_KEY"],
        "MOORAGE_STORAGE_S3_SECRETKEY": s3["S3_SECRET_KEY"],
    }


class MoorageNode(Moorage):
    """A Moorage node on PostgreSQL + S3 (settings as MOORAGE_* variables, as
    tests/cluster/test_cluster.py runs them)."""

    def __init__(
        self, name: str, root: Path, workers: int, rev: str | None, settings: dict[str, str]
    ) -> None:
        self.name = name
        super().__init__(root, workers, rev)
        self.env.update(settings)

    def version(self) -> str:
        return super().version() + ", PostgreSQL + S3"


class MoorageSQLite(Moorage):
    name = SQLITE
    label = LABELS[SQLITE]

    def version(self) -> str:
        return super().version() + ", filesystem + SQLite"


class MoorageCluster(Server):
    """NODES Moorage nodes behind HAProxy round-robin: one registry to the workloads (its URL is
    the balancer's), whose processes are every node's tree. HAProxy is sampled on its own."""

    name = THREE
    label = LABELS[THREE]

    def __init__(self, nodes: list[MoorageNode], balancer: Service) -> None:
        super().__init__(balancer.run_dir)
        self.nodes = nodes
        self.balancer = balancer

    def start_and_wait(self) -> None:
        for node in self.nodes:
            node.start_and_wait()
        lb = self.balancer.start(*(node.host for node in self.nodes))
        self.port = int(lb["LB_PORT"])

    def stop(self) -> None:
        try:
            self.balancer.stop()
        finally:
            for node in self.nodes:
                node.stop()

    def alive(self) -> bool:
        return all(node.alive() for node in self.nodes)

    def processes(self) -> list[psutil.Process]:
        return [p for node in self.nodes for p in node.processes()]

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(
            f"--- {n.name}:\n{n.log_tail(lines // len(self.nodes))}" for n in self.nodes
        )

    def version(self) -> str:
        return f"{len(self.nodes)} x ({self.nodes[0].version()}), HAProxy round-robin"


class DistributionS3(Distribution):
    """Distribution with its `s3` driver (aws-sdk-go) on Swift's s3api: path-style requests to
    `regionendpoint` over plain HTTP, SigV4. Blob GETs are served through the registry
    (`redirect.disable`), as Moorage serves them by default, so both move the same bytes."""

    name = DIST
    label = LABELS[DIST]

    def __init__(self, root: Path, s3: dict[str, str], bucket: str) -> None:
        super().__init__(root)
        self.s3 = s3
        self.bucket = bucket
        # aws-sdk-go refuses to start when AWS_CA_BUNDLE names a bundle (its HTTP client is
        # Distribution's own); the endpoint is plain HTTP and the keys are in the config.
        for key in [k for k in self.base_env if k.startswith("AWS_")]:
            del self.base_env[key]

    def config(self) -> dict[str, Any]:
        s3 = self.s3
        driver = {
            "accesskey": s3["S3_ACCESS_KEY"],
            "secretkey": s3["S3_SECRET_KEY"],
            "region": s3["S3_REGION"],
            "regionendpoint": s3["S3_ENDPOINT"],
            "bucket": self.bucket,
            "secure": False,
            "v4auth": True,
        }
        storage = {"s3": driver, "delete": {"enabled": True}, "redirect": {"disable": True}}
        return {**super().config(), "storage": storage}

    def version(self) -> str:
        return super().version() + ", s3 driver on Swift"


async def uninterrupted(fn: Callable[[], T]) -> T:
    """Run a blocking start in a thread and see it to its end even when the benchmark is
    cancelled (Ctrl-C) meanwhile, so that the cleanup stops what it started."""
    task = asyncio.ensure_future(asyncio.to_thread(fn))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await task
        raise


async def create_database(postgres: dict[str, str], name: str) -> str:
    """A new empty database; its SQLAlchemy URL."""
    admin = await asyncpg.connect(postgres["DATABASE_URL"])
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    p = postgres
    return (
        f"postgresql+asyncpg://{p['PGUSER']}:{p['PGPASSWORD']}@{p['PGHOST']}:{p['PGPORT']}/{name}"
    )


async def create_bucket(s3: dict[str, str], name: str) -> None:
    from moorage.storage.s3 import S3Driver

    driver = await S3Driver.open(
        name,
        endpoint=s3["S3_ENDPOINT"],
        region=s3["S3_REGION"],
        accesskey=s3["S3_ACCESS_KEY"],
        secretkey=s3["S3_SECRET_KEY"],
    )
    try:
        await driver.create_bucket()
    finally:
        await driver.close()


def db_upgrade(node: MoorageNode) -> None:
    """`moorage db upgrade` on the node's database, once, before any node starts (as
    docs/deploy/cluster.md says to), with the code the nodes will run."""
    node.root.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "moorage", "db", "upgrade", "--data-dir", str(node.data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        start_new_session=True,
        env=node.environment(),
        cwd=node.root,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"moorage db upgrade failed:\n{done.stdout}{done.stderr}")


# --- the run ---------------------------------------------------------------------------------


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


class ClusterRunner(bench.Runner):
    def __init__(self, args: Any) -> None:
        super().__init__(args)
        if args.out == str(bench.BENCH_DIR / "results.json"):
            args.out = str(bench.BENCH_DIR / "cluster-results.json")
        self.services: list[Service] = []
        self.servers: list[Server] = []

    async def run_workload(
        self, workload: wl.Workload, servers: list[Server], ctx: wl.Context
    ) -> dict[str, Any]:
        record = await super().run_workload(workload, servers, ctx)
        if "skipped" not in record:
            self.per_unit(workload, record)
        return record

    def per_unit(self, workload: wl.Workload, record: dict[str, Any]) -> None:
        """CPU seconds per request or per GiB (median over the rounds) of the registry and of
        each service apart, and the ratios between configurations."""
        record["unit"] = unit_of(workload)
        record["per_unit"] = {}
        for name, samples in record["samples"].items():
            uses = USES[name]
            rows = [
                (units(workload, values, self.profile), usage)
                for values, usage in zip(samples, record["usage"][name], strict=True)
            ]
            per: dict[str, float | None] = {
                "registry": _median([u["cpu_s"] / n for n, u in rows]),
                "all": _median(
                    [(u["cpu_s"] + sum(u["side_cpu_s"][k] for k in uses)) / n for n, u in rows]
                ),
                "units": _median([n for n, _ in rows]),
                "wall_s": _median([u["wall_s"] for _, u in rows]),
            }
            for side in uses:
                per[side] = _median([u["side_cpu_s"][side] / n for n, u in rows])
            record["per_unit"][name] = per
        med = record["median"]
        record["ratio"] = {}
        for a, b in RATIOS:
            if a not in med or b not in med:
                continue
            ratios = {}
            for metric in record["metrics"]:
                k = metric["key"]
                if med[a].get(k) and med[b].get(k):
                    ratios[k] = med[a][k] / med[b][k]
            for k in ("registry", "all"):
                pa, pb = record["per_unit"][a][k], record["per_unit"][b][k]
                if pa and pb:
                    ratios["cpu_per_unit_" + k] = pa / pb
            record["ratio"][f"{a}/{b}"] = ratios

    async def start_services(self, root: Path) -> tuple[dict[str, str], dict[str, str]]:
        pg = Service("postgres.sh", root / "pg")
        s3 = Service("swift-s3.sh", root / "s3")
        self.services += [pg, s3]
        for service in (pg, s3):
            t0 = time.perf_counter()
            await uninterrupted(service.start)
            self.log(f"{service.script} up in {time.perf_counter() - t0:.1f} s")
        self.side["postgres"] = PidFiles(
            "postgres", lambda: [Path(pg.settings["PG_DATA"]) / "postmaster.pid"]
        )
        pid_dir = Path(s3.settings["SWIFT_RUN_DIR"]) / "pid"
        updater = pid_dir / "object-updater.pid"
        self.side["swift"] = PidFiles(
            "swift", lambda: [f for f in sorted(pid_dir.glob("*.pid")) if f != updater]
        )
        # The object updater sweeps the disk every 2 minutes whatever the load (at Swift's
        # default of 5 s it cost a tenth of a core here, idle or not); container listings are
        # updated by the object server itself.
        # Sampled apart and counted in no configuration's cost.
        self.side["swift-updater"] = PidFiles("swift-updater", lambda: [updater])
        return pg.settings, s3.settings

    async def make_servers(
        self, root: Path, postgres: dict[str, str], s3: dict[str, str]
    ) -> list[Server]:
        args = self.args
        workers = args.workers or os.cpu_count() or 1
        secret = secrets.token_urlsafe(32)

        async def backend(name: str) -> dict[str, str]:
            database = await create_database(postgres, name.replace("-", "_"))
            await create_bucket(s3, name)
            return {
                "MOORAGE_METADATA_URL": database,
                **s3_settings(s3, name),
                "MOORAGE_HTTP_SECRET": secret,
            }

        one = MoorageNode(ONE, root / ONE, workers, args.moorage_rev, await backend(ONE))
        one.label = LABELS[ONE]
        settings = await backend(THREE)
        nodes = [
            MoorageNode(
                f"{THREE}-node{i + 1}",
                root / THREE / f"node{i + 1}",
                workers,
                args.moorage_rev,
                settings,
            )
            for i in range(NODES)
        ]
        balancer = Service("haproxy.sh", root / THREE / "lb", env={"HAPROXY_HEALTH_PATH": "/v2/"})
        self.services.append(balancer)
        self.side["haproxy"] = PidFiles("haproxy", lambda: [balancer.run_dir / "haproxy.pid"])
        await create_bucket(s3, DIST)
        servers: list[Server] = [
            one,
            MoorageCluster(nodes, balancer),
            DistributionS3(root / DIST, s3, DIST),
            MoorageSQLite(root / SQLITE, workers, args.moorage_rev),
        ]
        self.servers = servers
        await uninterrupted(lambda: db_upgrade(one))
        await uninterrupted(lambda: db_upgrade(nodes[0]))
        return servers

    async def main(self) -> int:
        args = self.args
        if args.profile:
            print("--profile is not supported in cluster mode")
            return 2
        missing = [t for t in bench.TOOLS if shutil.which(t) is None]
        if missing:
            print(f"missing tools: {', '.join(missing)} (bench/run.sh installs them)")
            return 1
        names = [w.name for w in WORKLOADS]
        chosen = args.workloads.split(",") if args.workloads else names
        unknown = [n for n in chosen if n not in names]
        if unknown:
            print(f"unknown workloads: {unknown}; cluster mode runs: {names}")
            return 2
        root = Path(tempfile.mkdtemp(prefix="moorage-cluster-", dir=args.data_root))
        root.chmod(0o755)  # PostgreSQL runs as its own user when we are root: it must get in
        started = time.time()
        self.results = {
            "mode": "cluster",
            "profile": self.profile.__dict__,
            "rounds": self.rounds,
            "machine": bench.machine_info(),
            "labels": LABELS,
            "servers": {},
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "workloads": {},
        }
        loop = asyncio.get_running_loop()
        main_task = asyncio.current_task()
        assert main_task is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, main_task.cancel)
        try:
            postgres, s3 = await self.start_services(root)
            servers = await self.make_servers(root, postgres, s3)
            for s in servers:
                t0 = time.perf_counter()
                await uninterrupted(s.start_and_wait)
                self.results["servers"][s.name] = {"version": s.version(), "url": s.url}
                self.log(
                    f"started {s.name}: {s.version()} at {s.url} "
                    f"in {time.perf_counter() - t0:.1f} s"
                )
            async with client.session() as session:
                ctx = wl.Context(self.profile, root / "client", session)
                ctx.tmp.mkdir(parents=True)
                await self.run_workloads(WORKLOADS, chosen, servers, ctx)
        except asyncio.CancelledError:
            self.failures.append("interrupted")
        except (RuntimeError, OSError, AssertionError, asyncpg.PostgresError) as exc:
            self.log(f"FAILED to set up: {type(exc).__name__}: {exc}")
            if args.verbose:
                traceback.print_exc()
            self.failures.append(f"setup: {type(exc).__name__}: {exc}")
        finally:
            self.cleanup(root)
            self.results["elapsed_s"] = time.time() - started
            self.results["failures"] = self.failures
            self.results["quiet_timeouts"] = self.quiet_timeouts
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(self.results, indent=1, sort_keys=True) + "\n")
        report = render(self.results)
        print()
        print(report)
        if args.markdown:
            Path(args.markdown).write_text(report)
        self.log(f"results in {args.out}; {self.results['elapsed_s']:.0f} s in all")
        if self.failures:
            print("FAILURES:\n  " + "\n  ".join(self.failures))
            return 1
        return 0

    def cleanup(self, root: Path) -> None:
        """Stop every registry, then every service (each attempted whatever the others do),
        then remove the run's directory. Synchronous: a second Ctrl-C cannot cut it short."""
        for stop in [s.stop for s in self.servers] + [s.stop for s in reversed(self.services)]:
            try:
                stop()
            except Exception as exc:
                self.log(f"cleanup: {type(exc).__name__}: {exc}")
                self.failures.append(f"cleanup: {exc}")
        if self.args.keep:
            self.log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


# --- the report ------------------------------------------------------------------------------

_num = bench._num


def _per(value: float | None, unit: str) -> str:
    """CPU per unit: milliseconds per request, seconds per GiB."""
    if value is None:
        return "-"
    return _num(value * 1000) if unit == "request" else _num(value)


def render(results: dict[str, Any]) -> str:
    labels: dict[str, str] = results.get("labels", LABELS)
    order = [n for n in (ONE, THREE, DIST, SQLITE) if n in results["servers"]]
    default = results["rounds"]
    more = [
        f"{w['title']}: {w['rounds']}"
        for w in results["workloads"].values()
        if w.get("rounds", default) != default
    ]
    lines = [
        f"Cluster mode, profile {results['profile']['name']}, medians of {default} round(s)"
        + (f" ({'; '.join(more)})" if more else "")
        + ". CPU, registry: the registry's processes (all nodes for the cluster); all: with "
        "the PostgreSQL, Swift and HAProxy it uses.",
        "",
        *(f"- {labels[n]}: {results['servers'][n]['version']}" for n in order),
        "",
        "| Workload | Metric | "
        + " | ".join(labels[n] for n in order)
        + " | "
        + " | ".join(RATIO_LABELS[r] for r in RATIOS)
        + " |",
        "| --- | --- |" + " ---: |" * (len(order) + len(RATIOS)),
    ]
    cpu_rows: list[str] = []
    db_rows: list[str] = []
    busy = {"machine": 0.0, "registries": 0.0, "services": 0.0, "client": 0.0, "others": 0.0}
    for rec in results["workloads"].values():
        if "error" in rec:
            lines.append(
                f"| {rec['title']} | FAILED: {rec['error'][:100]} |"
                + " |" * (len(order) + len(RATIOS))
            )
            continue
        med = rec.get("median", {})
        for metric in rec["metrics"]:
            k = metric["key"]
            ratios = [rec["ratio"].get(f"{a}/{b}", {}).get(k) for a, b in RATIOS]
            lines.append(
                f"| {rec['title']} | {metric['label']} ({metric['unit']}) | "
                + " | ".join(_num(med.get(n, {}).get(k)) for n in order)
                + " | "
                + " | ".join(_num(r) for r in ratios)
                + " |"
            )
        unit = rec["unit"]
        per_label = "ms per request" if unit == "request" else "s per GiB"
        for k, what in (("registry", "registry"), ("all", "all")):
            ratios = [rec["ratio"].get(f"{a}/{b}", {}).get("cpu_per_unit_" + k) for a, b in RATIOS]
            lines.append(
                f"| {rec['title']} | CPU, {what} ({per_label}) | "
                + " | ".join(_per(rec["per_unit"].get(n, {}).get(k), unit) for n in order)
                + " | "
                + " | ".join(_num(r) for r in ratios)
                + " |"
            )
        for n in order:
            per = rec["per_unit"].get(n)
            if per is None:
                continue
            m = med.get(n, {})
            cpu_rows.append(
                f"| {rec['title']} | {labels[n]} | {_num(per['wall_s'])} | {_num(m.get('cpu_s'))} "
                f"| {_per(per['registry'], unit)} | {_per(per.get('postgres'), unit)} "
                f"| {_per(per.get('swift'), unit)} | {_per(per.get('haproxy'), unit)} "
                f"| {_per(per['all'], unit)} | {_num(m.get('peak_rss_mib'))} "
                f"| {_num(m.get('others_cpu_s'))} |"
            )
            for u in rec["usage"][n]:
                side = sum(u.get("side_cpu_s", {}).values())
                busy["machine"] += u.get("machine_busy_s", 0.0)
                busy["registries"] += u["cpu_s"]
                busy["services"] += side
                busy["client"] += u["client_cpu_s"]
                busy["others"] += u["others_cpu_s"]
        one, sqlite = rec["per_unit"].get(ONE), rec["per_unit"].get(SQLITE)
        if one and sqlite and one["registry"] and sqlite["registry"]:
            db = (one["registry"] or 0) + (one["postgres"] or 0)
            db_rows.append(
                f"| {rec['title']} | {per_label} "
                f"| {_per(sqlite['registry'], unit)} | {_per(one['registry'], unit)} "
                f"| {_per(one['postgres'], unit)} | {_per(one['swift'], unit)} "
                f"| {_num(one['registry'] / sqlite['registry'])} "
                f"| {_num(db / sqlite['registry'])} |"
            )
    lines += [
        "",
        "CPU of the timed part, medians over the rounds. Registry: user + system seconds of its "
        "whole process tree (the cluster: all nodes; not HAProxy). Per unit: milliseconds per "
        "request for manifest GET, seconds per GiB moved otherwise; PostgreSQL (postmaster and "
        "backends), Swift (proxy, object, container, account servers, memcached; not its "
        "object updater's sweeps, which cost the same idle) and HAProxy apart; All = registry "
        "+ those. Others: CPU seconds the rest of the machine took meanwhile.",
        "",
        "| Workload | Configuration | Wall (s) | Registry CPU (s) | Registry per unit | "
        "PostgreSQL per unit | Swift per unit | HAProxy per unit | All per unit | "
        "Peak RSS (MiB) | Others' CPU (s) |",
        "| --- | --- |" + " ---: |" * 9,
        *cpu_rows,
    ]
    if db_rows:
        lines += [
            "",
            "One node, PostgreSQL + S3 against SQLite + filesystem: the node's own CPU per unit "
            "and what the database and Swift took besides (manifest GET is the metadata-bound "
            "one; the others move bytes to S3 instead of a local file).",
            "",
            "| Workload | Unit | SQLite node | PostgreSQL node | PostgreSQL server | Swift | "
            "Node ratio | Node + database ratio |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
            *db_rows,
        ]
    machine = results.get("machine", {})
    lines += [
        "",
        f"Machine: {machine.get('nproc', '?')} cores ({machine.get('cpu_model', '?')}). During "
        f"the timed runs it was busy {busy['machine']:.0f} CPU s: registries "
        f"{busy['registries']:.0f}, PostgreSQL + Swift + HAProxy {busy['services']:.0f}, the "
        f"client (curl, skopeo, wrk, this script) {busy['client']:.0f}, other processes "
        f"{busy['others']:.0f}.",
    ]
    return "\n".join(lines) + "\n"
