"""A real server on a really full disk: a small tmpfs, or a small ext4 that takes the uploads'
direct writes (`storage.directio: 0`, every byte around the page cache), holds its data
directory.

Pushes (v2 monolithic and chunked, a v1 layer) answer 507 STORAGE_FULL, not 500; deletes go
through; a failed upload leaves no partial file and no session row; once space is freed a
push works again. The same with only the metadata database on the full disk.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import random
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from moorage.metadata.reserve import RESERVE_BYTES
from tests.disks import mounted
from tests.harness import MakeServer
from tests.images import memory_image
from tests.process.registry import Registry, sha256
from tests.v1.client import make_image as v1_image

BIG = 5 << 20  # more than the space reserve (moorage.metadata.reserve) frees


@pytest.fixture(params=["tmpfs", "ext4"])
def small_disk(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """A 16 MiB disk of each kind, unmounted at teardown."""
    if request.param == "ext4":
        monkeypatch.setenv("MOORAGE_STORAGE_DIRECTIO", "0")
    with mounted(request.param, tmp_path / "disk", 16) as disk:
        yield disk


def fill(disk: Path) -> None:
    """Write to `disk/filler` until not one more byte fits."""
    with open(disk / "filler", "ab", buffering=0) as f:
        for size in (1 << 20, 4096, 1):
            block = b"\0" * size
            while True:
                try:
                    if not f.write(block):
                        break
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break


def free(disk: Path) -> None:
    (disk / "filler").unlink()


def leave(disk: Path, room: int) -> None:
    """Fill `disk`, then free `room` bytes: a body larger than that runs out in mid-way."""
    fill(disk)
    filler = disk / "filler"
    os.truncate(filler, filler.stat().st_size - room)


def uploads_left(datadir: Path, blob_root: Path) -> tuple[int, list[str]]:
    """Session rows in the database, and files below the uploads folder."""
    with sqlite3.connect(f"file:{datadir / 'metadata.db'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT count(*) FROM uploads").fetchone()[0]
    files = [str(p) for p in (blob_root / "uploads").rglob("*") if p.is_file()]
    return rows, files


async def assert_full(resp: aiohttp.ClientResponse, v1: bool = False) -> None:
    body = await resp.text()
    assert resp.status == 507, f"{resp.method} {resp.url.path}: {resp.status} {body}"
    message = "storage full: the registry has no space left"
    if v1:
        assert json.loads(body) == {"error": message}
    else:
        assert json.loads(body)["errors"][0] == {"code": "STORAGE_FULL", "message": message}


async def pushes_are_refused(http: aiohttp.ClientSession, base: str, disk: Path) -> None:
    """Each kind of push on the full disk answers 507 STORAGE_FULL."""
    data = random.Random(7).randbytes(BIG)
    fill(disk)
    url = f"{base}/v2/full/blobs/uploads/?digest={sha256(data)}"
    async with http.post(url, data=data) as resp:
        await assert_full(resp)

    fill(disk)
    async with http.post(f"{base}/v2/full/blobs/uploads/") as resp:
        if resp.status == 202:
            location = resp.headers["Location"]
            headers = {"Content-Range": f"0-{BIG - 1}"}
            async with http.patch(f"{base}{location}", data=data, headers=headers) as patched:
                await assert_full(patched)
            # The session is still there (at offset 0) for the client to retry or cancel.
            async with http.get(f"{base}{location}") as status:
                assert status.status == 204
                assert status.headers["Range"] == "0-0"
            async with http.delete(f"{base}{location}") as cancelled:
                assert cancelled.status == 204
        else:  # the database itself had no room for the session
            await assert_full(resp)

    fill(disk)
    image = v1_image(files={"file": random.Random(1).randbytes(BIG)}, compress=False)
    async with http.put(f"{base}/v1/images/{image.id}/json", data=image.json) as resp:
        if resp.status != 200:
            await assert_full(resp, v1=True)
            return
    async with http.put(f"{base}/v1/images/{image.id}/layer", data=image.layer) as resp:
        await assert_full(resp, v1=True)


async def _streamed(data: bytes) -> AsyncIterator[bytes]:
    """`data` as a chunked body (as Docker sends a layer) whose start arrives alone: the
    server takes the rest from the socket (moorage/api/direct.py, `ChunkedBody`)."""
    yield data[:65536]
    await asyncio.sleep(0.3)
    for at in range(65536, len(data), 256 << 10):
        yield data[at : at + (256 << 10)]


async def test_full_disk_refuses_chunked_pushes_taken_over(
    make_server: MakeServer, small_disk: Path, http: aiohttp.ClientSession
) -> None:
    """A streamed PATCH and a streamed v1 layer, taken from the socket by a worker thread,
    that run out of room half-way: 507 in the protocol's format, no partial file, the session
    where it was; once space is freed the same pushes go through."""
    server = make_server()
    server.data_dir = small_disk / "data"
    blob_root = server.data_dir / "storage"
    await server.start()
    data = random.Random(11).randbytes(BIG)
    async with http.post(f"{server.url}/v2/streamed/blobs/uploads/") as resp:
        assert resp.status == 202, await resp.text()
        location = resp.headers["Location"]
    leave(small_disk, 1 << 20)
    async with http.patch(f"{server.url}{location}", data=_streamed(data)) as resp:
        await assert_full(resp)
        assert resp.headers.get("Connection", "").lower() == "close"  # it was taken over
    async with http.get(f"{server.url}{location}") as status:
        assert status.status == 204
        assert status.headers["Range"] == "0-0"
    assert not [
        p for p in (blob_root / "uploads").rglob("*") if p.is_file() and p.stat().st_size
    ], "a partial upload file was left"

    image = v1_image(files={"file": random.Random(12).randbytes(BIG)}, compress=False)
    free(small_disk)
    async with http.put(f"{server.url}/v1/images/{image.id}/json", data=image.json) as resp:
        assert resp.status == 200, await resp.text()
    leave(small_disk, 1 << 20)
    async with http.put(
        f"{server.url}/v1/images/{image.id}/layer", data=_streamed(image.layer)
    ) as resp:
        await assert_full(resp, v1=True)
        assert resp.headers.get("Connection", "").lower() == "close"

    free(small_disk)
    async with http.patch(f"{server.url}{location}", data=_streamed(data)) as resp:
        assert resp.status == 202, await resp.text()
        location = resp.headers["Location"]
    digest = sha256(data)
    async with http.put(f"{server.url}{location}", params={"digest": digest}) as resp:
        assert resp.status == 201, await resp.text()
    await Registry(http, server.url).assert_blob("streamed", digest, data)
    async with http.put(
        f"{server.url}/v1/images/{image.id}/layer", data=_streamed(image.layer)
    ) as resp:
        assert resp.status == 200, await resp.text()
    assert uploads_left(server.data_dir, blob_root) == (0, [])


async def test_full_disk_refuses_pushes_and_allows_deletes(
    make_server: MakeServer, small_disk: Path, http: aiohttp.ClientSession
) -> None:
    server = make_server()
    server.data_dir = small_disk / "data"
    blob_root = server.data_dir / "storage"
    await server.start()
    registry = Registry(http, server.url)
    image = memory_image(1, (1000,))
    await registry.push_image("kept", "v1", image)

    await pushes_are_refused(http, server.url, small_disk)

    fill(small_disk)
    async with http.delete(f"{server.url}/v2/kept/manifests/{image.digest}") as resp:
        assert resp.status == 202, await resp.text()
    async with http.delete(f"{server.url}/v2/kept/blobs/{sha256(image.layers[0])}") as resp:
        assert resp.status == 202, await resp.text()
    assert uploads_left(server.data_dir, blob_root) == (0, [])

    free(small_disk)
    again = memory_image(2, (BIG,))
    await registry.push_image("kept", "v2", again)
    await registry.assert_blob("kept", sha256(again.layers[0]), again.layers[0])
    assert uploads_left(server.data_dir, blob_root) == (0, [])


async def test_full_metadata_disk_refuses_pushes_and_allows_deletes(
    make_server: MakeServer,
    small_disk: Path,
    tmp_path: Path,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Blobs on a roomy disk, the database on the full one."""
    blob_root = tmp_path / "blobs"
    monkeypatch.setenv("MOORAGE_STORAGE_ROOTDIRECTORY", str(blob_root))
    server = make_server()
    server.data_dir = small_disk / "data"
    await server.start()
    registry = Registry(http, server.url)
    image, other = memory_image(3, (1000,)), memory_image(4, (1000,))
    await registry.push_image("kept", "v1", image)
    await registry.push_image("kept", "other", other)

    fill(small_disk)
    async with http.delete(f"{server.url}/v2/kept/manifests/{image.digest}") as resp:
        assert resp.status == 202, await resp.text()
    async with http.delete(f"{server.url}/v2/kept/blobs/{sha256(other.layers[0])}") as resp:
        assert resp.status == 202, await resp.text()

    fill(small_disk)
    async with http.post(f"{server.url}/v2/other/blobs/uploads/") as resp:
        await assert_full(resp)
    async with http.put(
        f"{server.url}/v2/kept/manifests/v2",
        data=image.manifest,
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    ) as resp:
        await assert_full(resp)
    assert uploads_left(server.data_dir, blob_root) == (0, [])

    free(small_disk)
    await registry.push_image("kept", "v2", image)
    await registry.assert_manifest("kept", "v2", image.manifest)
    assert uploads_left(server.data_dir, blob_root) == (0, [])
    # With room again, the reserve that the deletes used is made again.
    assert (server.data_dir / "metadata.db-reserve").stat().st_size == RESERVE_BYTES
