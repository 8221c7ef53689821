"""The supervisor and its port: workers die with a killed supervisor, so a restart on the same
port just works, and a port that is really taken is one clear line naming who holds it, and
exit status 1."""

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

from moorage import supervisor
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


def _serve(port: int, data: Path, workers: int, *more: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "moorage", "serve", "--listen", f"127.0.0.1:{port}"]
    argv += ["--data-dir", str(data), "--workers", str(workers), *more]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=data.parent)


def test_what_every_worker_would_fail_on_stops_the_supervisor_once(tmp_path: Path) -> None:
    """The supervisor builds the application before it forks (app.warm_up): a setting
    every worker would fail on as it starts (here an htpasswd line that is not bcrypt) ends
    the server at once, exit status 1 and the reason, with no worker started and restarted
    in a loop."""
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("alice:plaintext\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = _serve(port, tmp_path / "data", 2, "--htpasswd", str(htpasswd))
    assert result.returncode == 1, result.stderr[-3000:]
    reason = f"{htpasswd}:1: not a bcrypt htpasswd entry"
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert errors and all("cannot start the workers: " + reason in e for e in errors), errors
    assert "starting another" not in result.stderr


@pytest.mark.parametrize("workers", [1, 2])
def test_a_port_taken_by_another_program_names_it_in_one_line(tmp_path: Path, workers: int) -> None:
    # This test's own process holds the port, as docker-registry or anything else would.
    name = Path("/proc/self/comm").read_text().strip()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _serve(port, tmp_path / "data", workers)
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.splitlines() == [
        f"moorage: cannot listen on 127.0.0.1:{port}: port {port} is taken by {name} "
        f"(pid {os.getpid()})"
    ], result.stderr[-3000:]
    assert result.stdout == ""


def test_a_port_taken_on_all_addresses_names_the_holder(tmp_path: Path) -> None:
    """A listener on the wildcard address (a service on 0.0.0.0) takes the port for 127.0.0.1."""
    name = Path("/proc/self/comm").read_text().strip()
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _serve(port, tmp_path / "data", 1)
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.splitlines() == [
        f"moorage: cannot listen on 127.0.0.1:{port}: port {port} is taken by {name} "
        f"(pid {os.getpid()})"
    ], result.stderr[-3000:]


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_second_moorage_on_the_port_says_one_is_serving(
    make_server: MakeServer, tmp_path: Path, workers: int
) -> None:
    """install.sh run again while the first one serves: one line naming the one serving (the
    supervisor, not one of its workers), exit status 1, and the first one goes on."""
    first = make_server(workers=workers)
    await first.start()
    second = await asyncio.to_thread(_serve, first.port, tmp_path / "second", 1)
    assert second.returncode == 1, second.stderr[-3000:]
    assert second.stderr.splitlines() == [
        f"moorage: a Moorage is already serving on 127.0.0.1:{first.port} (pid {first.pid})"
    ], second.stderr[-3000:]
    assert first.alive()
    assert await first.stop() == 0, first.log_tail()


def test_the_code_a_server_started_from_is_told_from_an_upgrade(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`supervisor.Code`: the interpreter and the files of the loaded modules, as at the start;
    a file replaced, edited in place or removed is named, and the record survives the trip
    through the supervisor's state."""
    module = tmp_path / "moorage_code_probe.py"
    module.write_text("VERSION = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "moorage_code_probe", raising=False)
    __import__("moorage_code_probe")
    code = supervisor.Code.loaded()
    paths = [path for path, *_ in code.files]
    assert str(module) in paths and os.path.realpath(sys.executable) in paths
    assert supervisor.__file__ in paths
    assert code.changed() is None
    state = supervisor.State({1: 0}, [[3, None]], ["python"], "", None, "info", "text", code)
    assert supervisor.State.loads(state.dumps()) == state

    upgraded = tmp_path / "next.py"
    upgraded.write_text("VERSION = 2\n")
    os.replace(upgraded, module)  # as pip and apt do: a new file in its place
    assert code.changed() == str(module)
    again = supervisor.Code.loaded()
    with open(module, "a") as edited:  # as an editor or `git pull` may: the same file
        edited.write("# more\n")
    assert again.changed() == str(module)
    module.unlink()
    assert again.changed() == str(module)
    del sys.modules["moorage_code_probe"]
