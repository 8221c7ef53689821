"""Alembic's environment, run by `moorage.metadata.migrations` (there is no alembic.ini).

It migrates the connection the caller passes in `config.attributes["connection"]`, inside the
caller's transaction: that transaction holds the migration lock, and on PostgreSQL (and SQLite)
the DDL of every revision commits or rolls back with it, all or nothing.
"""

from __future__ import annotations

from alembic import context

from moorage.metadata.schema import metadata

context.configure(connection=context.config.attributes["connection"], target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
