"""Pytest fixtures over the service scripts in this directory (tests/conftest.py imports them).

- `postgres_service`, `s3_service`: one real server per test session; the settings each script
  printed (`PGPORT`, `DATABASE_URL`, `S3_ENDPOINT`, `S3_ACCESS_KEY`, ...).
- `fresh_database`: a new empty PostgreSQL database per test; yields its
  `postgresql+asyncpg://` URL.
- `fresh_bucket`: a new empty S3 bucket per test; yields its name. `s3_client(settings)` opens
  an aiobotocore client with the settings this S3 server needs.
- `haproxy`: a factory, `haproxy("127.0.0.1:8001", "127.0.0.1:8002")` starts a balancer over
  those backends and returns its settings (`LB_URL`, `HAPROXY_SOCKET`, ...);
  `health_path="/readyz"` makes its checks HTTP requests instead of TCP connects.

A service that cannot start is an error, never a skip. Every script stops only what it started.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import secrets
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

HERE = Path(__file__).parent
POSTGRES = HERE / "postgres.sh"
SWIFT_S3 = HERE / "swift-s3.sh"
HAPROXY = HERE / "haproxy.sh"

Settings = dict[str, str]


def start_service(
    script: Path,
    run_dir: Path,
    *args: str,
    timeout: float = 900,
    env: dict[str, str] | None = None,
) -> Settings:
    """Run `script start run_dir args...` (with `env` added to the environment) and return the
    KEY=VALUE settings it printed.

    The timeout covers a first start that installs the Debian packages."""
    done = subprocess.run(
        [str(script), "start", str(run_dir), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )
    if done.returncode != 0:
        raise RuntimeError(f"{script.name} start {run_dir} failed:\n{done.stderr}")
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


def stop_service(script: Path, run_dir: Path) -> None:
    subprocess.run([str(script), "stop", str(run_dir)], check=True, timeout=120)


@pytest.fixture(scope="session")
def postgres_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    run_dir = tmp_path_factory.mktemp("postgres")
    try:
        yield start_service(POSTGRES, run_dir)
    finally:
        stop_service(POSTGRES, run_dir)


@pytest.fixture(scope="session")
def s3_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    run_dir = tmp_path_factory.mktemp("s3")
    try:
        yield start_service(SWIFT_S3, run_dir)
    finally:
        stop_service(SWIFT_S3, run_dir)


@pytest.fixture
def haproxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Settings]]:
    run_dirs: list[Path] = []

    def start(*backends: str, health_path: str | None = None) -> Settings:
        run_dir = tmp_path_factory.mktemp("haproxy")
        run_dirs.append(run_dir)
        env = {"HAPROXY_HEALTH_PATH": health_path} if health_path else None
        return start_service(HAPROXY, run_dir, *backends, env=env)

    yield start
    for run_dir in run_dirs:
        stop_service(HAPROXY, run_dir)


def database_url(settings: Settings, database: str, driver: str = "postgresql+asyncpg") -> str:
    s = settings
    return f"{driver}://{s['PGUSER']}:{s['PGPASSWORD']}@{s['PGHOST']}:{s['PGPORT']}/{database}"


async def create_database(settings: Settings, name: str, template: str | None = None) -> None:
    admin = await asyncpg.connect(settings["DATABASE_URL"])
    try:
        copy = f' TEMPLATE "{template}"' if template else ""
        await admin.execute(f'CREATE DATABASE "{name}"{copy}')
    finally:
        await admin.close()


async def drop_databases(settings: Settings, names: list[str]) -> None:
    admin = await asyncpg.connect(settings["DATABASE_URL"])
    try:
        for name in names:
            # FORCE: a connection the test left open must not keep the database alive. An
            # autovacuum worker on a new database can refuse to be ended for a moment: retry.
            for attempt in range(10):
                try:
                    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                    break
                except asyncpg.PostgresError:
                    if attempt == 9:
                        raise
                    await asyncio.sleep(0.3)
    finally:
        await admin.close()


@pytest.fixture
async def fresh_database(postgres_service: Settings) -> AsyncIterator[str]:
    name = f"t_{secrets.token_hex(8)}"
    await create_database(postgres_service, name)
    yield database_url(postgres_service, name)
    await drop_databases(postgres_service, [name])


@pytest.fixture
async def migrated_database(fresh_database: str) -> str:
    """A fresh database with Moorage's schema at head (`moorage db upgrade`)."""
    from moorage.metadata import migrations

    await migrations.run_async(fresh_database, migrations.upgrade)
    return fresh_database


