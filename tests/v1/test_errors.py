"""The v1 error table (issue 9, item 12): a shared registry error met on a v1 path is
answered with its 4xx in the v1 shape, not a 500; the domain's typed errors get the
contract's statuses and messages."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from moorage.api.v1 import errors
from moorage.content import v1 as domain
from moorage.content.layers import LayerInvalid, LayerTooLarge
from moorage.errors import ManifestTooLarge, NameInvalid, RegistryError, Unavailable
from tests.images import make_image as make_v2_image
from tests.v1 import v2side
from tests.v1.client import V1Client, assert_error

MiB = 1024 * 1024


async def test_registry_error_inside_a_tag_write_is_its_4xx(
    make_client: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A v2 manifest larger than v1's 4 MiB limit (allowed by `manifests.maxsize`): tagging its
    v1 view re-parses it, which raises ManifestTooLarge, a RegistryError."""
    caplog.set_level(logging.DEBUG)
    v1 = V1Client(await make_client(auth={"mode": "none"}, manifests={"maxsize": 8 * MiB}))
    image = make_v2_image(tmp_path / "layout", layers=[1000], seed=3)
    await v2side.push_image(v1.http, "foo/big", "latest", image)
    manifest = json.loads(image.manifest.read())
    manifest["annotations"] = {"padding": "x" * (5 * MiB)}
    body = json.dumps(manifest).encode()
    await v2side.put_manifest(v1.http, "foo/big", "latest", body, image.manifest.media_type)
    top = (await v1.call("GET", "/v1/repositories/foo/big/tags")).json()["latest"]

    reply = await v1.put_tag("foo/big", "again", top, None)

    assert_error(reply, 413, ManifestTooLarge.default_message)
    assert "again" not in (await v1.call("GET", "/v1/repositories/foo/big/tags")).json()
    assert not [r for r in caplog.records if r.exc_info], caplog.text


@pytest.mark.parametrize(
    ("error", "status", "message"),
    [
        (NameInvalid(), 400, "Invalid repository name"),
        (ManifestTooLarge(), 413, "manifest too large"),
        (Unavailable(), 503, "service unavailable"),
        (RegistryError(), 500, "Internal server error"),
        (domain.ImageExists("x"), 409, "Image already exists"),
        (domain.ImageJSONMissingId("x"), 400, "Missing key `id' in JSON"),
        (domain.ImageJSONInvalid("x"), 400, "Invalid JSON"),
        (domain.RepositoryNameInvalid("x"), 400, "Invalid repository name"),
        (domain.NotTaggable("no layers"), 400, "Image cannot be tagged through v1: no layers"),
        (ValueError("surprise"), 500, "Internal server error"),
        (LayerTooLarge("over 64 GiB"), 413, "Layer too large when decompressed"),
        (LayerInvalid("not a tar"), 400, "Layer format not supported"),
    ],
)
def test_table_answers(error: Exception, status: int, message: str) -> None:
    response = errors.render(error, errors.answer(error))
    assert response.status == status
    assert response.content_type == "application/json"
    assert response.body is not None
    assert json.loads(bytes(response.body)) == {"error": message}  # type: ignore[arg-type]


def test_every_v1_domain_error_has_an_answer() -> None:
    kinds = [
        value
        for value in vars(domain).values()
        if isinstance(value, type) and issubclass(value, domain.V1Error)
    ]
    assert len(kinds) > 20
    for kind in kinds:
        if kind is domain.V1Error:
            continue
        assert errors.answer(kind("x")) is not errors.INTERNAL, kind
