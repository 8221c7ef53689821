#!/usr/bin/env python3
"""Moorage vs CNCF Distribution: the benchmark of issue 5.

Starts both registries from scratch (temporary directories, 127.0.0.1, plain HTTP), runs each
workload against both in alternation (A B A B ...), and prints a table of the medians with the
ratio Moorage/Distribution per metric, plus each server's peak RSS and CPU seconds per workload.
Writes everything (every sample, the machine, the versions) to a JSON file.

    python bench/bench.py                 # full run (a dozen minutes)
    python bench/bench.py --quick         # small sizes, 1 round: proves the script works (CI)
    python bench/bench.py --workloads blob_push,manifest_get --rounds 5

Exit status: 0 when every workload ran and every answer was correct (status codes, digests of
what was pushed and pulled); 1 otherwise. Timings are never asserted: targets missed are
reported, not failed. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

import client
import limits
import link
import workloads as wl
from client import BenchError
from profiling import PySpy, summarize
from servers import ClientUsage, Distribution, Monitor, Moorage, Server, busy_seconds

BENCH_DIR = Path(__file__).resolve().parent
TOOLS = ("curl", "wrk", "hey", "skopeo", "/usr/bin/docker-registry")
# The link between the mirror and its upstream in the mirror workload (bench/link.py): a
# gigabit link with a 10 ms round trip, a fast one for a registry that mirrors Docker Hub.
LINK_MBPS = 125.0
LINK_RTT_MS = 10.0


def machine_info() -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass

    def version(*cmd: str) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kib / (1 << 20), 1),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "curl": version("curl", "--version"),
        "wrk": version("wrk", "--version"),
        "skopeo": version("skopeo", "--version"),
    }


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.profile = wl.QUICK if args.quick else wl.FULL
        if args.big_blob:
            self.profile = dataclasses.replace(self.profile, big_blob=args.big_blob)
        if args.mix_clients:
            clients = tuple(int(n) for n in args.mix_clients.split(","))
            self.profile = dataclasses.replace(self.profile, mix_clients=clients)
        if args.mix_seconds:
            self.profile = dataclasses.replace(self.profile, mix_seconds=args.mix_seconds)
        if args.mix_procs is not None:
            self.profile = dataclasses.replace(self.profile, mix_procs=args.mix_procs)
        if args.mix_rate:
            self.profile = dataclasses.replace(self.profile, mix_open_rate=args.mix_rate)
        self.rounds = args.rounds or self.profile.rounds
        self.failures: list[str] = []
        self.quiet_timeouts = 0
        self.results: dict[str, Any] = {}
        # Processes sampled alongside each server under test and reported apart from it (the
        # cluster mode's PostgreSQL, Swift and HAProxy): name -> an object with processes().
        self.side: dict[str, Any] = {}

    def rounds_of(self, workload: wl.Workload) -> int:
        """--rounds if given; else the profile's, raised to the workload's minimum in full
        mode (runs of a couple of seconds vary by a third between rounds on a shared machine:
        more of them make a steadier median)."""
        if self.args.rounds:
            return int(self.args.rounds)
        if self.args.quick:
            return self.profile.rounds
        rounds = max(self.profile.rounds, workload.min_rounds)
        return min(rounds, workload.max_rounds) if workload.max_rounds else rounds

    def log(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    async def run_workload(
        self, workload: wl.Workload, servers: list[Server], ctx: wl.Context
    ) -> dict[str, Any]:
        record: dict[str, Any] = {
            "title": workload.title,
            "description": workload.describe(self.profile),
            "metrics": [m.__dict__ for m in workload.metrics_for(self.profile)],
            "setup_metrics": [m.__dict__ for m in workload.setup_metrics],
            "rss_target_mib": workload.rss_target_mib,
            "samples": {s.name: [] for s in servers},
            "setup": {},
            "usage": {s.name: [] for s in servers},
            "client_cpu_s": {s.name: [] for s in servers},
            **workload.extra_record(self.profile),
        }
        skip = workload.skip_reason(ctx)
        if skip:
            record["skipped"] = skip
            self.log(f"{workload.name}: skipped ({skip})")
            return record
        allowed = getattr(workload, "servers", None)
        servers = [s for s in servers if allowed is None or s.name in allowed]
        self.log(f"{workload.name}: {record['description']}")
        await workload.prepare(ctx)
        try:
            for server in servers:
                record["setup"][server.name] = await workload.setup(ctx, server)
            if isinstance(workload, wl._Populated):
                await self.populate(workload, servers, ctx, record)
            rounds = self.rounds_of(workload)
            record["rounds"] = rounds
            for r in range(rounds):
                await workload.prepare_round(ctx, r)
                for server in servers:
                    await asyncio.to_thread(os.sync)
                    others_before = await self.wait_quiet()
                    profile = None
                    if self.args.profile and server.name == "moorage" and r == 0:
                        raw = Path(self.args.profile) / f"{workload.name}.raw.txt"
                        profile = PySpy(server.proc.pid, raw)  # type: ignore[union-attr]
                    with (
                        ClientUsage() as cu,
                        Monitor(server) as mon,
                        contextlib.ExitStack() as stack,
                    ):
                        side = {
                            name: stack.enter_context(Monitor(procs, interval=0.25))
                            for name, procs in self.side.items()
                        }
                        if profile:
                            with profile:
                                values = await workload.run(ctx, server, r)
                        else:
                            values = await workload.run(ctx, server, r)
                    if profile:
                        summary = summarize(profile.out)
                        profile.out.with_name(f"{workload.name}.top.txt").write_text(summary)
                        self.log(f"  profile: {profile.out.with_name(workload.name + '.top.txt')}")
                    if not server.alive():
                        raise BenchError(f"{server.name} died:\n{server.log_tail()}")
                    await workload.verify(ctx, server, r)
                    u = mon.usage
                    side_cpu = {name: m.usage.cpu_seconds for name, m in side.items()}
                    # What the rest of the machine (other users' processes) took meanwhile.
                    ours = u.cpu_seconds + cu.cpu_seconds + sum(side_cpu.values())
                    others = max(0.0, u.machine_busy_s - ours)
                    record["samples"][server.name].append(values)
                    record["usage"][server.name].append(
                        {
                            "peak_rss_mib": u.peak_rss / (1 << 20),
                            "peak_pss_mib": u.peak_pss / (1 << 20),
                            "peak_rss_process_mib": u.peak_rss_process / (1 << 20),
                            "cpu_s": u.cpu_seconds,
                            "client_cpu_s": cu.cpu_seconds,
                            "others_cpu_s": others,
                            "others_cores_before": others_before,
                            "machine_busy_s": u.machine_busy_s,
                            "side_cpu_s": side_cpu,
                            "wall_s": u.wall,
                            "samples": u.samples,
                        }
                    )
                    record["client_cpu_s"][server.name].append(cu.cpu_seconds)
                    # The metrics, not every detail (the mixed load has a hundred values).
                    keys = {m["key"] for m in record["metrics"]}
                    shown = {k: v for k, v in values.items() if k in keys or "." not in k}
                    self.log(
                        f"  round {r + 1}/{rounds} {server.name:12} {_fmt_dict(shown)}  "
                        f"rss {u.peak_rss / (1 << 20):.0f} MiB (pss {u.peak_pss / (1 << 20):.0f}), "
                        f"cpu {u.cpu_seconds:.2f} s, client {cu.cpu_seconds:.2f} s, "
                        f"others {others:.2f} s, in {u.wall:.2f} s"
                    )
                await workload.finish_round(ctx, r)
        finally:
            await workload.teardown(ctx)
        self.summarize(record)
        return record

    async def populate(
        self,
        workload: wl._Populated,
        servers: list[Server],
        ctx: wl.Context,
        record: dict[str, Any],
    ) -> None:
        """Time the first tenth of the items on each server alone, then add the rest to all
        servers at once (untimed), then check each server holds them all."""
        items = workload.items(ctx)
        k = workload.sample_size(ctx)
        for server in servers:
            await self.wait_quiet()
            with Monitor(server) as mon:
                t0 = time.perf_counter()
                await workload.populate(ctx, server, items[:k])
                elapsed = time.perf_counter() - t0
            record["setup"][server.name].update(
                {"populate_per_s": k / elapsed, "populate_cpu_s": mon.usage.cpu_seconds}
            )
            self.log(
                f"  populate {server.name:12} {k:,} {workload.noun} in {elapsed:.1f} s "
                f"({k / elapsed:,.0f}/s), server cpu {mon.usage.cpu_seconds:.1f} s"
            )
        t0 = time.perf_counter()
        await asyncio.gather(*(workload.populate(ctx, s, items[k:]) for s in servers))
        self.log(
            f"  populate the other {len(items) - k:,} on both at once: "
            f"{time.perf_counter() - t0:.0f} s"
        )
        for server in servers:
            await workload.verify(ctx, server, -1)

    async def measure_limits(self, root: Path, when: str) -> None:
        """The machine's limits (bench/limits.py) in the data root, with the servers idle;
        measured before and after the workloads, since the disk's speed varies by the hour."""
        await self.wait_quiet()
        try:
            measured = await asyncio.to_thread(
                limits.measure, root / "limits", self.profile.limits_size
            )
        except OSError as exc:
            self.failures.append(f"limits ({when}): {exc}")
            self.log(f"FAILED limits ({when}): {exc}")
            return
        self.results.setdefault("limits", {})[when] = measured
        self.log(f"limits ({when}): {_fmt_dict(measured)} MB/s")

    async def wait_quiet(self) -> float:
        """Wait (up to --quiet-wait seconds) until the rest of the machine is nearly idle
        (other processes using less than --quiet-cores cores over half a second): other
        people's work on a shared machine skews a run. Returns the last load measured."""
        deadline = time.monotonic() + self.args.quiet_wait
        while True:
            b0 = busy_seconds()
            await asyncio.sleep(0.5)
            cores = (busy_seconds() - b0) / 0.5
            if cores < self.args.quiet_cores or time.monotonic() >= deadline:
                if cores >= self.args.quiet_cores:
                    self.quiet_timeouts += 1
                return cores

    def summarize(self, record: dict[str, Any]) -> None:
        names = list(record["samples"])
        record["median"] = {}
        for name in names:
            keys = {k for s in record["samples"][name] for k in s}
            record["median"][name] = {
                k: median([s[k] for s in record["samples"][name] if k in s]) for k in keys
            }
            usage = record["usage"][name]
            record["median"][name]["peak_rss_mib"] = max(
                (u["peak_rss_mib"] for u in usage), default=None
            )
            record["median"][name]["peak_pss_mib"] = max(
                (u["peak_pss_mib"] for u in usage), default=None
            )
            record["median"][name]["cpu_s"] = median([u["cpu_s"] for u in usage])
            record["median"][name]["others_cpu_s"] = median([u["others_cpu_s"] for u in usage])
        record["ratio"] = {}
        if "moorage" in record["median"] and "distribution" in record["median"]:
            m, d = record["median"]["moorage"], record["median"]["distribution"]
            for metric in record["metrics"]:
                k = metric["key"]
                if m.get(k) and d.get(k):
                    record["ratio"][k] = m[k] / d[k]
            for metric in record["setup_metrics"]:
                k = metric["key"]
                ms, ds = record["setup"].get("moorage", {}), record["setup"].get("distribution", {})
                if ms.get(k) and ds.get(k):
                    record["ratio"]["setup:" + k] = ms[k] / ds[k]

    async def run_workloads(
        self, classes: Any, chosen: Any, servers: list[Any], ctx: wl.Context
    ) -> None:
        """Each chosen workload against every server, its record (or its failure) kept;
        stops when a server died."""
        for cls in classes:
            if cls.name not in chosen:
                continue
            workload = cls()
            try:
                record = await self.run_workload(workload, servers, ctx)
            except (BenchError, aiohttp.ClientError, OSError, AssertionError) as exc:
                msg = f"{workload.name}: {type(exc).__name__}: {exc}"
                self.log("FAILED " + msg)
                if self.args.verbose:
                    traceback.print_exc()
                self.failures.append(msg)
                record = {"title": workload.title, "error": msg}
            self.results["workloads"][workload.name] = record
            dead = [s.name for s in servers if not s.alive()]
            if dead:
                self.failures.append(f"{', '.join(dead)} died; stopping")
                break

    async def main(self) -> int:
        args = self.args
        missing = [t for t in TOOLS if shutil.which(t) is None]
        if missing:
            print(f"missing tools: {', '.join(missing)} (bench/run.sh installs them)")
            return 1
        names = [w.name for w in wl.ALL]
        chosen = args.workloads.split(",") if args.workloads else names
        unknown = [n for n in chosen if n not in names]
        if unknown:
            print(f"unknown workloads: {unknown}; known: {names}")
            return 2
        workers = args.workers or os.cpu_count() or 1
        root = Path(tempfile.mkdtemp(prefix="moorage-bench-", dir=args.data_root))
        distribution = Distribution(root / "dist")
        # The mirror workload's upstream over a network link (bench/link.py), as well as
        # straight over loopback.
        relay = link.LinkProcess(distribution.url.removeprefix("http://"), LINK_MBPS, LINK_RTT_MS)
        moorage = Moorage(
            root / "moorage",
            workers,
            args.moorage_rev,
            mirror_of=distribution.url,
            mirror_link=relay.url,
        )
        servers: list[Server] = [moorage, distribution]
        started = time.time()
        self.results = {
            "profile": self.profile.__dict__,
            "rounds": self.rounds,
            "machine": machine_info(),
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
            await asyncio.to_thread(relay.start_and_wait)
            for s in servers:
                await asyncio.to_thread(s.start_and_wait)
                self.results["servers"][s.name] = {"version": s.version(), "url": s.url}
                self.log(f"started {s.version()} at {s.url} (pid {s.proc.pid})")
            async with client.session() as session:
                ctx = wl.Context(self.profile, root / "client", session)
                ctx.tmp.mkdir(parents=True)
                if moorage.mirror_of is not None and distribution.url == moorage.mirror_of:
                    # The upstream of the mirror workload (unless Distribution had to move
                    # to another port when it started).
                    ctx.of(moorage)["mirror_upstream"] = moorage.mirror_of
                    ctx.of(moorage)["mirror_link"] = relay.url
                await self.measure_limits(root, "before")
                await self.run_workloads(wl.ALL, chosen, servers, ctx)
                await self.measure_limits(root, "after")
        except asyncio.CancelledError:
            self.failures.append("interrupted")
        finally:
            for s in servers:
                s.stop()
            relay.stop()
            apply_limits(self.results)
            self.results["elapsed_s"] = time.time() - started
            self.results["failures"] = self.failures
            self.results["quiet_timeouts"] = self.quiet_timeouts
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(self.results, indent=1, sort_keys=True) + "\n")
            if args.keep:
                self.log(f"kept {root}")
            else:
                shutil.rmtree(root, ignore_errors=True)
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


