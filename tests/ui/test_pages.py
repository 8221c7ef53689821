"""The web interface's pages, in-process over real HTTP (aiohttp's test server): what each
page shows, its headers and size, that the API's paths stay the API's, the access rules, sign
in and out, and deleting with a CSRF-checked confirmation."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pydantic import ValidationError

from moorage.api.context import EVENTS, REGISTRY
from moorage.api.maintenance import MAINTENANCE
from moorage.app import create_app
from moorage.auth import htpasswd
from moorage.config import Settings
from moorage.ui.sessions import COOKIE
from tests.auth.helpers import OCI_MANIFEST, manifest_for
from tests.ui.helpers import RULES, USERS, basic, csrf_of, push_samples
from tests.v1 import client as v1client

Client = TestClient[Any, Any]
PAGE_LIMIT = 200 * 1024


@pytest.fixture(scope="module")
def users_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ui-auth") / "htpasswd"
    htpasswd.write(path, {u: htpasswd.hash_password(p) for u, p in USERS.items()})
    return path


@pytest.fixture
def start(aiohttp_client: Any, backend: Any) -> Any:
    """`await start(tmp_path, **settings)`: a registry on the backend this run tests
    (MOORAGE_TEST_BACKEND: SQLite and files, or PostgreSQL and S3)."""

    async def make(where: Path, **settings: Any) -> Client:
        datadir = where / "data"
        placed = await backend.settings_for(datadir)
        app = create_app(Settings(datadir=datadir, **placed, **settings))
        client: Client = await aiohttp_client(app)
        return client

    return make


def text_of(page: str) -> str:
    """The page's words, without markup."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page))


async def page(client: Client, path: str, status: int = 200) -> str:
    resp = await client.get(path)
    body = await resp.text()
    assert resp.status == status, body
    assert resp.headers["Content-Type"].startswith("text/html")
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert len(body.encode()) < PAGE_LIMIT
    return body


async def flush_activity(client: Client, pulled: int) -> None:
    """What a worker does every minute: add its push and pull counts to the table. A blob's
    bytes are counted once the server has sent them, which may be just after the client read
    them all: flush until they are in."""
    registry = client.app[REGISTRY]
    deadline = time.monotonic() + 10
    while True:
        await registry.activity.flush()
        status = await registry.metadata.storage_status(days=1)
        if status.days[-1].pulled_bytes >= pulled or time.monotonic() > deadline:
            return
        await asyncio.sleep(0.01)


