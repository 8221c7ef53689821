"""The tables. One row per fact; every hot lookup is one indexed query.

This is the head schema: `migrations/versions/` must build exactly this (a test compares them),
so a change here comes with a new revision (docs/deploy/upgrades.md).

- repositories: name <-> id.
- blobs: every addressable digest with its size and the sha256 key its bytes live under.
- repository_blobs: which repository may serve which blob (isolation and GC roots).
- manifests: per repository, the bytes exactly as pushed plus what the referrers API needs.
- manifest_references: what a manifest points at (layers, config, children), for GC.
- tags: repository + name -> manifest digest (and who pushed it, where known).
- uploads: upload sessions (offset and a short write lease), shared by every worker and node.
- gc_deletions: stored objects no blob row names any more, being deleted (docs/design/gc.md).
- activity: pushes and pulls per namespace and day; gc_runs: the collector's cycles (for the
  web interface's storage page).

`touched` (blobs, links, manifests): when something last made the row referenced or
unreferenced; garbage collection's grace period counts from it. Set on every insert (the
column's default), and by the writes docs/design/gc.md lists.
"""

from __future__ import annotations

import time

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

# Read only by Moorage 0.1.0, which made its schema without migrations: revision 0002 set it to 2,
# so that release refuses a migrated database. Today's schema revision is `alembic_version`'s.
schema_info = Table(
    "schema_info",
    metadata,
    Column("version", Integer, primary_key=True),
)

repositories = Table(
    "repositories",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(255), nullable=False, unique=True),
    Column("created", Float, nullable=False),
)

