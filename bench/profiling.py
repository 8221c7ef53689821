"""Sampling Moorage with py-spy during a timed run (bench.py --profile DIR), and a text summary
of where the time went: the frames most often on top of the stack (self) and on it at all
(inclusive). py-spy's own overhead (--nonblocking) is small but not nil: profile in a separate
run from the one whose numbers you report."""

from __future__ import annotations

import collections
import linecache
import re
import shutil
import signal
import subprocess
import sys
from functools import cache
from pathlib import Path

# Frames in this checkout are shown relative to it, as frames in site-packages are.
CHECKOUT = str(Path(__file__).resolve().parent.parent) + "/"
_LINE = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
# A thread parked on one of these source lines is waiting, not working: the event loop in
# epoll, the SQLite writer's and the default executor's threads waiting for work. py-spy's own idle
# detection misses them with --nonblocking, so they are dropped here.
_IDLE_SOURCE = re.compile(r"\.poll\(|\bwork_queue\.get\(|\btx\.get\(|waiter\.acquire\(")


@cache
def _source_line(path: str, line: int) -> str:
    for base in ["", *sys.path]:
        candidate = Path(base) / path if base else Path(path)
        if candidate.is_file():
            return linecache.getline(str(candidate), line)
    return ""


def _idle(raw_frame: str) -> bool:
    m = _LINE.match(raw_frame)
    if not m or not m.group("line"):
        return False
    return bool(_IDLE_SOURCE.search(_source_line(m.group("file"), int(m.group("line")))))


class PySpy:
    def __init__(self, pid: int, out: Path, rate: int = 250) -> None:
        self.out = out
        self.cmd = [
            "py-spy",
            "record",
            "--pid",
            str(pid),
            "--subprocesses",
            "--nonblocking",
            "--format",
            "raw",
            "--rate",
            str(rate),
            "--output",
            str(out),
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("py-spy") is not None

    def __enter__(self) -> PySpy:
        self.log = open(self.out.with_suffix(".log"), "wb")
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# Frames every sample has (process start-up, thread bootstrap, the event loop's run loop):
# left out of the inclusive list, where they would only push the informative ones down.
_SCAFFOLD = re.compile(
    r"\((threading\.py|click/core\.py|<frozen runpy>|asyncio/runners\.py|moorage/server\.py|"
    r"moorage/cli\.py|moorage/__main__\.py)\)$|^BaseEventLoop\.(run_forever|run_until_complete|"
    r"_run_once) "
)
# Leaves that stand for C code called from Python: name what that C code is.
_C_CALLS = {
    "_SQLiteWriter._transaction (moorage/metadata/store.py)": "[SQLite C calls, writer thread]",
    "_WorkItem.run (concurrent/futures/thread.py)": "[C calls in the default thread pool]",
}


def _frame(raw: str) -> str:
    m = _LINE.match(raw)
    if not m:
        return raw
    path = m.group("file")
    for marker in ("site-packages/", "lib/python3.11/", CHECKOUT):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{m.group('func')} ({path})"


def summarize(raw_path: Path, top: int = 20) -> str:
    """Top self and inclusive frames of the worker processes' samples, in percent."""
    self_count: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    if not raw_path.exists():
        return f"(no profile at {raw_path})"
    for line in raw_path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        raw_frames = [f for f in stack.split(";") if not f.startswith("process ")]
        if not raw_frames or _idle(raw_frames[-1]):
            continue
        frames = [_frame(f) for f in raw_frames]
        total += n
        self_count[_C_CALLS.get(frames[-1], frames[-1])] += n
        for f in set(frames):
            if not _SCAFFOLD.search(f):
                incl[f] += n
    if not total:
        return "(no samples)"
    out = [f"{total} samples of working threads (waiting ones left out)", "", "self:"]
    out += [f"  {c / total * 100:5.1f}%  {f}" for f, c in self_count.most_common(top)]
    out += ["", "inclusive:"]
    out += [f"  {c / total * 100:5.1f}%  {f}" for f, c in incl.most_common(top * 2)]
    return "\n".join(out) + "\n"
