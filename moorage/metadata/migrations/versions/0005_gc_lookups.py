"""0005: an index of manifest references by (repository, child): the collector asks, for each
blob link, whether a manifest of that repository references the blob; with only the primary
key's repository prefix that was a scan of every reference in the repository (1,000,000 links
took hours)."""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision: str | None = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "manifest_references_repository_child", "manifest_references", ["repository_id", "child"]
    )


def downgrade() -> None:
    op.drop_index("manifest_references_repository_child", table_name="manifest_references")
