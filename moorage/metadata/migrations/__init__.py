"""Schema migrations (Alembic) for every metadata database, configured here: no alembic.ini.

- `status(conn)`: where a database stands: empty, at a revision, or made by Moorage 0.1.0 (a
  `schema_info` row and no `alembic_version`), which counts as revision 0001.
- `upgrade(conn)`: migrate to the head revision inside the caller's transaction; a 0.1.0
  database is checked against revision 0001's tables and stamped 0001 first.
- `run(url, work)`: run one of those in a transaction that holds the migration lock, so that two
  nodes or workers starting at once never migrate twice (the second finds nothing to do): on
  SQLite an exclusive `flock` on the lock file beside the database (the one its writers queue
  on) and `BEGIN IMMEDIATE`; on PostgreSQL `pg_advisory_xact_lock`.

Revisions live in `versions/`; how to add one: docs/deploy/upgrades.md. `HEAD` names the newest,
so that a start-up already at head reads one row and never imports Alembic (a test checks that
it matches `versions/`).

Must not: migrate a PostgreSQL database by itself. Only `moorage db upgrade` does that (the
embedded SQLite default upgrades itself when the store opens).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from moorage.metadata import schema

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

T = TypeVar("T")

HEAD = "0006"
INITIAL = "0001"  # the schema of Moorage 0.1.0, the release before migrations
COMMAND = "moorage db upgrade"
# pg_advisory_xact_lock key of schema migrations (any fixed 64-bit number; "moorage" in ASCII)
LOCK_KEY = 0x6D6F6F72616765

HERE = Path(__file__).parent


class SchemaError(Exception):
    """The database's schema cannot be used or migrated by this Moorage; the message is one
    line."""


@dataclass(frozen=True, slots=True)
class Status:
    revision: str | None  # None: no tables yet
    legacy: bool = False  # made by Moorage 0.1.0, not yet stamped (counts as INITIAL)

    @property
    def at_head(self) -> bool:
        return self.revision == HEAD and not self.legacy

    def name(self) -> str:
        if self.revision is None:
            return "empty (no tables)"
        if self.legacy:
            return f"Moorage 0.1.0's schema (revision {self.revision})"
        return f"revision {self.revision}"

    def describe(self) -> str:
        """One line for `moorage db current`."""
        if self.at_head:
            return f"at revision {HEAD} (head)"
        return f"{'' if self.revision is None else 'at '}{self.name()}; head is {HEAD}"

    def refusal(self) -> str:
        """Why a database not at head cannot be served, naming the command that fixes it."""
        if self.revision is None:
            return f"metadata database has no tables: run `{COMMAND}` to create them"
        return f"metadata database is at {self.name()}, not at head {HEAD}: run `{COMMAND}`"


def status(conn: Connection) -> Status:
    """Where the database of `conn` stands. Raises SchemaError for a state no revision of this
    Moorage explains (a newer Moorage's revision, stray tables)."""
    tables = set(inspect(conn).get_table_names())
    if "alembic_version" in tables:
        rows = list(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())
        if len(rows) > 1:
            raise SchemaError(f"metadata database has several heads {sorted(rows)}; expected one")
        if not rows:  # every revision downgraded
            return _no_tables(tables - {"alembic_version"})
        if rows[0] != HEAD and rows[0] not in _known():
            raise SchemaError(
                f"metadata database is at revision {rows[0]}, which this Moorage does not know "
                "(a newer Moorage upgraded it)"
            )
        return Status(rows[0])
    if "schema_info" in tables:
        version = conn.execute(text("SELECT max(version) FROM schema_info")).scalar()
        if version != 1:
            raise SchemaError(
                f"metadata database has schema_info version {version} and no alembic_version; "
                "only version 1 (Moorage 0.1.0) can be upgraded"
            )
        return Status(INITIAL, legacy=True)
    return _no_tables(tables)


def _no_tables(tables: set[str]) -> Status:
    ours = sorted(tables & set(schema.metadata.tables))
    if ours:
        raise SchemaError(f"metadata database has tables {ours} but no schema revision")
    return Status(None)


def upgrade(conn: Connection, target: str = "head") -> tuple[Status, Status]:
    """Migrate the database of `conn` to `target` in the caller's transaction (which holds the
    migration lock: see `run`). Returns the status before and after."""
    before = status(conn)
    if before.at_head and target in ("head", HEAD):
        return before, before
    from alembic import command

    config = alembic_config(conn)
    if before.legacy:
        _check_initial_tables(conn)
        command.stamp(config, INITIAL)
    command.upgrade(config, target)
    return before, status(conn)


def alembic_config(conn: Connection) -> Config:
    """An Alembic configuration whose commands (upgrade, downgrade, stamp) run on `conn`."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.attributes["connection"] = conn
    return config


@cache
def script() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(HERE))


def _known() -> set[str]:
    return {revision.revision for revision in script().walk_revisions()}


def _check_initial_tables(conn: Connection) -> None:
    """A database without `alembic_version` says by its `schema_info` row that 0.1.0 made it:
    its tables must be revision 0001's before it is stamped so."""
    initial = script().get_revision(INITIAL)
    assert initial is not None
    inspector = inspect(conn)
    present = set(inspector.get_table_names())
    for table in initial.module.metadata.sorted_tables:
        if table.name not in present:
            raise SchemaError(f"metadata database made by Moorage 0.1.0 lacks table {table.name}")
        columns = {column["name"] for column in inspector.get_columns(table.name)}
        if columns != set(table.columns.keys()):
            raise SchemaError(
                f"metadata table {table.name} has columns {sorted(columns)}, not those Moorage "
                f"0.1.0 made ({sorted(table.columns.keys())})"
            )


# -- running with the migration lock ----------------------------------------------------------


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL; None for any other database."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    if not parsed.database or parsed.database == ":memory:":
        raise SchemaError("SQLite metadata needs a file")
    return Path(parsed.database)


def run(url: str, work: Callable[[Connection], T], lock: bool = True) -> T:
    """`work(conn)` in one transaction on the database at `url`; with `lock`, holding the
    migration lock (reads need none)."""
    database = sqlite_path(url)
    if database is None:
        return asyncio.run(run_async(url, work, lock))
    with _flock(database.with_name(database.name + "-lock") if lock else None):
        engine = create_engine(make_url(url).set(drivername="sqlite"), poolclass=NullPool)

        @event.listens_for(engine, "connect")
        def _connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # no implicit BEGINs: the begin event says which
            dbapi_conn.execute("PRAGMA busy_timeout=60000")

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if lock else "BEGIN")

        try:
            with engine.begin() as conn:
                return work(conn)
        finally:
            engine.dispose()


async def run_async(url: str, work: Callable[[Connection], T], lock: bool = True) -> T:
    """`run` through an async engine (PostgreSQL), with `work` on its sync facade."""
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            if lock and conn.dialect.name == "postgresql":
                # held until this transaction ends: a concurrent upgrade waits here, then finds
                # the schema at head and does nothing
                await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
            return await conn.run_sync(work)
    finally:
        await engine.dispose()


@contextmanager
def _flock(path: Path | None) -> Iterator[None]:
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
