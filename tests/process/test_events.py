"""Events (webhooks) from a real server to a real HTTP receiver, in CNCF Distribution's
notification format: pushes, pulls, deletes and mounts, v2 and v1; filters; and a receiver that
is down while pushes happen and the server restarts, which then gets every event, in order."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.harness import MakeServer, free_port
from tests.images import memory_image
from tests.process.registry import Registry, sha256
from tests.v1.client import RemoteHttp, V1Client, make_chain

pytestmark = pytest.mark.timeout(120)

ENVELOPE = "application/vnd.docker.distribution.events.v1+json"


@dataclass
class Receiver:
    """An HTTP endpoint on 127.0.0.1 that keeps what it is sent; `stop()` and `start()` take
    it away and bring it back on the same port."""

    port: int
    envelopes: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/events"

    @property
    def events(self) -> list[dict[str, Any]]:
        return [event for _, body in self.envelopes for event in body["events"]]

    async def _take(self, request: web.Request) -> web.Response:
        self.envelopes.append((dict(request.headers), json.loads(await request.read())))
        return web.Response(status=200)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/events", self._take)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def wait_for(self, count: int, what: Any = None, seconds: float = 30) -> list[Any]:
        deadline = time.monotonic() + seconds
        while True:
            found = [e for e in self.events if what is None or what(e)]
            if len(found) >= count:
                return found
            assert time.monotonic() < deadline, (count, self.events)
            await asyncio.sleep(0.1)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver(free_port())
    await found.start()
    try:
        yield found
    finally:
        await found.stop()


def endpoint(receiver: Receiver, **extra: Any) -> dict[str, Any]:
    return {"name": "hook", "url": receiver.url, "backoff": 0.2, "maxbackoff": 1, **extra}


def pushed(event: dict[str, Any]) -> bool:
    return bool(event["action"] == "push")


async def test_push_pull_delete_and_mount_events(
    make_server: MakeServer, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    hook = endpoint(receiver, headers={"Authorization": "Bearer secret-for-hooks"})
    server = make_server(config={"notifications": {"endpoints": [hook]}})
    await server.start()
    reg = Registry(http, server.url)
    image = memory_image(11, (3000, 4000), "events")
    await reg.push_image("hooks/app", "v1", image)
    pushes = await receiver.wait_for(4, pushed)  # config, two layers, the manifest
    headers, _ = receiver.envelopes[0]
    assert headers["Content-Type"] == ENVELOPE
    assert headers["Authorization"] == "Bearer secret-for-hooks"
    blobs = {e["target"]["digest"]: e for e in pushes if e["target"].get("tag") is None}
    assert set(blobs) == {sha256(b) for b in image.blobs}
    for blob in image.blobs:
        target = blobs[sha256(blob)]["target"]
        assert target["size"] == target["length"] == len(blob)
        assert target["mediaType"] == "application/octet-stream"
        assert target["url"] == f"{server.url}/v2/hooks/app/blobs/{sha256(blob)}"
    (manifest,) = [e for e in pushes if e["target"].get("tag") == "v1"]
    assert manifest["target"]["digest"] == image.digest
    assert manifest["target"]["repository"] == "hooks/app"
    assert manifest["target"]["size"] == len(image.manifest)
    assert manifest["target"]["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["request"]["method"] == "PUT" and manifest["request"]["id"]
    assert manifest["request"]["useragent"].startswith("Python")
    assert manifest["source"]["instanceID"] and manifest["source"]["addr"]
    assert set(manifest) >= {"id", "timestamp", "action", "target", "request", "actor", "source"}

    status, body, _ = await reg.get_manifest("hooks/app", "v1")
    assert status == 200 and body == image.manifest
    (pull,) = await receiver.wait_for(1, lambda e: e["action"] == "pull")
    assert pull["target"]["tag"] == "v1" and pull["target"]["digest"] == image.digest

    query = f"mount={sha256(image.layers[0])}&from=hooks/app"
    async with http.post(f"{server.url}/v2/hooks/other/blobs/uploads/?{query}") as resp:
        assert resp.status == 201
    (mount,) = await receiver.wait_for(1, lambda e: e["action"] == "mount")
    assert mount["target"]["fromRepository"] == "hooks/app"
    assert mount["target"]["repository"] == "hooks/other"

    async with http.delete(f"{server.url}/v2/hooks/app/manifests/{image.digest}") as resp:
        assert resp.status == 202
    (deleted,) = await receiver.wait_for(1, lambda e: e["action"] == "delete")
    assert deleted["target"]["digest"] == image.digest
    # Ids are unique; the order is the order things happened in.
    ids = [e["id"] for e in receiver.events]
    assert len(ids) == len(set(ids))
    assert [e["action"] for e in receiver.events][-3:] == ["pull", "mount", "delete"]


async def test_a_receiver_away_gets_everything_in_order(
    make_server: MakeServer, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """The receiver is down while five images are pushed and the server is restarted; when
    it comes back it gets every event, in the order of the pushes (at least once)."""
    hook = endpoint(receiver, actions=["push"])
    server = make_server(config={"notifications": {"endpoints": [hook]}})
    await server.start()
    reg = Registry(http, server.url)
    await reg.push_image("away/app", "warmup", memory_image(20, (500,), "warmup"))
    await receiver.wait_for(1, lambda e: e["target"].get("tag") == "warmup")
    await receiver.stop()
    images = [memory_image(21 + i, (700 + i,), f"away {i}") for i in range(5)]
    for i, image in enumerate(images[:3]):
        await reg.push_image("away/app", f"t{i}", image)
    assert await server.stop() == 0
    await server.start()
    async with aiohttp.ClientSession() as fresh:
        reg = Registry(fresh, server.url)
        for i, image in enumerate(images[3:], 3):
            await reg.push_image("away/app", f"t{i}", image)
    await asyncio.sleep(1.5)  # a few failed deliveries, backing off
    await receiver.start()
    tagged = await receiver.wait_for(5, lambda e: e["target"].get("tag", "").startswith("t"))
    first_seen: list[str] = []
    for event in tagged:
        if event["target"]["tag"] not in first_seen:
            first_seen.append(event["target"]["tag"])
    assert first_seen == [f"t{i}" for i in range(5)]
    digests = {e["target"]["digest"] for e in receiver.events}
    for image in images:
        assert image.digest in digests
        assert all(sha256(blob) in digests for blob in image.blobs)


async def test_filters_by_repository_action_and_media_type(
    make_server: MakeServer, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    other = Receiver(free_port())
    await other.start()
    try:
        hooks = [
            endpoint(receiver, name="team", repositories=["team/*"], actions=["push"]),
            endpoint(
                other,
                name="manifests",
                ignore={"mediatypes": ["application/octet-stream"], "actions": ["delete"]},
            ),
        ]
        server = make_server(config={"notifications": {"endpoints": hooks}})
        await server.start()
        reg = Registry(http, server.url)
        team, solo = memory_image(31, (900,), "team"), memory_image(32, (800,), "solo")
        await reg.push_image("team/app", "v1", team)
        await reg.push_image("solo/app", "v1", solo)
        await reg.get_manifest("team/app", "v1")
        async with http.delete(f"{server.url}/v2/solo/app/manifests/{solo.digest}") as resp:
            assert resp.status == 202
        await other.wait_for(3, lambda e: e["target"].get("tag") == "v1")  # 2 pushes, 1 pull
        await asyncio.sleep(1.0)
        assert "delete" not in {e["action"] for e in other.events}
        assert {e["target"]["repository"] for e in receiver.events} == {"team/app"}
        assert {e["action"] for e in receiver.events} == {"push"}
        assert len(receiver.events) == 3  # config, layer, manifest
        assert all(e["target"]["mediaType"] != "application/octet-stream" for e in other.events)
    finally:
        await other.stop()


async def test_a_v1_push_sends_what_a_v2_push_would(
    make_server: MakeServer, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    server = make_server(config={"notifications": {"endpoints": [endpoint(receiver)]}})
    await server.start()
    v1 = V1Client(RemoteHttp(http, server.url))
    chain = make_chain(2)
    await v1.push("legacy/app", chain, {chain[-1].id: ["latest"]})
    events = await receiver.wait_for(4, pushed)  # config, two layers, the manifest
    (manifest,) = [e for e in events if e["target"].get("tag") == "latest"]
    assert manifest["target"]["repository"] == "legacy/app"
    assert manifest["request"]["method"] == "PUT"
    layers = {e["target"]["digest"] for e in events if e["target"].get("tag") is None}
    assert {sha256(image.layer) for image in chain} <= layers
    deleted = await v1.call("DELETE", "/v1/repositories/legacy/app/tags/latest")
    assert deleted.status == 200
    (gone,) = await receiver.wait_for(1, lambda e: e["action"] == "delete")
    assert gone["target"] == {"repository": "legacy/app", "tag": "latest"}
