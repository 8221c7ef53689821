"""Request bodies read through aiohttp's parser within the worker's memory budget
(moorage/api/http.py, `Arriving`; issue 14, item 4).

Bodies of a known small length are read in small pieces, each taken only with one of the
worker's shares (`http.SHARES`) until it has been hashed and written; streamed ones in large
pieces while the worker reads few such, in medium ones beyond. Whatever the size, every byte
is hashed and stored in order, and a body stops counting once it has been read, refused, or
dropped by its client; a client that stalls holds no share.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from moorage.api import direct, http
from tests.api.helpers import Client, path_of, request_head, sha256, start_upload, with_query
from tests.shares import CountedShares

OCTET = {"Content-Type": "application/octet-stream"}
PIECE = 48 << 10
PIECES = 24  # 1.1 MiB: several large blocks, many small ones
BODIES = http.LARGE_BODIES + 3  # streamed: unknown length, large or medium pieces
MEDIUM_BODIES = 8  # streamed beside LARGE_BODIES others: within the shares


def _piece(seed: int, i: int) -> bytes:
    return hashlib.sha256(f"{seed}/{i}".encode()).digest() * (PIECE // 32)


async def _until(condition: object, what: str) -> None:
    for _ in range(400):
        if callable(condition) and condition():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"timed out waiting until {what}")


async def test_bodies_beyond_the_large_ones_are_read_small_and_stored_whole(
    client: Client,
) -> None:
    assert http.READING.bodies == 0
    halfway = [asyncio.Event() for _ in range(BODIES)]
    go_on = asyncio.Event()

    def body(seed: int) -> AsyncIterator[bytes]:
        async def gen() -> AsyncIterator[bytes]:
            for i in range(PIECES):
                if i == PIECES // 2:
                    halfway[seed].set()
                    await go_on.wait()
                yield _piece(seed, i)

        return gen()

    async def upload(seed: int) -> tuple[str, str]:
        repo = f"budget/r{seed}"
        location = await start_upload(client, repo)
        data = b"".join(_piece(seed, i) for i in range(PIECES))
        resp = await client.patch(location, data=body(seed), headers=OCTET)
        assert resp.status == 202, await resp.text()
        assert resp.headers["Range"] == f"0-{len(data) - 1}"
        digest = sha256(data)
        done = await client.put(with_query(resp.headers["Location"], digest=digest))
        assert done.status == 201, await done.text()
        return repo, digest

    tasks = [asyncio.create_task(upload(seed)) for seed in range(BODIES)]
    try:
        for event in halfway:
            await asyncio.wait_for(event.wait(), 10)
        # Every body is being read at once: the worker counts each one, and gave large pieces
        # to as many as it may.
        await _until(lambda: http.READING.bodies == BODIES, f"{BODIES} bodies are read")
        assert http.READING.large == http.LARGE_BODIES
        # A body of known small length meanwhile: small pieces, not counted among the large.
        small = b"".join(_piece(99, i) for i in range(4))
        location = await start_upload(client, "budget/small")
        resp = await client.put(with_query(location, digest=sha256(small)), data=small)
        assert resp.status == 201, await resp.text()
        assert http.READING.large == http.LARGE_BODIES
        go_on.set()
        results = await asyncio.wait_for(asyncio.gather(*tasks), 60)
    finally:
        go_on.set()
        for task in tasks:
            task.cancel()
    for seed, (repo, digest) in enumerate(results):
        resp = await client.get(f"/v2/{repo}/blobs/{digest}")
        assert resp.status == 200
        assert await resp.read() == b"".join(_piece(seed, i) for i in range(PIECES))
    await _until(lambda: http.READING.bodies == 0, "every body is given back")
    assert http.READING.large == 0


async def test_a_body_cut_short_by_its_client_is_given_back(client: Client) -> None:
    assert http.READING.bodies == 0
    location = await start_upload(client, "budget/cut")
    sent = asyncio.Event()

    async def gen() -> AsyncIterator[bytes]:
        yield _piece(0, 0)
        sent.set()
        await asyncio.sleep(3600)
        yield b""

    patch = asyncio.create_task(client.patch(location, data=gen(), headers=OCTET))
    await asyncio.wait_for(sent.wait(), 10)
    await _until(lambda: http.READING.bodies == 1, "the body is being read")
    patch.cancel()  # the client goes away in the middle of its body
    with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
        await patch
    await _until(lambda: http.READING.bodies == 0, "the cut body is given back")
    # Nothing of it was kept: the session still starts at 0.
    resp = await client.get(location)
    assert resp.status == 204
    assert resp.headers["Range"] == "0-0"


async def test_a_body_refused_unread_is_given_back(client: Client) -> None:
    location = await start_upload(client, "budget/refused")
    # A PATCH that does not continue where the session is: its body is made ready to read
    # (uploads.patch), then refused by the range check before a byte is read.
    resp = await client.patch(
        location,
        data=b"x" * 1000,
        headers={**OCTET, "Content-Range": "5000-5999"},
    )
    assert resp.status == 416, await resp.text()
    await _until(lambda: http.READING.bodies == 0, "the refused body is given back")


@pytest.fixture
def shares(monkeypatch: pytest.MonkeyPatch) -> Iterator[CountedShares]:
    counted = CountedShares(2)
    monkeypatch.setattr(http, "SHARES", counted)
    yield counted
    assert counted.held == 0, "every share is given back"
    assert not counted.wanted()


SMALL_BODIES = 12
SMALL_SIZE = 300 << 10  # a few pieces each, well under http.SMALL_BODY


async def test_small_bodies_at_once_hold_no_more_than_the_shares(
    client: Client, shares: CountedShares
) -> None:
    async def upload(seed: int) -> tuple[str, str, bytes]:
        repo = f"shares/r{seed}"
        data = b"".join(_piece(seed, i) for i in range(SMALL_SIZE // PIECE))
        location = await start_upload(client, repo)
        # Content-Length is known: a small body, taken within the shares.
        resp = await client.patch(location, data=data, headers=OCTET)
        assert resp.status == 202, await resp.text()
        assert resp.headers["Range"] == f"0-{len(data) - 1}"
        digest = sha256(data)
        done = await client.put(with_query(resp.headers["Location"], digest=digest))
        assert done.status == 201, await done.text()
        return repo, digest, data

    results = await asyncio.wait_for(
        asyncio.gather(*(upload(seed) for seed in range(SMALL_BODIES))), 60
    )
    assert shares.most == shares.count  # all were in use at once...
    assert shares.waited > 0  # ...and bodies waited for them
    for repo, digest, data in results:
        resp = await client.get(f"/v2/{repo}/blobs/{digest}")
        assert resp.status == 200
        assert await resp.read() == data
    await _until(lambda: http.READING.bodies == 0, "every body is given back")


async def _stalled_patch(client: Client, location: str, length: int) -> asyncio.StreamWriter:
    """A PATCH announcing `length` bytes whose client sends one piece, then nothing more."""
    head = await request_head(
        client, "PATCH", path_of(location), {"Content-Length": str(length), **OCTET}
    )
    _reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(head + _piece(7, 0))
    await writer.drain()
    return writer


async def test_clients_that_stall_mid_body_hold_no_share(
    client: Client, shares: CountedShares
) -> None:
    stalled = [
        await _stalled_patch(client, await start_upload(client, f"shares/stall{i}"), 1 << 20)
        for i in range(shares.count + 1)
    ]
    try:
        await _until(lambda: http.READING.bodies == len(stalled), "the stalled bodies are read")
        # Each took its first piece, then waits for its client without a share.
        await _until(lambda: shares.held == 0, "the stalled bodies give their shares back")
        # So another upload of a small body goes through, whole.
        data = b"".join(_piece(8, i) for i in range(SMALL_SIZE // PIECE))
        location = await start_upload(client, "shares/after")
        resp = await asyncio.wait_for(client.patch(location, data=data, headers=OCTET), 30)
        assert resp.status == 202, await resp.text()
        digest = sha256(data)
        done = await client.put(with_query(resp.headers["Location"], digest=digest))
        assert done.status == 201, await done.text()
        resp = await client.get(f"/v2/shares/after/blobs/{digest}")
        assert await resp.read() == data
        assert http.READING.bodies == len(stalled)
    finally:
        for writer in stalled:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
    await _until(lambda: http.READING.bodies == 0, "the cut bodies are given back")


async def test_streamed_bodies_beyond_the_large_ones_are_read_within_the_shares(
    client: Client, shares: CountedShares, monkeypatch: pytest.MonkeyPatch
) -> None:
    # All through aiohttp's parser: none is taken over from the socket by a thread.
    monkeypatch.setattr(direct, "MAX_DRAINING_CHUNKED", 0)
    go_on = asyncio.Event()
    started = [asyncio.Event() for _ in range(http.LARGE_BODIES)]
    stalled = asyncio.Event()

    def body(
        seed: int, hold: asyncio.Event | None, mark: asyncio.Event | None
    ) -> AsyncIterator[bytes]:
        async def gen() -> AsyncIterator[bytes]:
            for i in range(PIECES):
                if i == PIECES // 2 and mark is not None:
                    mark.set()
                    assert hold is not None
                    await hold.wait()
                yield _piece(seed, i)

        return gen()

    async def upload(
        seed: int, hold: asyncio.Event | None, mark: asyncio.Event | None
    ) -> tuple[str, str]:
        repo = f"paced/r{seed}"
        location = await start_upload(client, repo)
        resp = await client.patch(location, data=body(seed, hold, mark), headers=OCTET)
        assert resp.status == 202, await resp.text()
        data = b"".join(_piece(seed, i) for i in range(PIECES))
        assert resp.headers["Range"] == f"0-{len(data) - 1}"
        digest = sha256(data)
        done = await client.put(with_query(resp.headers["Location"], digest=digest))
        assert done.status == 201, await done.text()
        return repo, digest

    # The worker's large bodies, halfway through theirs: they take no share.
    large = [asyncio.create_task(upload(i, go_on, started[i])) for i in range(http.LARGE_BODIES)]
    medium: list[asyncio.Task[tuple[str, str]]] = []
    try:
        for event in started:
            await asyncio.wait_for(event.wait(), 10)
        await _until(lambda: http.READING.large == http.LARGE_BODIES, "the large bodies are read")
        assert shares.most == 0
        # A medium body whose client stalls halfway holds no share while it waits...
        medium.append(asyncio.create_task(upload(100, go_on, stalled)))
        await asyncio.wait_for(stalled.wait(), 10)
        # ...and medium bodies sent at once take their pieces within the shares, all stored whole.
        medium += [asyncio.create_task(upload(101 + i, None, None)) for i in range(MEDIUM_BODIES)]
        await asyncio.wait_for(asyncio.gather(*medium[1:]), 60)
        assert shares.most == shares.count
        assert shares.waited > 0
        await _until(lambda: shares.held == 0, "the stalled body holds no share")
        go_on.set()
        results = await asyncio.wait_for(asyncio.gather(*large, *medium), 60)
    finally:
        go_on.set()
        for task in (*large, *medium):
            task.cancel()
    seeds = [*range(http.LARGE_BODIES), 100, *range(101, 101 + MEDIUM_BODIES)]
    for seed, (repo, digest) in zip(seeds, results, strict=True):
        resp = await client.get(f"/v2/{repo}/blobs/{digest}")
        assert resp.status == 200
        assert await resp.read() == b"".join(_piece(seed, i) for i in range(PIECES))
    await _until(lambda: http.READING.bodies == 0, "every body is given back")


async def test_a_share_handed_to_a_cancelled_waiter_passes_on() -> None:
    shares = http.Shares(1)
    await shares.take()
    first = asyncio.create_task(shares.take())
    second = asyncio.create_task(shares.take())
    await asyncio.sleep(0)
    assert shares.wanted()
    shares.give()  # handed to the first waiter...
    first.cancel()  # ...which is cancelled before it runs: the share goes to the second
    with contextlib.suppress(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 5)
    assert shares.held == 1 and not shares.wanted()
    third = asyncio.create_task(shares.take())
    await asyncio.sleep(0)
    third.cancel()  # a waiter cancelled while it waits leaves the queue
    with contextlib.suppress(asyncio.CancelledError):
        await third
    assert not shares.wanted()
    shares.give()
    assert shares.held == 0
