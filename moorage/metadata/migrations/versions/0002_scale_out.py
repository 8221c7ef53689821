"""0002: what several nodes on one database need (issue 10): uploads keep their running
SHA-256 state (`uploads.hash_state`) and their storage writer's state (`uploads.writer_state`,
to resume the write on any node); `chores` (jobs one process of the cluster runs at a
time) and `login_failures` (failed-login counts shared by every node); `schema_info` = 2.

`schema_info` is only for Moorage 0.1.0, which knows nothing of Alembic: at 2 it refuses the
database ("metadata schema 2 is newer than this Moorage") instead of serving a schema it does not
know. Later revisions leave it alone.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels = None
depends_on = None

_schema_info = sa.table("schema_info", sa.column("version", sa.Integer))


def upgrade() -> None:
    op.add_column("uploads", sa.Column("hash_state", sa.LargeBinary(), nullable=True))
    op.add_column("uploads", sa.Column("writer_state", sa.LargeBinary(), nullable=True))
    op.create_table(
        "chores",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("until", sa.Float(), nullable=False),
    )
    op.create_table(
        "login_failures",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("started", sa.Float(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
    )
    op.create_index("login_failures_started", "login_failures", ["started"])
    op.execute(_schema_info.update().values(version=2))


def downgrade() -> None:
    op.drop_index("login_failures_started", table_name="login_failures")
    op.drop_table("login_failures")
    op.drop_table("chores")
    with op.batch_alter_table("uploads") as batch:
        batch.drop_column("writer_state")
        batch.drop_column("hash_state")
    op.execute(_schema_info.update().values(version=1))
