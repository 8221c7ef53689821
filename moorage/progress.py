"""How long commands show how far they are (`moorage import distribution`, `moorage fsck`,
`moorage gc`): on a terminal, a bar with counts, bytes and an estimate of the time left (rich);
anywhere else (a log file, CI, a pipe), a plain line when a phase starts, every `every` seconds,
and when it ends. Both go to standard error, so that standard output carries only the command's
report; lines of that report printed meanwhile (`echo`) go above the bar. Also the one byte
formatter of the command line (`human_bytes`), and how a long command stops on Ctrl-C
(`stop_on_interrupt`)."""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING, Self, TextIO

if TYPE_CHECKING:  # rich is imported where a display starts: every command imports this module
    from rich.progress import Progress as Bar
    from rich.progress import TaskID

PLAIN_EVERY = 10.0  # seconds between plain lines


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{n} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


class Progress:
    """The progress of one command, phase after phase: `phase` starts one of `items` steps
    (None when not known yet) that move `nbytes` bytes, `advance` counts what is done. The
    steps are counted in `unit`s ("items" unless the command or the phase names them)."""

    def __init__(
        self,
        label: str,
        stream: TextIO | None = None,
        every: float = PLAIN_EVERY,
        terminal: bool | None = None,
        unit: str = "items",
    ) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.every = every
        self.default_unit = self.unit = unit
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as Bar

        console = Console(file=self.stream)
        self.terminal = console.is_terminal if terminal is None else terminal
        self._bar: Bar | None = None
        self._task: TaskID | None = None
        if self.terminal:
            self._bar = Bar(
                SpinnerColumn(),
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[counts]}"),
                TextColumn("{task.fields[size]}"),
                TimeElapsedColumn(),
                TextColumn("left"),
                TimeRemainingColumn(),
                console=console,
            )
            self._bar.start()
        self.name = ""
        self.items: int | None = None
        self.nbytes = 0
        self.items_done = 0
        self.bytes_done = 0
        self._started = self._shown = time.monotonic()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(finished=kind is None)

    def phase(
        self, name: str, items: int | None = None, nbytes: int = 0, unit: str | None = None
    ) -> None:
        self._end_phase()
        self.name, self.items, self.nbytes = name, items, nbytes
        self.unit = unit or self.default_unit
        self.items_done = self.bytes_done = 0
        self._started = self._shown = time.monotonic()
        if self._bar is not None:
            total = nbytes if nbytes else items
            counts, size = self._fields()
            self._task = self._bar.add_task(name, total=total, counts=counts, size=size)
        else:
            self._line()

    def advance(self, items: int = 0, nbytes: int = 0) -> None:
        self.items_done += items
        self.bytes_done += nbytes
        if self._bar is not None and self._task is not None:
            completed = self.bytes_done if self.nbytes else self.items_done
            counts, size = self._fields()
            self._bar.update(self._task, completed=completed, counts=counts, size=size)
        elif time.monotonic() - self._shown >= self.every:
            self._line()

    def count(self, name: str, done: int, unit: str | None = None) -> None:
        """`done` steps of phase `name` so far, starting that phase if it is not the current
        one: for work that reports where it is rather than each step (garbage collection)."""
        if name != self.name:
            self.phase(name, unit=unit)
        self.advance(done - self.items_done)

    def echo(self, line: str, err: bool = False) -> None:
        """A line of the command's report (standard output), or with `err` a message (standard
        error), while the progress shows: printed above the bar when it goes to the bar's
        terminal, so that the bar stays whole below it."""
        out = self.stream if err else sys.stdout
        if self._bar is not None and (err or out.isatty()):
            self._bar.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=out, flush=True)

    def stop_on_interrupt(self, saying: str) -> threading.Event:
        """From now on the first Ctrl-C (SIGINT) sets the event returned and says `saying`:
        the command stops at its next safe point (it checks the event, from any thread). A
        second Ctrl-C raises KeyboardInterrupt at once. Call it in the running event loop."""
        stop = threading.Event()
        loop = asyncio.get_running_loop()

        def interrupt() -> None:
            stop.set()
            loop.remove_signal_handler(signal.SIGINT)
            self.echo(saying, err=True)

        loop.add_signal_handler(signal.SIGINT, interrupt)
        return stop

    def close(self, finished: bool = True) -> None:
        """The end; `finished`: the last phase is done (not cut short by an error or Ctrl-C)."""
        self._end_phase(finished)
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def _end_phase(self, finished: bool = True) -> None:
        if not self.name:
            return
        if self._bar is None:
            self._line(final=finished)
        elif finished and self._task is not None and not self.nbytes and self.items is None:
            # Its total is known now: a full bar, the spinner stopped.
            self._bar.update(self._task, total=self.items_done, completed=self.items_done)
        self.name = ""

    def _fields(self) -> tuple[str, str]:
        """The counts and the bytes so far, as shown (the bytes once the phase moves any)."""
        counts = f"{self.items_done}" if self.items is None else f"{self.items_done}/{self.items}"
        counts += f" {self.unit}"
        size = ""
        if self.nbytes:
            size = f"{human_bytes(self.bytes_done)}/{human_bytes(self.nbytes)}"
        elif self.bytes_done:
            size = human_bytes(self.bytes_done)
        return counts, size

    def estimate(self) -> float | None:
        """Seconds left at the pace so far (by bytes when the phase moves bytes)."""
        if self.nbytes:
            done = self.bytes_done / self.nbytes
        elif self.items:
            done = self.items_done / self.items
        else:
            return None
        if not 0 < done < 1:
            return None
        return (time.monotonic() - self._started) * (1 - min(done, 1.0)) / done

    def _line(self, final: bool = False) -> None:
        self._shown = time.monotonic()
        counts, size = self._fields()
        text = f"{self.label}: {self.name}: {counts}"
        if self.items is None and not final:
            text += " so far"
        if size:
            text += f", {size}"
        left = None if final else self.estimate()
        if left is not None:
            text += f", about {_duration(left)} left"
        print(text, file=self.stream, flush=True)
