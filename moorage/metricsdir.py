"""Where the workers of one `moorage serve` keep their metrics: prometheus_client's
multiprocess mode, in a directory of the server's own.

prometheus_client decides at import whether values live in memory or in a memory-mapped file
per process (`PROMETHEUS_MULTIPROC_DIR` set or not), so the directory is chosen before the
server's modules are imported, and this module must not import it. Each worker writes its own
files there and any worker's `/metrics` adds them up; the supervisor removes a worker's live
gauges when it has exited, and the directory when it exits (`moorage.supervisor`). A
directory of our own, new at every start, so no file of an earlier run (or of another program
that uses the variable) is ever counted. A supervisor killed with SIGKILL cannot remove its
own: the directory is named after its pid, and the next `moorage serve` removes those whose
supervisor is gone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from moorage import supervisor
from moorage.config import Settings

ENV = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "moorage-metrics-"  # then the supervisor's pid, a dash, and random letters


def ignore_inherited() -> None:
    """Forget a directory named in the environment Moorage was started with: every command
    (`moorage gc` too, which imports the metrics) would otherwise write files into it, or
    fail to start when it does not exist. Only `shared` sets one; a worker the supervisor
    started again keeps it (`supervisor.WORKER_ENV`)."""
    if supervisor.WORKER_ENV not in os.environ:
        os.environ.pop(ENV, None)


@contextlib.contextmanager
def shared(settings: Settings) -> Iterator[None]:
    """For the life of a server: with several workers and metrics on, a private directory in
    the environment, removed on exit; else no directory at all (one process keeps its
    metrics in memory)."""
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before its directory was chosen")
    ignore_inherited()
    if settings.workers == 1 or not settings.metrics.enabled:
        yield
        return
    root = Path(tempfile.gettempdir())
    _remove_orphans(root)
    path = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=root)
    os.environ[ENV] = path
    try:
        yield
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _remove_orphans(root: Path) -> None:
    """Remove the directories, ours (same user), of supervisors that no longer run."""
    for path in root.glob(f"{PREFIX}*-*"):
        pid = path.name[len(PREFIX) :].split("-", 1)[0]
        try:
            if not pid.isdigit() or path.stat().st_uid != os.getuid() or _running(int(pid)):
                continue
        except OSError:
            continue
        shutil.rmtree(path, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True
