"""Where things live in storage. The one place keys are computed.

    <root>/
    └── blobs/
        ├── sha256/<first two hex>/<hex>     committed blobs, immutable, content-addressed
        └── uploads/
            ├── <session uuid>               one upload session's object: written by its
            │                                writer (resumable, see storage/objects.py), and
            │                                once committed the blob itself where moving it
            │                                would copy it (object stores)
            └── import-<sha256 hex>          a blob `moorage import` brought in, on its way to
                                             its content-addressed key (and the blob itself
                                             where it could not be moved there)

Blobs are keyed by their sha256 whatever digest they were pushed under (a sha512 upload is
indexed under both digests in metadata and stored once).
"""

from __future__ import annotations

UPLOADS = "uploads"
BLOBS = "blobs"


def blob(sha256_hex: str) -> str:
    return f"{BLOBS}/sha256/{sha256_hex[:2]}/{sha256_hex}"


def is_content_addressed(key: str) -> bool:
    """Keys whose object, once there, never changes: written once, whole, never opened for
    writing again."""
    return key.startswith(f"{BLOBS}/")


def upload(session_id: str) -> str:
    return f"{BLOBS}/{UPLOADS}/{session_id}"


def imported(sha256_hex: str) -> str:
    """Where `moorage import` puts a blob before it is moved to `blob(hex)`: one key per
    content, so a rerun after an interrupt finds (and replaces) what the last run left."""
    return f"{BLOBS}/{UPLOADS}/import-{sha256_hex}"
