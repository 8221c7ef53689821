"""Failed-login limits per (user, client address) pair and per client address.

Failures are never counted per user alone: a limit on a user name would let anyone lock the
real user out by failing in their name. So a guesser is refused after `auth.maxfailures`
failures for one user from one address, or `auth.maxaddressfailures` for any users from one
address, and only that address is refused; the user logs in from elsewhere. IPv6 addresses
count per /64, the block one host usually holds, so that rotating through it does not reset
the count.

Where the counters live:
- One node (SQLite, the default): in each worker process's memory. A node with N workers lets
  an attacker try at most N times the limit per window, still a hard ceiling (a shared counter
  would cost a write to the database per failed login).
- Several nodes on one database (`share`): in the database (a `FailureTable`, the metadata
  store), so the limit holds across every worker of every node. There a key's window is fixed:
  it starts at its first failure and is refused once full until it ends (so at most twice the
  limit fits in any one window's length). Keys are stored hashed: they hold user names.
"""

from __future__ import annotations

import hashlib
import ipaddress
import time
from collections import deque
from collections.abc import Sequence
from typing import Protocol


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


class FailureTable(Protocol):
    """Failure counters every node shares (the metadata store implements it)."""

    async def login_failures(
        self, keys: Sequence[str], since: float
    ) -> dict[str, tuple[float, int]]:
        """key -> (window start, failures) for windows that started after `since`."""
        ...

    async def login_failed(self, keys: Sequence[str], now: float, window: float) -> None: ...


def _stored(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


class LoginLimiter:
    """The two limits of a login: per (user, address) pair and per address."""

    def __init__(self, per_pair: int, per_address: int, window: float) -> None:
        self.pairs = FailureLimiter(per_pair, window)
        self.addresses = FailureLimiter(per_address, window)
        self.window = window
        self.table: FailureTable | None = None

    def share(self, table: FailureTable) -> None:
        """Count in `table` from now on (several nodes share it), not in this process."""
        self.table = table

    def _keys(self, user: str, address: str) -> tuple[str, str]:
        where = address_key(address)
        return f"p:{user}\0{where}", f"a:{where}"

    async def retry_after(self, user: str, address: str) -> int:
        """Seconds `address` must wait before trying `user` again (0: it may try now)."""
        pair, where = self._keys(user, address)
        if self.table is None:
            return max(self.pairs.retry_after(pair), self.addresses.retry_after(where))
        now = time.time()
        found = await self.table.login_failures([_stored(pair), _stored(where)], now - self.window)
        wait = 0.0
        for key, limit in ((pair, self.pairs.max_failures), (where, self.addresses.max_failures)):
            started, count = found.get(_stored(key), (0.0, 0))
            if count >= limit:
                wait = max(wait, started + self.window - now)
        return int(wait) + 1 if wait > 0 else 0

    async def failed(self, user: str, address: str) -> None:
        pair, where = self._keys(user, address)
        if self.table is None:
            self.pairs.failed(pair)
            self.addresses.failed(where)
            return
        await self.table.login_failed([_stored(pair), _stored(where)], time.time(), self.window)
