"""Real server processes for the tests and the benchmark: the one harness that starts, waits
for, stops and kills them.

`ServerProcess` runs any server (CNCF Distribution in the benchmark, for one) on 127.0.0.1 in
its own session (process group), so that a SIGKILL of the group takes a supervisor and all its
workers at once, like a machine losing power would, minus the disk. `MoorageProcess` runs
`python -m moorage serve` with a data directory, workers, flags, a YAML config and settings from
the environment; it can be restarted on the same port and data. Every wait is bounded; a server
that does not come up fails with the tail of its log. Only processes started here are ever
signalled, by pid or by the group of a session started here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
READY_TIMEOUT = 30.0
# How a server that exits says its port was taken between choosing it and binding it: the
# kernel's words (as Python and Go spell them), or Moorage's line naming the holder.
PORT_TAKEN = ("address already in use", "is taken by", "is already serving on")
STOP_TIMEOUT = 20.0


def command_env() -> dict[str, str]:
    """The environment for a `python -m moorage COMMAND` a test runs: this one, with this
    checkout last on PYTHONPATH so the command runs from any directory."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p] + [str(REPO_ROOT)]
    )
    return env


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """One server process tree listening on 127.0.0.1:<port>; subclasses say what to run.

    `ready`: the statuses of `GET <url>/v2/` that mean the server is up (401 when it asks for
    credentials). `nofile`: the open-file limit (soft and hard) it starts with. `env`: the
    environment on top of this process's own. The log of each start is its own file."""

    name = "server"

    def __init__(
        self,
        root: Path,
        *,
        log_dir: Path | None = None,
        env: dict[str, str] | None = None,
        nofile: int | None = None,
        ready: Sequence[int] = (200,),
        ssl_context: ssl.SSLContext | None = None,
        base_env: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.log_dir = log_dir or root
        self.env = dict(env or {})
        self.nofile = nofile
        self.ready = tuple(ready)
        self.ssl_context = ssl_context
        self.base_env = dict(os.environ) if base_env is None else dict(base_env)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    # -- what to run (subclasses) --------------------------------------------------------

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return {**self.base_env, **self.env}

    # -- where it is ---------------------------------------------------------------------

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://{self.host}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "server not started"
        return self.proc.pid

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}-{self.port}-{self.starts}.log"

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- starting ------------------------------------------------------------------------

    def _answers(self) -> int | None:
        """The status of GET /v2/, None when nothing answers."""
        handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
        if self.ssl_context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=self.ssl_context))
        opener = urllib.request.build_opener(*handlers)
        try:
            with opener.open(self.url + "/v2/", timeout=2) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return None

    def _limit_open_files(self) -> None:
        assert self.nofile is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def _start_once(self, timeout: float) -> bool:
        self.starts += 1
        self.root.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                start_new_session=True,
                env=self.environment(),
                preexec_fn=None if self.nofile is None else self._limit_open_files,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if any(words in self.log_tail().lower() for words in PORT_TAKEN):
                    return False
                raise AssertionError(
                    f"{self.name} exited with {self.proc.returncode} while starting:\n"
                    + self.log_tail()
                )
            if self._answers() in self.ready:
                return True
            time.sleep(0.1)
        self.kill_group()
        raise AssertionError(f"{self.name} not ready after {timeout}s:\n{self.log_tail()}")

    def start_sync(self, timeout: float = READY_TIMEOUT) -> None:
        """Start and wait (bounded) until /v2/ answers. If the port was taken meanwhile
        (other test runs share the machine), move to a new one."""
        assert self.proc is None or self.proc.poll() is not None, "server already running"
        for _attempt in range(3):
            if self._start_once(timeout):
                return
            self.port = free_port()
        raise AssertionError(f"no free port to start on:\n{self.log_tail()}")

    async def start(self, timeout: float = READY_TIMEOUT) -> None:
        await asyncio.to_thread(self.start_sync, timeout)

    # -- looking at it -------------------------------------------------------------------

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def processes(self) -> list[psutil.Process]:
        """The server and all its descendants that are still alive."""
        if self.proc is None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def rss(self) -> int:
        """Resident memory of the whole process tree, in bytes."""
        total = 0
        for proc in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                total += proc.memory_info().rss
        return int(total)

    # -- stopping ------------------------------------------------------------------------

    def signal(self, signum: int) -> None:
        """Send `signum` to the server's main process only (a supervisor relays it)."""
        assert self.proc is not None and self.proc.poll() is None, "server not running"
        os.kill(self.pid, signum)

    def kill_group(self) -> None:
        """SIGKILL the server's whole process group and reap the main process."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=STOP_TIMEOUT)
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, 0)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.02)

    async def kill(self) -> None:
        await asyncio.to_thread(self.kill_group)

    async def wait_exit(self, timeout: float) -> int | None:
        """The main process's exit code, or None if it is still running after `timeout`."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                return code
            await asyncio.sleep(0.05)
        return self.proc.poll()

    def stop_sync(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, wait up to `timeout`, then SIGKILL the group. Returns the exit code seen
        after SIGTERM (None if it had to be killed)."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.signal(signal.SIGTERM)
        try:
            code: int | None = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        self.kill_group()
        return code

    async def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        return await asyncio.to_thread(self.stop_sync, timeout)

    def cleanup(self) -> None:
        """Teardown: whatever state the test left the server in, leave no process behind."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=STOP_TIMEOUT)
        self.kill_group()


class DistributionProcess(ServerProcess):
    """`docker-registry serve` (CNCF Distribution, Debian's package) on 127.0.0.1. `config()`
    is its configuration: filesystem storage in `root/data`, deletes on; subclasses add to it
    (credentials, schema 1, another storage driver)."""

    name = "distribution"

    def config(self) -> dict[str, Any]:
        return {
            "version": "0.1",
            "log": {"level": "warn"},
            "storage": {
                "filesystem": {"rootdirectory": str(self.root / "data")},
                "delete": {"enabled": True},
            },
            "http": {"addr": self.host},
        }

    def command(self) -> list[str]:
        binary = shutil.which("docker-registry")
        assert binary, "docker-registry is not installed: run scripts/install-test-deps.sh"
        path = self.root / "config.yml"
        path.write_text(yaml.safe_dump(self.config()))
        return [binary, "serve", str(path)]


class MoorageProcess(ServerProcess):
    """`python -m moorage serve` on 127.0.0.1, restartable on the same port and data.

    `args`: more flags for `serve`; `config`: settings written to a YAML `--config` file;
    `env`: settings as `MOORAGE_*` variables; `source`: a directory holding the `moorage`
    package to run instead of this checkout's (the benchmark measures a clean export)."""

    name = "moorage"

    def __init__(
        self,
        data_dir: Path,
        log_dir: Path | None = None,
        workers: int = 1,
        *,
        args: Sequence[str | os.PathLike[str]] = (),
        config: dict[str, Any] | None = None,
        source: Path | None = None,
        **options: Any,
    ) -> None:
        super().__init__(data_dir.parent, log_dir=log_dir or data_dir.parent, **options)
        self.data_dir = data_dir
        self.workers = workers
        self.args = [os.fspath(a) for a in args]
        self.config = config
        self.source = source

    def command(self) -> list[str]:
        argv = [sys.executable, "-m", "moorage", "serve", "--listen", self.host]
        argv += ["--data-dir", str(self.data_dir), "--workers", str(self.workers)]
        if self.config is not None:
            path = self.log_dir / "config.yml"
            path.write_text(yaml.safe_dump(self.config))
            argv += ["--config", str(path)]
        return argv + self.args

    def environment(self) -> dict[str, str]:
        env = super().environment()
        # The package to run goes first on PYTHONPATH; this checkout last, so the server works
        # from any directory whether or not the package is pip-installed.
        paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        if self.source is not None:
            paths.insert(0, str(self.source))
        env["PYTHONPATH"] = os.pathsep.join([*paths, str(REPO_ROOT)])
        # Tests stop servers with SIGTERM all the time: no drain (http.draintimeout) unless the
        # test sets one. Not for another package (`source`), which may predate the setting.
        drain_set = "draintimeout" in (self.config or {}).get("http", {})
        if self.source is None and not drain_set:
            env.setdefault("MOORAGE_HTTP_DRAINTIMEOUT", "0")
        return env

    async def start(self, timeout: float = READY_TIMEOUT, workers: int | None = None) -> None:
        if workers is not None:
            self.workers = workers
        await super().start(timeout)


MakeServer = Callable[..., MoorageProcess]
