"""Fixtures for the auth tests: one htpasswd file of bcrypt users per session, and registries
in basic or token mode on their own data directories."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from moorage.auth import htpasswd
from tests.auth.helpers import ADMINS, GROUPS, PASSWORDS, RULES, Client
from tests.conftest import MakeClient


@pytest.fixture(scope="session")
def users_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared htpasswd file (bcrypt cost 10 is slow: hashed once per session).
    Read-only: tests that change users copy it first."""
    path = tmp_path_factory.mktemp("users") / "htpasswd"
    htpasswd.write(path, {name: htpasswd.hash_password(pw) for name, pw in PASSWORDS.items()})
    return path


@dataclass
class Registry:
    client: Client
    datadir: Path

    @property
    def key_file(self) -> Path:
        return self.datadir / "auth" / "token-key.pem"


MakeRegistry = Callable[..., Awaitable[Registry]]


def auth_settings(mode: str, users: Path | None, **overrides: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "mode": mode,
        "groups": GROUPS,
        "admins": ADMINS,
        "rules": RULES,
    }
    if users is not None:
        settings["htpasswd"] = users
    settings.update(overrides)
    return settings


@pytest.fixture
def make_registry(make_client: MakeClient, users_file: Path, tmp_path: Path) -> MakeRegistry:
    """`await make_registry("token", maxfailures=3)`: a registry with the shared users, groups,
    admins and rules (override any auth setting by keyword; `settings=` for other sections)."""
    count = 0

    async def make(mode: str, settings: dict[str, Any] | None = None, **auth: Any) -> Registry:
        nonlocal count
        count += 1
        datadir = tmp_path / f"registry-{count}"
        users = auth.pop("htpasswd", users_file)
        client = await make_client(
            datadir=datadir, auth=auth_settings(mode, users, **auth), **(settings or {})
        )
        return Registry(client, datadir)

    return make
