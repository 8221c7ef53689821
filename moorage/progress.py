"""How long commands show how far they are (`moorage import distribution`): on a terminal, a
bar with counts, bytes and an estimate of the time left (rich); anywhere else (a log file, CI, a
pipe), a plain line when a phase starts, every `every` seconds, and when it ends. Both go to
standard error, so that standard output carries only the command's report."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as Bar

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
    (None when not known yet) that move `nbytes` bytes, `advance` counts what is done."""

    def __init__(
        self,
        label: str,
        stream: TextIO | None = None,
        every: float = PLAIN_EVERY,
        terminal: bool | None = None,
    ) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.every = every
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

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def phase(self, name: str, items: int | None = None, nbytes: int = 0) -> None:
        self._end_phase()
        self.name, self.items, self.nbytes = name, items, nbytes
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

    def close(self) -> None:
        self._end_phase()
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def _end_phase(self) -> None:
        if not self.name:
            return
        if self._bar is None:
            self._line()
        self.name = ""

    def _fields(self) -> tuple[str, str]:
        """The counts and the bytes so far, as shown."""
        counts = f"{self.items_done}" if self.items is None else f"{self.items_done}/{self.items}"
        size = ""
        if self.nbytes:
            size = f"{human_bytes(self.bytes_done)}/{human_bytes(self.nbytes)}"
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

    def _line(self) -> None:
        self._shown = time.monotonic()
        counts, size = self._fields()
        text = f"{self.label}: {self.name}: {counts}"
        text += " items" if self.items is not None else " so far"
        if size:
            text += f", {size}"
        left = self.estimate()
        if left is not None:
            text += f", about {_duration(left)} left"
        print(text, file=self.stream, flush=True)