async def test_browse_open_registry(start: Any, tmp_path: Path) -> None:
    client = await start(tmp_path)
    pushed = await push_samples(client, tmp_path / "layout", "team/app")
    await push_samples(client, tmp_path / "layout2", "other/tool", seed=50)

    listing = await page(client, "/")
    assert 'href="/repositories/team/app"' in listing
    assert 'href="/repositories/other/tool"' in listing
    row = re.search(r"team/app</a></td>\s*<td class=\"num\">(\d+)</td>", listing)
    assert row and row.group(1) == "3"

    found = await page(client, "/?q=tea")
    assert "team/app" in found and "other/tool" not in found
    fragment = await page(client, "/?q=tool&fragment=1")
    assert "<html" not in fragment and "other/tool" in fragment and "team/app" not in fragment
    assert "No repository matches" in await page(client, "/?q=nothing-like-it")

    repo = text_of(await page(client, "/repositories/team/app"))
    assert "multi" in repo and "linux/amd64, linux/arm64" in repo and "OCI index" in repo
    assert "docker pull" in repo and "podman pull" in repo
    assert "application/vnd.moorage.test.artifact" in repo  # the artifact's type, not a config's
    assert pushed.index.digest[:19] in repo
    assert " UTC by " not in repo  # anonymous pushes name nobody

    index = await page(client, f"/repositories/team/app/manifests/{pushed.index.digest}")
    for child in pushed.index.images:
        assert f'/repositories/team/app/manifests/{child.digest}"' in index
    assert "linux/arm64" in text_of(index)

    image = await page(client, f"/repositories/team/app/manifests/{pushed.image.digest}")
    words = text_of(image)
    assert "tests.images layer 0" in words and "tests.images layer 1" in words
    for layer in pushed.image.layers:
        assert layer.digest[:19] in words
    # Labels and commands from the pushed config are escaped, never markup.
    assert "<script>alert(1)</script>" not in image
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in image
    assert "echo &lt;hello&gt;" in image
    # The artifact that names the image as its subject is listed, with its type.
    assert pushed.artifact.digest[:19] in words and "application/vnd.moorage.test.artifact" in words
    assert "&#34;schemaVersion&#34;: 2" in image  # the raw manifest, escaped

    # Pulls: three of the image's manifest (a HEAD is none), and its layers' bytes.
    for method in ("GET", "GET", "HEAD", "GET"):
        async with client.request(method, "/v2/team/app/manifests/v1") as resp:
            assert resp.status == 200
    for layer in pushed.image.layers:
        async with client.get(f"/v2/team/app/blobs/{layer.digest}") as resp:
            assert resp.status == 200 and await resp.read() == layer.read()
    layer_bytes = sum(len(layer.read()) for layer in pushed.image.layers)
    await flush_activity(client, layer_bytes)

    storage = await page(client, "/storage")
    words = text_of(storage)
    assert "team" in words and "other" in words
    # Per namespace over 30 days: pushes, pulls, bytes pulled.
    pulled = f"{layer_bytes / 1024:.1f} KiB"
    assert re.search(rf" team 1 \d+ [0-9.]+ KiB [0-9.]+ KiB - 5 3 {pulled} ", words), words
    assert re.search(r" other 1 \d+ [0-9.]+ KiB [0-9.]+ KiB - 5 0 0 B ", words), words
    # Over 30 days: everything happened today, so only today's bars stand.
    charts = re.findall(r"<svg class=\"chart\".*?</svg>", storage, re.S)
    assert len(charts) == 5  # stored bytes, manifests stored, pushes, pulls, bytes pulled
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    # Two repositories of 5 manifests each: an index of 2, an image, an artifact.
    expected = ["10", "10", "3", pulled]
    for chart, value in zip(charts[1:], expected, strict=True):
        bars = re.findall(r'height="([0-9.]+)"><title>([0-9-]+): ([^<]+)</title>', chart)
        assert len(bars) == 30 and bars[-1][1:] == (today, value)
        assert all(float(height) == 0 for height, _, _ in bars[:-1])


async def test_storage_shows_collections_and_mirrors(start: Any, tmp_path: Path) -> None:
    # An upstream (another registry) holding team/app, mirrored here under `hub`, and a
    # default upstream (the same registry) limited to names that are not pulled here.
    upstream = await start(tmp_path / "upstream")
    pushed = await push_samples(upstream, tmp_path / "layout", "team/app")
    url = f"http://127.0.0.1:{upstream.server.port}"
    upstreams = [
        {"prefix": "hub", "url": url, "ttl": "2m"},
        {"url": url, "repositories": ["library/*"]},
    ]
    client = await start(tmp_path / "mirror", proxy={"upstreams": upstreams})
    image = pushed.image
    async with client.get(
        "/v2/hub/team/app/manifests/v1", headers={"Accept": image.manifest.media_type}
    ) as resp:
        assert resp.status == 200 and await resp.read() == image.manifest.read()
    for blob in [image.config, *image.layers]:
        async with client.get(f"/v2/hub/team/app/blobs/{blob.digest}") as resp:
            assert resp.status == 200 and await resp.read() == blob.read()
    cached = sum(blob.size for blob in [image.config, *image.layers])

    storage = text_of(await page(client, "/storage"))
    assert "No collection has run yet." in storage
    assert (
        f"(default: names under no prefix) {url} library/* 300 s 0 0 B "
        f"hub/ {url} all 120 s 1 {cached / 1024:.1f} KiB "
    ) in storage, storage

    # A dry run and a collection that find nothing, then, once the manifest is deleted, one
    # that deletes its blobs.
    registry = client.app[REGISTRY]
    await registry.collector.cycle(grace=0, dry_run=True)
    await registry.collector.cycle()
    async with client.delete(f"/v2/hub/team/app/manifests/{image.digest}") as resp:
        assert resp.status == 202
    run = await registry.collector.cycle(grace=0)
    assert (run.collected.links, run.collected.blobs, run.objects_deleted) == (3, 3, 3)
    storage = text_of(await page(client, "/storage"))
    assert "The last 3 cycles, newest first" in storage
    rows = re.findall(
        r"UTC \d+\.\d s (dry run|collection) (\d+) (\d+) (\d+) (\d+) (\d+) ([0-9.]+ K?i?B) (\d+|-)",
        storage,
    )
    assert rows == [
        ("collection", "0", "0", "3", "0", "3", f"{cached / 1024:.1f} KiB", "3"),
        ("collection", "0", "0", "0", "0", "0", "0 B", "0"),
        ("dry run", "0", "0", "0", "0", "0", "0 B", "-"),
    ], storage

    def stop(stage: str, done: int) -> None:  # as `moorage gc` stops on Ctrl-C
        raise RuntimeError(f"stopped at {stage} <{done}>")

    with pytest.raises(RuntimeError):
        await registry.collector.cycle(progress=stop)
    storage = await page(client, "/storage")
    assert "The last 4 cycles" in storage
    assert re.search(
        r"s</td>\s*<td>collection</td>\s*<td[^>]*>failed: stopped at \w+ &lt;0&gt;", storage
    )


