"""Schema migrations on SQLite and PostgreSQL: `versions/` builds exactly `schema.py`, a
database made by Moorage 0.1.0 is recognised and keeps its rows, `moorage db current|upgrade`
say what they see and do, `serve` refuses a PostgreSQL schema not at head in one line, and two
upgrades at once migrate once.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, MetaData, insert, inspect, select, text

from moorage.metadata import migrations, schema
from moorage.metadata.store import MetadataStore
from tests.process.test_startup import assert_refused, serve

T = TypeVar("T")
TIMEOUT = 60.0
EXPECTED_TABLES = {*schema.metadata.tables, "alembic_version"}


def sqlite_url(database: Path) -> str:
    return f"sqlite:///{database}"


def differences(conn: Connection) -> list[Any]:
    """What Alembic's autogenerate finds between the database and `schema.py`."""
    return list(compare_metadata(MigrationContext.configure(conn), schema.metadata))


def tables(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names())


def on_sqlite(database: Path, work: Callable[[Connection], T]) -> T:
    return migrations.run(sqlite_url(database), work, lock=False)


async def on_postgres(url: str, work: Callable[[Connection], T]) -> T:
    return await migrations.run_async(url, work, lock=False)


def moorage(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "moorage", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def config_file(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "moorage.yaml"
    path.write_text(f"datadir: {tmp_path / 'data'}\nmetadata:\n  url: {url}\n")
    return path


# -- the revisions and schema.py --------------------------------------------------------------


def test_head_names_the_newest_revision() -> None:
    assert migrations.script().get_current_head() == migrations.HEAD


def test_sqlite_upgrade_from_empty_builds_exactly_schema_py(tmp_path: Path) -> None:
    database = tmp_path / "metadata.db"
    before, after = migrations.run(sqlite_url(database), migrations.upgrade)
    assert before == migrations.Status(None)
    assert after == migrations.Status(migrations.HEAD)
    assert on_sqlite(database, tables) == EXPECTED_TABLES
    assert on_sqlite(database, differences) == []


async def test_postgres_upgrade_from_empty_builds_exactly_schema_py(fresh_database: str) -> None:
    before, after = await migrations.run_async(fresh_database, migrations.upgrade)
    assert before == migrations.Status(None)
    assert after == migrations.Status(migrations.HEAD)
    assert await on_postgres(fresh_database, tables) == EXPECTED_TABLES
    assert await on_postgres(fresh_database, differences) == []


def downgrade_to(target: str) -> Callable[[Connection], None]:
    return lambda conn: command.downgrade(migrations.alembic_config(conn), target)


async def test_postgres_downgrades_to_nothing_and_upgrades_again(fresh_database: str) -> None:
    await migrations.run_async(fresh_database, migrations.upgrade)
    await migrations.run_async(fresh_database, downgrade_to("0001"))
    assert await on_postgres(fresh_database, migrations.status) == migrations.Status("0001")
    await migrations.run_async(fresh_database, downgrade_to("base"))
    assert await on_postgres(fresh_database, tables) == {"alembic_version"}
    assert await on_postgres(fresh_database, migrations.status) == migrations.Status(None)
    await migrations.run_async(fresh_database, migrations.upgrade)
    assert await on_postgres(fresh_database, differences) == []


def test_sqlite_downgrades_to_nothing_and_upgrades_again(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "metadata.db")
    migrations.run(url, migrations.upgrade)
    migrations.run(url, downgrade_to("base"))
    assert migrations.run(url, tables) == {"alembic_version"}
    migrations.run(url, migrations.upgrade)
    assert migrations.run(url, differences) == []


# -- a database made by Moorage 0.1.0 -------------------------------------------------------------


def initial_metadata() -> MetaData:
    """Revision 0001's frozen copy of the 0.1.0 tables."""
    revision = migrations.script().get_revision(migrations.INITIAL)
    assert revision is not None
    metadata: MetaData = revision.module.metadata
    return metadata


def make_release_0_1_database(database: Path) -> None:
    """What Moorage 0.1.0's `MetadataStore.open()` did (`create_all`, `schema_info` = 1), then
    one row in each of the tables a push fills, and an upload in progress."""
    old = initial_metadata().tables

    def build(conn: Connection) -> None:
        initial_metadata().create_all(conn)
        conn.execute(insert(old["schema_info"]).values(version=1))
        conn.execute(insert(old["repositories"]).values(id=1, name="team/app", created=1.0))
        conn.execute(
            insert(old["blobs"]).values(
                digest="sha256:" + "a" * 64, storage_key="a" * 64, size=42, created=1.0
            )
        )
        conn.execute(
            insert(old["repository_blobs"]).values(
                repository_id=1, digest="sha256:" + "a" * 64, created=1.0
            )
        )
        conn.execute(
            insert(old["manifests"]).values(
                repository_id=1,
                digest="sha256:" + "b" * 64,
                media_type="application/vnd.oci.image.manifest.v1+json",
                content=b'{"schemaVersion": 2}',
                created=1.0,
            )
        )
        conn.execute(
            insert(old["tags"]).values(
                repository_id=1, name="latest", digest="sha256:" + "b" * 64, updated=1.0
            )
        )
        conn.execute(
            insert(old["uploads"]).values(
                id="u1", repository="team/app", offset=7, created=1.0, updated=2.0
            )
        )

    on_sqlite(database, build)


def assert_rows_kept(conn: Connection) -> None:
    new = schema
    assert conn.execute(select(new.repositories.c.name)).scalars().all() == ["team/app"]
    assert conn.execute(select(new.blobs.c.size)).scalars().all() == [42]
    assert conn.execute(select(new.repository_blobs.c.digest)).scalars().all() == [
        "sha256:" + "a" * 64
    ]
    assert conn.execute(select(new.manifests.c.content)).scalars().all() == [
        b'{"schemaVersion": 2}'
    ]
    assert conn.execute(select(new.tags.c.name, new.tags.c.digest)).all() == [
        ("latest", "sha256:" + "b" * 64)
    ]
    upload = conn.execute(
        select(new.uploads.c.id, new.uploads.c.offset, new.uploads.c.hash_state)
    ).all()
    assert upload == [("u1", 7, None)]
    # Moorage 0.1.0 reads this number and refuses a schema newer than its own 1
    assert conn.execute(select(new.schema_info.c.version)).scalars().all() == [2]


async def test_release_0_1_sqlite_database_upgrades_on_start_and_keeps_its_rows(
    tmp_path: Path,
) -> None:
    database = tmp_path / "metadata.db"
    make_release_0_1_database(database)
    assert on_sqlite(database, migrations.status) == migrations.Status("0001", legacy=True)

    store = MetadataStore(sqlite_url(database))
    try:
        await store.open()
        assert await store.repository_exists("team/app")
        upload = await store.upload("u1")
        assert upload is not None
        assert upload.offset == 7
        assert upload.hash_state is None
    finally:
        await store.close()
    assert on_sqlite(database, migrations.status) == migrations.Status(migrations.HEAD)
    on_sqlite(database, assert_rows_kept)
    assert on_sqlite(database, differences) == []


def test_release_0_1_sqlite_database_with_other_tables_is_refused_unchanged(
    tmp_path: Path,
) -> None:
    database = tmp_path / "metadata.db"
    make_release_0_1_database(database)
    on_sqlite(database, lambda conn: conn.execute(text("DROP TABLE v1_tag_info")))

    with pytest.raises(migrations.SchemaError, match="lacks table v1_tag_info"):
        migrations.run(sqlite_url(database), migrations.upgrade)
    assert "alembic_version" not in on_sqlite(database, tables)
    assert "hash_state" not in {
        column["name"]
        for column in on_sqlite(database, lambda conn: inspect(conn).get_columns("uploads"))
    }


# -- moorage db current / upgrade ----------------------------------------------------------------


def test_db_commands_on_a_release_0_1_sqlite_database(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    make_release_0_1_database(data / "metadata.db")
    shown = sqlite_url(data / "metadata.db")

    current = moorage("db", "current", "--data-dir", str(data), cwd=tmp_path)
    assert current.returncode == 0, current.stderr
    assert current.stdout == (
        f"{shown}: at Moorage 0.1.0's schema (revision 0001); head is {migrations.HEAD}\n"
    )

    upgrade = moorage("db", "upgrade", "--data-dir", str(data), cwd=tmp_path)
    assert upgrade.returncode == 0, upgrade.stderr
    assert upgrade.stdout == (
        f"{shown}: upgraded from Moorage 0.1.0's schema (revision 0001) "
        f"to revision {migrations.HEAD} (head)\n"
    )
    again = moorage("db", "upgrade", "--data-dir", str(data), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout == (
        f"{shown}: already at revision {migrations.HEAD} (head), nothing to do\n"
    )
    current = moorage("db", "current", "--data-dir", str(data), cwd=tmp_path)
    assert current.stdout == f"{shown}: at revision {migrations.HEAD} (head)\n"
    on_sqlite(data / "metadata.db", assert_rows_kept)


def test_db_current_does_not_create_a_missing_sqlite_database(tmp_path: Path) -> None:
    done = moorage("db", "current", "--data-dir", str(tmp_path / "data"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith(f": empty (no tables); head is {migrations.HEAD}\n")
    assert not (tmp_path / "data" / "metadata.db").exists()


def test_a_newer_moorage_schema_is_refused_by_db_and_serve(tmp_path: Path) -> None:
    data = tmp_path / "data"
    database = data / "metadata.db"
    migrations.run(sqlite_url(database), migrations.upgrade)
    on_sqlite(
        database, lambda conn: conn.execute(text("UPDATE alembic_version SET version_num='9999'"))
    )

    current = moorage("db", "current", "--data-dir", str(data), cwd=tmp_path)
    assert current.returncode == 1
    assert "Traceback" not in current.stderr
    assert "revision 9999, which this Moorage does not know" in current.stderr
    code, output = serve("--data-dir", str(data), cwd=tmp_path)
    assert_refused(code, output, "revision 9999, which this Moorage does not know")


# -- PostgreSQL: serve refuses, db upgrade migrates once -------------------------------------------


async def test_postgres_store_and_serve_refuse_an_empty_database(
    tmp_path: Path, fresh_database: str
) -> None:
    store = MetadataStore(fresh_database)
    try:
        with pytest.raises(migrations.SchemaError, match="run `moorage db upgrade`"):
            await store.open()
    finally:
        await store.close()
    code, output = await asyncio.to_thread(
        serve, "--config", str(config_file(tmp_path, fresh_database)), cwd=tmp_path
    )
    assert_refused(code, output, "metadata database has no tables: run `moorage db upgrade`")


async def test_postgres_serve_refuses_an_outdated_schema_until_db_upgrade(
    tmp_path: Path, fresh_database: str
) -> None:
    await migrations.run_async(fresh_database, lambda conn: migrations.upgrade(conn, "0001"))
    config = str(config_file(tmp_path, fresh_database))

    code, output = await asyncio.to_thread(serve, "--config", config, cwd=tmp_path)
    assert_refused(
        code,
        output,
        f"metadata database is at revision 0001, not at head {migrations.HEAD}: "
        "run `moorage db upgrade`",
    )
    current = await asyncio.to_thread(moorage, "db", "current", "--config", config, cwd=tmp_path)
    assert current.returncode == 0, current.stderr
    assert current.stdout.endswith(f": at revision 0001; head is {migrations.HEAD}\n")
    assert "***@" in current.stdout  # the password is not printed

    upgrade = await asyncio.to_thread(moorage, "db", "upgrade", "--config", config, cwd=tmp_path)
    assert upgrade.returncode == 0, upgrade.stderr
    assert upgrade.stdout.endswith(
        f": upgraded from revision 0001 to revision {migrations.HEAD} (head)\n"
    )
    store = MetadataStore(fresh_database)
    try:
        await store.open()  # at head: accepted
        assert not await store.repository_exists("team/app")
    finally:
        await store.close()


def start(*argv: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "moorage", *argv],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(procs: list[subprocess.Popen[str]]) -> list[tuple[int, str, str]]:
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        results.append((proc.returncode, out, err))
    return results


def assert_migrated_once(results: list[tuple[int, str, str]]) -> None:
    assert [code for code, _, _ in results] == [0, 0], results
    outputs = sorted(out.split(": ", 1)[1] for _, out, _ in results)
    assert outputs == [
        f"already at revision {migrations.HEAD} (head), nothing to do\n",
        f"upgraded from empty (no tables) to revision {migrations.HEAD} (head)\n",
    ], results


async def test_postgres_two_upgrades_at_once_migrate_once(
    tmp_path: Path, fresh_database: str
) -> None:
    """Both wait on the advisory lock (held here until both are seen waiting), then one
    migrates and the other finds nothing to do."""
    config = str(config_file(tmp_path, fresh_database))
    holder = await asyncpg.connect(fresh_database.replace("postgresql+asyncpg", "postgresql"))
    procs: list[subprocess.Popen[str]] = []
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", migrations.LOCK_KEY)
        procs = [start("db", "upgrade", "--config", config, cwd=tmp_path) for _ in range(2)]
        deadline = time.monotonic() + TIMEOUT
        waiting = 0
        while waiting < 2:
            assert time.monotonic() < deadline, "the upgrades never waited on the lock"
            assert all(proc.poll() is None for proc in procs), finish(procs)
            await asyncio.sleep(0.05)
            waiting = await holder.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
        await holder.execute("SELECT pg_advisory_unlock($1)", migrations.LOCK_KEY)
        results = await asyncio.to_thread(finish, procs)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
        await holder.close()
    assert_migrated_once(results)
    assert await on_postgres(
        fresh_database, lambda conn: conn.execute(text("SELECT * FROM alembic_version")).all()
    ) == [(migrations.HEAD,)]
    assert await on_postgres(fresh_database, differences) == []


def test_sqlite_two_upgrades_at_once_migrate_once(tmp_path: Path) -> None:
    """Both wait on the lock file beside the database (held here until both are seen blocked
    on it in /proc/locks), then one migrates and the other finds nothing to do."""
    data = tmp_path / "data"
    data.mkdir()
    lock = data / "metadata.db-lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    procs: list[subprocess.Popen[str]] = []
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        procs = [start("db", "upgrade", "--data-dir", str(data), cwd=tmp_path) for _ in range(2)]
        inode = f":{os.stat(lock).st_ino} "
        deadline = time.monotonic() + TIMEOUT
        while sum("-> FLOCK" in line and inode in line for line in _proc_locks()) < 2:
            assert time.monotonic() < deadline, "the upgrades never waited on the lock file"
            assert all(proc.poll() is None for proc in procs), finish(procs)
            time.sleep(0.05)
        fcntl.flock(fd, fcntl.LOCK_UN)
        results = finish(procs)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
        os.close(fd)
    assert_migrated_once(results)
    assert on_sqlite(data / "metadata.db", differences) == []


def _proc_locks() -> list[str]:
    return Path("/proc/locks").read_text().splitlines()


async def test_sqlite_two_stores_opening_at_once_migrate_once(tmp_path: Path) -> None:
    """Two workers starting at once: both `MetadataStore.open()` wait on the writers' lock file,
    then one migrates in its write transaction and the other finds the schema at head."""
    database = tmp_path / "metadata.db"
    stores = [MetadataStore(sqlite_url(database)) for _ in range(2)]
    lock = tmp_path / "metadata.db-lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        opening = [asyncio.ensure_future(store.open()) for store in stores]
        inode = f":{os.stat(lock).st_ino} "
        deadline = time.monotonic() + TIMEOUT
        while sum("-> FLOCK" in line and inode in line for line in _proc_locks()) < 2:
            assert time.monotonic() < deadline, "the stores never waited on the lock file"
            await asyncio.sleep(0.05)
        assert not any(task.done() for task in opening)
        fcntl.flock(fd, fcntl.LOCK_UN)
        await asyncio.wait_for(asyncio.gather(*opening), TIMEOUT)
    finally:
        os.close(fd)
        for store in stores:
            await store.close()
    assert on_sqlite(database, migrations.status) == migrations.Status(migrations.HEAD)
    assert on_sqlite(database, differences) == []
