"""0003: what online garbage collection needs (docs/design/gc.md): `touched` on blobs, blob
links and manifests (when something last made the row referenced or unreferenced: the grace
period counts from it; existing rows start at their creation), indexes for the collector's
lookups, and `gc_deletions`, the stored objects whose blob rows are gone and that the
collector is deleting."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels = None
depends_on = None

_TOUCHED = ("blobs", "repository_blobs", "manifests")


def upgrade() -> None:
    # NOT NULL needs a server default to be added (SQLite cannot add the constraint later
    # without copying the table, which its foreign keys refuse); the code sets it on insert.
    for table in _TOUCHED:
        column = sa.Column("touched", sa.Float(), nullable=False, server_default="0")
        op.add_column(table, column)
        op.execute(sa.text(f"UPDATE {table} SET touched = created"))
    op.create_table(
        "gc_deletions",
        sa.Column("storage_key", sa.String(200), primary_key=True),
        sa.Column("since", sa.Float(), nullable=False),
    )
    op.create_index("blobs_touched", "blobs", ["touched"])
    op.create_index("blobs_storage_key", "blobs", ["storage_key"])
    op.create_index("repository_blobs_touched", "repository_blobs", ["touched"])
    op.create_index("manifests_touched", "manifests", ["touched"])
    # What the collector asks of every candidate: who else refers to this digest or image?
    op.create_index("repository_blobs_digest", "repository_blobs", ["digest"])
    op.create_index("v1_images_blob_digest", "v1_images", ["blob_digest"])
    op.create_index("v1_manifest_images_image", "v1_manifest_images", ["image_id"])


def downgrade() -> None:
    op.drop_index("v1_manifest_images_image", table_name="v1_manifest_images")
    op.drop_index("v1_images_blob_digest", table_name="v1_images")
    op.drop_index("repository_blobs_digest", table_name="repository_blobs")
    op.drop_index("manifests_touched", table_name="manifests")
    op.drop_index("repository_blobs_touched", table_name="repository_blobs")
    op.drop_index("blobs_storage_key", table_name="blobs")
    op.drop_index("blobs_touched", table_name="blobs")
    op.drop_table("gc_deletions")
    for table in _TOUCHED:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("touched")
