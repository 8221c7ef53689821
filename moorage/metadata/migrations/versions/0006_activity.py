"""0006: what the web interface shows beyond the content (issue 13): `tags.pushed_by`, the user
who last set a tag through the v2 API (null: anonymous, or set another way); `activity`, pushes
and pulls per namespace and day, added to by every worker (`moorage/content/activity.py`); and
`gc_runs`, each garbage collection cycle with what it deleted. Nullable column and new tables
only: the previous release runs on this schema."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision: str | None = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tags", sa.Column("pushed_by", sa.String(255), nullable=True))
    op.create_table(
        "activity",
        sa.Column("day", sa.Integer(), primary_key=True),
        sa.Column("namespace", sa.String(255), primary_key=True),
        sa.Column("pushes", sa.BigInteger(), nullable=False),
        sa.Column("pulls", sa.BigInteger(), nullable=False),
        sa.Column("pulled_bytes", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "gc_runs",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("started", sa.Float(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("tags", sa.Integer(), nullable=False),
        sa.Column("manifests", sa.Integer(), nullable=False),
        sa.Column("links", sa.Integer(), nullable=False),
        sa.Column("v1_images", sa.Integer(), nullable=False),
        sa.Column("blobs", sa.Integer(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("objects_deleted", sa.Integer(), nullable=False),
        sa.Column("error", sa.String(300), nullable=True),
    )
    op.create_index("gc_runs_started", "gc_runs", ["started"])


def downgrade() -> None:
    op.drop_index("gc_runs_started", table_name="gc_runs")
    op.drop_table("gc_runs")
    op.drop_table("activity")
    with op.batch_alter_table("tags") as batch:
        batch.drop_column("pushed_by")
