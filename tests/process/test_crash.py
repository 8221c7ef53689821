"""Crash safety: SIGKILL the whole server while it is busy, restart it, and check the store.

Each round commits images, blobs and tags, then starts work that is in flight when the
process group is killed: chunked uploads between or inside PATCHes, a slow monolithic PUT, a
slow single-POST upload, manifest PUTs and blob pushes in tight loops, a tag being moved. After
the restart on the same data directory:

- everything acknowledged (a 201 received) is intact: blobs byte-identical under their
  digest, manifests byte-identical, tags pointing where the last acknowledged PUT put them;
- nothing unacknowledged is half there: interrupted uploads are invisible (HEAD of the full
  digest and of every prefix digest is 404), their sessions report an offset the client was
  told or was about to be told; a manifest PUT in flight left either nothing or the manifest
  together with its tag; no tag appears that nobody pushed;
- the registry keeps working: the next round (and a final push) succeeds.

Rounds accumulate on one data directory, so round 3 re-checks what round 1 committed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest

from tests.harness import MakeServer, MoorageProcess
from tests.images import MemoryImage, manifest_for, memory_image
from tests.process.registry import (
    TIMEOUT,
    Registry,
    range_end,
    sha256,
)

pytestmark = pytest.mark.timeout(180)

KIB = 1 << 10
MIB = 1 << 20
# (workers, seconds between "everything is in flight" and the SIGKILL)
ROUNDS = [(2, 0.3), (1, 1.0), (2, 2.0)]
TASK_BOUND = 30.0  # seconds any in-flight task may take to notice the kill
LOOP_MAX = 3000  # iterations of the manifest and blob loops


Key = tuple[str, str]  # (repository, digest or tag)


@dataclass
class Interrupted:
    """An upload that was never closed: its digests must never become visible."""

    repo: str
    location: str
    data_digest: str  # what the whole upload would have been
    acked: int = 0  # offset the server last confirmed
    in_flight: int = 0  # length of the chunk being sent at the kill (0: none)
    chunked: bool = True
    prefixes: list[str] = field(default_factory=list)  # digests of every prefix sent


@dataclass
class Ledger:
    """What the client knows: acknowledged state, and what was in flight at a kill."""

    blobs: dict[Key, bytes] = field(default_factory=dict)
    manifests: dict[Key, bytes] = field(default_factory=dict)
    tags: dict[Key, str] = field(default_factory=dict)
    maybe_blobs: dict[Key, bytes] = field(default_factory=dict)
    # a manifest PUT in flight: (repo, tag or None) -> manifest bytes
    maybe_manifests: list[tuple[str, str | None, bytes]] = field(default_factory=list)
    # tags a PUT in flight may have moved: (repo, tag) -> possible digests
    maybe_tags: dict[Key, set[str]] = field(default_factory=dict)
    interrupted: list[Interrupted] = field(default_factory=list)

    def commit_image(self, repo: str, tag: str | None, image: MemoryImage) -> None:
        for blob in image.blobs:
            self.blobs[(repo, sha256(blob))] = blob
        self.manifests[(repo, image.digest)] = image.manifest
        if tag is not None:
            self.tags[(repo, tag)] = image.digest


class Kill:
    """Set just before the SIGKILL: from then on, connection errors are expected."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    @property
    def happened(self) -> bool:
        return self.event.is_set()

    async def guard(self, work: Awaitable[None]) -> None:
        try:
            await work
        except (aiohttp.ClientError, OSError, TimeoutError):
            if not self.happened:
                raise


# -- the committed part of a round ---------------------------------------------------------


async def commit_phase(reg: Registry, ledger: Ledger, rnd: int) -> MemoryImage:
    """Push and record images; returns one whose blobs later manifests can reference."""
    repo = f"crash/app{rnd}"
    images = [memory_image(1000 * rnd + k, (300 * KIB + k, 1200 * KIB + 7 * k)) for k in range(2)]
    for k, image in enumerate(images):
        await reg.push_image(repo, f"r{rnd}-img{k}", image, chunk=(512 * KIB) if k else 0)
        ledger.commit_image(repo, f"r{rnd}-img{k}", image)
    # by digest only, no tag
    image = memory_image(1000 * rnd + 9, (64 * KIB,), note="by digest")
    await reg.push_image(repo, image.digest, image)
    ledger.commit_image(repo, None, image)
    # a tag that moves every round
    image = memory_image(1000 * rnd + 5, (100 * KIB + rnd,), note=f"shared {rnd}")
    await reg.push_image("crash/shared", "latest", image)
    ledger.commit_image("crash/shared", "latest", image)
    return images[0]


