"""The catalog filtered by access rules on a large registry (issue 9, item 6): the filter runs
in the metadata query, window by window, so a caller allowed few or no repositories neither
gets wrong pages nor holds the worker while the registry is scanned.

Repositories are inserted straight through the metadata store (pushing 50,000 would take
minutes); each is linked to one blob, so each has content and is listed."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any
from urllib.parse import unquote

import pytest
from sqlalchemy import Connection, insert, literal, select

from moorage.api.context import AUTH, CURSORS, REGISTRY
from moorage.api.v2.discovery import CATALOG_CURSOR
from moorage.auth.access import Identity
from moorage.metadata import schema as t
from tests.auth.conftest import MakeRegistry
from tests.auth.helpers import Client, basic

COUNT = 50_000
# ns00/r00000 ... ns39/r49999, then a few names the rules below pick out.
BULK = [f"ns{i % 40:02d}/r{i:05d}" for i in range(COUNT)]
EXTRA = ["team/a", "team/b", "team/b/c", "team0/x", "public/p", "library/x9", "a/z9"]
EMPTY = ["team/empty", "ns01/empty"]  # repositories without content: never listed
DIGEST = "sha256:" + "0" * 64


@pytest.fixture
def auth_mode() -> str:
    """Every test here sets `auth` itself; one run is enough."""
    return "none"


async def populate(client: Client, names: list[str], empty: list[str]) -> None:
    metadata = client.app[REGISTRY].metadata

    def work(conn: Connection) -> None:
        now = time.time()
        conn.execute(insert(t.blobs).values(digest=DIGEST, storage_key="x", size=0, created=now))
        conn.execute(insert(t.repositories), [{"name": n, "created": now} for n in names])
        linked = select(t.repositories.c.id, literal(DIGEST), literal(now))
        conn.execute(
            insert(t.repository_blobs).from_select(["repository_id", "digest", "created"], linked)
        )
        if empty:
            conn.execute(insert(t.repositories), [{"name": n, "created": now} for n in empty])

    await metadata._write(work)


async def registry(make_registry: MakeRegistry, rules: list[dict[str, Any]], **kw: Any) -> Client:
    # A search answers what it found within `pagination.catalogtime` (1 s by default): on a
    # busy machine that can be a part of these 50,000 names, so the tests that compare whole
    # answers give it time enough; the test of the bound sets its own.
    kw.setdefault("settings", {"pagination": {"catalogtime": 120.0}})
    client = (await make_registry("basic", rules=rules, admins=["alice"], **kw)).client
    await populate(client, BULK + EXTRA, EMPTY)
    return client


def naive(client: Client, user: str) -> list[str]:
    """What the catalog must list for `user`: every name with content that the rules let
    it pull, checked one by one."""
    auth = client.app[AUTH]
    return sorted(n for n in BULK + EXTRA if auth.may_list(Identity(user), n))


async def walk(client: Client, user: str, n: int) -> tuple[list[str], int]:
    """Every repository, following Links from the first page; and the number of pages."""
    seen: list[str] = []
    url: str | None = f"/v2/_catalog?n={n}"
    pages = 0
    while url is not None:
        resp = await client.get(url, headers=basic(user))
        assert resp.status == 200, await resp.text()
        page = (await resp.json())["repositories"]
        assert len(page) <= n
        assert not seen or not page or page[0] > seen[-1]
        seen += page
        pages += 1
        assert pages <= len(BULK) // 1000 + 100, "the Links do not make progress"
        link = resp.headers.get("Link")
        url = None if link is None else link[1 : link.index(">")]
    return seen, pages


def rule(repository: str, actions: list[str] | None = None, **who: list[str]) -> dict[str, Any]:
    return {"repository": repository, "actions": actions or ["pull"], **who}


RULE_SETS: dict[str, list[dict[str, Any]]] = {
    "none": [rule("*", ["push"], users=["erin"])],
    "prefix-by-group": [rule("team/*", groups=["devs"], users=["erin"])],
    "exact-names": [rule("team/a", users=["erin"]), rule("ns07/r00007", users=["erin"])],
    "everything": [rule("*", users=["*"])],
    "leading-star": [rule("*9", users=["erin"]), rule("*/r0001?", users=["erin"])],
    "bracket-set-and-case": [
        rule("ns0[1-2]/r0?0[!0-7]*", users=["erin"]),
        rule("NS03/*", users=["erin"]),  # fnmatch is case-sensitive; SQLite's LIKE is not
    ],
    "mixed": [
        rule("public/*", users=["*", "anonymous"]),
        rule("ns1?/r4999*", users=["erin"]),
        rule("team/*", ["push", "delete"], users=["erin"]),
        rule("ns39/*", ["*"], users=["erin"]),
        rule("a/z9", users=["carol"]),
    ],
}


@pytest.mark.parametrize("rules", RULE_SETS.values(), ids=RULE_SETS.keys())
async def test_filtered_catalog_pages_match_the_naive_filter(
    make_registry: MakeRegistry, rules: list[dict[str, Any]]
) -> None:
    client = await registry(make_registry, rules)
    expected = naive(client, "erin")
    for n in (1000, 7):
        if n < 1000 and len(expected) > 200:
            continue  # following 7 at a time is only worth it for short lists
        seen, pages = await walk(client, "erin", n)
        assert seen == expected
        assert pages == max(1, -(-len(expected) // n))
    # A `last` between names, or hidden from the caller, still starts right after it.
    for last in ("ns05/r3", "ns21/r21001", "team/a0"):
        resp = await client.get(f"/v2/_catalog?n=5&last={last}", headers=basic("erin"))
        assert (await resp.json())["repositories"] == [x for x in expected if x > last][:5]


@pytest.mark.parametrize("rules", RULE_SETS.values(), ids=RULE_SETS.keys())
async def test_v1_search_matches_the_naive_filter(
    make_registry: MakeRegistry, rules: list[dict[str, Any]]
) -> None:
    """`/v1/search` filters in the query the same way (and lists repositories without
    content, as it always has)."""
    client = await registry(make_registry, rules)
    auth = client.app[AUTH]
    for term in ("", "R0001", "team", "9"):
        expected = sorted(
            n
            for n in BULK + EXTRA + EMPTY
            if term.lower() in n and auth.may_list(Identity("erin"), n)
        )
        for page in (1, 3):
            resp = await client.get(
                "/v1/search",
                params={"q": term, "n": "100", "page": str(page)},
                headers=basic("erin"),
            )
            assert resp.status == 200, await resp.text()
            body = await resp.json()
            assert body["num_results"] == len(expected), term
            names = [r["name"] for r in body["results"]]
            assert names == expected[(page - 1) * 100 : page * 100], term


async def test_a_page_that_runs_out_of_time_links_to_where_it_stopped(
    make_registry: MakeRegistry,
) -> None:
    """`pagination.catalogtime` bounds a page: one that is still looking when it runs out
    answers what it found, with a Link after the last name it looked at, sealed (that name
    may be one the caller may not see); following the Links gives exactly the filtered
    catalog."""
    rules = [rule("*9", users=["erin"]), rule("team/*", users=["erin"])]
    client = await registry(make_registry, rules, settings={"pagination": {"catalogtime": 1e-6}})
    expected = naive(client, "erin")
    seen, pages = await walk(client, "erin", 1000)
    assert seen == expected
    # More pages than the 1000-name pages need: the time bound ended some early.
    assert pages > -(-len(expected) // 1000) + 1
    resp = await client.get("/v2/_catalog?n=1000", headers=basic("erin"))
    link = resp.headers["Link"]
    body = (await resp.json())["repositories"]
    assert len(body) < 1000
    assert "n=1000" in link
    # The next page starts after the last name looked at, which the Link does not show.
    last = unquote(link[link.index("last=") + 5 : link.index(">")])
    assert last.startswith("~") and not any(name in last for name in BULK + EXTRA), last
    opened = client.app[CURSORS].open(last, CATALOG_CURSOR)
    assert opened in BULK + EXTRA
    assert not body or opened >= body[-1]
    # A cursor that is not ours opens nothing: it is taken as a name, after every repository.
    forged = last[:-2] + ("AA" if not last.endswith("AA") else "BB")
    resp = await client.get(f"/v2/_catalog?n=1000&last={forged}", headers=basic("erin"))
    assert resp.status == 200 and (await resp.json())["repositories"] == []


@pytest.mark.parametrize("path", ["/v2/_catalog?n=10", "/v1/search?q=r"])
async def test_a_filtered_catalog_does_not_hold_the_worker(
    make_registry: MakeRegistry, path: str
) -> None:
    """While a catalog (or a v1 search) that matches nothing looks through 150,000 names,
    requests to the base endpoint on the same worker go on being answered: between its start and one
    ping after its end, no 0.25 s passes without a ping answered (before the fix the worker
    was held for the whole scan, which also stalled this test's own client)."""
    # Twenty rules for erin, none matching: as many as a real configuration might have.
    rules = [rule(f"*-nothing{k}", users=["erin"]) for k in range(20)]
    client = (await make_registry("basic", rules=rules)).client
    await populate(client, [f"ns{i % 40:02d}/r{i:06d}" for i in range(150_000)], [])
    # Warm the credentials cache so no request waits for bcrypt.
    assert (await client.get("/v2/", headers=basic("erin"))).status == 200
    answered: list[float] = []
    catalog_done = asyncio.Event()

    async def pings() -> None:
        while True:
            resp = await client.get("/v2/", headers=basic("erin"))
            assert resp.status == 200, await resp.text()
            answered.append(time.monotonic())
            if catalog_done.is_set():
                return

    pinging = asyncio.create_task(pings())
    while len(answered) < 2:
        await asyncio.sleep(0.01)
    started = time.monotonic()
    resp = await asyncio.wait_for(client.get(path, headers=basic("erin")), 60)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body.get("repositories", []) == [] and body.get("results", []) == []
    catalog_done.set()
    await asyncio.wait_for(pinging, 60)
    times = [started] + [t for t in answered if t > started]
    longest = max(b - a for a, b in itertools.pairwise(times))
    assert longest < 0.25, (longest, time.monotonic() - started)
