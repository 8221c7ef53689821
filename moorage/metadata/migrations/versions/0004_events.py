"""0004: events for webhooks (issue 15): `events`, recorded in order, and `event_cursors`,
per endpoint the last event delivered and the lease of the one process delivering them."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("created", sa.Float(), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("repository", sa.String(255), nullable=False),
        sa.Column("media_type", sa.String(255), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
    )
    op.create_table(
        "event_cursors",
        sa.Column("endpoint", sa.String(64), primary_key=True),
        sa.Column("delivered", sa.BigInteger(), nullable=False),
        sa.Column("holder", sa.String(64), nullable=True),
        sa.Column("until", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("event_cursors")
    op.drop_table("events")
