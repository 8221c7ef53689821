"""A storage driver that times every call of the one it wraps, for `moorage.metrics`:
latency by operation, and failures (an absent object and a writer that lost its upload are
answers, not failures). The server wraps its driver in it when metrics are on.

A read is timed per piece the driver yields (how long the store took to hand it over), not
over the whole stream, which lasts as long as the client takes. A file sent from local disk
with sendfile (`local_path`) does not pass through the driver and is not timed.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Literal, TypeVar

from moorage import metrics
from moorage.storage.base import PathNotFound
from moorage.storage.objects import (
    REDIRECT_EXPIRES,
    Listed,
    ObjectDriver,
    ObjectWriter,
    StaleWriter,
)

T = TypeVar("T")


async def _timed(operation: str, call: Callable[[], Awaitable[T]]) -> T:
    started = time.perf_counter()
    try:
        return await call()
    except (PathNotFound, StaleWriter, StopAsyncIteration):
        raise
    except Exception:
        metrics.STORAGE_ERRORS.inc((operation,))
        raise
    finally:
        metrics.STORAGE_SECONDS.observe((operation,), time.perf_counter() - started)


class TimedWriter:
    def __init__(self, inner: ObjectWriter) -> None:
        self.inner = inner
        # Writes made on a worker thread (`blocking_write`): (seconds, failed), recorded on
        # the loop at the writer's next call, as the metrics are not for threads.
        self._threaded: list[tuple[float, bool]] = []

    @property
    def size(self) -> int:
        return self.inner.size

    async def write(self, data: bytes) -> None:
        await _timed("write", lambda: self.inner.write(data))

    def expect(self, size: int) -> None:
        self.inner.expect(size)

    def blocking_write(self) -> Callable[[memoryview], None] | None:
        inner = self.inner.blocking_write()
        if inner is None:
            return None

        def write(data: memoryview) -> None:
            started, failed = time.perf_counter(), True
            try:
                inner(data)
                failed = False
            except StaleWriter:
                failed = False
                raise
            finally:
                self._threaded.append((time.perf_counter() - started, failed))

        return write

    def _record_threaded(self) -> None:
        threaded, self._threaded = self._threaded, []
        for seconds, failed in threaded:
            if failed:
                metrics.STORAGE_ERRORS.inc(("write",))
            metrics.STORAGE_SECONDS.observe(("write",), seconds)

    async def state(self) -> bytes:
        self._record_threaded()
        return await _timed("write_state", self.inner.state)

    async def close(self) -> None:
        self._record_threaded()
        await _timed("write_close", self.inner.close)

    async def commit(self, target: str | None = None) -> str:
        self._record_threaded()
        return await _timed("commit", lambda: self.inner.commit(target))

    async def cancel(self) -> None:
        self._record_threaded()
        await _timed("cancel", self.inner.cancel)


class TimedObjects:
    def __init__(self, inner: ObjectDriver) -> None:
        self.inner = inner

    async def stat(self, key: str) -> int | None:
        return await _timed("stat", lambda: self.inner.stat(key))

    async def reader(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        pieces = aiter(self.inner.reader(key, offset, length))
        while True:
            try:
                piece = await _timed("read", lambda: anext(pieces))
            except StopAsyncIteration:
                return
            yield piece

    async def get(self, key: str) -> bytes:
        return await _timed("get", lambda: self.inner.get(key))

    async def put(self, key: str, data: bytes) -> None:
        await _timed("put", lambda: self.inner.put(key, data))

    async def writer(self, key: str, state: bytes | None = None) -> ObjectWriter:
        return TimedWriter(await _timed("writer", lambda: self.inner.writer(key, state)))

    async def move(self, source: str, target: str) -> bool:
        return await _timed("move", lambda: self.inner.move(source, target))

    async def delete(self, key: str) -> None:
        await _timed("delete", lambda: self.inner.delete(key))

    async def redirect_url(
        self, key: str, method: Literal["GET", "HEAD"] = "GET", expires: int = REDIRECT_EXPIRES
    ) -> str | None:
        return await _timed("redirect_url", lambda: self.inner.redirect_url(key, method, expires))

    def walk(self, prefix: str = "", after: str | None = None) -> AsyncIterator[Listed]:
        # A listing runs as long as its consumer reads: not one call to time.
        return self.inner.walk(prefix, after)

    def local_path(self, key: str) -> Path | None:
        return self.inner.local_path(key)

    async def check(self) -> None:
        await _timed("check", self.inner.check)

    async def close(self) -> None:
        await self.inner.close()
