"""The v1 route table (issue 9, item 12): every endpoint of the contract (section 4) is
declared once, with its access; anything else under /v1 is the v1 404."""

from __future__ import annotations

import pytest

from moorage.api.v1 import routes
from tests.v1.client import V1Client, assert_error, new_id

IMAGE = "0" * 64
# (method, path after /v1 as the router sees it, route name, access) from contract section 4.
CONTRACT = [
    ("GET", "/_ping", "ping", None),
    ("HEAD", "/_ping", "ping", None),
    ("GET", "/users/", "users", None),
    ("GET", "/users", "users", None),
    ("POST", "/users/", "users", None),
    ("PUT", "/users/alice/", "user", None),
    ("GET", "/search", "search", None),
    ("PUT", "/repositories/foo/bar", "repository", "write"),
    ("DELETE", "/repositories/foo/bar", "repository", "delete"),
    ("GET", "/repositories/foo/bar/images", "repository_images", "read"),
    ("PUT", "/repositories/foo/bar/images", "repository_images", "write"),
    ("DELETE", "/repositories/foo/bar/images", "repository_images", "delete"),
    ("GET", "/repositories/foo/bar/tags", "tags", "read"),
    ("DELETE", "/repositories/foo/bar/tags", "tags", "delete"),
    ("GET", "/repositories/foo/bar/tags/latest", "tag", "read"),
    ("PUT", "/repositories/foo/bar/tags/latest", "tag", "write"),
    ("DELETE", "/repositories/foo/bar/tags/latest", "tag", "tag-delete"),
    ("GET", "/repositories/foo/bar/tags/latest/json", "tag_json", "read"),
    ("GET", "/repositories/foo/bar/json", "repository_json", "read"),
    ("GET", f"/images/{IMAGE}/json", "image_json", "image-read"),
    ("PUT", f"/images/{IMAGE}/json", "image_json", "image-write"),
    ("GET", f"/images/{IMAGE}/layer", "image_layer", "image-read"),
    ("PUT", f"/images/{IMAGE}/layer", "image_layer", "image-write"),
    ("PUT", f"/images/{IMAGE}/checksum", "image_checksum", "image-write"),
    ("GET", f"/images/{IMAGE}/ancestry", "image_ancestry", "image-read"),
]


@pytest.mark.parametrize(("method", "path", "name", "access"), CONTRACT)
def test_every_contract_endpoint_is_in_the_table(
    method: str, path: str, name: str, access: str | None
) -> None:
    found = routes.match(path)
    assert found is not None, path
    route, _ = found
    assert route.name == name
    assert method in route.methods, (method, route.methods)
    assert route.methods[method].access == access


def test_routes_are_declared_once_and_head_goes_with_get() -> None:
    names = [route.name for route in routes.ROUTES]
    assert len(names) == len(set(names))
    for route in routes.ROUTES:
        if "GET" in route.methods:
            assert route.methods["HEAD"] == route.methods["GET"], route.name


def test_repository_paths_match_from_the_end() -> None:
    found = routes.match("/repositories/foo/tags/images")
    assert found is not None
    route, params = found
    assert (route.name, params) == ("tag", {"name": "foo", "tag": "images"})


@pytest.mark.parametrize(
    "path",
    ["/v1", "/v1/", "/v1/nope", "/v1/images", f"/v1/images/{IMAGE}/files", "/v1/_catalog"],
)
async def test_unknown_v1_path_is_the_v1_404(v1: V1Client, path: str) -> None:
    reply = assert_error(await v1.call("GET", path), 404, "Not found")
    assert reply == {"error": "Not found"}
    last = v1.log[-1]
    assert last.headers.get("X-Docker-Registry-Version") == routes.REGISTRY_VERSION


async def test_known_path_with_another_method_is_405(v1: V1Client) -> None:
    reply = await v1.call("POST", f"/v1/images/{new_id()}/json")
    assert_error(reply, 405, "Method not allowed")
    assert reply.headers["Allow"] == "GET, HEAD, PUT"
