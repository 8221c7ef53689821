"""The operator's storage rules through the API (issue 12 items 3 and 4): immutable tags,
retention rules applied by the collector (and shown by its dry run), and storage quotas per
namespace. On the embedded default and, with MOORAGE_TEST_BACKEND=scaleout, PostgreSQL + S3."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from moorage.api.context import REGISTRY
from tests.api.helpers import (
    OCI_CONFIG,
    Client,
    assert_error,
    descriptor,
    encode,
    make_config,
    make_oci_manifest,
    push_blob,
    push_image,
    put_manifest,
    random_bytes,
    sha256,
    start_upload,
    stored_copies,
    with_query,
)

MakeClient = Callable[..., Awaitable[Client]]


@pytest.fixture
def auth_mode() -> str:
    return "none"


# -- immutable tags --------------------------------------------------------------------------

IMMUTABLE = [{"repository": "rel/*", "tags": ["v*"]}]


async def test_an_immutable_tag_never_moves(make_client: MakeClient) -> None:
    client = await make_client(immutable=IMMUTABLE)
    first = await push_image(client, "rel/app", "v1.0")
    # The same manifest again: fine (a retried push).
    assert (await put_manifest(client, "rel/app", "v1.0", first.body)).status == 201
    other = await push_image(client, "rel/app", None)
    resp = await put_manifest(client, "rel/app", "v1.0", other.body)
    body = await assert_error(resp, 403, "DENIED")
    assert "immutable" in body["errors"][0]["message"]
    resp = await client.get("/v2/rel/app/manifests/v1.0")
    assert resp.headers["Docker-Content-Digest"] == first.digest
    # Tags the rule does not name, and repositories it does not match, move as usual.
    await push_image(client, "rel/app", "latest")
    await push_image(client, "rel/app", "latest")
    await push_image(client, "dev/app", "v1.0")
    await push_image(client, "dev/app", "v1.0")


async def test_an_immutable_tag_and_its_manifest_cannot_be_deleted(
    make_client: MakeClient,
) -> None:
    client = await make_client(immutable=IMMUTABLE)
    image = await push_image(client, "rel/app", "v2")
    await assert_error(await client.delete("/v2/rel/app/manifests/v2"), 403, "DENIED")
    resp = await client.delete(f"/v2/rel/app/manifests/{image.digest}")
    body = await assert_error(resp, 403, "DENIED")
    assert "v2" in body["errors"][0]["message"]
    assert (await client.get("/v2/rel/app/manifests/v2")).status == 200
    # A manifest no immutable tag points at is deleted as usual.
    loose = await push_image(client, "rel/app", "nightly")
    assert (await client.delete(f"/v2/rel/app/manifests/{loose.digest}")).status == 202


# -- retention -----------------------------------------------------------------------------


async def test_retention_keeps_the_newest_tags_and_the_protected_ones(
    make_client: MakeClient,
) -> None:
    rules = [{"repository": "ci/*", "keep_last": 2, "protect": ["release-*"]}]
    client = await make_client(retention=rules, immutable=[{"repository": "ci/*", "tags": ["pin"]}])
    images = {}
    for tag in ("release-1", "pin", "b1", "b2", "b3", "b4"):
        images[tag] = await push_image(client, "ci/app", tag)
        time.sleep(0.01)  # distinct push times
    other = await push_image(client, "other/app", "b1")  # no rule matches
    collector = client.app[REGISTRY].collector
    dry = await collector.cycle(grace=3600, dry_run=True)
    assert dry.collected.repositories["ci/app"].tags == 2  # b1 and b2
    assert (await client.get("/v2/ci/app/manifests/b1")).status == 200  # dry: nothing changed
    cycle = await collector.cycle(grace=3600)
    assert cycle.collected.tags == 2 and cycle.collected.repositories["ci/app"].manifests == 2
    tags = (await (await client.get("/v2/ci/app/tags/list")).json())["tags"]
    assert sorted(tags) == ["b3", "b4", "pin", "release-1"]
    assert (await client.get(f"/v2/other/app/manifests/{other.digest}")).status == 200
    # The deleted images' blobs wait for the grace period, then go.
    assert await stored_copies(client, images["b1"].layers[0]) == 1
    await collector.cycle(grace=0)
    assert await stored_copies(client, images["b1"].layers[0]) == 0
    assert await stored_copies(client, images["b3"].layers[0]) == 1


async def test_retention_by_age(make_client: MakeClient) -> None:
    client = await make_client(retention=[{"repository": "*", "older_than": "1h"}])
    fresh = await push_image(client, "age/app", "new")
    stale = await push_image(client, "age/app", "old")
    registry = client.app[REGISTRY]
    # Backdate the "old" tag two hours.
    from moorage.metadata import schema as t  # the test reaches under the API on purpose

    tg = t.tags

    def backdate(conn: Any) -> None:
        conn.execute(tg.update().where(tg.c.name == "old").values(updated=time.time() - 7200))

    await registry.metadata._write(backdate)
    cycle = await registry.collector.cycle(grace=3600)
    assert cycle.collected.tags == 1
    assert (await client.get(f"/v2/age/app/manifests/{stale.digest}")).status == 404
    assert (await client.get(f"/v2/age/app/manifests/{fresh.digest}")).status == 200


# -- quotas --------------------------------------------------------------------------------


async def test_a_push_over_quota_is_refused_with_the_numbers(make_client: MakeClient) -> None:
    client = await make_client(quotas=[{"namespace": "team", "bytes": 10_000}])
    first = random_bytes(6000)
    await push_blob(client, "team/one", first)
    # The same blob in another repository of the namespace costs nothing.
    await push_blob(client, "team/two", first)
    # Another namespace is not counted.
    await push_blob(client, "solo/app", random_bytes(9000))
    second = random_bytes(5000)
    location = await start_upload(client, "team/two")
    resp = await client.put(
        with_query(location, digest=sha256(second)),
        data=second,
        headers={"Content-Type": "application/octet-stream"},
    )
    body = await assert_error(resp, 403, "DENIED")
    message = body["errors"][0]["message"]
    assert "team" in message and "6000" in message and "10000" in message, message
    assert await stored_copies(client, second) == 0
    await assert_error(await client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
    # A blob that fits is taken.
    await push_blob(client, "team/two", random_bytes(3000))
    used, blobs = await client.app[REGISTRY].metadata.namespace_usage("team")
    assert (used, blobs) == (9000, 2)


async def test_a_mount_over_quota_becomes_an_upload(make_client: MakeClient) -> None:
    client = await make_client(quotas=[{"namespace": "small", "bytes": 1000}])
    big = random_bytes(5000)
    await push_blob(client, "big/app", big)
    query = f"mount={sha256(big)}&from=big/app"
    resp = await client.post(f"/v2/small/app/blobs/uploads/?{query}")
    assert resp.status == 202
    assert (await client.head(f"/v2/small/app/blobs/{sha256(big)}")).status == 404


async def test_a_manifest_of_blobs_inside_the_quota_is_accepted(make_client: MakeClient) -> None:
    client = await make_client(quotas=[{"namespace": "team", "bytes": 100_000}])
    config, layer = make_config(), random_bytes(2000)
    await push_blob(client, "team/app", config)
    await push_blob(client, "team/app", layer)
    body = encode(make_oci_manifest(descriptor(config, OCI_CONFIG), [descriptor(layer)]))
    assert (await put_manifest(client, "team/app", "v1", body)).status == 201
