"""`INSERT ... ON CONFLICT` for the database a connection talks to (SQLite or PostgreSQL).

Writes that two nodes (or two workers) may make at once are single statements that settle the
race in the database: insert-if-absent (`on_conflict_do_nothing`) and upsert
(`on_conflict_do_update`). Both dialects spell them the same way in SQLAlchemy; only the
`insert` construct differs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import Connection, Table

if TYPE_CHECKING:
    from sqlalchemy.dialects import postgresql, sqlite


def insert(conn: Connection, table: Table) -> postgresql.Insert | sqlite.Insert:
    # Each dialect's module is imported on first use, when a connection to that database
    # exists: SQLAlchemy's PostgreSQL dialect costs every process of a node on SQLite ~2 MiB.
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table)
    if conn.dialect.name == "sqlite":
        from sqlalchemy.dialects import sqlite

        return sqlite.insert(table)
    raise ValueError(f"unsupported metadata database: {conn.dialect.name}")
