"""What the web interface's tests share: images pushed through the real /v2/ API (built by
tests/images.py), and a form's CSRF token read off a page."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tests.images import Artifact, Blob, Image, Index, make_artifact, make_image, make_index

USERS = {"alice": "alice-password", "bob": "bob-password", "root": "root-password"}
# alice pulls and deletes in team/*, bob only pulls there; nobody but root sees secret/*.
RULES = [
    {"repository": "team/*", "users": ["alice"], "actions": ["pull", "push", "delete"]},
    {"repository": "team/*", "users": ["bob"], "actions": ["pull"]},
    {"repository": "*", "users": ["root"], "actions": ["*"]},
]


def basic(user: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{USERS[user]}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


class Response(Protocol):
    status: int

    async def text(self) -> str: ...


class Http(Protocol):
    """What pushing needs of an HTTP client (aiohttp's ClientSession or TestClient)."""

    def post(self, url: str, **kwargs: Any) -> Any: ...
    def put(self, url: str, **kwargs: Any) -> Any: ...


async def push_manifest(
    http: Http, repo: str, blobs: list[Blob], manifest: Blob, ref: str, headers: dict[str, str]
) -> None:
    for blob in blobs:
        url = f"/v2/{repo}/blobs/uploads/?digest={blob.digest}"
        async with http.post(url, data=blob.read(), headers=headers) as resp:
            assert resp.status == 201, await resp.text()
    async with http.put(
        f"/v2/{repo}/manifests/{ref}",
        data=manifest.read(),
        headers={"Content-Type": manifest.media_type, **headers},
    ) as resp:
        assert resp.status == 201, await resp.text()


@dataclass(frozen=True)
class Pushed:
    index: Index
    image: Image
    artifact: Artifact


async def push_samples(
    http: Http, layout: Path, repo: str, headers: dict[str, str] | None = None, seed: int = 0
) -> Pushed:
    """Into `repo`: a two-platform index tagged `multi`, an image tagged `v1` (two layers, a
    label with markup in it) and a signature-like artifact referring to the image (`sig`)."""
    headers = headers or {}
    index = make_index(layout, tag="multi", seed=seed + 1)
    image = make_image(
        layout,
        layers=[3000, 5000],
        seed=seed + 7,
        tag="v1",
        cmd=["/bin/sh", "-c", "echo <hello>"],
        labels={"org.example.note": "<script>alert(1)</script>"},
    )
    artifact = make_artifact(layout, image, tag="sig", seed=seed)
    for child in index.images:
        await push_manifest(
            http, repo, [child.config, *child.layers], child.manifest, child.digest, headers
        )
    await push_manifest(http, repo, [], index.index, "multi", headers)
    await push_manifest(http, repo, [image.config, *image.layers], image.manifest, "v1", headers)
    await push_manifest(
        http, repo, [artifact.config, *artifact.layers], artifact.manifest, "sig", headers
    )
    return Pushed(index, image, artifact)


_CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')


def csrf_of(page: str) -> str:
    found = _CSRF.search(page)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)
