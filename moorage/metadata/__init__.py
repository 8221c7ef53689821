"""Facts: tables and queries (SQLAlchemy Core) on SQLite or PostgreSQL, behind an async store.

Knows nothing of HTTP and nothing of bytes in storage.
"""

from moorage.metadata.store import BlobRow, LeaseTaken, ManifestRow, MetadataStore, UploadRow
from moorage.metadata.v1 import LayerSums, V1ImageRow

__all__ = [
    "BlobRow",
    "LayerSums",
    "LeaseTaken",
    "ManifestRow",
    "MetadataStore",
    "UploadRow",
    "V1ImageRow",
]
