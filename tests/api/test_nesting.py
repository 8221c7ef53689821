"""Issue 9 item 7: manifests nested past any recursion limit are MANIFEST_INVALID, not a 500."""

from __future__ import annotations

import base64
import json
import logging

import pytest

from tests.api.helpers import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    SCHEMA1_SIGNED,
    Client,
    assert_error,
    put_manifest,
)

SCHEMA1_UNSIGNED = "application/vnd.docker.distribution.manifest.v1+json"
REPO = "deep/app"
DEPTH = 100_000


def _arrays() -> bytes:
    return b"[" * DEPTH + b"]" * DEPTH


def _objects() -> bytes:
    return b'{"a":' * DEPTH + b"1" + b"}" * DEPTH


def _inside(media_type: str, deep: bytes) -> bytes:
    """A manifest of the type whose first fields look right, with `deep` as one value."""
    if media_type in (SCHEMA1_SIGNED, SCHEMA1_UNSIGNED):
        return b'{"schemaVersion": 1, "name": "deep/app", "tag": "t", "fsLayers": ' + deep + b"}"
    head = json.dumps({"schemaVersion": 2, "mediaType": media_type})[:-1].encode()
    return head + b', "annotations": ' + deep + b"}"


def _protected_header(deep: bytes) -> bytes:
    """A schema 1 document that is shallow itself but whose JWS protected header is deep."""
    protected = base64.urlsafe_b64encode(b'{"formatLength": ' + deep + b"}").rstrip(b"=")
    signature = {"header": {"alg": "ES256"}, "signature": "AAAA", "protected": protected.decode()}
    document = {"schemaVersion": 1, "name": REPO, "tag": "t", "fsLayers": [], "history": []}
    return json.dumps({**document, "signatures": [signature]}).encode()


MEDIA_TYPES = [
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_LIST,
    SCHEMA1_SIGNED,
    SCHEMA1_UNSIGNED,
    None,  # no Content-Type: the type is taken from the body
]
SHAPES = {
    "bare arrays": lambda media_type: _arrays(),
    "bare objects": lambda media_type: _objects(),
    "arrays inside": lambda media_type: _inside(media_type or OCI_MANIFEST, _arrays()),
    "objects inside": lambda media_type: _inside(media_type or OCI_MANIFEST, _objects()),
}


async def _assert_nothing_stored(client: Client) -> None:
    resp = await client.get(f"/v2/{REPO}/manifests/latest")
    await assert_error(resp, 404)
    resp = await client.get(f"/v2/{REPO}/tags/list")
    if resp.status == 200:
        assert not (await resp.json()).get("tags")
    else:
        await assert_error(resp, 404, "NAME_UNKNOWN")


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("media_type", MEDIA_TYPES, ids=lambda t: str(t).rsplit(".", 1)[-1])
async def test_deeply_nested_manifest_is_manifest_invalid(
    client: Client, caplog: pytest.LogCaptureFixture, media_type: str | None, shape: str
) -> None:
    body = SHAPES[shape](media_type)
    with caplog.at_level(logging.DEBUG):
        resp = await put_manifest(client, REPO, "latest", body, media_type)
        await assert_error(resp, 400, "MANIFEST_INVALID")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    await _assert_nothing_stored(client)


async def test_deeply_nested_jws_protected_header_is_manifest_invalid(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        resp = await put_manifest(
            client, REPO, "latest", _protected_header(_arrays()), SCHEMA1_SIGNED
        )
        await assert_error(resp, 400, "MANIFEST_INVALID")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    await _assert_nothing_stored(client)
