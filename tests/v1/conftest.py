"""Fixtures for the v1 protocol tests: an open registry ("O") and an authenticated one ("A").

Mode A (docs/contracts/v1-protocol.md section 14, the contract every "section" and "contract"
in tests/v1 cites): users `alice` and `bob` (htpasswd, basic auth); alice owns the private
`alice/*` repositories, bob owns `bob/*`, and `library/pub` is public (anonymous and
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
from moorage.storage.s3 import S3Driver
from moorage.storage.timed import TimedObjects
from tests.v1.client import V1Client, basic, sha256

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


async def stored_objects(v1: V1Client) -> dict[str, bytes]:
    """Everything the registry's storage holds, by key, wherever it keeps bytes: the files
    below its root (the filesystem, writers' unfinished data files included) or the objects
    below its prefix in its bucket (S3; unfinished multipart uploads are listed as keys with
    empty content)."""
    storage = v1.http.app[V1].storage
    if isinstance(storage, TimedObjects):  # metrics on: the driver is wrapped
        storage = storage.inner
    if isinstance(storage, S3Driver):
        found: dict[str, bytes] = {}
        pages = storage.client.get_paginator("list_objects_v2").paginate(
            Bucket=storage.bucket, Prefix=storage.prefix
        )
        async for page in pages:
            for entry in page.get("Contents", []):
                got = await storage.client.get_object(Bucket=storage.bucket, Key=entry["Key"])
                async with got["Body"] as body:
                    found[entry["Key"][len(storage.prefix) :]] = await body.read()
        uploads = await storage.client.list_multipart_uploads(
            Bucket=storage.bucket, Prefix=storage.prefix
        )
        for upload in uploads.get("Uploads", []):
            found.setdefault(upload["Key"][len(storage.prefix) :], b"")
        return found
    root = storage.local_path("x").parent  # the storage root
    return {
        str(path.relative_to(root)): path.read_bytes() for path in root.rglob("*") if path.is_file()
    }


async def staged_uploads(v1: V1Client) -> list[str]:
    """What is left of uploads (v1 layers being received, v2 upload sessions) in storage."""
    area = paths.upload("")
    return sorted(key for key in await stored_objects(v1) if key.startswith(area))


async def blob_stored(v1: V1Client, digest: str) -> bool:
    """Whether any stored object holds the bytes of `digest`."""
    objects = await stored_objects(v1)
    return any(sha256(data) == digest for data in objects.values())


async def v2_status(v1: V1Client, method: str, path: str, **headers: str) -> int:
    async with v1.http.request(method, path, headers=headers) as resp:
        await resp.read()
        return resp.status
