"""The v2 side of the one-store tests: push an image built by `tests.images` through the
in-process /v2/ API, read manifests, configs and blobs back (open mode, no auth)."""

from __future__ import annotations

import json
from typing import Any

from tests.images import Image
from tests.v1.client import DOCKER_MANIFEST, HttpClient, sha256

ACCEPT = {"Accept": DOCKER_MANIFEST}


async def push_blob(http: HttpClient, repo: str, data: bytes) -> str:
    digest = sha256(data)
    async with http.post(f"/v2/{repo}/blobs/uploads/?digest={digest}", data=data) as resp:
        assert resp.status == 201, await resp.text()
    return digest


async def push_image(http: HttpClient, repo: str, tag: str, image: Image) -> str:
    """Config, layers and manifest of `image`; returns the manifest digest."""
    for blob in (image.config, *image.layers):
        await push_blob(http, repo, blob.read())
    body = image.manifest.read()
    async with http.put(
        f"/v2/{repo}/manifests/{tag}",
        data=body,
        headers={"Content-Type": image.manifest.media_type},
    ) as resp:
        assert resp.status == 201, await resp.text()
        return str(resp.headers["Docker-Content-Digest"])


async def get_manifest(
    http: HttpClient, repo: str, ref: str
) -> tuple[int, dict[str, Any] | None, str | None]:
    """(status, parsed manifest, Content-Type) of a schema 2 manifest GET."""
    async with http.get(f"/v2/{repo}/manifests/{ref}", headers=ACCEPT) as resp:
        body = await resp.read()
        if resp.status != 200:
            return resp.status, None, None
        return resp.status, json.loads(body), resp.headers.get("Content-Type")


async def get_blob(http: HttpClient, repo: str, digest: str) -> tuple[int, bytes]:
    async with http.get(f"/v2/{repo}/blobs/{digest}") as resp:
        return resp.status, await resp.read()


async def put_manifest(http: HttpClient, repo: str, tag: str, body: bytes, media_type: str) -> str:
    async with http.put(
        f"/v2/{repo}/manifests/{tag}", data=body, headers={"Content-Type": media_type}
    ) as resp:
        assert resp.status == 201, await resp.text()
        return str(resp.headers["Docker-Content-Digest"])
