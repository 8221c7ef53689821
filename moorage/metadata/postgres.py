"""Transactions on PostgreSQL (a database every node shares): SQLAlchemy's async engine over
asyncpg, running the store's synchronous work functions through `AsyncConnection.run_sync`, so
the query code is the same as on SQLite.

- A bounded pool per process (POOL_SIZE + MAX_OVERFLOW connections), each connection checked
  before use (`pool_pre_ping`): after a database restart the dead connections are replaced
  instead of failing one request each.
- Every statement has a time limit (STATEMENT_TIMEOUT, set per session on the server), and so
  has connecting (CONNECT_TIMEOUT).
- Transactions run in READ COMMITTED. Writes are safe on their own (`INSERT ... ON CONFLICT`,
  conditional updates, row locks: see `store.py`); no lock file, no process-wide lock.
- A write that the database aborts as a serialization failure or a deadlock is run again from
  the start, a bounded number of times.
- A database that cannot be reached (refused, lost, shutting down, over its connection limit,
  too slow) is `moorage.errors.Unavailable` (503), never a raw driver error; the next call tries
  again with a fresh connection, so the node recovers by itself when the database is back.

Must not: hold a connection across anything but the SQL of one call.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import Connection
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from moorage.errors import StorageFull, Unavailable

log = logging.getLogger("moorage.metadata")

T = TypeVar("T")
Work = Callable[[Connection], T]

POOL_SIZE = 5
MAX_OVERFLOW = 5
POOL_TIMEOUT = 30.0  # waiting for a free connection of the pool
CONNECT_TIMEOUT = 10.0
STATEMENT_TIMEOUT = 30.0
WRITE_ATTEMPTS = 5
RETRY_PAUSE = 0.01  # the first pause between attempts; doubled each time, with jitter

_RETRYABLE = frozenset({"40001", "40P01"})  # serialization_failure, deadlock_detected
_UNREACHABLE = (
    OSError,  # refused, reset, timed out (TimeoutError is an OSError)
    asyncpg.PostgresConnectionError,  # class 08
    asyncpg.exceptions.OperatorInterventionError,  # class 57: shutdown, starting, timeout
    asyncpg.exceptions.InsufficientResourcesError,  # class 53: too many connections, ...
    asyncpg.exceptions.LockNotAvailableError,  # waited out lock_timeout
    asyncpg.InterfaceError,  # "connection is closed"
    sa_exc.TimeoutError,  # no free connection in the pool in time
)


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception, what it wraps (`orig`) and what caused it."""
    seen: list[BaseException] = []
    pending: list[BaseException | None] = [exc]
    while pending:
        e = pending.pop()
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        pending += [getattr(e, "orig", None), e.__cause__, e.__context__]
    return seen


def unreachable(exc: BaseException) -> bool:
    """Did this fail because the database cannot be reached or cannot answer in time?"""
    for e in _chain(exc):
        if isinstance(e, sa_exc.DBAPIError) and e.connection_invalidated:
            return True
        if isinstance(e, _UNREACHABLE):
            return True
    return False


def disk_full(exc: BaseException) -> bool:
    """Did the database server run out of disk space (SQLSTATE 53100)?"""
    return any(isinstance(e, asyncpg.exceptions.DiskFullError) for e in _chain(exc))


def retryable(exc: BaseException) -> bool:
    """Did the database abort the transaction so that running it again may succeed?"""
    return any(getattr(e, "sqlstate", None) in _RETRYABLE for e in _chain(exc))


class PostgresRunner:
    def __init__(self, url: str) -> None:
        self.engine: AsyncEngine = create_async_engine(
            url,
            pool_size=POOL_SIZE,
            max_overflow=MAX_OVERFLOW,
            pool_timeout=POOL_TIMEOUT,
            pool_pre_ping=True,
            connect_args={
                "timeout": CONNECT_TIMEOUT,
                "command_timeout": STATEMENT_TIMEOUT + 5,  # client side, if the server hangs
                "server_settings": {
                    "statement_timeout": str(int(STATEMENT_TIMEOUT * 1000)),
                    "lock_timeout": str(int(STATEMENT_TIMEOUT * 1000)),
                    "idle_in_transaction_session_timeout": str(int(STATEMENT_TIMEOUT * 2000)),
                },
            },
        )
        # Reads see each statement's own snapshot (as SQLite's reader does): no BEGIN/ROLLBACK
        # round trips around them.
        self._reader = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self._running: set[asyncio.Task[Any]] = set()

    async def _shielded(self, call: Awaitable[T]) -> T:
        """Run `call` to its end even if the caller is cancelled: a transaction is never cut
        in the middle of a statement (the connection would be lost with it)."""
        task = asyncio.ensure_future(call)
        self._running.add(task)
        task.add_done_callback(self._finished)
        return await asyncio.shield(task)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._running.discard(task)
        if not task.cancelled():
            task.exception()  # seen: a caller that was cancelled meanwhile cannot see it

    async def read(self, work: Work[T]) -> T:
        return await self._shielded(self._read(work))

    async def _read(self, work: Work[T]) -> T:
        try:
            async with self._reader.connect() as conn:
                return await conn.run_sync(work)
        except Exception as exc:
            if disk_full(exc):
                raise _full(exc) from exc
            if unreachable(exc):
                raise _unavailable(exc) from exc
            raise

    async def write(self, work: Work[T]) -> T:
        return await self._shielded(self._write(work))

    async def _write(self, work: Work[T]) -> T:
        pause = RETRY_PAUSE
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                async with self.engine.begin() as conn:
                    return await conn.run_sync(work)
            except Exception as exc:
                if disk_full(exc):  # before `unreachable`: it is class 53 too
                    raise _full(exc) from exc
                # A lost connection is not retried here: the commit may have happened.
                if unreachable(exc):
                    raise _unavailable(exc) from exc
                if not retryable(exc) or attempt == WRITE_ATTEMPTS:
                    raise
                log.debug("metadata transaction retried", extra={"attempt": attempt})
                await asyncio.sleep(pause * (1 + random.random()))
                pause *= 2
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self._running:
            await asyncio.wait(list(self._running), timeout=STATEMENT_TIMEOUT)
        await self.engine.dispose()


def _unavailable(exc: BaseException) -> Unavailable:
    log.warning("metadata database unavailable", extra={"error": repr(exc)[:200]})
    return Unavailable("the metadata database is unavailable")


def _full(exc: BaseException) -> StorageFull:
    log.warning("metadata database out of disk space", extra={"error": repr(exc)[:200]})
    return StorageFull("storage full: the metadata database has no space left")