async def test_api_paths_stay_the_apis(start: Any, tmp_path: Path) -> None:
    client = await start(tmp_path)
    await push_samples(client, tmp_path / "layout", "team/app")
    resp = await client.get("/v2/")
    assert resp.status == 200 and await resp.json() == {}
    resp = await client.get("/v2/_catalog")
    assert (await resp.json())["repositories"] == ["team/app"]
    resp = await client.get("/v2/team/app/tags/list")
    assert sorted((await resp.json())["tags"]) == ["multi", "sig", "v1"]
    resp = await client.get("/v1/_ping")
    assert resp.status == 200 and "Content-Security-Policy" not in resp.headers
    assert (await client.get("/healthz")).status == 200


async def test_ui_path_and_disabled(start: Any, tmp_path: Path) -> None:
    moved = await start(tmp_path / "a", ui={"path": "/ui"})
    await push_samples(moved, tmp_path / "layout", "team/app")
    listing = await page(moved, "/ui/")
    assert 'href="/ui/repositories/team/app"' in listing
    assert 'href="/ui/static/ui.css"' in listing
    assert (await moved.get("/")).status == 404
    resp = await moved.get("/ui", allow_redirects=False)
    assert resp.status == 301 and resp.headers["Location"] == "/ui/"

    off = await start(tmp_path / "b", ui={"enabled": False})
    assert (await off.get("/")).status == 404
    assert (await off.get("/v2/")).status == 200


@pytest.mark.parametrize("path", ["/v2", "/v1/x", "/metrics", "/auth/token", "/a b"])
def test_ui_path_may_not_take_the_apis(path: str) -> None:
    with pytest.raises(ValidationError):
        Settings(ui={"path": path})


async def test_static_files(start: Any, tmp_path: Path) -> None:
    client = await start(tmp_path)
    css = await client.get("/static/ui.css")
    assert css.status == 200 and css.headers["Content-Type"].startswith("text/css")
    js = await client.get("/static/ui.js")
    assert js.status == 200 and "liveSearch" in await js.text()
    assert (await client.get("/static/..%2Fviews.py")).status == 404
    assert (await client.get("/static/views.py")).status == 404


