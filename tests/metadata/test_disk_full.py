"""PostgreSQL out of disk space: a write raises `StorageFull` (507 STORAGE_FULL through the API,
as a full SQLite disk does), not `Unavailable` (503, "try again soon"), which would have the
client retry into the same full disk. The database lives in a tablespace on a 4 MiB tmpfs of
a PostgreSQL of this test's own; the server's WAL stays on its own disk, so the server itself
keeps running and answers reads."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from moorage.errors import StorageFull
from moorage.metadata import MetadataStore, migrations
from moorage.metadata.store import ManifestRow
from tests.services.fixtures import POSTGRES, Settings, database_url, start_service, stop_service

MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture
def small_tablespace(tmp_path: Path) -> Iterator[tuple[Settings, Path]]:
    """A PostgreSQL of its own and a 4 MiB tmpfs its server user owns (outside pytest's 0700
    temp tree, which that user cannot enter); unmounted and removed at teardown."""
    run_dir = tmp_path / "pg"
    run_dir.mkdir()
    settings = start_service(POSTGRES, run_dir)
    disk = Path(tempfile.mkdtemp(prefix="moorage-pgfull-"))
    try:
        os.chmod(disk, 0o755)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], check=True)
        try:
            shutil.chown(disk, settings["PG_RUN_AS"], settings["PG_RUN_AS"])
            yield settings, disk
        finally:
            stop_service(POSTGRES, run_dir)
            subprocess.run(["umount", "-l", str(disk)], check=False)
    finally:
        shutil.rmtree(disk, ignore_errors=True)


def _as_superuser(settings: Settings, sql: str) -> None:
    """The test user may create databases, not tablespaces: the server's own superuser, over
    the unix socket (peer authentication as its OS user)."""
    command = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", settings["PG_SOCKET_DIR"]]
    command += ["-p", settings["PGPORT"], "-U", "postgres", "-d", "postgres", "-c", sql]
    if os.geteuid() == 0 and settings["PG_RUN_AS"] != "root":
        command = ["runuser", "-u", settings["PG_RUN_AS"], "--", *command]
    subprocess.run(command, check=True, capture_output=True, timeout=60)


async def test_a_full_database_disk_is_storage_full_not_unavailable(
    small_tablespace: tuple[Settings, Path],
) -> None:
    settings, disk = small_tablespace
    user = settings["PGUSER"]
    _as_superuser(settings, f"CREATE TABLESPACE small OWNER {user} LOCATION '{disk}'")
    admin = await asyncpg.connect(settings["DATABASE_URL"])
    try:
        await admin.execute('CREATE DATABASE "full" TABLESPACE small')
    finally:
        await admin.close()
    url = database_url(settings, "full")
    await migrations.run_async(url, migrations.upgrade)
    store = MetadataStore(url)
    await store.open()
    try:
        stored = 0
        with pytest.raises(StorageFull):
            for i in range(200):  # 200 x 64 KiB of incompressible content: far over 4 MiB
                content = random.Random(i).randbytes(64 * 1024)
                digest = "sha256:" + hashlib.sha256(content).hexdigest()
                row = ManifestRow(digest, MEDIA_TYPE, content)
                await store.put_manifest("full/repo", row, [], f"t{i}")
                stored += 1
        assert stored > 0, "nothing fitted: the test did not fill the disk, it started full"
        # What was stored before the disk filled is still there and readable.
        first = await store.tagged_manifest("full/repo", "t0")
        assert first is not None and len(first.content) == 64 * 1024
    finally:
        await store.close()
