"""Garbage collection under load (issue 12 item 7): v2 pushes sharing layers across
repositories, tag moves, manifest deletes and v1 pushes and repository deletes run together
with the collector cycling at a short grace period. Afterwards every acknowledged tag pulls
byte-exact, and once the grace has passed, nothing deleted is left in storage.

A push the collector beats (a layer uploaded, its link collected before the manifest came,
possible only because the grace is shorter than the push) is refused, never half-stored; the
pusher then pushes again, as a client would. Bounded: a few seconds of load."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from moorage.api.context import REGISTRY
from tests.api.helpers import (
    OCI_CONFIG,
    Client,
    descriptor,
    encode,
    make_config,
    make_oci_manifest,
    put_manifest,
    random_bytes,
    sha256,
    start_upload,
    stored_copies,
    with_query,
)
from tests.v1.client import V1Client, make_image

MakeClient = Callable[..., Awaitable[Client]]
SECONDS = 6.0
GRACE = 1.0
REPOS = 3


@pytest.fixture
def auth_mode() -> str:
    return "none"


@dataclass
class Pushed:
    body: bytes
    blobs: list[bytes]

    @property
    def digest(self) -> str:
        return sha256(self.body)


@dataclass
class Ledger:
    tags: dict[tuple[str, str], Pushed] = field(default_factory=dict)  # acknowledged, current
    deleted: list[Pushed] = field(default_factory=list)
    v1_tags: dict[str, list[bytes]] = field(default_factory=dict)  # repo -> layers of "latest"
    v1_deleted: list[bytes] = field(default_factory=list)
    refused: int = 0


async def push_blob(client: Client, repo: str, data: bytes) -> bool:
    location = await start_upload(client, repo)
    resp = await client.put(
        with_query(location, digest=sha256(data)),
        data=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    return resp.status == 201


async def push(client: Client, repo: str, tag: str, blobs: list[bytes], ledger: Ledger) -> Pushed:
    """Push until acknowledged (a push the collector beat is refused whole, then retried)."""
    config, layers = blobs[0], blobs[1:]
    manifest = make_oci_manifest(descriptor(config, OCI_CONFIG), [descriptor(x) for x in layers])
    body = encode(manifest)
    while True:
        for blob in blobs:
            assert await push_blob(client, repo, blob)
        resp = await put_manifest(client, repo, tag, body)
        if resp.status == 201:
            return Pushed(body, blobs)
        assert resp.status == 400, await resp.text()  # MANIFEST_BLOB_UNKNOWN: beaten
        ledger.refused += 1


async def v2_worker(client: Client, n: int, base: bytes, ledger: Ledger, stop: float) -> None:
    repo = f"load/r{n}"
    rng = random.Random(n)
    history: list[Pushed] = []
    i = 0
    while time.monotonic() < stop:
        i += 1
        choice = rng.random()
        tag = f"t{rng.randrange(3)}"
        if choice < 0.6 or not history:
            blobs = [make_config(f"{n}-{i}"), base, random_bytes(rng.randrange(200, 3000))]
            pushed = await push(client, repo, tag, blobs, ledger)
            history.append(pushed)
            ledger.tags[(repo, tag)] = pushed
        elif choice < 0.8:  # move a tag back onto an image pushed before (if still stored)
            old = rng.choice(history)
            resp = await put_manifest(client, repo, tag, old.body)
            if resp.status == 201:
                ledger.tags[(repo, tag)] = old
        else:  # delete the manifest a tag points at (and with it every tag on it)
            victim = ledger.tags.get((repo, tag))
            if victim is None:
                continue
            resp = await client.delete(f"/v2/{repo}/manifests/{victim.digest}")
            assert resp.status == 202
            for key in [k for k, v in ledger.tags.items() if k[0] == repo and v is victim]:
                del ledger.tags[key]
            history = [h for h in history if h is not victim]
            ledger.deleted.append(victim)
        await asyncio.sleep(0)


async def v1_worker(client: Client, ledger: Ledger, stop: float) -> None:
    v1 = V1Client(client)
    i = 0
    while time.monotonic() < stop:
        i += 1
        repo = f"load/v{i % 2}"
        chain = [make_image()]
        chain.append(make_image(chain[0]))
        await v1.push(repo, chain, {chain[-1].id: ["latest"]})
        if i % 3 == 0:
            resp = await v1.call("DELETE", f"/v1/repositories/{repo}/")
            assert resp.status == 200, resp
            ledger.v1_deleted += [image.layer for image in chain]
            ledger.v1_tags.pop(repo, None)
        else:
            ledger.v1_tags[repo] = [image.layer for image in chain]
        await asyncio.sleep(0)


async def collector(client: Client, stop: float, cycles: list[Any]) -> None:
    while time.monotonic() < stop:
        cycles.append(await client.app[REGISTRY].collector.cycle(grace=GRACE))
        await asyncio.sleep(0.05)


async def test_pushes_moves_deletes_and_the_collector_together(make_client: MakeClient) -> None:
    client = await make_client(gc={"interval": 0, "untagged": "collect"})
    ledger, cycles = Ledger(), []
    base = random_bytes(5000)  # a layer every image shares, across repositories
    stop = time.monotonic() + SECONDS
    await asyncio.gather(
        *(v2_worker(client, n, base, ledger, stop) for n in range(REPOS)),
        v1_worker(client, ledger, stop),
        collector(client, stop, cycles),
    )
    assert len(cycles) > 3 and sum(c.collected.blobs for c in cycles) > 0

    # Every acknowledged tag pulls whole.
    assert ledger.tags
    for (repo, tag), pushed in ledger.tags.items():
        resp = await client.get(f"/v2/{repo}/manifests/{tag}")
        assert resp.status == 200 and await resp.read() == pushed.body, (repo, tag)
        for blob in pushed.blobs:
            resp = await client.get(f"/v2/{repo}/blobs/{sha256(blob)}")
            assert resp.status == 200 and await resp.read() == blob, (repo, tag)
    v1 = V1Client(client)
    for repo, layers in ledger.v1_tags.items():
        pulled = await v1.pull(repo, "latest")
        assert sorted(p.layer for p in pulled.images.values()) == sorted(layers), repo

    # Past the grace period, what was deleted and is used by nothing alive is gone.
    await asyncio.sleep(GRACE)
    registry = client.app[REGISTRY]
    await registry.collector.cycle(grace=GRACE)
    alive = {blob for pushed in ledger.tags.values() for blob in pushed.blobs}
    alive |= {layer for layers in ledger.v1_tags.values() for layer in layers}
    gone = [b for p in ledger.deleted for b in p.blobs if b not in alive] + [
        layer for layer in ledger.v1_deleted if layer not in alive
    ]
    assert gone
    for blob in gone:
        assert await stored_copies(client, blob) == 0, sha256(blob)
    for blob in alive:
        assert await stored_copies(client, blob) >= 1, sha256(blob)
