"""Failed-login limits per (user, client address) pair and per client address.

Failures are never counted per user alone: a limit on a user name would let anyone lock the
real user out by failing in their name. So a guesser is refused after `auth.maxfailures`
failures for one user from one address, or `auth.maxaddressfailures` for any users from one
address, and only that address is refused; the user logs in from elsewhere. IPv6 addresses
count per /64, the block one host usually holds, so that rotating through it does not reset
the count.

Counters live in each worker process's memory: a node with N workers lets an attacker try at
most N times the limit per window, which is still a hard ceiling (documented trade-off; a
shared counter in metadata would cost a write per failed login).
"""

from __future__ import annotations

import ipaddress
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


def address_key(address: str) -> str:
    """The unit an address's failures count against: itself, or its /64 for IPv6."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed)


class LoginLimiter:
    """The two limits of a login: per (user, address) pair and per address."""

    def __init__(self, per_pair: int, per_address: int, window: float) -> None:
        self.pairs = FailureLimiter(per_pair, window)
        self.addresses = FailureLimiter(per_address, window)

    def retry_after(self, user: str, address: str) -> int:
        """Seconds `address` must wait before trying `user` again (0: it may try now)."""
        where = address_key(address)
        return max(self.pairs.retry_after(f"{user}\0{where}"), self.addresses.retry_after(where))

    def failed(self, user: str, address: str) -> None:
        where = address_key(address)
        self.pairs.failed(f"{user}\0{where}")
        self.addresses.failed(where)
