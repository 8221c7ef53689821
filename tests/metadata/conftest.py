"""A metadata store on each backend: SQLite in a temporary file, PostgreSQL in a fresh database
of the session's server (tests/services). Tests using `url` or `store` run on both."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from moorage.metadata import MetadataStore


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'metadata.db'}"
    return str(request.getfixturevalue("migrated_database"))


@pytest.fixture
async def store(url: str) -> AsyncIterator[MetadataStore]:
    metadata = MetadataStore(url)
    await metadata.open()
    yield metadata
    await metadata.close()
