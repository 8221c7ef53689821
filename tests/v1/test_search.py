"""Section 14 cases 86-89: search (contract 4.6)."""

from __future__ import annotations

from tests.v1.client import V1Client, make_chain
from tests.v1.conftest import ALICE


async def _repositories(v1: V1Client, *names: str) -> None:
    for name in names:
        assert (await v1.start_push(name, [])).status == 200


async def test_v1_c86_search(v1: V1Client) -> None:
    await _repositories(v1, "foo/bar", "other/thing")
    reply = await v1.call("GET", "/v1/search?q=bar")
    assert reply.status == 200, reply
    body = reply.json()
    assert body["query"] == "bar"
    assert [r["name"] for r in body["results"]] == ["foo/bar"]
    (result,) = body["results"]
    assert isinstance(result["description"], str)
    assert result["star_count"] == 0
    for flag in ("is_official", "is_trusted", "is_automated"):
        assert isinstance(result[flag], bool), flag
    assert body["num_results"] == 1 and body["num_pages"] == 1


async def test_v1_c87_search_everything(v1: V1Client) -> None:
    await _repositories(v1, "foo/bar", "busybox")
    body = (await v1.call("GET", "/v1/search")).json()
    assert sorted(r["name"] for r in body["results"]) == ["foo/bar", "library/busybox"]
    assert body["query"] == ""


async def test_v1_c88_search_is_filtered_by_access(v1a: V1Client) -> None:
    (image,) = make_chain(1)
    await v1a.push("alice/app", [image], {image.id: ["latest"]}, auth=ALICE)
    await v1a.push("library/pub", make_chain(1), auth=ALICE)
    anonymous = (await v1a.call("GET", "/v1/search?q=")).json()
    assert [r["name"] for r in anonymous["results"]] == ["library/pub"]
    alice = await v1a.call(
        "GET", "/v1/search?q=app", auth=ALICE, headers={"X-Docker-Token": "true"}
    )
    assert alice.status == 200
    assert [r["name"] for r in alice.json()["results"]] == ["alice/app"]


async def test_v1_c89_search_paging(v1: V1Client) -> None:
    await _repositories(v1, "a/one", "b/two", "c/three")
    body = (await v1.call("GET", "/v1/search?n=1&page=2")).json()
    assert (body["page_size"], body["page"], body["num_pages"]) == (1, 2, 3)
    assert body["num_results"] == 3
    assert [r["name"] for r in body["results"]] == ["b/two"]
    assert (await v1.call("GET", "/v1/search?n=abc")).json()["page_size"] == 25
    assert (await v1.call("GET", "/v1/search?n=0")).json()["page_size"] == 1
    assert (await v1.call("GET", "/v1/search?n=1000")).json()["page_size"] == 100
