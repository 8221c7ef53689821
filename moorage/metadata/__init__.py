"""Facts: tables and queries (SQLAlchemy Core, async) on SQLite or PostgreSQL.

Knows nothing of HTTP and nothing of bytes in storage.
"""

from moorage.metadata.store import BlobRow, ManifestRow, MetadataStore, UploadRow
from moorage.metadata.v1 import LayerSums, V1ImageRow

__all__ = ["BlobRow", "LayerSums", "ManifestRow", "MetadataStore", "UploadRow", "V1ImageRow"]