# -- in-flight work ----------------------------------------------------------------------


def counter_blocks(seed: int, block: int, count: int) -> list[bytes]:
    base = random.Random(seed).randbytes(block)
    return [i.to_bytes(8, "big") + base[8:] for i in range(count)]


async def chunked_upload(
    reg: Registry,
    ledger: Ledger,
    kill: Kill,
    started: asyncio.Event,
    repo: str,
    seed: int,
    chunk: int,
    pieces: int,
    pause: float,
) -> None:
    """PATCH chunk after chunk and never close. With pieces > 1 each PATCH body is streamed
    slowly, so the kill most likely lands inside a PATCH."""
    chunks = counter_blocks(seed, chunk, 64)
    location = await reg.start_upload(repo)
    up = Interrupted(repo, location, sha256(b"".join(chunks)))
    ledger.interrupted.append(up)
    prefix = hashlib.sha256()
    piece = chunk // pieces
    for data in chunks:
        if kill.happened:
            return
        prefix.update(data)
        up.prefixes.append("sha256:" + prefix.hexdigest())
        up.in_flight = len(data)

        async def body(data: bytes = data) -> AsyncIterator[bytes]:
            for i in range(pieces):
                yield data[i * piece : (i + 1) * piece]
                started.set()
                await asyncio.sleep(pause)

        headers = {"Content-Range": f"{up.acked}-{up.acked + len(data) - 1}"}
        async with reg.session.patch(reg.url(up.location), data=body(), headers=headers) as resp:
            assert resp.status == 202, f"PATCH: {resp.status} {await resp.text()}"
            assert range_end(resp.headers.get("Range")) == up.acked + len(data)
            up.location = resp.headers["Location"]
        up.acked += len(data)
        up.in_flight = 0
        await asyncio.sleep(pause)


async def slow_upload(
    reg: Registry,
    ledger: Ledger,
    kill: Kill,
    started: asyncio.Event,
    repo: str,
    seed: int,
    single_post: bool,
) -> None:
    """A 64 MiB blob streamed at ~6 MiB/s: far from done when the kill comes."""
    blocks = counter_blocks(seed, 128 * KIB, 512)
    digest = sha256(b"".join(blocks))

    async def body() -> AsyncIterator[bytes]:
        for block in blocks:
            yield block
            started.set()
            await asyncio.sleep(0.02)

    if single_post:
        up = Interrupted(repo, "", digest, chunked=False)
        ledger.interrupted.append(up)
        url = reg.url(f"/v2/{repo}/blobs/uploads/").extend_query(digest=digest)
    else:
        location = await reg.start_upload(repo)
        up = Interrupted(repo, location, digest, chunked=False)
        ledger.interrupted.append(up)
        url = reg.url(location).extend_query(digest=digest)
    method = reg.session.post if single_post else reg.session.put
    async with method(url, data=body()) as resp:
        raise AssertionError(f"slow upload answered {resp.status} before the kill")


async def manifest_loop(
    reg: Registry,
    ledger: Ledger,
    kill: Kill,
    started: asyncio.Event,
    repo: str,
    rnd: int,
    base: MemoryImage,
) -> None:
    """PUT new manifests as fast as possible: by tag, by digest, and re-pointing `moving`.
    They reference the blobs of `base`, which is committed in `repo`."""
    deadline = time.monotonic() + TASK_BOUND
    for i in range(LOOP_MAX):
        if kill.happened or time.monotonic() > deadline:
            return
        body = manifest_for(base.config, base.layers, f"loop {rnd}-{i}")
        digest = sha256(body)
        tag: str | None = (f"loop{rnd}-{i}", None, "moving")[i % 3]
        ledger.maybe_manifests.append((repo, tag, body))
        if tag == "moving":
            ledger.maybe_tags.setdefault((repo, tag), set()).add(digest)
        await reg.push_manifest(repo, tag or digest, body)
        started.set()
        ledger.maybe_manifests.pop()
        ledger.manifests[(repo, digest)] = body
        if tag is not None:
            ledger.tags[(repo, tag)] = digest
        if tag == "moving":
            ledger.maybe_tags[(repo, tag)] = set()


