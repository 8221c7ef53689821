"""What a started server has imported: no process of the tree carries a library of a feature
it has not used (Alembic, jinja2, the S3 and PostgreSQL drivers), since whatever a process
imports it keeps for life (docs/performance.md, issue 14: the tree's PSS at two workers).

The server is the real `moorage serve`, two workers on a fresh data directory (so the schema
is created), started through a `python -c` that first gives SIGUSR1 a handler writing the
names of the modules loaded to `<dir>/<pid>.json`; forked workers inherit it. Each process of
the tree is asked by that signal, after pushes and pulls and again after a page of the UI.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.harness import MoorageProcess
from tests.images import memory_image, sha256_digest
from tests.process.registry import TIMEOUT, Registry

pytestmark = pytest.mark.timeout(120)

# Top-level packages (and the SQLAlchemy parts) a node on the embedded defaults never needs
# until a feature asks for them: migrations, the UI, S3, PostgreSQL.
HEAVY = [
    "alembic",
    "mako",
    "pygments",
    "jinja2",
    "aiobotocore",
    "botocore",
    "boto3",
    "asyncpg",
    "psycopg",
    "psycopg2",
    "greenlet",
    "sqlalchemy.ext.asyncio",
    "sqlalchemy.orm",
    "sqlalchemy.dialects.postgresql",
]

REPORTER = """
import json, os, signal, sys
from pathlib import Path

heavy, out = json.loads(sys.argv[1]), Path(sys.argv[2])

def report(signum, frame):
    loaded = sorted(name for name in heavy if name in sys.modules)
    path = out / f"{os.getpid()}.json"
    path.with_suffix(".tmp").write_text(json.dumps(loaded))
    path.with_suffix(".tmp").rename(path)

signal.signal(signal.SIGUSR1, report)
sys.argv = ["moorage", *sys.argv[3:]]
from moorage.cli import main
main()
"""


class ReportingMoorage(MoorageProcess):
    """`moorage serve` whose processes say, on SIGUSR1, which of `HEAVY` they have loaded."""

    def __init__(self, reports: Path, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.reports = reports

    def command(self) -> list[str]:
        serve = super().command()[2:]  # without the interpreter and "-m"
        assert serve[0] == "moorage", serve
        return [sys.executable, "-c", REPORTER, json.dumps(HEAVY), str(self.reports), *serve[1:]]

    def loaded(self) -> dict[int, list[str]]:
        """pid -> the heavy modules that worker has imported, asked of each worker (the
        supervisor is `moorage.supervisor` by then: see the test below)."""
        pids = [proc.pid for proc in self.processes()[1:]]
        for path in self.reports.glob("*.json"):
            path.unlink()
        for pid in pids:
            os.kill(pid, signal.SIGUSR1)
        deadline = time.monotonic() + 10
        answers: dict[int, list[str]] = {}
        while len(answers) < len(pids) and time.monotonic() < deadline:
            for pid in pids:
                path = self.reports / f"{pid}.json"
                if pid not in answers and path.exists():
                    answers[pid] = json.loads(path.read_text())
            time.sleep(0.05)
        assert len(answers) == len(pids), f"only {sorted(answers)} of {pids} answered"
        return answers


async def test_a_started_tree_imports_no_feature_it_has_not_used(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    server = ReportingMoorage(reports, tmp_path / "data", tmp_path / "logs", 2)
    try:
        await server.start()
        image = memory_image("imports", [4096, 70_000])
        # A new connection per request: both workers get some.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(timeout=TIMEOUT, connector=connector) as session:
            registry = Registry(session, server.url)
            for n in range(4):
                await registry.push_image(f"imports/app{n}", "v1", image, chunk=32_768)
                await registry.assert_manifest(f"imports/app{n}", "v1", image.manifest)
                layer = image.layers[1]
                await registry.assert_blob(f"imports/app{n}", sha256_digest(layer), layer)
            supervisor = Path(f"/proc/{server.pid}/cmdline").read_text().split("\0")
            assert supervisor[1:3] == ["-m", "moorage.supervisor"], supervisor
            served = await asyncio.to_thread(server.loaded)
            assert len(served) == 2, served  # the two workers
            assert all(loaded == [] for loaded in served.values()), served

            for _ in range(8):
                async with session.get(server.url + "/") as resp:
                    assert resp.status == 200
                    assert "text/html" in resp.headers["Content-Type"]
        paged = await asyncio.to_thread(server.loaded)
    finally:
        server.cleanup()
    # The check sees a lazy import happen: a worker that rendered a page has jinja2 now (and
    # nothing else).
    assert any(loaded == ["jinja2"] for loaded in paged.values()), paged
    assert all(loaded in ([], ["jinja2"]) for loaded in paged.values()), paged


SUPERVISOR_IMPORTS = """
import json, sys
before = set(sys.modules)
import moorage.supervisor, moorage.logs
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_the_supervisor_imports_only_the_standard_library() -> None:
    """What a server's supervisor runs once its workers are forked (`moorage.supervisor`,
    which logs through `moorage.logs`) loads nothing from outside the standard library: it
    lives as long as the server and serves nothing."""
    out = subprocess.run(
        [sys.executable, "-c", SUPERVISOR_IMPORTS],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    ours = {"moorage", "moorage.supervisor", "moorage.logs"}
    loaded = json.loads(out)
    assert ours <= set(loaded), loaded
    outside = [
        name
        for name in loaded
        if name not in ours and name.split(".")[0] not in sys.stdlib_module_names
    ]
    assert outside == [], outside
