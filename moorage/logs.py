"""Logging set-up for `moorage serve`: one stderr handler whose repeated lines are rate-limited.

When a worker ran out of file descriptors, asyncio logged the same accept-error traceback
~765,000 times (338 MB in three minutes). A line that repeats (same logger, level, text and
fields) is let through `limit` times per `interval` seconds; after that its repeats are counted,
and once the interval is over one line says how many were dropped. The access log is left
alone: each of its lines is a request.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Hashable

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
LIMIT = 10
INTERVAL = 60.0
MAX_KEYS = 4096
UNLIMITED = ("moorage.access",)

# Attributes every LogRecord has; anything else on a record came from `extra=` (a field).
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def _key(record: logging.LogRecord) -> Hashable:
    fields = tuple(sorted((k, repr(v)) for k, v in record.__dict__.items() if k not in _STANDARD))
    return (record.name, record.levelno, record.getMessage(), fields)


class _Window:
    __slots__ = ("count", "start", "text")

    def __init__(self, start: float, text: str) -> None:
        self.start = start
        self.count = 0
        self.text = text


class RepeatLimiter(logging.Filter):
    """A handler filter: at most `limit` copies of one line per `interval` seconds."""

    def __init__(
        self,
        handler: logging.Handler,
        limit: int = LIMIT,
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.handler = handler
        self.limit = limit
        self.interval = interval
        self.clock = clock
        self._windows: dict[Hashable, _Window] = {}
        self._next_expiry = 0.0
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(UNLIMITED):
            return True
        now = self.clock()
        with self._lock:
            summaries = self._expire(now)
            key = _key(record)
            window = self._windows.get(key)
            if window is None:
                window = self._windows[key] = _Window(now, f"{record.name} {record.getMessage()}")
            window.count += 1
            allowed = window.count <= self.limit
        for summary in summaries:
            self.handler.handle(summary)
        return allowed

    def _expire(self, now: float) -> list[logging.LogRecord]:
        """Close the windows that are over; a record for each one that dropped lines. Looks at
        most once a second (or once per interval, if shorter)."""
        summaries: list[logging.LogRecord] = []
        if now < self._next_expiry and len(self._windows) <= MAX_KEYS:
            return summaries
        self._next_expiry = now + min(1.0, self.interval)
        for key, window in list(self._windows.items()):
            if now - window.start < self.interval and len(self._windows) <= MAX_KEYS:
                continue
            del self._windows[key]
            dropped = window.count - self.limit
            if dropped > 0:
                summaries.append(
                    logging.LogRecord(
                        "moorage.logs",
                        logging.WARNING,
                        __file__,
                        0,
                        "suppressed %d repeats of a log line in %.0f s: %s",
                        (dropped, now - window.start, window.text),
                        None,
                    )
                )
        return summaries


def configure(level: str) -> None:
    """Log to stderr at `level`, with repeated lines rate-limited."""
    logging.basicConfig(level=level.upper(), format=FORMAT, stream=sys.stderr)
    # Alembic narrates every step (plugins, each revision's whole docstring); the store logs
    # one line when it upgrades the schema.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLogger().level))
    for handler in logging.getLogger().handlers:
        handler.addFilter(RepeatLimiter(handler))