blobs = Table(
    "blobs",
    metadata,
    Column("digest", String(200), primary_key=True),
    Column("storage_key", String(200), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("created", Float, nullable=False),
    Column("touched", Float, nullable=False, default=time.time, server_default="0"),
    Index("blobs_touched", "touched"),
    Index("blobs_storage_key", "storage_key"),
)

repository_blobs = Table(
    "repository_blobs",
    metadata,
    Column("repository_id", Integer, ForeignKey("repositories.id"), primary_key=True),
    Column("digest", String(200), ForeignKey("blobs.digest"), primary_key=True),
    Column("created", Float, nullable=False),
    Column("touched", Float, nullable=False, default=time.time, server_default="0"),
    Index("repository_blobs_touched", "touched"),
    Index("repository_blobs_digest", "digest"),
)

manifests = Table(
    "manifests",
    metadata,
    Column("repository_id", Integer, ForeignKey("repositories.id"), primary_key=True),
    Column("digest", String(200), primary_key=True),
    Column("media_type", String(255), nullable=False),
    Column("content", LargeBinary, nullable=False),
    Column("subject", String(200), nullable=True),
    Column("artifact_type", String(255), nullable=True),
    Column("annotations", Text, nullable=True),
    Column("created", Float, nullable=False),
    Column("touched", Float, nullable=False, default=time.time, server_default="0"),
    Index("manifests_subject", "repository_id", "subject", "created"),
    Index("manifests_touched", "touched"),
)

manifest_references = Table(
    "manifest_references",
    metadata,
    Column("repository_id", Integer, primary_key=True),
    Column("digest", String(200), primary_key=True),
    Column("child", String(200), primary_key=True),
    Index("manifest_references_child", "child"),
    Index("manifest_references_repository_child", "repository_id", "child"),
)

tags = Table(
    "tags",
    metadata,
    Column("repository_id", Integer, ForeignKey("repositories.id"), primary_key=True),
    Column("name", String(128), primary_key=True),
    Column("digest", String(200), nullable=False),
    Column("updated", Float, nullable=False),
    # Who set the tag last through the v2 API, when they were signed in (shown by the web
    # interface); null when anonymous or set another way (v1, a mirror, an import).
    Column("pushed_by", String(255), nullable=True),
    Index("tags_digest", "repository_id", "digest"),
)

uploads = Table(
    "uploads",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("repository", String(255), nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("created", Float, nullable=False),
    Column("updated", Float, nullable=False),
    Column("lease", String(255), nullable=True),
    Column("lease_until", Float, nullable=True),
    # The running SHA-256 of bytes [0, offset) (content/sha256state.py), so that any node can
    # continue the upload without reading back bytes it did not receive. Null: not exportable.
    Column("hash_state", LargeBinary, nullable=True),
    # Where the storage writer of [0, offset) stands (storage/objects.py: `ObjectWriter.state`),
    # so that the next write resumes it on any node. Null: nothing written yet.
    Column("writer_state", LargeBinary, nullable=True),
    Index("uploads_updated", "updated"),
)

# -- the legacy v1 protocol ------------------------------------------------------------------
# v1 images live in one global id namespace; `v1_links` says which repositories an image
# belongs to (who may read it). Layer bytes are ordinary blobs (`blob_digest`).

v1_images = Table(
    "v1_images",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("json", LargeBinary, nullable=False),
    Column("parent", String(64), nullable=True),
    # uploading -> uploaded -> complete; only complete images are ever served.
    Column("state", String(16), nullable=False),
    # Bumped by every PUT json on an incomplete image: a layer or checksum PUT that started
    # under an older generation must not commit.
    Column("generation", Integer, nullable=False),
    Column("depth", Integer, nullable=False),
    Column("blob_digest", String(200), nullable=True),
    Column("diff_id", String(200), nullable=True),
    Column("payload_checksum", String(200), nullable=True),
    Column("tarsum", String(200), nullable=True),
    Column("client_checksum", String(200), nullable=True),
    Column("size", BigInteger, nullable=True),
    Column("compressed", Integer, nullable=True),
    Column("uploader", String(255), nullable=True),
    Column("updated", Float, nullable=False),
    Index("v1_images_parent", "parent"),
    Index("v1_images_blob_digest", "blob_digest"),
)

v1_links = Table(
    "v1_links",
    metadata,
    Column("image_id", String(64), primary_key=True),
    Column("repository_id", Integer, ForeignKey("repositories.id"), primary_key=True),
    Index("v1_links_repository", "repository_id"),
)

v1_sessions = Table(
    "v1_sessions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("repository", String(255), nullable=False),
    Column("principal", String(255), nullable=True),
    Column("images", Text, nullable=False),
    Column("expires", Float, nullable=False),
    Index("v1_sessions_repository", "repository"),
)

# Which v1 image a manifest shows as (its top layer), per repository: written when a v1 tag
# is set, or when v1 ids are first derived for a manifest pushed through v2.
v1_manifest_images = Table(
    "v1_manifest_images",
    metadata,
    Column("repository_id", Integer, ForeignKey("repositories.id"), primary_key=True),
    Column("manifest_digest", String(200), primary_key=True),
    Column("image_id", String(64), nullable=False),
    Index("v1_manifest_images_image", "image_id"),
)

# Proof-of-possession uploads (v1 contract 9.4): a caller re-uploads an image that exists but
# that they may not read; a matching payload checksum earns a link, nothing else changes.
v1_proofs = Table(
    "v1_proofs",
    metadata,
    Column("image_id", String(64), primary_key=True),
    Column("principal", String(255), primary_key=True),
    Column("payload_checksum", String(200), nullable=True),
    Column("expires", Float, nullable=False),
)

# What the client that last set a v1 tag said about itself (User-Agent), served by
# `GET /v1/repositories/R/tags/T/json`; informational.
v1_tag_info = Table(
    "v1_tag_info",
    metadata,
    Column("repository_id", Integer, ForeignKey("repositories.id"), primary_key=True),
    Column("tag", String(128), primary_key=True),
    Column("info", Text, nullable=False),
)

# -- shared by every node (issue 10) ---------------------------------------------------------

# Chores the whole cluster runs once per period (upload expiry): a worker runs one only if it
# moved `until` forward, which it may do only once `until` has passed (`MetadataStore.claim`).
chores = Table(
    "chores",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("until", Float, nullable=False),
)

# Failed logins per limiter key (a SHA-256 of it: keys hold user names and addresses), counted
# in fixed windows that start at a key's first failure (auth/ratelimit.py). Used when the
# database is shared by several nodes; one node counts in memory.
login_failures = Table(
    "login_failures",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("started", Float, nullable=False),
    Column("count", Integer, nullable=False),
    Index("login_failures_started", "started"),
)

# -- garbage collection (issue 12) -----------------------------------------------------------

# A stored object whose last blob row the collector deleted, in the same transaction; the
# object is deleted from storage next, then this row. A blob row never names a key listed here.
gc_deletions = Table(
    "gc_deletions",
    metadata,
    Column("storage_key", String(200), primary_key=True),
    Column("since", Float, nullable=False),
)


# -- events (webhooks, issue 15) -------------------------------------------------------------

# Every event recorded, in order; delivered to each endpoint from its cursor on, then pruned.
events = Table(
    "events",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("created", Float, nullable=False),
    Column("action", String(16), nullable=False),
    Column("repository", String(255), nullable=False),
    Column("media_type", String(255), nullable=True),
    Column("payload", Text, nullable=False),  # the event's JSON, as sent
)

# Per endpoint: the last event delivered, and who is delivering (one deliverer per endpoint in
# the whole deployment, holding the row until `until` and renewing it while it works).
event_cursors = Table(
    "event_cursors",
    metadata,
    Column("endpoint", String(64), primary_key=True),
    Column("delivered", BigInteger, nullable=False),
    Column("holder", String(64), nullable=True),
    Column("until", Float, nullable=False),
)


# -- what the web interface shows (issue 13) -------------------------------------------------

# Pushes (manifests stored) and pulls (manifests fetched) per namespace and UTC day (days since
# the epoch), and the blob bytes sent: each worker counts in memory and adds its counts with
# an upsert now and then (`moorage/content/activity.py`), so many workers and nodes sum.
activity = Table(
    "activity",
    metadata,
    Column("day", Integer, primary_key=True),
    Column("namespace", String(255), primary_key=True),
    Column("pushes", BigInteger, nullable=False),
    Column("pulls", BigInteger, nullable=False),
    Column("pulled_bytes", BigInteger, nullable=False),
)

# Each garbage collection cycle (dry runs too): when, how long, what it deleted, or why it
# failed. The newest few hundred are kept.
gc_runs = Table(
    "gc_runs",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("started", Float, nullable=False),
    Column("seconds", Float, nullable=False),
    Column("dry_run", Boolean, nullable=False),
    Column("tags", Integer, nullable=False),
    Column("manifests", Integer, nullable=False),
    Column("links", Integer, nullable=False),
    Column("v1_images", Integer, nullable=False),
    Column("blobs", Integer, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("objects_deleted", Integer, nullable=False),
    Column("error", String(300), nullable=True),
    Index("gc_runs_started", "started"),
)
