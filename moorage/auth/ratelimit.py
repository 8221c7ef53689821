"""Failed-login limits per user and per client address.

Counters live in each worker process's memory: a node with N workers lets an attacker try at
most N times the limit per window, which is still a hard ceiling (documented trade-off; a
shared counter in metadata would cost a write per failed login).
"""

from __future__ import annotations

import time
from collections import deque


class FailureLimiter:
    def __init__(self, max_failures: int, window: float) -> None:
        self.max_failures = max_failures
        self.window = window
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def retry_after(self, *keys: str) -> int:
        """Seconds to wait if any key is over the limit, else 0."""
        now = time.monotonic()
        wait = 0.0
        for key in keys:
            times = self._recent(key, now)
            if len(times) >= self.max_failures:
                wait = max(wait, times[0] + self.window - now)
        return int(wait) + 1 if wait > 0 else 0

    def failed(self, *keys: str) -> None:
        now = time.monotonic()
        if len(self._failures) > 100_000:
            self._failures.clear()
        for key in keys:
            self._failures.setdefault(key, deque()).append(now)
