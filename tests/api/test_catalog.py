"""§16 cases 115-118: catalog (§8.2). Cases 119-120 need auth (another issue)."""

from __future__ import annotations

from tests.api.helpers import Client, assert_error, push_blob, push_image, random_bytes
from tests.api.pagination import link_query, next_link

REPOS = ["aa/one", "bb", "bb/two", "cc/x/y"]


async def _fill(client: Client, repos: list[str] = REPOS) -> None:
    for repo in repos:
        await push_blob(client, repo, random_bytes(10))


async def _catalog(client: Client, query: str = ""):  # type: ignore[no-untyped-def]
    resp = await client.get(f"/v2/_catalog{query}")
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "application/json"
    return resp, await resp.json()


async def test_c115_catalog_sorted(client: Client) -> None:
    await _fill(client, ["zz/last", "aa/one", "mm", "aa-b/c"])
    resp, body = await _catalog(client)
    assert body == {"repositories": sorted(["zz/last", "aa/one", "library/mm", "aa-b/c"])}
    assert "Link" not in resp.headers


async def test_c115_empty_registry(client: Client) -> None:
    _resp, body = await _catalog(client)
    assert body == {"repositories": []}


async def test_c116_first_page_link(client: Client) -> None:
    await _fill(client)
    resp, body = await _catalog(client, "?n=1")
    assert body["repositories"] == ["aa/one"]
    assert link_query(resp) == {"n": "1", "last": "aa/one"}
    # `/` in `last` is URL-encoded in the Link (C-2).
    assert "last=aa%2Fone" in resp.headers["Link"]
    assert "/v2/_catalog?" in resp.headers["Link"]


async def test_c117_second_page(client: Client) -> None:
    # Sorted: aa/one, bb/two, cc/x/y, library/bb (`bb` is stored as `library/bb`).
    await _fill(client)
    for last in ("aa/one", "aa%2Fone"):
        resp, body = await _catalog(client, f"?n=1&last={last}")
        assert body["repositories"] == ["bb/two"]
        assert link_query(resp)["last"] == "bb/two"
    resp, body = await _catalog(client, "?n=1&last=cc/x/y")
    assert body["repositories"] == ["library/bb"]


async def test_c117_follow_links(client: Client) -> None:
    repos = [f"ns/r{i:02d}" for i in range(7)]
    await _fill(client, repos)
    seen: list[str] = []
    url: str | None = "/v2/_catalog?n=2"
    for _ in range(10):
        if url is None:
            break
        resp = await client.get(url)
        seen.extend((await resp.json())["repositories"])
        url = next_link(resp)
    assert url is None
    assert seen == repos


async def test_c118_n_zero(client: Client) -> None:
    await _fill(client)
    resp, body = await _catalog(client, "?n=0")
    assert body["repositories"] == []
    assert "Link" not in resp.headers


async def test_c2_catalog_bad_n(client: Client) -> None:
    await _fill(client)
    for value in ["-1", "abc"]:
        resp = await client.get(f"/v2/_catalog?n={value}")
        await assert_error(resp, 400, "PAGINATION_NUMBER_INVALID")


async def test_c2_catalog_clamped(make_client) -> None:  # type: ignore[no-untyped-def]
    client = await make_client(pagination={"tagsmax": 3, "catalogmax": 3})
    repos = [f"ns/r{i}" for i in range(5)]
    await _fill(client, repos)
    resp, body = await _catalog(client, "?n=100")
    assert body["repositories"] == repos[:3]
    assert link_query(resp) == {"n": "3", "last": "ns/r2"}


async def test_c2_catalog_default_page(make_client) -> None:  # type: ignore[no-untyped-def]
    client = await make_client(pagination={"catalogdefault": 2})
    repos = [f"ns/r{i}" for i in range(5)]
    await _fill(client, repos)
    resp, body = await _catalog(client)
    assert body["repositories"] == repos[:2]
    assert link_query(resp)["last"] == "ns/r1"


async def test_c3_only_repositories_with_content(client: Client) -> None:
    await _fill(client, ["has/blob"])
    await push_image(client, "has/manifest", "v1")
    await client.post("/v2/only/session/blobs/uploads/")
    _, body = await _catalog(client)
    assert body["repositories"] == ["has/blob", "has/manifest"]


async def test_c3_repository_gone_after_content_deleted(client: Client) -> None:
    digest = await push_blob(client, "short/lived", random_bytes(10))
    await _fill(client, ["stays"])
    resp = await client.delete(f"/v2/short/lived/blobs/{digest}")
    assert resp.status == 202
    _, body = await _catalog(client)
    assert body["repositories"] == ["library/stays"]