async def blob_loop(
    reg: Registry, ledger: Ledger, kill: Kill, started: asyncio.Event, repo: str, seed: int
) -> None:
    rng = random.Random(seed)
    deadline = time.monotonic() + TASK_BOUND
    for _ in range(LOOP_MAX):
        if kill.happened or time.monotonic() > deadline:
            return
        data = rng.randbytes(rng.randrange(1, 64 * KIB))
        key = (repo, sha256(data))
        ledger.maybe_blobs[key] = data
        await reg.push_blob(repo, data)
        started.set()
        del ledger.maybe_blobs[key]
        ledger.blobs[key] = data


def raise_failure(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        if task.done() and task.exception() is not None:
            raise AssertionError(f"in-flight work failed before the kill: {task.exception()!r}")


async def crash_phase(
    server: MoorageProcess,
    ledger: Ledger,
    rnd: int,
    base: MemoryImage,
    delay: float,
    next_workers: int,
) -> float:
    """Start the in-flight work, SIGKILL the group `delay` s after all of it is running, and
    restart. Returns how long the restart took."""
    kill = Kill()
    repo = f"crash/inflight{rnd}"
    app = f"crash/app{rnd}"
    makers: list[Callable[[asyncio.Event], Awaitable[None]]] = [
        lambda s: chunked_upload(reg, ledger, kill, s, repo, 10 * rnd + 1, 256 * KIB, 1, 0.05),
        lambda s: chunked_upload(reg, ledger, kill, s, repo, 10 * rnd + 2, 192 * KIB, 1, 0.03),
        lambda s: chunked_upload(reg, ledger, kill, s, repo, 10 * rnd + 3, MIB, 16, 0.02),
        lambda s: slow_upload(reg, ledger, kill, s, repo, 10 * rnd + 4, single_post=False),
        lambda s: slow_upload(reg, ledger, kill, s, repo, 10 * rnd + 5, single_post=True),
        lambda s: manifest_loop(reg, ledger, kill, s, app, rnd, base),
        lambda s: blob_loop(reg, ledger, kill, s, app, 10 * rnd + 6),
    ]
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        reg = Registry(session, server.url)
        events = [asyncio.Event() for _ in makers]
        tasks = [
            asyncio.create_task(kill.guard(make(ev)))
            for make, ev in zip(makers, events, strict=True)
        ]
        deadline = time.monotonic() + TASK_BOUND
        while not all(ev.is_set() for ev in events) and time.monotonic() < deadline:
            raise_failure(tasks)
            await asyncio.sleep(0.01)
        raise_failure(tasks)
        assert all(ev.is_set() for ev in events), "in-flight work did not start"
        await asyncio.sleep(delay)
        raise_failure(tasks)
        kill.event.set()
        await server.kill()
        results = await asyncio.wait_for(asyncio.gather(*tasks), TASK_BOUND)
        assert results == [None] * len(tasks)
    started = time.monotonic()
    await server.start(workers=next_workers)
    return time.monotonic() - started


# -- checks after a restart --------------------------------------------------------------


async def bounded_gather(limit: int, jobs: list[Awaitable[None]]) -> None:
    semaphore = asyncio.Semaphore(limit)

    async def run(job: Awaitable[None]) -> None:
        async with semaphore:
            await job

    await asyncio.gather(*(run(j) for j in jobs))


async def check_store(reg: Registry, ledger: Ledger) -> dict[str, int]:
    jobs: list[Awaitable[None]] = []
    jobs += [reg.assert_blob(repo, d, data) for (repo, d), data in ledger.blobs.items()]
    jobs += [reg.assert_manifest(repo, d, body) for (repo, d), body in ledger.manifests.items()]
    jobs += [
        reg.assert_manifest(repo, tag, ledger.manifests[(repo, d)])
        for (repo, tag), d in ledger.tags.items()
        if not ledger.maybe_tags.get((repo, tag))
    ]
    await bounded_gather(8, jobs)

    # A tag a PUT in flight may have moved: the last acknowledged value or the new one.
    for (repo, tag), candidates in ledger.maybe_tags.items():
        if not candidates:
            continue
        acked = ledger.tags.get((repo, tag))
        status, _, headers = await reg.get_manifest(repo, tag)
        if status == 404:
            assert acked is None, f"{repo}:{tag} lost (was {acked})"
            continue
        assert status == 200, f"{repo}:{tag}: {status}"
        now = headers.get("Docker-Content-Digest")
        assert now in candidates | {acked}, f"{repo}:{tag} points at {now}"
        ledger.tags[(repo, tag)] = str(now)  # what is visible now must stay

    # Blobs pushed at the kill: absent, or whole.
    for (repo, digest), data in ledger.maybe_blobs.items():
        status, body, _ = await reg.get_blob(repo, digest)
        assert status in (200, 404), f"in-flight blob {digest}: {status}"
        if status == 200:
            assert body == data, f"in-flight blob {digest} is there but its bytes differ"
            ledger.blobs[(repo, digest)] = data

    # Manifests PUT at the kill: nothing, or the manifest together with its tag.
    for repo, put_tag, body in ledger.maybe_manifests:
        digest = sha256(body)
        status, got, _ = await reg.get_manifest(repo, digest)
        assert status in (200, 404), f"in-flight manifest {digest}: {status}"
        if status == 200:
            assert got == body, f"in-flight manifest {digest} differs"
            ledger.manifests[(repo, digest)] = body
        if put_tag is not None and put_tag != "moving":
            tag_status, tag_body, _ = await reg.get_manifest(repo, put_tag)
            assert tag_status == status, (
                f"in-flight PUT {repo}:{put_tag} half done: manifest {status}, tag {tag_status}"
            )
            if status == 200:
                assert tag_body == body
                ledger.tags[(repo, put_tag)] = digest

    # Interrupted uploads: no digest of them visible; sessions at an offset we were told.
    cut_mid_patch = sum(1 for up in ledger.interrupted if up.chunked and up.in_flight)
    for up in ledger.interrupted:
        for digest in {up.data_digest, *up.prefixes}:
            assert await reg.head_blob(up.repo, digest) == 404, f"{digest} visible"
        if up.chunked:
            status, offset = await reg.upload_status(up.location)
            assert status == 204, f"session {up.location} lost after the crash: {status}"
            assert offset in {up.acked, up.acked + up.in_flight}, (
                f"session {up.location} at {offset}, client had {up.acked} acked "
                f"+ {up.in_flight} in flight"
            )
            up.acked, up.in_flight = int(offset or 0), 0
        elif up.location:
            status, offset = await reg.upload_status(up.location)
            assert (status, offset) in {(404, None), (204, 0)}, (status, offset)

    # Tags lists: exactly the tags pushed (in-flight ones are settled above).
    repos = {repo for repo, _ in ledger.tags}
    for repo in repos:
        listed = set(await reg.tags(repo))
        assert listed == {t for r, t in ledger.tags if r == repo}, f"tags of {repo}"

    status, body, _ = await reg.get("/v2/_catalog")
    assert status == 200
    assert repos <= set(json.loads(body)["repositories"])
    return {
        "blobs": len(ledger.blobs),
        "manifests": len(ledger.manifests),
        "tags": len(ledger.tags),
        "interrupted uploads": len(ledger.interrupted),
        "cut mid-PATCH": cut_mid_patch,
        "in-flight manifests": len(ledger.maybe_manifests),
        "in-flight blobs": len(ledger.maybe_blobs),
    }


async def test_sigkill_under_load_loses_nothing_committed(make_server: MakeServer) -> None:
    ledger = Ledger()
    server = make_server(workers=ROUNDS[0][0])
    await server.start()
    for rnd, (_workers, delay) in enumerate(ROUNDS):
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
            base = await commit_phase(Registry(session, server.url), ledger, rnd)
        next_workers = ROUNDS[(rnd + 1) % len(ROUNDS)][0]
        restart_s = await crash_phase(server, ledger, rnd, base, delay, next_workers)
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
            counts = await check_store(Registry(session, server.url), ledger)
        print(f"\nround {rnd}: kill after {delay}s, restart {restart_s:.1f}s, {counts}")
        # What was in flight has been judged; later rounds start from a clean slate.
        ledger.maybe_blobs.clear()
        ledger.maybe_manifests.clear()
        ledger.maybe_tags = {key: set() for key in ledger.maybe_tags}

    # Still a working registry: a whole new push, chunked and monolithic, by tag.
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        reg = Registry(session, server.url)
        image = memory_image(99, (2 * MIB + 1, 10 * KIB), note="after the crashes")
        await reg.push_image("crash/after", "v1", image, chunk=MIB)
        ledger.commit_image("crash/after", "v1", image)
        await check_store(reg, ledger)
    assert await server.stop() == 0, server.log_tail()
