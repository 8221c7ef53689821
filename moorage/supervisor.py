"""The supervisor of a server with several workers, once they are forked: a small process.

`moorage serve` imports and builds everything in one process and forks its workers from it,
so that they share those pages. That process then has nothing left to do but wait for its
workers, pass signals on and replace a worker that exits; yet it kept every page it built,
and a third copy of each page both workers wrote to (12 MiB of the two-worker tree at idle,
17 after a burst of uploads). So, once the workers are forked, it replaces itself (`exec`)
with this module: the same pid, the same children, the listening sockets still open for a
replacement, and about 7 MiB in all.

A worker that exits is replaced by running the server's own command line again with
WORKER_ENV naming the listening sockets it serves and holding the settings the server started
with (`respawned`): the new worker imports and builds on its own, sharing no pages with the
others, and starts as they did, then reads the configuration again as they did at their last
SIGHUP (a file edited since the start changes nothing that needs a restart). Only while the
code is the one the server started from: after an upgrade in place (`pip install -U`, a new
interpreter, a `git pull` under an editable install) a replacement would run new code beside
the old, on a database the new code's migrations have not reached, so none is started until a
restart (`Code`).

Imports only the standard library and `moorage.logs`: that is what keeps it small
(tests/process/test_imports.py checks what it imports). The races are in
docs/design/connections.md, "A small supervisor".
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterable
from types import FrameType
from typing import NamedTuple

# The supervisor's state, handed from `moorage serve` across the exec (popped at once).
STATE_ENV = "MOORAGE_SUPERVISOR"
# In a worker started to replace one that exited: its slot's listening sockets and the
# supervisor's pid (`respawned`).
WORKER_ENV = "MOORAGE_WORKER"
# Signals held back from before the first fork until this process can take them: a SIGTERM
# that comes while the workers are forked, or while the exec is under way, is passed on to
# the workers as soon as the supervisor can, not lost and not fatal.
HELD = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
# A supervisor gives up when more than this many workers per slot exited within a minute.
FAILURES_PER_WORKER = 5

log = logging.getLogger("moorage.server")


class Code(NamedTuple):
    """The files a server's code was loaded from, as they were when it started: the
    interpreter, every module of Moorage, and the module of every other top-level package or
    module it imported (an upgrade replaces a package's every file, its `__init__` among
    them). Each file as [path, inode, mtime in ns, size]."""

    files: list[list[str | int]]

    @classmethod
    def loaded(cls) -> Code:
        paths = {os.path.realpath(sys.executable)} if sys.executable else set()
        for name, module in list(sys.modules.items()):
            top = "." not in name or name.startswith("moorage.")
            path = getattr(module, "__file__", None)
            if top and isinstance(path, str):
                paths.add(path)
        files: list[list[str | int]] = []
        for path in sorted(paths):
            with contextlib.suppress(OSError):
                files.append([path, *_identity(path)])
        return cls(files)

    def changed(self) -> str | None:
        """The first file that is not what it was at the start (replaced, edited or gone)."""
        for path, *identity in self.files:
            assert isinstance(path, str)
            try:
                now = _identity(path)
            except OSError:
                return path
            if now != identity:
                return path
        return None


def _identity(path: str) -> list[int]:
    st = os.stat(path)
    return [st.st_ino, st.st_mtime_ns, st.st_size]


class State(NamedTuple):
    """What the supervisor needs: its workers (pid -> slot), each slot's listening sockets
    (the main port's, then the metrics port's or None), the command line a replacement runs
    and the settings the server started with (pickled, opaque here), the metrics directory to
    clean (None: none), the log settings, and the code the server started from."""

    children: dict[int, int]
    slots: list[list[int | None]]
    command: list[str]
    settings: str
    metrics_dir: str | None
    log_level: str
    log_format: str
    code: Code

    def dumps(self) -> str:
        children = list(self.children.items())
        return json.dumps({**self._asdict(), "children": children, "code": self.code.files})

    @classmethod
    def loads(cls, text: str) -> State:
        raw = json.loads(text)
        children = {int(pid): int(slot) for pid, slot in raw["children"]}
        return cls(**{**raw, "children": children, "code": Code(raw["code"])})


class Worker(NamedTuple):
    """A replacement worker's part: its listening sockets, the supervisor that started it,
    and the settings the server started with (`State.settings`)."""

    main: int
    metrics: int | None
    parent: int
    settings: str


def hold_signals() -> None:
    """Hold HELD back (pending, not lost) until `supervise` takes them; a forked worker lets
    them through again with `release_signals` once its own handlers are set."""
    signal.pthread_sigmask(signal.SIG_BLOCK, HELD)


def release_signals() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD)


def take_over(state: State) -> int:
    """Replace this process with a small supervisor of `state` (held signals stay pending
    across the exec). Where the exec fails, supervise from here: the same loop, only bigger."""
    for fds in state.slots:
        for fd in fds:
            if fd is not None:
                os.set_inheritable(fd, True)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    env = dict(os.environ, **{STATE_ENV: state.dumps()})
    argv = [sys.executable, "-m", __name__, *state.command]
    try:
        os.execve(sys.executable, argv, env)
    except OSError as exc:
        log.warning("cannot start a small supervisor (%s); this process supervises", exc)
    return supervise(state)


def supervise(state: State) -> int:
    """Wait for the workers; pass SIGHUP on, and SIGTERM and SIGINT too, then stop replacing
    workers; replace one that exits, unless they keep exiting or the code changed on disk
    since the start (the others serve on; when none is left, the server stops). The exit
    status: 0, or 1 when it gave up or lost its last worker that way."""
    children = dict(state.children)
    listening = {fd for fds in state.slots for fd in fds if fd is not None}
    stopping = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        for child in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    def let_go(fds: Iterable[int | None]) -> None:
        """Close listening sockets kept for replacements that will not be started. Each
        worker holds its own until it stops accepting; were the supervisor's still open,
        the kernel would go on queueing connections on them that nobody accepts (clients
        hang instead of being refused at once). Each descriptor is closed once only (a
        number reused later is not ours)."""
        for fd in fds:
            if fd is not None and fd in listening:
                listening.discard(fd)
                with contextlib.suppress(OSError):
                    os.close(fd)

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        forward(signum, frame)
        let_go(list(listening))  # no worker will be started again

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, forward)
    release_signals()
    failures: list[float] = []
    status = 0
    try:
        while children:
            try:
                pid, code = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            if pid not in children:
                continue
            slot = children.pop(pid)
            _forget_live_gauges(state.metrics_dir, pid)
            if stopping:
                continue
            log.error(
                "worker %d exited with %d; starting another", pid, os.waitstatus_to_exitcode(code)
            )
            now = time.monotonic()
            failures = [t for t in failures if now - t < 60] + [now]
            if len(failures) > FAILURES_PER_WORKER * len(state.slots):
                log.error("workers keep dying; giving up")
                status = 1
                stop(signal.SIGTERM, None)
                continue
            upgraded = state.code.changed()
            if upgraded is not None:
                # Its slot's sockets go (not one the workers left share with it): the kernel
                # hands each SO_REUSEPORT socket its share of new connections.
                serving = {fd for other in children.values() for fd in state.slots[other]}
                let_go(fd for fd in state.slots[slot] if fd not in serving)
                log.error(
                    "not starting another worker: the server's code changed on disk since it"
                    " started (%s); %d worker(s) left; restart the server to run the new code",
                    upgraded,
                    len(children),
                )
                if not children:
                    status = 1
                continue
            try:
                children[_spawn(state, slot)] = slot
            except OSError as exc:  # as when a fork fails: the server cannot go on as it was
                log.error("cannot start a worker (%s); giving up", exc)
                status = 1
                stop(signal.SIGTERM, None)
    finally:
        if state.metrics_dir is not None:
            import shutil  # here: its imports would stay in memory for the server's life

            shutil.rmtree(state.metrics_dir, ignore_errors=True)
    return status


def _spawn(state: State, slot: int) -> int:
    """Start a worker for `slot` by running the server's command line again. It gets that
    slot's sockets and no other's, and SIGHUP held back until it can take a reload."""
    main, metrics = state.slots[slot]
    assert main is not None
    spec = Worker(main, metrics, os.getpid(), state.settings)._asdict()
    env = {k: v for k, v in os.environ.items() if k != STATE_ENV}
    env[WORKER_ENV] = json.dumps(spec)
    mine = {main, metrics}
    others = {fd for fds in state.slots for fd in fds if fd is not None and fd not in mine}
    return os.posix_spawn(
        state.command[0],
        state.command,
        env,
        file_actions=[(os.POSIX_SPAWN_CLOSE, fd) for fd in sorted(others)],
        setsigmask={signal.SIGHUP},
    )


def _forget_live_gauges(directory: str | None, pid: int) -> None:
    """A worker is gone: its live gauges (uploads in flight, readiness) stop counting; its
    counters stay in the totals. What prometheus_client's `mark_process_dead` does, without
    importing it here: remove the worker's `gauge_live*_PID.db` files."""
    if directory is None:
        return
    for path in glob.glob(os.path.join(glob.escape(directory), f"gauge_live*_{pid}.db")):
        with contextlib.suppress(OSError):
            os.remove(path)


def respawned() -> Worker | None:
    """In a worker the supervisor started to replace one: its part (WORKER_ENV, taken out of
    the environment), else None."""
    spec = os.environ.pop(WORKER_ENV, None)
    if spec is None:
        return None
    return Worker(**json.loads(spec))


def main() -> int:
    text = os.environ.pop(STATE_ENV, None)
    if text is None:
        print("moorage.supervisor is started by `moorage serve`, not by hand", file=sys.stderr)
        return 2
    state = State.loads(text)
    from moorage import logs

    logs.configure(state.log_level, state.log_format)
    return supervise(state)


if __name__ == "__main__":
    sys.exit(main())
