"""Fixtures for process-level tests: real server processes that are always cleaned up."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.harness import MakeServer, MoorageProcess
from tests.process.registry import TIMEOUT


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[MakeServer]:
    """`make_server(workers=2)` -> a not yet started MoorageProcess with its own data dir and
    port (`env=` and `nofile=` are passed on to it). Every server made is stopped (SIGTERM,
    then SIGKILL of its group) at teardown."""
    servers: list[MoorageProcess] = []

    def make(workers: int = 1, **options: Any) -> MoorageProcess:
        n = len(servers)
        server = MoorageProcess(tmp_path / f"data-{n}", tmp_path / f"logs-{n}", workers, **options)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session with ordinary keep-alive connections."""
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        yield session


@pytest.fixture
async def http_new_conn() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session that opens a new TCP connection for every request."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(timeout=TIMEOUT, connector=connector) as session:
        yield session
