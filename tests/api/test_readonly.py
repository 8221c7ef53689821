"""Read-only mode (`maintenance.readonly.enabled`): every write route of v2 and v1 is refused
with 405 and "registry is in read-only mode" in its protocol's dialect, reads go on, and an
upload in flight is refused on its next write and may go on once the mode is off.

Which requests are writes is taken from the route tables (every method but GET and HEAD), so
a write route added later is refused here too, or this test asks for a sample path for it.
Switching by SIGHUP on a real process: tests/process/test_readonly.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from moorage.api.maintenance import MAINTENANCE, READS
from moorage.api.v1 import routes as v1_routes
from moorage.api.v2 import routes as v2_routes
from tests.api.helpers import (
    assert_error,
    push_image,
    random_bytes,
    sha256,
    start_upload,
    with_query,
)
from tests.conftest import PASSWORD, USER, MakeClient

MESSAGE = "registry is in read-only mode"
IMAGE_ID = "a" * 64

# One path per route that has a write method. Sample parts: "ro/app" is pushed before the
# mode goes on, {upload} is a session in flight, {blob} a blob of the pushed image.
V2_PATHS = {
    "upload": "/v2/ro/app/blobs/uploads/{upload}",
    "uploads": "/v2/ro/app/blobs/uploads/",
    "blob": "/v2/ro/app/blobs/{blob}",
    "manifest": "/v2/ro/app/manifests/latest",
}
V1_PATHS = {
    "users": "/v1/users/",
    "user": "/v1/users/alice",
    "image_json": f"/v1/images/{IMAGE_ID}/json",
    "image_layer": f"/v1/images/{IMAGE_ID}/layer",
    "image_checksum": f"/v1/images/{IMAGE_ID}/checksum",
    "tag": "/v1/repositories/ro/app/tags/latest",
    "tags": "/v1/repositories/ro/app/tags",
    "repository_images": "/v1/repositories/ro/app/images",
    "repository": "/v1/repositories/ro/app",
}


@pytest.fixture
def auth_mode() -> str:
    """Authentication comes first and is the same in either mode: one run is enough."""
    return "none"


def writes(
    routes: tuple[v2_routes.Route, ...] | tuple[v1_routes.Route, ...],
) -> list[tuple[str, str]]:
    return [(r.name, m) for r in routes for m in sorted(r.methods) if m not in READS]


def test_every_write_route_has_a_sample_path_here() -> None:
    v2 = {name for name, _ in writes(v2_routes.ROUTES)}
    v1 = {name for name, _ in writes(v1_routes.ROUTES)}
    assert v2 <= V2_PATHS.keys(), f"add a sample path for the v2 route(s) {v2 - V2_PATHS.keys()}"
    assert v1 <= V1_PATHS.keys(), f"add a sample path for the v1 route(s) {v1 - V1_PATHS.keys()}"
    for name, path in V2_PATHS.items():
        found = v2_routes.match(path.format(upload="u", blob=sha256(b""))[len("/v2") :])
        assert found is not None and found[0].name == name, path
    for name, path in V1_PATHS.items():
        found = v1_routes.match(path[len("/v1") :].rstrip("/") or "/")
        assert found is not None and found[0].name == name, path


async def test_every_write_is_refused_and_every_read_still_answers(
    make_client: MakeClient,
) -> None:
    client = await make_client()
    image = await push_image(client, "ro/app", "latest")
    upload = await start_upload(client, "ro/app")  # in flight when the mode goes on
    client.app[MAINTENANCE].readonly = True  # what a SIGHUP with the mode on in the file does

    blob = image.layer_digests[0]
    for name, method in writes(v2_routes.ROUTES):
        path = V2_PATHS[name].format(upload=upload.rsplit("/", 1)[-1], blob=blob)
        resp = await client.request(method, path, data=b"{}")
        body = await assert_error(resp, 405, "UNSUPPORTED")
        assert body["errors"][0]["message"] == MESSAGE, (method, path)
        route = v2_routes.match(path[len("/v2") :])
        assert route is not None
        allowed = ", ".join(sorted(READS.intersection(route[0].methods)))
        assert resp.headers["Allow"] == allowed, (method, path)

    for route in v1_routes.ROUTES:
        for method, endpoint in sorted(route.methods.items()):
            if method in READS:
                continue
            resp = await client.request(method, V1_PATHS[route.name], data=b"{}")
            body = json.loads(await resp.read())
            if endpoint.changes_nothing:  # the v1 register: 401 sends docker login on to GET
                assert (resp.status, body) != (405, {"error": MESSAGE}), route.name
                continue
            assert (resp.status, body) == (405, {"error": MESSAGE}), (method, route.name)

    # Reads go on: v2 pulls, listings, the upload's status; v1 ping, search and tags.
    resp = await client.get("/v2/ro/app/manifests/latest", headers={"Accept": "*/*"})
    assert resp.status == 200 and await resp.read() == image.body
    resp = await client.get(f"/v2/ro/app/blobs/{blob}")
    assert resp.status == 200 and await resp.read() == image.layers[0]
    for path in ("/v2/", "/v2/_catalog", "/v2/ro/app/tags/list", upload):
        resp = await client.get(path)
        assert resp.status in (200, 204), (path, resp.status)
    for path in ("/v1/_ping", "/v1/search?q=ro", "/v1/repositories/ro/app/tags"):
        resp = await client.get(path)
        assert resp.status == 200, (path, resp.status)

    # The refused session stays: with the mode off again, the upload completes.
    client.app[MAINTENANCE].readonly = False
    data = random_bytes(300)
    resp = await client.put(with_query(upload, digest=sha256(data)), data=data)
    assert resp.status == 201, await resp.text()


async def test_authentication_comes_before_the_refusal(
    make_client: MakeClient, htpasswd_file: Path
) -> None:
    """As in Distribution: a caller without credentials is asked for them (401); only an
    authenticated write learns that the registry is read-only."""
    client = await make_client(auth={"mode": "basic", "htpasswd": htpasswd_file})
    client.app[MAINTENANCE].readonly = True
    resp = await client.post("/v2/ro/app/blobs/uploads/")
    await assert_error(resp, 401, "UNAUTHORIZED")
    auth = {"Authorization": aiohttp.encode_basic_auth(USER, PASSWORD)}
    resp = await client.post("/v2/ro/app/blobs/uploads/", headers=auth)
    body = await assert_error(resp, 405, "UNSUPPORTED")
    assert body["errors"][0]["message"] == MESSAGE
