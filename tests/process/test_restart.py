"""An upload session outlives the server process: it continues after a restart.

Sessions live in metadata + storage (docs/contracts/oci-distribution.md §6.1), so a chunked upload
started before a restart -- graceful (SIGTERM) or not (SIGKILL) -- resumes on the same
Location, reports the right Range, and closes with the right bytes.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.harness import MakeServer
from tests.process.registry import Registry, range_end, sha256

pytestmark = pytest.mark.timeout(120)

CHUNK_1 = 3 * (1 << 20) + 17  # crosses the server's 1 MiB write blocks, odd on purpose
CHUNK_2 = (1 << 20) + 5
RESUME_BOUND = 10.0  # seconds a resumed upload may keep getting 416 after a crash


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
async def test_chunked_upload_continues_after_restart(
    make_server: MakeServer, http: aiohttp.ClientSession, stop: str
) -> None:
    server = make_server()
    await server.start()
    reg = Registry(http, server.url)
    data = random.Random(7).randbytes(CHUNK_1 + CHUNK_2)
    digest = sha256(data)

    location = await reg.start_upload("restart/app")
    location = await reg.patch(location, data[:CHUNK_1], 0)
    status, offset = await reg.upload_status(location)
    assert (status, offset) == (204, CHUNK_1)

    if stop == "sigterm":
        assert await server.stop() == 0, server.log_tail()
    else:
        await server.kill()
    await server.start()

    # A fresh session: the old one's pooled connections died with the old process.
    async with aiohttp.ClientSession(timeout=http.timeout) as session:
        reg = Registry(session, server.url)
        async with session.get(reg.url(location)) as resp:
            assert resp.status == 204, await resp.text()
            assert resp.headers.get("Range") == f"0-{CHUNK_1 - 1}"
            assert range_end(resp.headers.get("Range")) == CHUNK_1
            assert resp.headers.get("Docker-Upload-UUID") == location.rstrip("/").split("/")[-1]
        assert await reg.head_blob("restart/app", digest) == 404

        location = await reg.patch(location, data[CHUNK_1:], CHUNK_1)
        assert await reg.upload_status(location) == (204, len(data))
        await reg.finish(location, digest)

        await reg.assert_blob("restart/app", digest, data)
        status, headers = await reg.head(f"/v2/restart/app/blobs/{digest}")
        assert status == 200 and headers.get("Content-Length") == str(len(data))
        assert (await reg.upload_status(location))[0] == 404  # the session is over
    assert await server.stop() == 0, server.log_tail()


async def test_out_of_order_chunk_after_restart_is_416_and_session_survives(
    make_server: MakeServer, http: aiohttp.ClientSession
) -> None:
    """After a restart the server still knows the offset: a chunk at the wrong offset is 416
    with the right Range, and the upload then completes from that offset."""
    server = make_server()
    await server.start()
    reg = Registry(http, server.url)
    data = random.Random(8).randbytes(600_000)
    location = await reg.start_upload("restart/other")
    location = await reg.patch(location, data[:250_000], 0)
    await server.kill()

    await server.start()
    async with aiohttp.ClientSession(timeout=http.timeout) as session:
        reg = Registry(session, server.url)
        headers = {"Content-Range": "300000-349999"}
        async with session.patch(
            reg.url(location), data=data[300_000:350_000], headers=headers
        ) as resp:
            assert resp.status == 416, await resp.text()
            assert resp.headers.get("Range") == "0-249999"
        assert await reg.upload_status(location) == (204, 250_000)
        location = await reg.patch(location, data[250_000:], 250_000)
        await reg.finish(location, sha256(data))
        await reg.assert_blob("restart/other", sha256(data), data)
    assert await server.stop() == 0, server.log_tail()


async def test_upload_resumes_after_a_crash_in_the_middle_of_a_patch(
    make_server: MakeServer, http: aiohttp.ClientSession
) -> None:
    """SIGKILL while a PATCH body is streaming: after the restart the status names the last
    acknowledged offset, and a PATCH from exactly that offset is accepted (the dead process's
    claim on the session must not outlive it). 416s are retried for RESUME_BOUND seconds."""
    server = make_server()
    await server.start()
    reg = Registry(http, server.url)
    data = random.Random(9).randbytes(2 * (1 << 20))
    half = len(data) // 2
    location = await reg.start_upload("restart/crashed")
    location = await reg.patch(location, data[:half], 0)
    sending = asyncio.Event()

    async def slow_second_half() -> AsyncIterator[bytes]:
        for start in range(half, len(data), 64 * 1024):
            yield data[start : start + 64 * 1024]
            sending.set()
            await asyncio.sleep(0.05)

    headers = {"Content-Range": f"{half}-{len(data) - 1}"}
    in_flight = asyncio.create_task(
        http.patch(reg.url(location), data=slow_second_half(), headers=headers)
    )
    await asyncio.wait_for(sending.wait(), 30)
    await asyncio.sleep(0.3)
    await server.kill()
    assert isinstance(
        (await asyncio.gather(in_flight, return_exceptions=True))[0], aiohttp.ClientError
    )

    await server.start()
    async with aiohttp.ClientSession(timeout=http.timeout) as session:
        reg = Registry(session, server.url)
        assert await reg.upload_status(location) == (204, half)
        assert await reg.head_blob("restart/crashed", sha256(data)) == 404
        deadline = time.monotonic() + RESUME_BOUND
        while True:
            headers = {"Content-Range": f"{half}-{len(data) - 1}"}
            async with session.patch(reg.url(location), data=data[half:], headers=headers) as r:
                status, answer = r.status, (r.headers.get("Range"), await r.text())
                if status == 202:
                    location = r.headers["Location"]
                    break
            assert status == 416 and time.monotonic() < deadline, (
                f"PATCH {half}- after the restart: {status} {answer} for {RESUME_BOUND}s, "
                f"although GET on the session said Range 0-{half - 1}"
            )
            await asyncio.sleep(0.5)
        await reg.finish(location, sha256(data))
        await reg.assert_blob("restart/crashed", sha256(data), data)
    assert await server.stop() == 0, server.log_tail()
