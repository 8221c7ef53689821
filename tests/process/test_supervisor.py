"""The supervisor and its port: workers die with a killed supervisor, so a restart on the same
port just works, and a port that is really taken is one clear line and a non-zero exit."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil  # type: ignore[import-untyped]
import pytest

from tests.harness import MakeServer

pytestmark = pytest.mark.timeout(120)

GONE_BOUND = 10.0  # seconds the orphaned workers may take to exit


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def test_workers_die_with_a_killed_supervisor_and_a_restart_on_the_port_works(
    make_server: MakeServer,
) -> None:
    # A long drain: orphaned workers must not drain (they would hold the port past the
    # second a restart waits for it).
    server = make_server(workers=2, config={"http": {"draintimeout": 60}})
    await server.start()
    workers = [p.pid for p in server.processes()[1:]]
    assert len(workers) == 2
    port = server.port
    try:
        os.kill(server.pid, signal.SIGKILL)
        assert server.proc is not None
        server.proc.wait(timeout=10)
        deadline = time.monotonic() + GONE_BOUND
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not any(_alive(pid) for pid in workers), "orphaned workers still running"
        # As a service manager would: start again at once, on the same port and data.
        await server.start()
        assert server.port == port, "the restarted server could not have its port back"
        assert len(server.processes()) == 3
    finally:
        for pid in workers:  # only if the test failed: the orphans it made
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    server.signal(signal.SIGINT)  # no drain
    assert await server.wait_exit(20) == 0, server.log_tail()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_taken_port_is_one_clear_line_and_a_failed_exit(tmp_path: Path, workers: int) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = [sys.executable, "-m", "moorage", "serve", "--listen", f"127.0.0.1:{port}"]
        argv += ["--data-dir", str(tmp_path / "data"), "--workers", str(workers)]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.splitlines() == [
        f"moorage: cannot listen on 127.0.0.1:{port}: Address already in use"
    ], result.stderr[-3000:]
