"""§16 cases 105-114: tags list and its pagination (§8.1)."""

from __future__ import annotations

from yarl import URL

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
    push_manifest,
    sha256,
)
from tests.api.pagination import link_query, next_link

REPO = "team/tags"
FIVE = ["alpha", "beta", "delta", "epsilon", "gamma"]


async def _push_tags(client: Client, tags: list[str], repo: str = REPO) -> None:
    config = make_config()
    await push_blob(client, repo, config)
    body = encode(make_oci_manifest(descriptor(config, OCI_CONFIG), []))
    for tag in tags:
        await push_manifest(client, repo, tag, body)


async def _list(client: Client, query: str = "", repo: str = REPO):  # type: ignore[no-untyped-def]
    resp = await client.get(f"/v2/{repo}/tags/list{query}")
    assert resp.status == 200, await resp.text()
    return resp, await resp.json()


async def test_c105_tags_sorted(client: Client) -> None:
    tags = ["b", "a", "B_x", "A", "1", "v1.0", "v1.0-rc1", "v10", "v2", "_under"]
    await _push_tags(client, tags)
    resp, body = await _list(client)
    assert resp.content_type == "application/json"
    assert body["name"] == REPO
    # T-2 Decision: byte (ASCII) order.
    assert body["tags"] == sorted(tags)
    assert "Link" not in resp.headers


async def test_c106_untagged_repository(client: Client) -> None:
    config = make_config()
    await push_blob(client, REPO, config)
    body = encode(make_oci_manifest(descriptor(config, OCI_CONFIG), []))
    await push_manifest(client, REPO, sha256(body), body)
    _, listing = await _list(client)
    assert listing == {"name": REPO, "tags": []}


async def test_c106_blob_only_repository(client: Client) -> None:
    await push_blob(client, REPO, b"data")
    _, listing = await _list(client)
    assert listing["tags"] == []


async def test_c107_first_page(client: Client) -> None:
    await _push_tags(client, FIVE)
    resp, body = await _list(client, "?n=2")
    assert body["tags"] == FIVE[:2]
    link = next_link(resp)
    assert link is not None
    assert URL(link).path == f"/v2/{REPO}/tags/list"
    assert link_query(resp) == {"n": "2", "last": FIVE[1]}


async def test_c108_follow_links(client: Client) -> None:
    tags = [f"t{i:03d}" for i in range(11)]
    await _push_tags(client, tags)
    seen: list[str] = []
    url: str | None = f"/v2/{REPO}/tags/list?n=3"
    pages = 0
    while url is not None:
        resp = await client.get(url)
        assert resp.status == 200
        page = (await resp.json())["tags"]
        assert len(page) <= 3
        seen.extend(page)
        url = next_link(resp)
        pages += 1
        assert pages < 20
    assert seen == tags
    assert pages in (4, 5)  # 3+3+3+2, maybe an empty last page


async def test_c108_exact_multiple_of_page(client: Client) -> None:
    await _push_tags(client, FIVE[:4])
    resp, body = await _list(client, "?n=2")
    resp2 = await client.get(next_link(resp) or "")
    body2 = await resp2.json()
    assert body["tags"] + body2["tags"] == FIVE[:4]
    nxt = next_link(resp2)
    if nxt is not None:
        # Allowed: one more, empty page without a Link.
        resp3 = await client.get(nxt)
        assert (await resp3.json())["tags"] == []
        assert next_link(resp3) is None


async def test_c109_n_zero(client: Client) -> None:
    await _push_tags(client, FIVE)
    resp, body = await _list(client, "?n=0")
    assert body["tags"] == []
    assert "Link" not in resp.headers


async def test_c110_last_only(client: Client) -> None:
    await _push_tags(client, FIVE)
    resp, body = await _list(client, f"?last={FIVE[2]}")
    assert body["tags"] == FIVE[3:]
    assert "Link" not in resp.headers


async def test_c111_last_between_tags(client: Client) -> None:
    await _push_tags(client, FIVE)
    resp, body = await _list(client, "?n=2&last=c")  # between beta and delta
    assert body["tags"] == ["delta", "epsilon"]
    assert link_query(resp) == {"n": "2", "last": "epsilon"}
    _, body = await _list(client, "?last=zzz")
    assert body["tags"] == []
    _, body = await _list(client, "?last=")
    assert body["tags"] == FIVE


async def test_c111_last_page_has_no_link(client: Client) -> None:
    await _push_tags(client, FIVE)
    resp, body = await _list(client, f"?n=2&last={FIVE[2]}")
    assert body["tags"] == FIVE[3:]
    assert "Link" not in resp.headers


async def test_c112_bad_n(client: Client) -> None:
    await _push_tags(client, FIVE)
    for value in ["-1", "abc", "1.5", "0x10", "%2B1", "1e3"]:
        resp = await client.get(f"/v2/{REPO}/tags/list?n={value}")
        await assert_error(resp, 400, "PAGINATION_NUMBER_INVALID")


async def test_c113_n_above_maximum(make_client) -> None:  # type: ignore[no-untyped-def]
    client = await make_client(pagination={"tagsmax": 3, "catalogmax": 3})
    await _push_tags(client, FIVE)
    resp, body = await _list(client, "?n=100000")
    assert body["tags"] == FIVE[:3]
    assert link_query(resp)["last"] == FIVE[2]
    resp2 = await client.get(next_link(resp) or "")
    body2 = await resp2.json()
    assert body2["tags"] == FIVE[3:]


async def test_c113_n_large_default_max(client: Client) -> None:
    await _push_tags(client, FIVE)
    resp, body = await _list(client, "?n=100000")
    assert body["tags"] == FIVE
    assert "Link" not in resp.headers


async def test_c114_unknown_repository(client: Client) -> None:
    await _push_tags(client, FIVE)
    resp = await client.get("/v2/nosuchrepo/tags/list")
    await assert_error(resp, 404, "NAME_UNKNOWN")


async def test_t9_without_n_all_tags(client: Client) -> None:
    tags = [f"tag{i:04d}" for i in range(150)]
    await _push_tags(client, tags)
    resp, body = await _list(client)
    assert body["tags"] == tags
    assert "Link" not in resp.headers


async def test_tag_move_keeps_single_entry(client: Client) -> None:
    await push_image(client, REPO, "v1")
    await push_image(client, REPO, "v1")
    _, body = await _list(client)
    assert body["tags"] == ["v1"]
