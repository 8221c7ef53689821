"""Start, stop and kill a real `moorage serve` process for the process-level tests.

Each server runs in its own session (process group), so a SIGKILL of the group takes the
supervisor and every worker down at once, like a machine losing power would, minus the disk.
Every wait is bounded; a server that does not come up fails with the tail of its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import psutil  # type: ignore[import-untyped]

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
# Bounds for every client request: a hung server fails the test instead of hanging it.
TIMEOUT = aiohttp.ClientTimeout(total=None, connect=10, sock_connect=10, sock_read=60)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _v2_ok(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/v2/")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


class ServerProcess:
    """One `python -m moorage serve` on 127.0.0.1, restartable on the same port and data."""

    def __init__(
        self,
        data_dir: Path,
        log_dir: Path,
        workers: int = 1,
        env: dict[str, str] | None = None,
        nofile: int | None = None,
    ) -> None:
        """`env`: extra environment (`MOORAGE_*` settings); `nofile`: the open-file limit
        (soft and hard) the server starts with, so a test can run it out with few sockets."""
        self.data_dir = data_dir
        self.log_dir = log_dir
        self.workers = workers
        self.env = env or {}
        self.nofile = nofile
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "server not started"
        return self.proc.pid

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"server-{self.port}-{self.starts}.log"

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    async def start(self, workers: int | None = None) -> None:
        """Start the server and wait (bounded) until GET /v2/ answers 200.

        If the port was taken meanwhile (other test runs share the machine), move to a new
        one: upload Locations are relative, so clients do not notice."""
        assert self.proc is None or self.proc.poll() is not None, "server already running"
        if workers is not None:
            self.workers = workers
        for _attempt in range(3):
            if await self._start_once():
                return
            self.port = free_port()
        raise AssertionError(f"no free port to start on:\n{self.log_tail()}")

    async def _start_once(self) -> bool:
        self.starts += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "moorage", "serve", "--listen", f"127.0.0.1:{self.port}"]
        argv += ["--data-dir", str(self.data_dir), "--workers", str(self.workers)]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.log_dir,
                start_new_session=True,
                env={**os.environ, **self.env},
                preexec_fn=None if self.nofile is None else self._limit_open_files,
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if "Address already in use" in self.log_tail():
                    return False
                raise AssertionError(
                    f"server exited with {self.proc.returncode} while starting:\n" + self.log_tail()
                )
            if await asyncio.to_thread(_v2_ok, self.port):
                return True
            await asyncio.sleep(0.1)
        self.kill_group()
        raise AssertionError(f"server not ready after {READY_TIMEOUT}s:\n{self.log_tail()}")

    def _limit_open_files(self) -> None:
        assert self.nofile is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def processes(self) -> list[psutil.Process]:
        """The server and all its descendants that are still alive."""
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def rss(self) -> int:
        """Resident memory of the whole process tree, in bytes."""
        total = 0
        for proc in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                total += proc.memory_info().rss
        return total

    def signal(self, signum: int) -> None:
        """Send `signum` to the server's main process only (it relays to its workers)."""
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
        self._wait_group_gone()

    def _wait_group_gone(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
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

    async def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, wait up to `timeout`, then SIGKILL the group. Returns the exit code seen
        after SIGTERM (None if it had to be killed)."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.signal(signal.SIGTERM)
        code = await self.wait_exit(timeout)
        await self.kill()
        return code

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


MakeServer = Callable[..., ServerProcess]
