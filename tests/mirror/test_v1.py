"""A v1 client (Docker 1.2's flow) pulls a mirrored v2 image: the mirror caches the tag's
whole image first, and the translation layer serves it as for local content. (v1 names have
at most two components: `up/legacy` is the upstream's `legacy`.)"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from tests.images import make_image
from tests.mirror.conftest import CountingProxy, UpstreamWriter
from tests.v1.client import V1Client

Client = TestClient[Any, Any]


async def test_a_v1_pull_of_a_mirrored_image(
    mirror: Client, upstream: UpstreamWriter, proxy: CountingProxy, tmp_path: Path
) -> None:
    img = make_image(tmp_path / "src", layers=[200_000, 3000], seed=1201, tag="latest")
    await upstream.push_layout("legacy", img)
    pulled = await V1Client(mirror).pull("up/legacy", "latest")
    chain = pulled.chain(pulled.tags["latest"])
    layers = [p.layer for p in chain if p.length]
    assert ["sha256:" + hashlib.sha256(x).hexdigest() for x in layers] == img.layer_digests
    assert [x.read() for x in img.layers] == layers
    # Fetched once, by the mirror, for the v1 client; now a v2 pull is served from the cache.
    for blob in [img.config, *img.layers]:
        assert proxy.count("GET", f"/v2/legacy/blobs/{blob.digest}") == 1
    resp = await mirror.get(f"/v2/up/legacy/manifests/{img.digest}")
    assert resp.status == 200 and await resp.read() == img.manifest.read()
    assert proxy.count("GET", f"/v2/legacy/manifests/{img.digest}") == 0
    # A v1 push into the mirror is refused.
    reply = await V1Client(mirror).call(
        "PUT", "/v1/repositories/up/legacy/", json_body=[], headers={"X-Docker-Token": "true"}
    )
    assert reply.status == 403 and "is a mirror of" in reply.json()["error"]