def _fmt_dict(d: dict[str, float]) -> str:
    return ", ".join(f"{k} {_num(v)}" for k, v in d.items())


def _num(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def _met(metric: dict[str, Any], ratio: float | None, value: float | None) -> str:
    checks = []
    if ratio is not None:
        checks.append(ratio >= 1.0 if metric["better"] == "higher" else ratio <= 1.0)
    if metric.get("target") and value is not None:
        op, target = metric["target"]
        checks.append(value >= target if op == ">=" else value <= target)
    if not checks:
        return "-"
    return "yes" if all(checks) else "**no**"


def _target(metric: dict[str, Any]) -> str:
    t = "ratio >= 1.0" if metric["better"] == "higher" else "ratio <= 1.0"
    if metric.get("target"):
        op, value = metric["target"]
        t += f", {op} {_num(value)} {metric['unit']}"
    return t


def apply_limits(results: dict[str, Any]) -> None:
    """Each Moorage throughput as a fraction of the machine's limit that bounds it (the limits
    measured before and after the workloads: the higher of the two, the one the machine could
    reach in that run)."""
    measured = results.get("limits", {})
    if not measured:
        return
    best = {
        k: max(m[k] for m in measured.values())
        for k in limits.LABELS
        if all(k in m for m in measured.values())
    }
    results["limit"] = best
    for rec in results["workloads"].values():
        moorage = rec.get("median", {}).get("moorage", {})
        fractions = {}
        for metric in rec.get("metrics", []):
            bound = limits.limit_of(tuple(metric.get("limits") or ()), best)
            value = moorage.get(metric["key"])
            if bound and value:
                fractions[metric["key"]] = {
                    "limit": bound[0],
                    "limit_mbps": bound[1],
                    "fraction": value / bound[1],
                }
        if fractions:
            rec["of_limit"] = fractions


def _of_limit(rec: dict[str, Any], key: str) -> str:
    f = rec.get("of_limit", {}).get(key)
    if not f:
        return "-"
    return f"{f['fraction']:.2f} of {limits.SHORT[f['limit']]} {_num(f['limit_mbps'])}"


def render_limits(results: dict[str, Any]) -> list[str]:
    measured = results.get("limits", {})
    if not measured:
        return []
    whens = list(measured)
    lines = [
        "",
        "The machine's limits in this run (MB/s), with the servers idle; a throughput's "
        '"Of limit" is Moorage\'s median over the higher of the two measurements of the limit '
        "that bounds it (push: the smaller of disk and SHA-256; pull: sendfile).",
        "",
        "| Limit | " + " | ".join(whens) + " |",
        "| --- | " + " | ".join("---:" for _ in whens) + " |",
    ]
    for key, label in limits.LABELS.items():
        values = " | ".join(_num(measured[w].get(key)) for w in whens)
        lines.append(f"| {label} | {values} |")
    return lines


def render_mixed(rec: dict[str, Any]) -> list[str]:
    """The mixed load in detail: every percentile per phase, operation and size, then what
    each phase moved and cost."""
    med = rec["median"]
    m, d = med.get("moorage", {}), med.get("distribution", {})

    def three(values: dict[str, float], prefix: str) -> str:
        return " / ".join(_num(values.get(f"{prefix}.p{q}_ms")) for q in (50, 90, 99))

    def pair(key: str) -> str:
        if key.endswith((".count", ".errors")):
            return " / ".join("-" if v.get(key) is None else f"{v[key]:.0f}" for v in (m, d))
        return f"{_num(m.get(key))} / {_num(d.get(key))}"

    lines = [
        "",
        f"{rec['title']}, per operation (ms: the whole image pushed or pulled; done = "
        "operations completed without error). Ratio: Moorage p99 / Distribution p99.",
        "",
        "| Phase | Operation | Size | Moorage p50 / p90 / p99 | Distribution p50 / p90 / p99 "
        "| p99 ratio | Done M / D |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for phase in rec["phases"]:
        for op in ("push", "pull"):
            for size in ("all", *rec["sizes"]):
                prefix = f"{phase}.{op}" if size == "all" else f"{phase}.{op}.{size}"
                mp, dp = m.get(f"{prefix}.p99_ms"), d.get(f"{prefix}.p99_ms")
                ratio = _num(mp / dp) if mp and dp else "-"
                lines.append(
                    f"| {phase} | {op} | {size} | {three(m, prefix)} | {three(d, prefix)} | "
                    f"{ratio} | {pair(prefix + '.count')} |"
                )
    lines += [
        "",
        f"{rec['title']}, per phase (Moorage / Distribution). CPU: seconds of the phase, the "
        "server's whole process tree and the benchmark's own process (the clients). Stalled: "
        "how long the stalled upload's connection was held, and whether the server closed it "
        "(1) or it was still open when the phase ended (0). Client loop lag: how late the "
        "clients' shared event loop woke a 20 ms sleeper, p50 / p99 (ms); where it is near an "
        "operation's time, the benchmark's own loop held that operation back. Waiting for a core: "
        "the share of the phase the clients' loop thread was runnable but not running. At once: "
        "how many pulls and pushes ran at the same time on average (their summed time over the "
        "phase's); in the closed phases they share the clients, so a server that ends pushes "
        "sooner has more pulls running at once, each with a smaller share.",
        "",
        "| Phase | Wall (s) | Operations/s | MB/s | Errors | Server CPU (s) | Client CPU (s) "
        "| Client loop lag p50 | p99 | Client loop waiting for a core | Pulls at once "
        "| Pushes at once | Stalled held (s) | Stalled closed by server |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: |",
    ]
    for phase in rec["phases"]:
        keys = (
            "wall_s",
            "ops_per_s",
            "mbps",
            "errors",
            "server_cpu_s",
            "client_cpu_s",
            "client_lag_p50_ms",
            "client_lag_p99_ms",
            "client_wait",
            "pull.in_flight",
            "push.in_flight",
        )
        cells = [pair(f"{phase}.{k}") for k in keys]
        if phase.startswith("stall"):
            cells += [pair(f"{phase}.stall_held_s"), pair(f"{phase}.stall_closed_by_server")]
        else:
            cells += ["-", "-"]
        lines.append(f"| {phase} | " + " | ".join(cells) + " |")
    steps = wl.PUSH_STEPS
    lines += [
        "",
        f"{rec['title']}, the slowest push of each phase, request by request (ms): where the "
        "push p99's tail waited. Start: the layer's upload begun; patch: its body; commit: "
        "`PUT ?digest=`; config: the config blob (begun and put); manifest: the manifest PUT.",
        "",
        "| Phase | Server | Size | Total | " + " | ".join(steps) + " |",
        "| --- | --- | --- | ---: | " + " | ".join("---:" for _ in steps) + " |",
    ]
    for phase in rec["phases"]:
        for name, values in (("Moorage", m), ("Distribution", d)):
            total = values.get(f"{phase}.push.slowest_ms")
            if total is None:
                continue
            size = wl._size_label(int(values.get(f"{phase}.push.slowest.size", 0)))
            cells = [_num(values.get(f"{phase}.push.slowest.{step}_ms")) for step in steps]
            lines.append(
                f"| {phase} | {name} | {size} | {_num(total)} | " + " | ".join(cells) + " |"
            )
    return lines


def render(results: dict[str, Any]) -> str:
    """The Markdown report: the medians and ratios, then the resources per workload."""
    default = results["rounds"]
    more = [
        f"{w['title']}: {w['rounds']}"
        for w in results["workloads"].values()
        if w.get("rounds", default) != default
    ]
    lines = [
        f"Profile {results['profile']['name']}, medians of {default} round(s) per workload"
        + (f" (more for short ones: {'; '.join(more)})" if more else "")
        + ", ratio = Moorage / Distribution.",
        "",
        "| Workload | Metric | Moorage | Distribution | Ratio | Of limit | Target | Met |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    usage_rows = []
    for rec in results["workloads"].values():
        if "error" in rec:
            lines.append(f"| {rec['title']} | FAILED: {rec['error'][:80]} | | | | | | |")
            continue
        if "skipped" in rec:
            lines.append(f"| {rec['title']} | skipped: {rec['skipped']} | | | | | | |")
            continue
        med = rec.get("median", {})
        m, d = med.get("moorage", {}), med.get("distribution", {})
        for metric in rec["metrics"]:
            k = metric["key"]
            ratio = rec["ratio"].get(k)
            lines.append(
                f"| {rec['title']} | {metric['label']} ({metric['unit']}) | {_num(m.get(k))} | "
                f"{_num(d.get(k))} | {_num(ratio) if ratio else '-'} | {_of_limit(rec, k)} | "
                f"{_target(metric)} | {_met(metric, ratio, m.get(k))} |"
            )
        for metric in rec["setup_metrics"]:
            k = metric["key"]
            ms = rec["setup"].get("moorage", {}).get(k)
            ds = rec["setup"].get("distribution", {}).get(k)
            ratio = rec["ratio"].get("setup:" + k)
            lines.append(
                f"| {rec['title']} | {metric['label']} ({metric['unit']}) | {_num(ms)} | "
                f"{_num(ds)} | {_num(ratio) if ratio else '-'} | - | (informational) | - |"
            )
        rss_target = rec.get("rss_target_mib")
        rss_m = m.get("peak_rss_mib")
        pss_m = m.get("peak_pss_mib")
        met = "-"
        if rss_target and rss_m is not None:
            met = "RSS " + ("yes" if rss_m < rss_target else "**no**")
            if pss_m is not None:
                met += ", PSS " + ("yes" if pss_m < rss_target else "**no**")
        usage_rows.append(
            f"| {rec['title']} | {_num(rss_m)} | {_num(m.get('peak_pss_mib'))} | "
            f"{_num(d.get('peak_rss_mib'))} | {_num(m.get('cpu_s'))} | {_num(d.get('cpu_s'))} | "
            f"{_num(m.get('others_cpu_s'))} / {_num(d.get('others_cpu_s'))} | "
            f"{f'< {rss_target:g} MiB: {met}' if rss_target else ''} |"
        )
    lines += render_limits(results)
    for rec in results["workloads"].values():
        if rec.get("phases") and rec.get("median"):
            lines += render_mixed(rec)
    lines += [
        "",
        "Resources while the timed part ran. Peak RSS: the whole process tree at one instant, max "
        "over the rounds (Moorage = supervisor + workers; RSS counts pages the forked processes "
        "share once per process, PSS splits them). CPU: user + system seconds of the tree, median "
        "round. Others: CPU seconds that other processes on the machine took meanwhile (noise).",
        "",
        "| Workload | Moorage peak RSS (MiB) | Moorage peak PSS (MiB) | Distribution peak RSS "
        "(MiB) | Moorage CPU (s) | Distribution CPU (s) | Others' CPU (s) M / D | RSS target |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        *usage_rows,
    ]
    return "\n".join(lines) + "\n"


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, 1 round (CI)")
    ap.add_argument(
        "--cluster",
        action="store_true",
        help="cluster mode (bench/cluster.py): Moorage on PostgreSQL + S3, one node and three\n"
        "behind HAProxy, against Distribution on the same S3 and Moorage on SQLite",
    )
    ap.add_argument("--rounds", type=int, help="rounds per workload (full 3, quick 1)")
    ap.add_argument(
        "--workloads", help="comma-separated subset: " + ",".join(w.name for w in wl.ALL)
    )
    ap.add_argument("--out", default=str(BENCH_DIR / "results.json"), help="JSON results file")
    ap.add_argument("--markdown", help="also write the Markdown tables to this file")
    ap.add_argument(
        "--moorage-rev",
        metavar="REV",
        help="run Moorage from a clean export of this commit (default: the working tree)",
    )
    ap.add_argument(
        "--big-blob",
        type=_size,
        metavar="SIZE",
        help="size of the large blob pushed and pulled (e.g. 4G, 512M; default: full 1G,\n"
        "quick 64M): shows that memory does not grow with blob size",
    )
    ap.add_argument(
        "--mix-clients",
        metavar="N,N",
        help="the mixed load's client counts, one set of phases each (full 10,100; quick 4)",
    )
    ap.add_argument(
        "--mix-seconds",
        type=float,
        metavar="S",
        help="how long each phase of the mixed load starts operations (full 30, quick 3)",
    )
    ap.add_argument(
        "--mix-procs",
        type=int,
        metavar="P",
        help="processes the mixed load's clients run in (full 1: the benchmark's own event\n"
        "loop; quick 2; 0: one per core)",
    )
    ap.add_argument(
        "--mix-rate",
        type=float,
        metavar="R",
        help="operations started a second in the mixed load's open phase (full 10, quick 20)",
    )
    ap.add_argument("--workers", type=int, help="Moorage worker processes (default: cores)")
    ap.add_argument("--data-root", help="where the temporary data directories go (default $TMPDIR)")
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=None,
        help="before each timed run, wait up to this many seconds for other processes to\n"
        "quieten down (default: 5 full, 0 quick)",
    )
    ap.add_argument(
        "--quiet-cores",
        type=float,
        default=0.3,
        help="'quiet' = other processes use fewer cores than this (default 0.3)",
    )
    ap.add_argument(
        "--profile",
        metavar="DIR",
        help="record Moorage with py-spy during each workload's first round; writes\n"
        "DIR/<workload>.raw.txt and a summary DIR/<workload>.top.txt (skews that round)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary directories")
    ap.add_argument("-v", "--verbose", action="store_true", help="tracebacks on failures")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.profile:
        if not PySpy.available():
            print("--profile needs py-spy (pip install py-spy)")
            return 2
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    if args.quiet_wait is None:
        args.quiet_wait = 0.0 if args.quick else 5.0
    if args.cluster:
        import cluster

        return asyncio.run(cluster.ClusterRunner(args).main())
    return asyncio.run(Runner(args).main())


if __name__ == "__main__":
    # cluster.py imports this module as `bench`: let that be this one, not a second copy.
    sys.modules.setdefault("bench", sys.modules[__name__])
    sys.exit(main())
