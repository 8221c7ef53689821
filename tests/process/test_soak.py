"""A bounded soak (issue 9, "done when"): mixed v1 and v2 pushes and pulls against a real
two-worker server while idle, slow, stalling and vanishing clients hold connections open.

Well-behaved clients must see no 5xx and no hang (every request is bounded by the client's
timeout), and at the end every push the server acknowledged is pulled back and compared byte
for byte, through the protocol it was pushed with. `MOORAGE_SOAK_SECONDS` sets how long the
load runs (default 60).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from yarl import URL

from tests.harness import MakeServer, MoorageProcess
from tests.images import MemoryImage, memory_image
from tests.process.registry import Registry, sha256
from tests.v1.client import RemoteHttp, V1Client, V1Image, make_chain

SOAK_SECONDS = float(os.environ.get("MOORAGE_SOAK_SECONDS", "60"))
pytestmark = pytest.mark.timeout(SOAK_SECONDS + 240)

# The server's connection timeouts for this test: short, so that the test sees them act.
TIMEOUTS = {
    "MOORAGE_HTTP_IDLETIMEOUT": "5",
    "MOORAGE_HTTP_HEADERTIMEOUT": "5",
    "MOORAGE_HTTP_BODYTIMEOUT": "5",
}
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=60, connect=10, sock_read=30)
IDLE_CONNECTIONS = 200
SLOW_CONNECTIONS = 50


@dataclass
class Tally:
    """What the well-behaved clients saw."""

    ops: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    v2: list[tuple[str, str, MemoryImage]] = field(default_factory=list)
    v1: list[tuple[str, list[V1Image]]] = field(default_factory=list)


def _raw_connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setblocking(False)
    return sock


async def _loop(deadline: float, tally: Tally, name: str, step: Callable[[int], Awaitable[None]]):
    i = 0
    while time.monotonic() < deadline:
        try:
            await step(i)
            tally.ops[name] += 1
        except (AssertionError, aiohttp.ClientError, TimeoutError) as exc:
            tally.failures.append(f"{name} #{i}: {type(exc).__name__}: {exc}"[:500])
        i += 1


async def _v2_pusher(reg: Registry, tally: Tally, worker: int, i: int) -> None:
    rng = random.Random(worker * 100_000 + i)
    image = memory_image(rng.randrange(1 << 30), (rng.randrange(1, 300_000), 70_000))
    repo, tag = f"soak/v2-{worker}", f"t{i}"
    await reg.push_image(repo, tag, image, chunk=rng.choice((0, 64 * 1024)))
    tally.v2.append((repo, tag, image))


async def _v2_check(reg: Registry, repo: str, tag: str, image: MemoryImage) -> None:
    status, body, _ = await reg.get_manifest(repo, tag)
    assert status == 200, f"GET manifest {repo}:{tag}: {status}"
    assert body == image.manifest, f"{repo}:{tag}: other manifest bytes"
    for blob in image.blobs:
        status, data, _ = await reg.get_blob(repo, sha256(blob))
        assert status == 200, f"GET blob {repo}: {status}"
        assert data == blob, f"{repo}: blob {sha256(blob)} has other bytes"


async def _v1_pusher(client: V1Client, tally: Tally, i: int) -> None:
    chain = make_chain(2)
    name = f"soak/v1-{i}"
    await client.push(name, chain, tags={chain[-1].id: ["latest"]})
    tally.v1.append((name, chain))


async def _v1_check(client: V1Client, name: str, chain: list[V1Image]) -> None:
    pulled = await client.pull(name, "latest", resume=False)
    assert pulled.tags.get("latest") == chain[-1].id, f"{name}: tags {pulled.tags}"
    for image in chain:
        got = pulled.images.get(image.id)
        assert got is not None, f"{name}: image {image.id[:12]} not pulled"
        assert got.layer == image.layer, f"{name}: layer {image.id[:12]} has other bytes"


async def _idle_holders(port: int, deadline: float) -> int:
    """Keep IDLE_CONNECTIONS connections open that never send a byte (the server closes them
    after its idle timeout; they are opened again)."""
    opened = 0
    held: list[socket.socket] = []
    try:
        while time.monotonic() < deadline:
            held = [s for s in held if s.fileno() != -1]
            while len(held) < IDLE_CONNECTIONS:
                try:
                    held.append(await asyncio.to_thread(_raw_connect, port))
                    opened += 1
                except OSError:
                    break
            await asyncio.sleep(1)
            for sock in list(held):  # drop the ones the server has closed
                try:
                    if sock.recv(1) == b"":
                        sock.close()
                        held.remove(sock)
                except BlockingIOError:
                    pass
                except OSError:
                    sock.close()
                    held.remove(sock)
    finally:
        for sock in held:
            sock.close()
    return opened


async def _slowloris(port: int, deadline: float) -> None:
    """Request heads sent a byte a second, never finished."""
    head = b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 10_000
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(1)
            continue
        try:
            for byte in head:
                if time.monotonic() > deadline or reader.at_eof():
                    break
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(1)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()


async def _vanisher(reg: Registry, port: int, deadline: float, stall: bool) -> int:
    """Start blob uploads and send half the promised body, then either hang up (vanish) or
    keep the connection open without sending more (stall, until the server gives up)."""
    count = 0
    while time.monotonic() < deadline:
        try:
            location = await reg.start_upload("soak/vanish")
        except (AssertionError, aiohttp.ClientError, TimeoutError):
            await asyncio.sleep(0.5)
            continue
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            continue
        try:
            head = (
                f"PATCH {URL(location).path_qs} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Content-Type: application/octet-stream\r\nContent-Length: 1048576\r\n\r\n"
            )
            writer.write(head.encode() + b"v" * 100_000)
            await writer.drain()
            if stall:
                with contextlib.suppress(TimeoutError, ConnectionError):
                    await asyncio.wait_for(
                        reader.read(), timeout=max(0.1, deadline - time.monotonic())
                    )
            else:
                await asyncio.sleep(0.2)
            count += 1
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
    return count


async def test_soak_mixed_load_with_hostile_clients(make_server: MakeServer) -> None:
    server: MoorageProcess = make_server(workers=2, env=TIMEOUTS)
    await server.start()
    tally = Tally()
    deadline = time.monotonic() + SOAK_SECONDS
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        reg = Registry(session, server.url)
        v1 = V1Client(RemoteHttp(session, server.url))

        async def v2_pull(i: int) -> None:
            if not tally.v2:
                await asyncio.sleep(0.2)
                return
            await _v2_check(reg, *random.Random(i).choice(tally.v2))

        async def v1_pull(i: int) -> None:
            if not tally.v1:
                await asyncio.sleep(0.2)
                return
            await _v1_check(v1, *random.Random(i).choice(tally.v1))

        hostile = [
            asyncio.create_task(_idle_holders(server.port, deadline)),
            *(
                asyncio.create_task(_slowloris(server.port, deadline))
                for _ in range(SLOW_CONNECTIONS)
            ),
            asyncio.create_task(_vanisher(reg, server.port, deadline, stall=False)),
            asyncio.create_task(_vanisher(reg, server.port, deadline, stall=True)),
            asyncio.create_task(_vanisher(reg, server.port, deadline, stall=True)),
        ]
        polite = [
            *(
                _loop(deadline, tally, "v2 push", lambda i, w=w: _v2_pusher(reg, tally, w, i))
                for w in range(3)
            ),
            _loop(deadline, tally, "v2 pull", v2_pull),
            _loop(deadline, tally, "v2 pull", v2_pull),
            _loop(deadline, tally, "v1 push", lambda i: _v1_pusher(v1, tally, i)),
            _loop(deadline, tally, "v1 pull", v1_pull),
        ]
        await asyncio.gather(*polite)
        idle_opened, *_ = await asyncio.gather(*hostile)

        print(
            f"\nsoak {SOAK_SECONDS:.0f}s: {dict(tally.ops)}; idle connections opened {idle_opened}"
        )
        assert not tally.failures, "\n".join(tally.failures[:20])
        assert tally.ops["v2 push"] >= 3 and tally.ops["v1 push"] >= 1, tally.ops
        assert tally.ops["v2 pull"] >= 1 and tally.ops["v1 pull"] >= 1, tally.ops
        # The idle holders were closed by the server and had to open new connections.
        assert idle_opened > IDLE_CONNECTIONS, idle_opened

        # Every acknowledged push, whole, through the protocol it was pushed with.
        for repo, tag, image in tally.v2:
            await _v2_check(reg, repo, tag, image)
        for name, chain in tally.v1:
            await _v1_check(v1, name, chain)

    log = server.log_path.read_text(errors="replace")
    assert "Traceback" not in log, server.log_tail(80)
    # Hostile clients must not flood the log: everything but the access log (one line per
    # request, by design) stays small.
    other = [line for line in log.splitlines() if " moorage.access " not in line]
    assert sum(len(line) + 1 for line in other) < 5 << 20, "the log grew past 5 MiB"
    assert await server.stop() == 0, server.log_tail()