async def test_access_rules_and_sign_in(start: Any, tmp_path: Path, users_file: Path) -> None:
    auth = {"mode": "basic", "htpasswd": users_file, "rules": RULES, "admins": ["root"]}
    client = await start(tmp_path, auth=auth)
    await push_samples(client, tmp_path / "l1", "team/app", basic("root"))
    await push_samples(client, tmp_path / "l2", "secret/vault", basic("root"), seed=9)

    # Anonymous: nothing to pull, so nothing shown, and the pages do not exist.
    listing = await page(client, "/")
    assert "team/app" not in listing and "No repositories yet" in listing
    await page(client, "/repositories/team/app", status=404)
    await page(client, "/storage", status=403)

    form = await page(client, "/signin")
    wrong = await client.post(
        "/signin", data={"csrf": csrf_of(form), "username": "bob", "password": "nope"}
    )
    assert wrong.status == 401 and "Wrong user name or password" in await wrong.text()
    forged = await client.post(
        "/signin", data={"csrf": "0" * 64, "username": "bob", "password": USERS["bob"]}
    )
    assert forged.status == 401 and "expired" in await forged.text()

    signed = await client.post(
        "/signin",
        data={"csrf": csrf_of(form), "username": "bob", "password": USERS["bob"]},
        allow_redirects=False,
    )
    assert signed.status == 303
    cookie = signed.cookies[COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/"

    listing = await page(client, "/")
    assert "Signed in as" in listing and "bob" in listing
    assert "team/app" in listing and "secret/vault" not in listing
    await page(client, "/repositories/secret/vault", status=404)
    assert "secret/vault" not in await page(client, "/?q=vault")
    repo = await page(client, "/repositories/team/app")
    assert "/delete?" not in repo  # bob may not delete
    await page(client, "/delete?repository=team/app&reference=v1", status=403)

    out = await client.post("/signout", data={"csrf": csrf_of(repo)}, allow_redirects=False)
    assert out.status == 303
    assert "team/app" not in await page(client, "/")


async def test_who_pushed_each_tag(start: Any, tmp_path: Path, users_file: Path) -> None:
    auth = {"mode": "basic", "htpasswd": users_file, "rules": RULES, "admins": ["root"]}
    client = await start(tmp_path, auth=auth)
    pushed = await push_samples(client, tmp_path / "l1", "team/app", basic("alice"))
    # root sets `v1` again (to the same manifest): the tag's pusher is now root
    async with client.put(
        "/v2/team/app/manifests/v1",
        data=pushed.image.manifest.read(),
        headers={"Content-Type": pushed.image.manifest.media_type, **basic("root")},
    ) as resp:
        assert resp.status == 201
    form = await page(client, "/signin")
    await client.post(
        "/signin", data={"csrf": csrf_of(form), "username": "bob", "password": USERS["bob"]}
    )
    repo = text_of(await page(client, "/repositories/team/app"))
    pushers = dict(re.findall(r"(\w+) sha256:\w+ .*? UTC by (\w+)", repo))
    assert pushers == {"multi": "alice", "sig": "alice", "v1": "root"}, repo
    image = text_of(await page(client, f"/repositories/team/app/manifests/{pushed.image.digest}"))
    assert "Tags v1 (pushed by root)" in image
    index = text_of(await page(client, f"/repositories/team/app/manifests/{pushed.index.digest}"))
    assert "Tags multi (pushed by alice)" in index
    # A child of the index, pushed by digest: no tag, nobody to name.
    child = pushed.index.images[0].digest
    assert "none (by digest only)" in text_of(
        await page(client, f"/repositories/team/app/manifests/{child}")
    )


async def test_delete_a_tag_and_a_manifest(start: Any, tmp_path: Path, users_file: Path) -> None:
    auth = {"mode": "basic", "htpasswd": users_file, "rules": RULES}
    client = await start(tmp_path, auth=auth)
    pushed = await push_samples(client, tmp_path / "l1", "team/app", basic("alice"))
    form = await page(client, "/signin")
    await client.post(
        "/signin", data={"csrf": csrf_of(form), "username": "alice", "password": USERS["alice"]}
    )
    repo = await page(client, "/repositories/team/app")
    assert "/delete?repository=team/app&amp;reference=v1" in repo

    confirm = await page(client, "/delete?repository=team/app&reference=v1")
    words = text_of(confirm)
    assert "The tag v1 of team/app is deleted" in words
    assert pushed.image.digest in words and "stays, reachable by digest" in words

    refused = await client.post(
        "/delete", data={"repository": "team/app", "reference": "v1", "csrf": "f" * 64}
    )
    assert refused.status == 403
    tags = await client.get("/v2/team/app/tags/list", headers=basic("alice"))
    assert "v1" in (await tags.json())["tags"]

    done = await client.post(
        "/delete",
        data={"repository": "team/app", "reference": "v1", "csrf": csrf_of(confirm)},
        allow_redirects=False,
    )
    assert done.status == 303 and done.headers["Location"].startswith("/repositories/team/app?")
    assert "Deleted v1." in text_of(await page(client, done.headers["Location"]))
    tags = await client.get("/v2/team/app/tags/list", headers=basic("alice"))
    assert sorted((await tags.json())["tags"]) == ["multi", "sig"]

    # A manifest by digest: the page says which tags and referrers go with it.
    index = pushed.index.digest
    confirm = await page(client, f"/delete?repository=team/app&reference={index}")
    words = text_of(confirm)
    assert "These tags point at it and are deleted with it: multi" in words
    assert "It is an index of 2 manifests" in words
    done = await client.post(
        "/delete",
        data={"repository": "team/app", "reference": index, "csrf": csrf_of(confirm)},
        allow_redirects=False,
    )
    assert done.status == 303
    gone = await client.get(f"/v2/team/app/manifests/{index}", headers=basic("alice"))
    assert gone.status == 404


async def test_open_registry_deletes_follow_the_setting(start: Any, tmp_path: Path) -> None:
    client = await start(tmp_path, deletes={"enabled": False})
    pushed = await push_samples(client, tmp_path / "layout", "team/app")
    repo = await page(client, "/repositories/team/app")
    assert "team/app" in repo and "/delete?" not in repo
    assert "Sign in" not in text_of(repo)  # auth none: there is nobody to sign in as
    image = await page(client, f"/repositories/team/app/manifests/{pushed.image.digest}")
    assert "Delete this manifest" not in image
    await page(client, "/delete?repository=team/app&reference=v1", status=403)


async def test_a_delete_records_its_event(start: Any, tmp_path: Path, users_file: Path) -> None:
    auth = {"mode": "basic", "htpasswd": users_file, "rules": RULES}
    # A receiver nobody listens on: the events wait in the table, where the test reads them.
    endpoint = {"name": "hook", "url": "http://127.0.0.1:9/hook", "actions": ["delete"]}
    client = await start(tmp_path, auth=auth, notifications={"endpoints": [endpoint]})
    await push_samples(client, tmp_path / "l1", "team/app", basic("alice"))
    form = await page(client, "/signin")
    await client.post(
        "/signin", data={"csrf": csrf_of(form), "username": "alice", "password": USERS["alice"]}
    )
    confirm = await page(client, "/delete?repository=team/app&reference=v1")
    done = await client.post(
        "/delete",
        data={"repository": "team/app", "reference": "v1", "csrf": csrf_of(confirm)},
        allow_redirects=False,
    )
    assert done.status == 303
    rows = await client.app[EVENTS].after(0, 100)
    assert [(r.action, r.repository) for r in rows] == [("delete", "team/app")]
    event = json.loads(rows[0].payload)
    assert event["target"]["tag"] == "v1" and event["actor"]["name"] == "alice"


async def test_v1_images_and_their_ancestry(start: Any, tmp_path: Path, users_file: Path) -> None:
    auth = {"mode": "basic", "htpasswd": users_file, "rules": RULES}
    client = await start(tmp_path, auth=auth)
    chain = v1client.make_chain(3)
    v1 = v1client.V1Client(client)
    credentials = v1client.basic("alice", USERS["alice"])
    await v1.push("team/legacy", chain, tags={chain[-1].id: ["old"]}, auth=credentials)
    form = await page(client, "/signin")
    await client.post(
        "/signin", data={"csrf": csrf_of(form), "username": "alice", "password": USERS["alice"]}
    )
    repo = await page(client, "/repositories/team/legacy")
    top = chain[-1].id
    assert f'href="/repositories/team/legacy/v1/{top}"' in repo
    assert "by alice" in text_of(repo)

    ancestry = await page(client, f"/repositories/team/legacy/v1/{top}")
    shown = re.findall(r'<code title="([0-9a-f]{64})">', ancestry)
    assert shown == [image.id for image in reversed(chain)]
    assert "/bin/sh -c /bin/sh" in text_of(ancestry)  # each layer's build step
    # An image of another repository is not shown through this one.
    await page(client, f"/repositories/team/app/v1/{top}", status=404)

    # v1 counts too: the tag set is a push, each read of it a pull.
    for _ in range(2):
        assert await v1.tag("team/legacy", "old", credentials) == top
    await flush_activity(client, 0)
    counted = (await client.app[REGISTRY].metadata.storage_status(days=1)).activity["team"]
    assert (counted.pushes, counted.pulls) == (1, 2)


async def test_token_mode_users_sign_in(start: Any, tmp_path: Path, users_file: Path) -> None:
    """With the built-in token server the pages sign in the same htpasswd users."""
    client = await start(tmp_path, auth={"mode": "token", "htpasswd": users_file, "rules": RULES})
    scope = "repository:team/app:pull,push"
    resp = await client.get("/auth/token", params={"scope": scope}, headers=basic("root"))
    assert resp.status == 200, await resp.text()
    bearer = {"Authorization": f"Bearer {(await resp.json())['token']}"}
    await push_samples(client, tmp_path / "layout", "team/app", bearer)
    assert "team/app" not in await page(client, "/")
    form = await page(client, "/signin")
    await client.post(
        "/signin", data={"csrf": csrf_of(form), "username": "bob", "password": USERS["bob"]}
    )
    assert 'href="/repositories/team/app"' in await page(client, "/")


async def test_read_only_and_metrics(start: Any, tmp_path: Path) -> None:
    client = await start(tmp_path)
    await push_samples(client, tmp_path / "layout", "team/app")
    client.app[MAINTENANCE].readonly = True  # as SIGHUP with maintenance.readonly sets it
    repo = await page(client, "/repositories/team/app")
    assert "/delete?" not in repo
    refused = await page(client, "/delete?repository=team/app&reference=v1", status=403)
    assert "read-only" in refused
    # Each page is counted under its own route in the request metrics.
    metrics = await (await client.get("/metrics")).text()
    assert 'route="ui.repository"' in metrics and 'route="ui.delete"' in metrics


def test_ui_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOORAGE_UI_PATH", "/console/")
    monkeypatch.setenv("MOORAGE_UI_ENABLED", "false")
    settings = Settings()
    assert settings.ui.path == "/console" and settings.ui.enabled is False
    assert Settings.model_fields["ui"].default.path == "/"


async def test_a_removed_user_is_signed_out(start: Any, tmp_path: Path) -> None:
    users = tmp_path / "htpasswd"
    htpasswd.write(users, {"carol": htpasswd.hash_password("carol-password")})
    client = await start(tmp_path, auth={"mode": "basic", "htpasswd": users})
    form = await page(client, "/signin")
    await client.post(
        "/signin", data={"csrf": csrf_of(form), "username": "carol", "password": "carol-password"}
    )
    assert "Signed in as" in await page(client, "/")
    htpasswd.write(users, {})
    assert "Signed in as" not in await page(client, "/")


async def test_cookie_is_secure_over_https(start: Any, tmp_path: Path) -> None:
    """Reached through an HTTPS front (`http.host`), the session cookie is sent Secure."""
    client = await start(tmp_path, http={"host": "https://registry.example.com"})
    resp = await client.get("/")
    cookie = resp.cookies[COOKIE]
    assert cookie["secure"] and cookie["httponly"] and cookie["samesite"] == "Strict"
    plain = await start(tmp_path / "plain")
    assert not (await plain.get("/")).cookies[COOKIE]["secure"]


async def test_a_huge_manifest_still_makes_a_small_page(start: Any, tmp_path: Path) -> None:
    """Pages are bounded whatever a pusher put in a manifest or config: long lists and long
    strings are cut, with a note of what was left out."""
    client = await start(tmp_path)
    history = [{"created_by": f"RUN step {n} " + "x" * 400} for n in range(1500)]
    labels = {f"label.{n}": "v" * 200 for n in range(1000)}
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "history": history, "config": {"Labels": labels}}
    ).encode()
    layer = b"layer"
    for data in (config, layer):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        resp = await client.post(f"/v2/big/one/blobs/uploads/?digest={digest}", data=data)
        assert resp.status == 201, await resp.text()
    document = json.loads(manifest_for(config, layer))
    document["annotations"] = {f"note.{n}": "a" * 300 for n in range(3000)}
    body = json.dumps(document).encode()
    assert len(body) > 900_000
    resp = await client.put(
        "/v2/big/one/manifests/huge", data=body, headers={"Content-Type": OCI_MANIFEST}
    )
    assert resp.status == 201, await resp.text()
    digest = resp.headers["Docker-Content-Digest"]
    shown = await page(client, f"/repositories/big/one/manifests/{digest}")  # < 200 KB
    assert "1400 more history entries not shown." in shown
    assert "RUN step 0 " in shown and "RUN step 100 " not in shown
    assert "Shown in part" in shown  # the raw manifest
    await page(client, "/repositories/big/one")
