"""Logging set-up for `moorage serve`: one stderr handler whose repeated lines are rate-limited.

When a worker ran out of file descriptors, asyncio logged the same accept-error traceback
~765,000 times (338 MB in three minutes). A line that repeats (same logger, level, text and
fields) is let through `limit` times per `interval` seconds; after that its repeats are counted,
and once the interval is over one line says how many were dropped. The access log is left
alone: each of its lines is a request.

Two formats (`log.format`): `text`, one line per record with its fields as `key=value` after
the message, and `json`, one JSON object per line for log shippers. Either way a string from a
client (a path, a user name, a user agent) cannot start a line of its own or forge one:
control characters are escaped.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

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


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _escape(text: str) -> str:
    """Control characters (a newline, an escape sequence) as visible escapes."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """What the record carries beyond the standard attributes (its `extra=`)."""
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class TextFormatter(logging.Formatter):
    """`FORMAT`, then each field as `key=value` (quoted when it has a space or a quote)."""

    def __init__(self) -> None:
        super().__init__(FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = _escape(super().format(record)) if record.exc_info is None else None
        if line is None:  # a traceback keeps its lines; the message itself is escaped
            record.msg, record.args = _escape(record.getMessage()), None
            line = super().format(record)
        extra = fields(record)
        if not extra:
            return line
        parts = []
        for key, value in extra.items():
            text = _escape(value if isinstance(value, str) else json.dumps(value, default=str))
            if not text or " " in text or '"' in text or "=" in text:
                text = json.dumps(text)
            parts.append(f"{key}={text}")
        return f"{line} {' '.join(parts)}"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the fields, a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in fields(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level: str, format: str = "text") -> None:
    """Log to stderr at `level` in `format` (`text` or `json`), with repeated lines
    rate-limited."""
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(JsonFormatter() if format == "json" else TextFormatter())
    stderr.addFilter(RepeatLimiter(stderr))
    logging.basicConfig(level=level.upper(), handlers=[stderr], force=True)
    # Alembic narrates every step (plugins, each revision's whole docstring); the store logs
    # one line when it upgrades the schema.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLogger().level))
