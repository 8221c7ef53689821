"""Fixtures for the v1 protocol tests: an open registry ("O") and an authenticated one ("A").

Mode A (contract section 14): users `alice` and `bob` (htpasswd, basic auth); alice owns the
private `alice/*` repositories, bob owns `bob/*`, and `library/pub` is public (anonymous and
every user may pull it; alice may push it). Both modes configure `auth` themselves, so the
shared `auth_mode` parameter would only run every test twice: it is pinned to one value here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from moorage.api.context import V1
from moorage.auth import htpasswd
from moorage.metadata import V1ImageRow
from moorage.storage import paths
from tests.v1.client import V1Client, basic

PASSWORDS = {"alice": "alice-secret", "bob": "bob-secret"}
ALICE = basic("alice", PASSWORDS["alice"])
BOB = basic("bob", PASSWORDS["bob"])
ALICE_WRONG = basic("alice", "not-her-password")

RULES: list[dict[str, Any]] = [
    {"repository": "alice/*", "users": ["alice"], "actions": ["pull", "push", "delete"]},
    {"repository": "bob/*", "users": ["bob"], "actions": ["pull", "push", "delete"]},
    {"repository": "library/pub", "users": ["anonymous", "*"], "actions": ["pull"]},
    {"repository": "library/pub", "users": ["alice"], "actions": ["push", "delete"]},
]


@pytest.fixture
def auth_mode() -> str:
    """Every v1 test sets `auth` itself; one run is enough."""
    return "none"


@pytest.fixture(scope="session")
def users_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("v1-auth") / "htpasswd"
    htpasswd.write(path, {u: htpasswd.hash_password(p) for u, p in PASSWORDS.items()})
    return path


def auth_settings(users_file: Path, **extra: Any) -> dict[str, Any]:
    return {"mode": "basic", "htpasswd": users_file, "rules": RULES, **extra}


@pytest.fixture
async def v1(make_client: Any) -> V1Client:
    """Mode O: authentication off."""
    return V1Client(await make_client(auth={"mode": "none"}))


@pytest.fixture
async def v1a(make_client: Any, users_file: Path) -> V1Client:
    """Mode A: alice, bob, private alice/*, public library/pub."""
    return V1Client(await make_client(auth=auth_settings(users_file)))


# -- stored state ------------------------------------------------------------------------------


async def stored(v1: V1Client, image_id: str) -> V1ImageRow | None:
    """The image's metadata row as the server keeps it (None: nothing stored)."""
    row: V1ImageRow | None = await v1.http.app[V1].metadata.v1_image(image_id)
    return row


def staged_uploads(v1: V1Client) -> list[Path]:
    """Files left in the storage's upload staging area."""
    root = v1.http.app[V1].storage.local_path(paths.UPLOADS)
    if root is None or not root.exists():
        return []
    return [p for p in root.rglob("*") if p.is_file()]


def blob_file(v1: V1Client, digest: str) -> Path | None:
    """The committed blob file for `digest`, if it exists in storage."""
    path = v1.http.app[V1].storage.local_path(paths.blob(digest.partition(":")[2]))
    return path if path is not None and path.exists() else None


async def v2_status(v1: V1Client, method: str, path: str, **headers: str) -> int:
    async with v1.http.request(method, path, headers=headers) as resp:
        await resp.read()
        return resp.status
