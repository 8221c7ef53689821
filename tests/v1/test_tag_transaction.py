"""A v1 tag write is one metadata transaction (issue 9, item 12).

The database itself refuses the write of the manifest -> v1 image mapping (an SQLite trigger:
what a full disk or a constraint would do at that point). Before the fix the tag, the
manifest and the links were already committed by then, so the tag stayed, without the mapping,
and its v1 id was later derived afresh instead of the one the client pushed.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError

from moorage.api.context import SETTINGS, V1
from moorage.metadata import ManifestRow
from tests.v1 import v2side
from tests.v1.client import V1Client, assert_error, assert_true, make_chain

# SQLite triggers make the database refuse a write half-way.
pytestmark = pytest.mark.embedded_only

REFUSE = (
    "CREATE TRIGGER refuse_mapping BEFORE INSERT ON v1_manifest_images "
    "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
)


def _database(v1: V1Client) -> Path:
    return v1.http.app[SETTINGS].datadir / "metadata.db"


def _sql(v1: V1Client, statement: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(_database(v1)) as conn:
        return conn.execute(statement).fetchall()


def _rows_of(v1: V1Client, repository: str) -> dict[str, int]:
    tables = ("tags", "manifests", "repository_blobs", "v1_links", "v1_manifest_images")
    counts = {}
    for table in tables:
        query = (
            f"SELECT count(*) FROM {table} JOIN repositories r ON r.id = repository_id "
            f"WHERE r.name = '{repository}'"
        )
        counts[table] = int(_sql(v1, query)[0][0])  # type: ignore[call-overload]
    return counts


async def test_failed_tag_write_leaves_nothing(v1: V1Client) -> None:
    parent, child = make_chain(2)
    await v1.push_images("foo/src", [parent, child])
    _sql(v1, REFUSE)

    failed = await v1.put_tag("foo/dst", "latest", child.id, None)

    assert_error(failed, 500, "Internal server error")
    assert (await v1.call("GET", "/v1/repositories/foo/dst/tags")).status == 404
    assert await v2side.get_manifest(v1.http, "foo/dst", "latest") == (404, None, None)
    assert _sql(v1, "SELECT count(*) FROM repositories WHERE name = 'foo/dst'") == [(0,)]
    assert _rows_of(v1, "foo/dst") == dict.fromkeys(_rows_of(v1, "foo/dst"), 0)

    _sql(v1, "DROP TRIGGER refuse_mapping")
    assert_true(await v1.put_tag("foo/dst", "latest", child.id, None))
    assert (await v1.call("GET", "/v1/repositories/foo/dst/tags")).json() == {"latest": child.id}
    status, manifest, _ = await v2side.get_manifest(v1.http, "foo/dst", "latest")
    assert status == 200 and manifest is not None
    assert [layer["digest"] for layer in manifest["layers"]] == [
        parent.blob_digest,
        child.blob_digest,
    ]


async def test_failed_retag_keeps_the_old_target(v1: V1Client) -> None:
    """Moving an existing tag: a refused write leaves the tag where it was."""
    first, second = make_chain(1), make_chain(1)
    await v1.push_images("foo/app", [*first, *second], {"latest": first[0].id})
    _sql(v1, REFUSE)
    assert_error(await v1.put_tag("foo/app", "latest", second[0].id, None), 500)
    _sql(v1, "DROP TRIGGER refuse_mapping")
    tags = (await v1.call("GET", "/v1/repositories/foo/app/tags")).json()
    assert tags == {"latest": first[0].id}


async def test_metadata_tag_write_is_atomic(v1: V1Client) -> None:
    """At the metadata level: tag, manifest, links, mapping and tag info in one write."""
    (image,) = make_chain(1)
    await v1.push_images("foo/src", [image])
    metadata = v1.http.app[V1].metadata
    manifest = ManifestRow("sha256:" + "1" * 64, "application/json", b"{}")
    _sql(v1, REFUSE)
    with pytest.raises(IntegrityError, match="refused by the test"):
        await metadata.v1_tag("foo/meta", "t", image.id, manifest, [], [], {"os": "linux"})
    assert not await metadata.repository_exists("foo/meta")
    assert await metadata.v1_tag_info("foo/meta", "t") is None
    _sql(v1, "DROP TRIGGER refuse_mapping")
    await metadata.v1_tag("foo/meta", "t", image.id, manifest, [], [], {"os": "linux"})
    assert await metadata.tag_digests("foo/meta") == {"t": manifest.digest}
    assert await metadata.v1_manifest_images("foo/meta", [manifest.digest]) == {
        manifest.digest: image.id
    }
    assert await metadata.v1_tag_info("foo/meta", "t") == {"os": "linux"}
