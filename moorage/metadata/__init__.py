"""Facts: tables and queries (SQLAlchemy Core, async) on SQLite or PostgreSQL.

Knows nothing of HTTP and nothing of bytes in storage.
"""

from moorage.metadata.store import BlobRow, ManifestRow, MetadataStore, UploadRow

__all__ = ["BlobRow", "ManifestRow", "MetadataStore", "UploadRow"]
