"""Shared fixtures: an in-process registry per test, on its own data directory."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from moorage.app import create_app
from moorage.config import Settings

MakeClient = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(datadir=tmp_path / "data")


@pytest.fixture
def make_client(aiohttp_client: Any, tmp_path: Path) -> MakeClient:
    """Start another in-process registry: `await make_client(deletes={"enabled": False})`.

    Keyword arguments are Settings fields; by default each gets its own data directory.
    """
    count = 0

    async def make(**overrides: Any) -> TestClient[Any, Any]:
        nonlocal count
        count += 1
        overrides.setdefault("datadir", tmp_path / f"data-{count}")
        return await aiohttp_client(create_app(Settings(**overrides)))  # type: ignore[no-any-return]

    return make


@pytest.fixture
async def client(aiohttp_client: Any, settings: Settings) -> TestClient[Any, Any]:
    """An aiohttp test client for a registry with the embedded defaults."""
    return await aiohttp_client(create_app(settings))  # type: ignore[no-any-return]
