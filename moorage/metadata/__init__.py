"""Facts: tables and queries (SQLAlchemy Core) on SQLite or PostgreSQL, behind an async store.

Knows nothing of HTTP and nothing of bytes in storage.
"""

from moorage.metadata.browse import ActivityCount
from moorage.metadata.store import (
    BlobGone,
    BlobRow,
    KeyPending,
    LeaseTaken,
    ManifestRow,
    MetadataStore,
    ReferencesGone,
    TagFrozen,
    UploadRow,
)
from moorage.metadata.v1 import LayerSums, V1ImageRow

__all__ = [
    "ActivityCount",
    "BlobGone",
    "BlobRow",
    "KeyPending",
    "LayerSums",
    "LeaseTaken",
    "ManifestRow",
    "MetadataStore",
    "ReferencesGone",
    "TagFrozen",
    "UploadRow",
    "V1ImageRow",
]
