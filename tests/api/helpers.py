"""Shared helpers for the in-process /v2/ API tests (contract:
docs/contracts/oci-distribution.md)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict
from yarl import URL

from moorage.api.context import REGISTRY, SETTINGS
from moorage.storage.s3 import S3Driver
from moorage.storage.timed import TimedObjects

Client = TestClient[Any, Any]

VERSION_HEADER = "Docker-Distribution-API-Version"
VERSION = "registry/2.0"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

EMPTY_SHA256 = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
EMPTY_JSON_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"

ACCEPT_ALL = ", ".join(
    [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST, SCHEMA1_SIGNED, "*/*"]
)

# §0.3: every code the registry may put in an error body.
KNOWN_CODES = {
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
    "TOOMANYREQUESTS",
    "TAG_INVALID",
    "MANIFEST_UNVERIFIED",
    "PAGINATION_NUMBER_INVALID",
    "UNKNOWN",
    "UNAVAILABLE",
    "RANGE_INVALID",
}

UUID_RE = re.compile(
    r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"
)
UPLOAD_RANGE_RE = re.compile(r"^0-[0-9]+$")


# --- digests and content ----------------------------------------------------------------------


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha512(data: bytes) -> str:
    return "sha512:" + hashlib.sha512(data).hexdigest()


def random_bytes(size: int = 64) -> bytes:
    return os.urandom(size)


def random_digest() -> str:
    return sha256(random_bytes(32))


def encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document, indent=3).encode()


def descriptor(
    data: bytes,
    media_type: str = OCI_LAYER,
    *,
    digest: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "mediaType": media_type,
        "digest": digest or sha256(data),
        "size": len(data),
    }
    result.update(extra)
    return result


def make_config(extra: str | None = None) -> bytes:
    """A small, unique image config."""
    return encode(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []},
            "config": {"Labels": {"nonce": extra or uuid.uuid4().hex}},
        }
    )


def make_oci_manifest(
    config: dict[str, Any],
    layers: list[dict[str, Any]],
    subject: dict[str, Any] | None = None,
    artifact_type: str | None = None,
    *,
    annotations: dict[str, str] | None = None,
    media_type: str | None = OCI_MANIFEST,
) -> dict[str, Any]:
    manifest: dict[str, Any] = {"schemaVersion": 2}
    if media_type is not None:
        manifest["mediaType"] = media_type
    if artifact_type is not None:
        manifest["artifactType"] = artifact_type
    manifest["config"] = config
    manifest["layers"] = layers
    if subject is not None:
        manifest["subject"] = subject
    if annotations is not None:
        manifest["annotations"] = annotations
    return manifest


def make_oci_index(
    manifests: list[dict[str, Any]],
    subject: dict[str, Any] | None = None,
    artifact_type: str | None = None,
    *,
    annotations: dict[str, str] | None = None,
    media_type: str = OCI_INDEX,
) -> dict[str, Any]:
    index: dict[str, Any] = {"schemaVersion": 2, "mediaType": media_type}
    if artifact_type is not None:
        index["artifactType"] = artifact_type
    index["manifests"] = manifests
    if subject is not None:
        index["subject"] = subject
    if annotations is not None:
        index["annotations"] = annotations
    return index


# --- requests --------------------------------------------------------------------------------


def local(location: str) -> str:
    """A Location (relative or absolute) as a path+query usable with the test client."""
    url = URL(location)
    if url.absolute:
        return str(url.relative())
    return location


def with_query(location: str, **params: str) -> str:
    """Add query parameters to a Location, keeping any query it already has."""
    url = URL(local(location))
    return str(url.update_query(params))


def path_of(location: str) -> str:
    return URL(location).path


async def assert_error(resp: ClientResponse, status: int, code: str | None = None) -> Any:
    """Check an error response: status, JSON error body (§0.3), code if given. Returns body."""
    text = await resp.text()
    assert resp.status == status, f"expected {status}, got {resp.status}: {text[:500]}"
    assert resp.headers.get(VERSION_HEADER) == VERSION
    if resp.method == "HEAD":
        return None
    assert resp.content_type == "application/json", resp.headers.get("Content-Type")
    body = json.loads(text)
    assert isinstance(body.get("errors"), list) and body["errors"], body
    for entry in body["errors"]:
        assert re.fullmatch(r"[A-Z_]+", entry["code"]), entry
        assert entry["code"] in KNOWN_CODES, entry
    if code is not None:
        assert body["errors"][0]["code"] == code, body
    return body


def error_codes(body: Any) -> list[str]:
    return [entry["code"] for entry in body["errors"]]


async def start_upload(client: Client, repo: str) -> str:
    """POST a new upload session; return its Location (usable with the test client)."""
    resp = await client.post(f"/v2/{repo}/blobs/uploads/")
    assert resp.status == 202, await resp.text()
    return local(resp.headers["Location"])


async def push_blob(client: Client, repo: str, data: bytes) -> str:
    """Monolithic POST + PUT upload; returns the digest."""
    digest = sha256(data)
    location = await start_upload(client, repo)
    resp = await client.put(
        with_query(location, digest=digest),
        data=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert resp.status == 201, await resp.text()
    assert resp.headers["Docker-Content-Digest"] == digest
    return digest


async def put_manifest(
    client: Client,
    repo: str,
    ref: str,
    body: bytes | dict[str, Any],
    media_type: str | None = OCI_MANIFEST,
) -> ClientResponse:
    data = body if isinstance(body, bytes) else encode(body)
    if media_type is None:
        # No Content-Type at all (aiohttp would add application/octet-stream).
        return await client.put(
            f"/v2/{repo}/manifests/{ref}", data=data, skip_auto_headers=["Content-Type"]
        )
    return await client.put(
        f"/v2/{repo}/manifests/{ref}", data=data, headers={"Content-Type": media_type}
    )


async def push_manifest(
    client: Client,
    repo: str,
    ref: str,
    body: bytes | dict[str, Any],
    media_type: str | None = OCI_MANIFEST,
) -> str:
    """PUT a manifest (expects 201); returns the digest the registry answered."""
    data = body if isinstance(body, bytes) else encode(body)
    resp = await put_manifest(client, repo, ref, data, media_type)
    assert resp.status == 201, await resp.text()
    digest = resp.headers["Docker-Content-Digest"]
    if digest.startswith("sha256:"):
        assert digest == sha256(data)
    return digest


@dataclass
class Image:
    digest: str
    body: bytes
    config: bytes
    layers: list[bytes] = field(default_factory=list)

    @property
    def layer_digests(self) -> list[str]:
        return [sha256(layer) for layer in self.layers]

    @property
    def descriptor(self) -> dict[str, Any]:
        return descriptor(self.body, OCI_MANIFEST)


async def push_image(
    client: Client,
    repo: str,
    tag: str | None = "latest",
    *,
    layers: int = 1,
    subject: dict[str, Any] | None = None,
    artifact_type: str | None = None,
    annotations: dict[str, str] | None = None,
) -> Image:
    """Push config + layers + an OCI manifest, by tag (or by digest when tag is None)."""
    config = make_config()
    await push_blob(client, repo, config)
    layer_data = [random_bytes(100 + i) for i in range(layers)]
    for layer in layer_data:
        await push_blob(client, repo, layer)
    manifest = make_oci_manifest(
        descriptor(config, OCI_CONFIG),
        [descriptor(layer, OCI_LAYER) for layer in layer_data],
        subject=subject,
        artifact_type=artifact_type,
        annotations=annotations,
    )
    body = encode(manifest)
    digest = await push_manifest(client, repo, tag or sha256(body), body)
    return Image(digest=digest, body=body, config=config, layers=layer_data)


async def push_empty_config(client: Client, repo: str) -> dict[str, Any]:
    """Push the `{}` empty blob; returns its descriptor."""
    digest = await push_blob(client, repo, b"{}")
    assert digest == EMPTY_JSON_DIGEST
    return descriptor(b"{}", OCI_EMPTY)


async def push_artifact(
    client: Client,
    repo: str,
    subject: dict[str, Any] | None,
    artifact_type: str | None = "application/vnd.example.sig",
    *,
    annotations: dict[str, str] | None = None,
    config_media_type: str = OCI_EMPTY,
    tag: str | None = None,
) -> tuple[str, bytes]:
    """Push an artifact manifest (empty config, one custom layer) referring to `subject`."""
    if config_media_type == OCI_EMPTY:
        config = await push_empty_config(client, repo)
    else:
        data = make_config()
        await push_blob(client, repo, data)
        config = descriptor(data, config_media_type)
    layer = random_bytes(40)
    await push_blob(client, repo, layer)
    manifest = make_oci_manifest(
        config,
        [descriptor(layer, "application/vnd.example.payload")],
        subject=subject,
        artifact_type=artifact_type,
        annotations=annotations,
    )
    body = encode(manifest)
    resp = await put_manifest(client, repo, tag or sha256(body), body)
    assert resp.status == 201, await resp.text()
    if subject is not None:
        assert resp.headers.get("OCI-Subject") == subject["digest"]
    return resp.headers["Docker-Content-Digest"], body


def assert_upload_range(resp: ClientResponse, end: int | None = None) -> None:
    """`Range: 0-<last byte>`, no `bytes=` prefix (§0.2, case 153); empty session `0-0`."""
    value = resp.headers.get("Range")
    assert value is not None, dict(resp.headers)
    assert UPLOAD_RANGE_RE.match(value), value
    if end is not None:
        assert value == f"0-{end}", value


# --- raw HTTP (paths the client library would normalise, truncated bodies) ----------------


@dataclass
class RawResponse:
    status: int
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def request_head(client: Client, method: str, target: str, head: dict[str, str]) -> bytes:
    """A request head as a client writes it by hand (with the test's authorization), for a
    test that then sends the body itself, or part of it."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {client.server.host}"]
    auth_header = getattr(client, "auth_header", None)
    if auth_header is not None:
        lines.append(f"Authorization: {await auth_header(method, target)}")
    lines += [f"{k}: {v}" for k, v in head.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def raw_request(
    client: Client,
    method: str,
    target: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    chunks: list[bytes] | None = None,
    declared_length: int | None = None,
    hang_up: bool = False,
) -> RawResponse | None:
    """Send a request byte-for-byte over a socket, the target unchanged.

    `chunks`: send the body with chunked transfer-encoding. `declared_length`: announce this
    Content-Length whatever the body is. `hang_up`: half-close after sending (a client that
    gave up). Returns None if the server dropped the connection without an answer.
    """
    server = client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {server.host}:{server.port}"]
        lines.append("Connection: close")
        auth_header = getattr(client, "auth_header", None)
        if auth_header is not None and "Authorization" not in (headers or {}):
            value = await auth_header(method, target)
            if value is not None:
                lines.append(f"Authorization: {value}")
        for key, value in (headers or {}).items():
            lines.append(f"{key}: {value}")
        if chunks is not None:
            lines.append("Transfer-Encoding: chunked")
        else:
            length = len(body) if declared_length is None else declared_length
            if length or method in ("POST", "PUT", "PATCH"):
                lines.append(f"Content-Length: {length}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if chunks is not None:
            for chunk in chunks:
                writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            writer.write(b"0\r\n\r\n")
        else:
            writer.write(body)
        await writer.drain()
        if hang_up and writer.can_write_eof():
            writer.write_eof()
        try:
            raw = await asyncio.wait_for(reader.read(), timeout=30)
        except (TimeoutError, ConnectionError):
            return None
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    if not raw:
        return None
    head, _, rest = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split()[1])
    parsed: CIMultiDict[str] = CIMultiDict()
    for line in header_lines:
        key, _, value = line.partition(":")
        parsed.add(key.strip(), value.strip())
    if parsed.get("Transfer-Encoding", "").lower() == "chunked":
        rest = _dechunk(rest)
    elif "Content-Length" in parsed:
        rest = rest[: int(parsed["Content-Length"])]
    return RawResponse(status, parsed, rest)


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return bytes(out)


def assert_raw_error(
    resp: RawResponse | None, statuses: tuple[int, ...], code: str | None = None
) -> Any:
    assert resp is not None, "connection dropped without a response"
    assert resp.status in statuses, (resp.status, resp.body[:500])
    assert resp.headers.get(VERSION_HEADER) == VERSION, dict(resp.headers)
    assert resp.headers.get("Content-Type", "").split(";")[0] == "application/json"
    body = resp.json()
    assert body["errors"], body
    assert body["errors"][0]["code"] in KNOWN_CODES
    if code is not None:
        assert body["errors"][0]["code"] == code, body
    return body


async def stored_copies(client: Client, data: bytes) -> int:
    """How many stored things hold exactly `data`, wherever the registry behind `client` keeps
    its bytes: files under its data directory (filesystem; blob bytes are never in the
    metadata database), or objects in its bucket under its prefix (S3: committed blobs and
    the tail objects of uploads in progress)."""
    storage = client.app[REGISTRY].blobs.storage
    if isinstance(storage, TimedObjects):  # metrics on: the driver is wrapped
        storage = storage.inner
    if isinstance(storage, S3Driver):
        count = 0
        pages = storage.client.get_paginator("list_objects_v2").paginate(
            Bucket=storage.bucket, Prefix=storage.prefix
        )
        async for page in pages:
            for entry in page.get("Contents", []):
                if entry["Size"] != len(data):
                    continue
                found = await storage.client.get_object(Bucket=storage.bucket, Key=entry["Key"])
                async with found["Body"] as body:
                    count += await body.read() == data
        return count
    root = client.app[SETTINGS].datadir
    count = 0
    for path in root.rglob("*"):
        if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
            count += 1
    return count
