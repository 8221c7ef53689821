"""A small /v2/ client for the process-level tests (aiohttp, no other HTTP library).

It speaks the push and pull flows of docs/contracts/oci-distribution.md sections 6 and 7 and
asserts the status of every step, so a test reads as the flow it drives. Upload URLs are always
taken from the latest `Location` and resolved against the server URL; `digest` is added as a
query parameter, never concatenated.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterable, Mapping

import aiohttp
from yarl import URL

from tests.images import MemoryImage

# Bounds for every client request: a hung server fails the test instead of hanging it.
TIMEOUT = aiohttp.ClientTimeout(total=None, connect=10, sock_connect=10, sock_read=60)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ACCEPT = ",".join(
    [
        OCI_MANIFEST,
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)

Body = bytes | AsyncIterable[bytes]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def range_end(header: str | None) -> int:
    """The upload offset a `Range: 0-<last>` header announces ("0-0" = empty session)."""
    assert header is not None, "upload response without a Range header"
    first, sep, last = header.partition("-")
    assert sep and first == "0" and last.isdigit(), f"bad Range header {header!r}"
    return 0 if last == "0" else int(last) + 1


class Registry:
    """The /v2/ API of one server, over one aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = URL(base)

    def url(self, location: str) -> URL:
        return self.base.join(URL(location))

    # -- uploads -------------------------------------------------------------------------

    async def start_upload(self, repo: str) -> str:
        async with self.session.post(self.url(f"/v2/{repo}/blobs/uploads/")) as resp:
            assert resp.status == 202, f"POST upload: {resp.status} {await resp.text()}"
            assert range_end(resp.headers.get("Range")) == 0
            return resp.headers["Location"]

    async def patch(self, location: str, data: bytes, start: int) -> str:
        """PATCH one chunk with Content-Range; returns the new Location."""
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{start}-{start + len(data) - 1}",
        }
        async with self.session.patch(self.url(location), data=data, headers=headers) as resp:
            assert resp.status == 202, f"PATCH {start}: {resp.status} {await resp.text()}"
            assert range_end(resp.headers.get("Range")) == start + len(data)
            return resp.headers["Location"]

    async def patch_stream(self, location: str, body: AsyncIterable[bytes]) -> tuple[str, int]:
        """Streamed PATCH: no Content-Range, chunked transfer-encoding."""
        headers = {"Content-Type": "application/octet-stream"}
        async with self.session.patch(self.url(location), data=body, headers=headers) as resp:
            assert resp.status == 202, f"streamed PATCH: {resp.status} {await resp.text()}"
            return resp.headers["Location"], range_end(resp.headers.get("Range"))

    async def finish(self, location: str, digest: str, body: Body = b"") -> str:
        """PUT <loc>?digest=...; asserts 201 and returns Docker-Content-Digest."""
        url = self.url(location).extend_query(digest=digest)
        headers = {"Content-Type": "application/octet-stream"}
        async with self.session.put(url, data=body, headers=headers) as resp:
            assert resp.status == 201, f"PUT upload: {resp.status} {await resp.text()}"
            assert resp.headers.get("Docker-Content-Digest") == digest
            return digest

    async def upload_status(self, location: str) -> tuple[int, int | None]:
        """GET <loc>: (status, offset from Range or None)."""
        async with self.session.get(self.url(location)) as resp:
            await resp.read()
            if resp.status != 204:
                return resp.status, None
            return resp.status, range_end(resp.headers.get("Range"))

    async def push_blob(self, repo: str, data: bytes) -> str:
        """Monolithic POST + PUT."""
        location = await self.start_upload(repo)
        return await self.finish(location, sha256(data), data)

    async def push_blob_chunked(self, repo: str, data: bytes, chunk: int) -> str:
        location = await self.start_upload(repo)
        for start in range(0, len(data), chunk):
            location = await self.patch(location, data[start : start + chunk], start)
        return await self.finish(location, sha256(data))

    # -- manifests -----------------------------------------------------------------------

    async def push_manifest(self, repo: str, ref: str, body: bytes) -> str:
        headers = {"Content-Type": OCI_MANIFEST}
        url = self.url(f"/v2/{repo}/manifests/{ref}")
        async with self.session.put(url, data=body, headers=headers) as resp:
            assert resp.status == 201, f"PUT manifest {ref}: {resp.status} {await resp.text()}"
            digest = resp.headers.get("Docker-Content-Digest")
            assert digest == sha256(body)
            return digest

    async def push_image(self, repo: str, tag: str, image: MemoryImage, chunk: int = 0) -> str:
        for blob in image.blobs:
            if chunk and len(blob) > chunk:
                await self.push_blob_chunked(repo, blob, chunk)
            else:
                await self.push_blob(repo, blob)
        return await self.push_manifest(repo, tag, image.manifest)

    # -- reads ---------------------------------------------------------------------------

    async def get(
        self, path: str, headers: Mapping[str, str] | None = None
    ) -> tuple[int, bytes, Mapping[str, str]]:
        async with self.session.get(self.url(path), headers=headers) as resp:
            return resp.status, await resp.read(), resp.headers

    async def head(self, path: str) -> tuple[int, Mapping[str, str]]:
        async with self.session.head(self.url(path)) as resp:
            return resp.status, resp.headers

    async def get_blob(self, repo: str, digest: str) -> tuple[int, bytes, Mapping[str, str]]:
        return await self.get(f"/v2/{repo}/blobs/{digest}")

    async def head_blob(self, repo: str, digest: str) -> int:
        return (await self.head(f"/v2/{repo}/blobs/{digest}"))[0]

    async def get_manifest(self, repo: str, ref: str) -> tuple[int, bytes, Mapping[str, str]]:
        return await self.get(f"/v2/{repo}/manifests/{ref}", {"Accept": ACCEPT})

    async def tags(self, repo: str) -> list[str]:
        status, body, _ = await self.get(f"/v2/{repo}/tags/list")
        assert status == 200, f"tags/list {repo}: {status} {body!r}"
        return list(json.loads(body)["tags"] or [])

    async def assert_blob(self, repo: str, digest: str, data: bytes) -> None:
        status, body, headers = await self.get_blob(repo, digest)
        assert status == 200, f"GET blob {repo}@{digest}: {status} {body[:200]!r}"
        assert len(body) == len(data), f"{repo}@{digest}: {len(body)} bytes, want {len(data)}"
        assert body == data, f"{repo}@{digest}: bytes differ"
        assert sha256(body) == digest
        assert headers.get("Docker-Content-Digest") == digest

    async def assert_manifest(self, repo: str, ref: str, data: bytes) -> None:
        status, body, headers = await self.get_manifest(repo, ref)
        assert status == 200, f"GET manifest {repo}:{ref}: {status} {body[:200]!r}"
        assert body == data, f"{repo}:{ref}: manifest bytes differ"
        assert headers.get("Docker-Content-Digest") == sha256(data)
        assert headers.get("Content-Type") == OCI_MANIFEST
