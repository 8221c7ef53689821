"""Issue 9 item 1: once committed, a blob's bytes never change.

A PATCH that stalls past its write lease keeps its file open. Another request continues the
upload, commits it, and only then does the stalled one send the rest of its body. Before the
fix its bytes landed in the committed blob (and every repository deduplicated onto it served
them under the verified digest). See docs/design/uploads.md, "A writer that lost its lease".
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from pathlib import Path
from typing import Any

from moorage.app import create_app
from moorage.config import Settings
from tests.api.helpers import Client, path_of, push_blob, sha256, start_upload, with_query

LEASE = 1  # seconds (uploads.lease)


async def _stalled_patch(client: Client, location: str) -> tuple[Any, Any]:
    """Open a chunked PATCH on a raw socket and send one 100-byte chunk, then stall."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    target = path_of(location)
    lines = [f"PATCH {target} HTTP/1.1", f"Host: {client.server.host}", "Connection: close"]
    auth_header = getattr(client, "auth_header", None)
    if auth_header is not None:
        lines.append(f"Authorization: {await auth_header('PATCH', target)}")
    lines += ["Content-Type: application/octet-stream", "Transfer-Encoding: chunked"]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    writer.write(b"64\r\n" + b"A" * 100 + b"\r\n")
    await writer.drain()
    return reader, writer


async def test_a_stalled_writer_cannot_change_a_committed_blob(
    make_client: Any, tmp_path: Path, settings: Settings
) -> None:
    datadir = tmp_path / "shared-data"
    client: Client = await make_client(datadir=datadir, uploads={"lease": LEASE})
    location = await start_upload(client, "attacker/repo")
    reader, writer = await _stalled_patch(client, location)
    await asyncio.sleep(LEASE * 2.5)  # the stalled PATCH's lease runs out

    data = hashlib.sha256(b"seed").digest() * (1 << 15)  # 1 MiB of D
    digest = sha256(data)
    resp = await client.patch(
        location,
        data=data,
        headers={"Content-Range": f"0-{len(data) - 1}", "Content-Type": "application/octet-stream"},
    )
    assert resp.status == 202, await resp.text()
    resp = await client.put(with_query(resp.headers["Location"], digest=digest))
    assert resp.status == 201, await resp.text()

    # The stalled connection wakes up and finishes its body.
    writer.write(b"1388\r\n" + b"B" * 5000 + b"\r\n0\r\n\r\n")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), timeout=30)
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()

    resp = await client.get(f"/v2/attacker/repo/blobs/{digest}")
    assert resp.status == 200
    assert await resp.read() == data
    status = int(answer.split(b" ", 2)[1])
    assert status in (404, 416), answer[:300]  # refused, not written
    # A victim pushing D elsewhere is deduplicated onto the same file and gets D back.
    assert await push_blob(client, "victim/repo", data) == digest
    resp = await client.get(f"/v2/victim/repo/blobs/{digest}")
    assert await resp.read() == data
    # And after a restart (a new app on the same data directory).
    restarted: Client = await make_client(datadir=datadir, uploads={"lease": LEASE})
    resp = await restarted.get(f"/v2/victim/repo/blobs/{digest}")
    assert await resp.read() == data


async def test_a_final_put_without_body_after_a_stall_detaches_too(make_client: Any) -> None:
    """The take-over need not write: a bodiless PUT commits what the session holds, and the
    stalled writer's late bytes must not reach it either."""
    client: Client = await make_client(uploads={"lease": LEASE})
    location = await start_upload(client, "team/repo")
    reader, writer = await _stalled_patch(client, location)
    await asyncio.sleep(LEASE * 2.5)
    empty = sha256(b"")
    resp = await client.put(with_query(location, digest=empty))
    assert resp.status == 201, await resp.text()
    writer.write(b"1388\r\n" + b"B" * 5000 + b"\r\n0\r\n\r\n")
    await writer.drain()
    await asyncio.wait_for(reader.read(), timeout=30)
    writer.close()
    resp = await client.get(f"/v2/team/repo/blobs/{empty}")
    assert resp.status == 200
    assert await resp.read() == b""


async def test_a_stalled_writer_that_kept_its_lease_goes_on(make_client: Any) -> None:
    """Nobody took the session over: the writer renews its lapsed lease and completes."""
    client: Client = await make_client(uploads={"lease": LEASE})
    location = await start_upload(client, "team/repo")
    reader, writer = await _stalled_patch(client, location)
    await asyncio.sleep(LEASE * 2.5)
    writer.write(b"1388\r\n" + b"B" * 5000 + b"\r\n0\r\n\r\n")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), timeout=30)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 202"), answer[:300]
    blob = b"A" * 100 + b"B" * 5000
    resp = await client.put(with_query(location, digest=sha256(blob)))
    assert resp.status == 201, await resp.text()
    resp = await client.get(f"/v2/team/repo/blobs/{sha256(blob)}")
    assert await resp.read() == blob


def test_settings_default_lease() -> None:
    assert Settings().uploads.lease == 90
    assert create_app  # the app factory reads it (tests above run with a short one)