def _content_md5(params: dict[str, Any], **_: Any) -> None:
    """Swift's s3api requires Content-MD5 on DeleteObjects; botocore >= 1.36 sends a CRC32
    header instead (400 InvalidRequest without this)."""
    body = params.get("body") or b""
    body = body.encode() if isinstance(body, str) else body
    params["headers"]["Content-MD5"] = base64.b64encode(hashlib.md5(body).digest()).decode()


@contextlib.asynccontextmanager
async def s3_client(settings: Settings) -> AsyncIterator[Any]:
    """An aiobotocore S3 client for this server: path-style addressing (no wildcard DNS for
    bucket.127.0.0.1), checksums only when required (Swift refuses aws-chunked bodies)."""
    config = AioConfig(
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    async with get_session().create_client(
        "s3",
        endpoint_url=settings["S3_ENDPOINT"],
        region_name=settings["S3_REGION"],
        aws_access_key_id=settings["S3_ACCESS_KEY"],
        aws_secret_access_key=settings["S3_SECRET_KEY"],
        config=config,
    ) as client:
        client.meta.events.register("before-call.s3.DeleteObjects", _content_md5)
        yield client


async def empty_bucket(client: Any, bucket: str) -> None:
    """Delete every object and abort every unfinished multipart upload in `bucket`."""
    uploads = await client.list_multipart_uploads(Bucket=bucket)
    for upload in uploads.get("Uploads", []):
        await client.abort_multipart_upload(
            Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
        )
    async for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            await client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})


@pytest.fixture
async def fresh_bucket(s3_service: Settings) -> AsyncIterator[str]:
    bucket = f"t-{secrets.token_hex(8)}"  # DNS-compliant: lower case, no underscore
    async with s3_client(s3_service) as client:
        await client.create_bucket(Bucket=bucket)
    yield bucket
    async with s3_client(s3_service) as client:
        await empty_bucket(client, bucket)
        await client.delete_bucket(Bucket=bucket)


class ScaleOut:
    """Puts in-process registries on PostgreSQL and S3 (`MOORAGE_TEST_BACKEND=scaleout`): each
    data directory gets its own database, copied from a migrated template (fast), and its own
    prefix in one bucket; the same data directory again (a restart) gets the same ones."""

    def __init__(self, postgres: Settings, s3: Settings, template: str, bucket: str) -> None:
        self.postgres = postgres
        self.s3 = s3
        self.template = template
        self.bucket = bucket
        self.databases: dict[Path, str] = {}

    async def settings_for(self, datadir: Path) -> dict[str, Any]:
        if datadir not in self.databases:
            name = f"t_{secrets.token_hex(8)}"
            await create_database(self.postgres, name, self.template)
            self.databases[datadir] = name
        name = self.databases[datadir]
        return {
            "metadata": {"url": database_url(self.postgres, name)},
            "storage": {
                "driver": "s3",
                "s3": {
                    "endpoint": self.s3["S3_ENDPOINT"],
                    "region": self.s3["S3_REGION"],
                    "bucket": self.bucket,
                    "prefix": name,
                    "accesskey": self.s3["S3_ACCESS_KEY"],
                    "secretkey": self.s3["S3_SECRET_KEY"],
                },
            },
        }

    async def close(self) -> None:
        await drop_databases(self.postgres, list(self.databases.values()))


@pytest.fixture(scope="session")
def scaleout_template(postgres_service: Settings) -> Iterator[str]:
    """A database at the schema's head that per-registry databases are copied from."""
    from moorage.metadata import migrations

    name = f"tmpl_{secrets.token_hex(6)}"

    async def create() -> None:
        await create_database(postgres_service, name)
        await migrations.run_async(database_url(postgres_service, name), migrations.upgrade)

    asyncio.run(create())
    yield name
    asyncio.run(drop_databases(postgres_service, [name]))


@pytest.fixture(scope="session")
def scaleout_bucket(s3_service: Settings) -> Iterator[str]:
    bucket = f"api-{secrets.token_hex(6)}"

    async def create() -> None:
        async with s3_client(s3_service) as client:
            await client.create_bucket(Bucket=bucket)

    async def drop() -> None:
        async with s3_client(s3_service) as client:
            await empty_bucket(client, bucket)
            await client.delete_bucket(Bucket=bucket)

    asyncio.run(create())
    yield bucket
    asyncio.run(drop())


@pytest.fixture
async def scaleout(
    postgres_service: Settings, s3_service: Settings, scaleout_template: str, scaleout_bucket: str
) -> AsyncIterator[ScaleOut]:
    backend = ScaleOut(postgres_service, s3_service, scaleout_template, scaleout_bucket)
    yield backend
    await backend.close()
