"""Start-up checks: refuse to serve, with one clear line, from a state that cannot work.

Run once by `moorage serve` before it binds a port or forks a worker: a data directory that is
a file or read-only, a metadata database that is a directory or not a SQLite database, a
schema this Moorage cannot use (on PostgreSQL: any schema not at head, empty included, since
only `moorage db upgrade` migrates it), an htpasswd file that is missing. Each is a
`PreflightError` whose message is the line to print; nothing here prints or exits (the command
line does).

Must not: change anything it checks (a probe file aside), or write to the database.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from moorage.config import Settings
from moorage.metadata import migrations

SQLITE_HEADER = b"SQLite format 3\x00"


class PreflightError(Exception):
    """The server cannot start; the message says why, in one line."""


def check(settings: Settings) -> None:
    """Raise PreflightError for the first problem found."""
    _writable_directory(settings.datadir, "data directory")
    _writable_directory(settings.blob_root, "blob storage directory")
    database = _sqlite_file(settings.metadata_url)
    if database is not None:
        _writable_directory(database.parent, "metadata database directory")
        _sqlite_database(database)
    _schema(settings.metadata_url, database)
    if settings.auth.htpasswd is not None:
        _readable_file(settings.auth.htpasswd, "htpasswd file")


def _writable_directory(path: Path, what: str) -> None:
    if path.exists() and not path.is_dir():
        raise PreflightError(f"{what} {path} is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PreflightError(f"{what} {path} cannot be created: {exc.strerror}") from exc
    probe = path / f".moorage-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise PreflightError(f"{what} {path} is not writable: {exc.strerror}") from exc


def _sqlite_file(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    if parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def _sqlite_database(path: Path) -> None:
    if not path.exists():
        return  # made on first start
    if not path.is_file():
        raise PreflightError(f"metadata database {path} is not a file")
    try:
        with open(path, "rb") as f:
            header = f.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise PreflightError(f"metadata database {path} cannot be read: {exc.strerror}") from exc
    if not header:
        return  # an empty file is a new database to SQLite
    if header != SQLITE_HEADER:
        raise PreflightError(f"metadata database {path} is not a SQLite database")
    try:
        conn = sqlite3.connect(path)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise PreflightError(f"metadata database {path} is damaged: {exc}") from exc


def _schema(url: str, database: Path | None) -> None:
    """SQLite upgrades itself when the store opens, unless a newer Moorage made its schema; any
    other database must be at head already."""
    if database is not None and (not database.exists() or database.stat().st_size == 0):
        return
    try:
        status = migrations.run(url, migrations.status, lock=False)
    except migrations.SchemaError as exc:
        raise PreflightError(str(exc)) from exc
    except (OSError, SQLAlchemyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PreflightError(f"metadata database cannot be read: {first}") from exc
    if database is None and not status.at_head:
        raise PreflightError(status.refusal())


def _readable_file(path: Path, what: str) -> None:
    if not path.exists():
        raise PreflightError(f"{what} {path} does not exist")
    if not path.is_file():
        raise PreflightError(f"{what} {path} is not a file")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise PreflightError(f"{what} {path} cannot be read: {exc.strerror}") from exc
