"""The two registries under test, started from scratch in temporary directories (with the
project's one server harness, tests/harness.py), and a sampler of their resource use (RSS and
CPU over the whole process tree)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.harness import (  # noqa: E402
    DistributionProcess,
    MoorageProcess,
    ServerProcess,
)

DISTRIBUTION_BIN = "/usr/bin/docker-registry"
START_TIMEOUT = 60.0


class Server(ServerProcess):
    """A registry under test: the harness's process plus what the report says about it."""

    label = "?"

    def start_and_wait(self) -> None:
        self.start_sync(START_TIMEOUT)

    def stop(self) -> None:
        self.stop_sync(30)

    def version(self) -> str:
        return "?"


class Moorage(MoorageProcess, Server):
    name = "moorage"
    label = "Moorage"

    def __init__(
        self,
        root: Path,
        workers: int,
        rev: str | None = None,
        mirror_of: str | None = None,
        mirror_link: str | None = None,
    ) -> None:
        """`mirror_of`: a registry's URL to mirror under the prefix `mirror` (the mirror
        workload), when the code run has the pull-through cache; `mirror_link`: the same
        registry through a network link (bench/link.py), mirrored under `mirror-link`."""
        source = None
        if rev is not None:
            # A clean copy of that commit's package, so other people's uncommitted changes in
            # a shared checkout are not what gets measured.
            source = root / "source"
            source.mkdir(parents=True, exist_ok=True)
            archive = subprocess.run(
                ["git", "-C", str(REPO_ROOT), "archive", rev, "moorage"],
                capture_output=True,
                check=True,
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
        config_py = (source or REPO_ROOT) / "moorage" / "config.py"
        self.mirror_of = mirror_of if "class ProxySettings" in config_py.read_text() else None
        config = None
        if self.mirror_of is not None:
            upstreams = [{"prefix": "mirror", "url": self.mirror_of, "ttl": "1h"}]
            if mirror_link is not None:
                upstreams.append({"prefix": "mirror-link", "url": mirror_link, "ttl": "1h"})
            config = {"proxy": {"upstreams": upstreams}}
        super().__init__(
            root / "data",
            root,
            workers,
            source=source,
            config=config,
            env={"MOORAGE_LOG_LEVEL": "warning"},
        )
        self.rev = rev

    def start_and_wait(self) -> None:
        super().start_and_wait()
        # Wait for every worker to be forked, so the tree is complete when sampled.
        deadline = time.monotonic() + START_TIMEOUT
        while len(self.processes()) < self.workers + (1 if self.workers > 1 else 0):
            if time.monotonic() > deadline:
                raise RuntimeError(f"moorage workers did not start:\n{self.log_tail()}")
            time.sleep(0.05)

    def version(self) -> str:
        def git(*args: str) -> str:
            try:
                return subprocess.run(
                    ["git", "-C", str(REPO_ROOT), *args],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout.strip()
            except (OSError, subprocess.CalledProcessError):
                return "?"

        if self.rev is not None:
            where = f"commit {git('rev-parse', '--short', self.rev)} (clean export)"
        else:
            dirty = " + uncommitted changes" if git("status", "--porcelain", "moorage") else ""
            where = f"working tree at {git('rev-parse', '--short', 'HEAD')}{dirty}"
        return f"moorage {where}, python {sys.version.split()[0]}, {self.workers} workers"


class Distribution(Server, DistributionProcess):
    """The harness's Distribution, without its access log (as Moorage's benchmark runs)."""

    label = "Distribution"

    def config(self) -> dict[str, Any]:
        config = super().config()
        config["log"]["accesslog"] = {"disabled": True}
        return config

    def version(self) -> str:
        try:
            out = subprocess.run(
                [DISTRIBUTION_BIN, "--version"], capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            out = "?"
        return out


def pss(pid: int) -> int | None:
    """Proportional set size in bytes (from /proc/PID/smaps_rollup: cheaper than psutil's
    memory_full_info, which reads all of smaps)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores), for measuring what other
    processes take while we run."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq


@dataclass
class Usage:
    peak_rss: int = 0  # bytes, whole tree at one instant
    peak_rss_process: int = 0  # bytes, the largest single process
    peak_pss: int = 0  # bytes, whole tree: shared pages split between the processes sharing them
    cpu_seconds: float = 0.0  # user + system, whole tree
    samples: int = 0
    wall: float = 0.0
    machine_busy_s: float = 0.0  # CPU seconds the whole machine was busy meanwhile


@dataclass
class Monitor:
    """Samples a server's process tree every `interval` seconds while active (a context manager):
    the peak summed RSS and the CPU seconds the tree spent meanwhile."""

    server: Server
    interval: float = 0.05
    usage: Usage = field(default_factory=Usage)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _procs: dict[int, psutil.Process] = field(default_factory=dict)
    _first: dict[int, float] = field(default_factory=dict)
    _last: dict[int, float] = field(default_factory=dict)

    def _sample(self, initial: bool = False) -> None:
        total = pss_total = 0
        for proc in self.server.processes():
            pid = proc.pid
            proc = self._procs.setdefault(pid, proc)
            try:
                with proc.oneshot():
                    rss = proc.memory_info().rss
                    cpu = proc.cpu_times()
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            cpu_s = cpu.user + cpu.system
            if pid not in self._first:
                self._first[pid] = cpu_s if initial else 0.0
            self._last[pid] = cpu_s
            total += rss
            pss_total += pss(pid) or rss
            self.usage.peak_rss_process = max(self.usage.peak_rss_process, rss)
        self.usage.peak_rss = max(self.usage.peak_rss, total)
        self.usage.peak_pss = max(self.usage.peak_pss, pss_total)
        self.usage.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> Monitor:
        self._start = time.perf_counter()
        self._busy0 = busy_seconds()
        self._sample(initial=True)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self._sample()
        self.usage.cpu_seconds = sum(self._last[p] - self._first[p] for p in self._last)
        self.usage.wall = time.perf_counter() - self._start
        self.usage.machine_busy_s = busy_seconds() - self._busy0


class ClientUsage:
    """CPU seconds the benchmark client itself spent (this process and the tools it waited for:
    curl, wrk, skopeo), to tell a client-bound run from a server-bound one."""

    def __enter__(self) -> ClientUsage:
        self._t0 = os.times()
        return self

    def __exit__(self, *exc: object) -> None:
        t1 = os.times()
        t0 = self._t0
        self.cpu_seconds = (
            (t1.user - t0.user)
            + (t1.system - t0.system)
            + (t1.children_user - t0.children_user)
            + (t1.children_system - t0.children_system)
        )
