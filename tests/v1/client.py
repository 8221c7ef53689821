"""The one Docker 1.2 v1 client of the tests and the benchmark (contract:
docs/contracts/v1-protocol.md).

`V1Client.push` and `V1Client.pull` replay the contract's "life of a push" and "life of a pull"
(sections 7.3 and 7.2) request by request, with the headers Docker 1.2 sends and the checks it
makes on each answer; a step the real client would reject raises `V1FlowError`, with the
caller's `context` (a server's log tail, say) appended. The low-level `call` sends any single
request, records it in `log`, and never follows redirects.

It runs over aiohttp: the in-process tests' `TestClient`, or `RemoteHttp` over a session of the
caller's for real servers (the process, cluster and client tests, the benchmark), whose
connections are kept alive. Images are held in memory (`V1Image`, `make_image`), or for big
layers written to a file with their checksums computed in the same pass and streamed from it on
push (`V1FileImage`, `write_image`); pulled layers are hashed as they stream, and kept only when
asked. Layers are built by tests.images.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import ClientSession
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from tests.images import (
    Entry,
    LayerFile,
    file_entries,
    gzip_bytes,
    make_tar,
    tarsum_v0,
    write_layer,
)

USER_AGENT = (
    "docker/1.2.0 go/go1.3.1 git-commit/fa7b24f kernel/3.13.0-24-generic os/linux arch/amd64"
)
EMPTY_BASIC = "Basic Og=="  # Docker 1.2 when the user never logged in
CREATED = "2014-09-24T09:12:01.123456789Z"
CHUNK = 16 * 1024  # request body pieces of an in-memory layer
FILE_CHUNK = 1 << 20  # reads of a layer file on push, and of a layer body on pull
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def library(name: str) -> str:
    """The `library/` form Docker 1.2 uses for one-component names on the tags call."""
    return name if "/" in name else f"library/{name}"


# -- images ----------------------------------------------------------------------------------


def payload_checksum(image_json: bytes, layer: bytes) -> str:
    """`X-Docker-Checksum-Payload`: sha256 of the JSON, one LF byte, the layer as sent."""
    return sha256(image_json + b"\n" + layer)


def image_json(
    image_id: str,
    parent: str | None,
    *,
    cmd: str | Sequence[str] = "/bin/sh",
    size: int = 0,
    created: str = CREATED,
    container: str | None = None,
    config: dict[str, Any] | None = None,
    **extra: Any,
) -> bytes:
    """Image JSON the way a Docker 1.2 daemon writes it (Go field order, compact). `cmd` is
    the build step (`container_config.Cmd`; a string runs under `/bin/sh -c`), `config` the
    run configuration (Docker copies it up the chain)."""
    document: dict[str, Any] = {"id": image_id}
    if parent:
        document["parent"] = parent
    document.update(
        {
            "created": created,
            "container": container or secrets.token_hex(32),
            "container_config": {
                "Hostname": "",
                "User": "",
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd),
                "Image": parent or "",
                "WorkingDir": "",
            },
            "docker_version": "1.2.0",
            "config": config or {"Cmd": ["/bin/sh"], "Env": None},
            "architecture": "amd64",
            "os": "linux",
            "Size": size,
        }
    )
    document.update(extra)
    return json.dumps(document, separators=(",", ":")).encode()


@dataclass(frozen=True)
class V1Image:
    """A v1 image held in memory. Its checksums are computed by our own code (the payload
    checksum here, TarSum v0 in tests.images), not the server's."""

    id: str
    parent: str | None
    json: bytes
    tar: bytes  # the uncompressed layer
    layer: bytes  # the bytes sent as the layer body (gzip of `tar`, or `tar` itself)

    @property
    def document(self) -> dict[str, Any]:
        return json.loads(self.json)  # type: ignore[no-any-return]

    @property
    def size(self) -> int:
        return len(self.layer)

    @property
    def payload(self) -> str:
        return payload_checksum(self.json, self.layer)

    @property
    def tarsum(self) -> str:
        return tarsum_v0(self.tar, self.json)

    @property
    def blob_digest(self) -> str:
        return sha256(self.layer)

    @property
    def diff_id(self) -> str:
        return sha256(self.tar)

    def body(self) -> AsyncIterator[bytes]:
        return chunks(self.layer)


@dataclass(frozen=True)
class V1FileImage:
    """A v1 image whose layer is a file, streamed on push: a layer of any size at flat memory,
    its checksums computed while it was written (`write_image`)."""

    id: str
    parent: str | None
    json: bytes
    file: LayerFile

    @property
    def size(self) -> int:
        return self.file.size

    @property
    def payload(self) -> str:
        assert self.file.payload is not None
        return self.file.payload

    @property
    def tarsum(self) -> str:
        assert self.file.tarsum is not None
        return self.file.tarsum

    @property
    def blob_digest(self) -> str:
        return self.file.digest

    @property
    def diff_id(self) -> str:
        return self.file.diff_id

    async def body(self) -> AsyncIterator[bytes]:
        with open(self.file.path, "rb") as f:
            while piece := f.read(FILE_CHUNK):
                yield piece


AnyV1Image = V1Image | V1FileImage


def new_id() -> str:
    """A random 256-bit id, as Docker generates them (never 64 decimal digits, which Docker
    refuses as an id)."""
    while True:
        candidate = secrets.token_hex(32)
        if not candidate.isdigit():
            return candidate


def make_image(
    parent: V1Image | None = None,
    *,
    files: dict[str, bytes] | None = None,
    entries: Sequence[Entry] | None = None,
    compress: bool = True,
    end_blocks: bool = True,
    flush_every: int | None = None,
    image_id: str | None = None,
    parent_id: str | None = None,
    **json_fields: Any,
) -> V1Image:
    """One v1 image: a fresh id (unless given), a layer of tar `entries` (or of `files` and
    their directories; by default one small random file); its parent is `parent` (or the bare
    id `parent_id`). Without `end_blocks` and with `flush_every` the layer is the way Docker
    1.2 streamed it (an unterminated tar, gzip flushed every that many bytes). `json_fields`
    go to `image_json`."""
    image_id = image_id or new_id()
    if entries is None:
        if files is None:
            files = {f"etc/{image_id[:12]}.conf": secrets.token_bytes(3000) + b"\n"}
        entries = file_entries(files)
    tar = make_tar(entries, end_blocks=end_blocks)
    layer = gzip_bytes(tar, flush_every) if compress else tar
    parent_id = parent.id if parent else parent_id
    document = image_json(image_id, parent_id, size=len(tar), **json_fields)
    return V1Image(image_id, parent_id, document, tar, layer)


def make_chain(count: int = 2) -> list[V1Image]:
    """`count` images, root first, each the parent of the next."""
    chain: list[V1Image] = []
    for _ in range(count):
        chain.append(make_image(chain[-1] if chain else None))
    return chain


def write_image(
    path: Path,
    entries: Sequence[Entry],
    *,
    image_id: str | None = None,
    parent: str | None = None,
    size: int = 0,
    **json_fields: Any,
) -> V1FileImage:
    """A v1 image whose layer (a gzip level 0 tar of `entries`) is written to `path`, its
    checksums computed in the same pass; `size` is the JSON's `Size`."""
    image_id = image_id or new_id()
    document = image_json(image_id, parent, size=size, **json_fields)
    return V1FileImage(image_id, parent, document, write_layer(path, entries, v1_json=document))


# -- requests --------------------------------------------------------------------------------


@dataclass
class Reply:
    method: str
    path: str
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    request_headers: dict[str, str] = field(default_factory=dict)
    request_body: bytes | None = None  # when it was sent in one piece

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<{self.method} {self.path} -> {self.status} {self.body[:300]!r}>"


class V1FlowError(AssertionError):
    """An answer that the Docker 1.2 client would not accept."""


def token_auth(token: str) -> str:
    return f"Token {token}"


async def chunks(data: bytes, size: int = CHUNK) -> AsyncIterator[bytes]:
    """A request body of unknown length: aiohttp sends it chunked, with no Content-Length."""
    for at in range(0, len(data), size):
        yield data[at : at + size]


@dataclass
class PushResult:
    token: str
    endpoints: list[str]
    uploaded: list[str] = field(default_factory=list)  # ids whose json/layer/checksum went up
    skipped: list[str] = field(default_factory=list)  # ids the server already had
    replies: list[Reply] = field(default_factory=list)


@dataclass
class Pulled:
    id: str
    json: bytes
    size: int  # X-Docker-Size
    layer: bytes  # empty when the pull did not keep layers
    digest: str  # sha256 of the layer as received
    length: int  # its length

    @property
    def document(self) -> dict[str, Any]:
        return json.loads(self.json)  # type: ignore[no-any-return]


@dataclass
class PullResult:
    token: str | None
    endpoints: list[str]
    image_list: list[dict[str, Any]]
    tags: dict[str, str]
    ancestries: dict[str, list[str]] = field(default_factory=dict)  # top first
    images: dict[str, Pulled] = field(default_factory=dict)
    replies: list[Reply] = field(default_factory=list)

    def chain(self, top: str) -> list[Pulled]:
        """The images of `top`'s ancestry, root first."""
        return [self.images[image_id] for image_id in reversed(self.ancestries[top])]


class RemoteHttp:
    """What V1Client needs of aiohttp's TestClient, over a real server's URL (a session of
    the caller's), so the same client drives `moorage serve` processes and clusters."""

    def __init__(self, session: ClientSession, base: str) -> None:
        self.session = session
        self.base = URL(base)

    def make_url(self, path: str) -> URL:
        return self.base.join(URL(path))

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.session.request(method, self.make_url(path), **kwargs)

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)


HttpClient = TestClient[Any, Any] | RemoteHttp


class V1Client:
    def __init__(self, http: HttpClient, context: Callable[[], str] | None = None) -> None:
        """`context` adds to the message of every `V1FlowError` (a server's log tail, say)."""
        self.http = http
        self.context = context
        self.log: list[Reply] = []

    @property
    def host(self) -> str:
        url = self.http.make_url("/")
        return f"{url.host}:{url.port}"

    def fail(self, message: str) -> V1FlowError:
        return V1FlowError(message + (f"\n{self.context()}" if self.context else ""))

    def expect(self, reply: Reply, *statuses: int) -> Reply:
        if reply.status not in statuses:
            raise self.fail(f"expected {statuses}, got {reply!r}")
        return reply

    async def call(
        self,
        method: str,
        path: str,
        *,
        auth: str | None = None,
        headers: dict[str, str] | None = None,
        data: Any = None,
        json_body: Any = None,
        user_agent: str = USER_AGENT,
    ) -> Reply:
        sent = {"User-Agent": user_agent, **(headers or {})}
        if auth is not None:
            sent["Authorization"] = auth
        if json_body is not None:
            data = json.dumps(json_body).encode()
            sent.setdefault("Content-Type", "application/json")
        async with self.http.request(
            method, path, headers=sent, data=data, allow_redirects=False
        ) as resp:
            body = await resp.read()
            sent_body = bytes(data) if isinstance(data, bytes | bytearray) else None
            reply = Reply(method, path, resp.status, resp.headers, body, sent, sent_body)
        self.log.append(reply)
        return reply

    # -- single protocol steps (Docker 1.2 headers) ----------------------------------------

    async def start_push(
        self, name: str, entries: list[dict[str, str]], auth: str | None = EMPTY_BASIC
    ) -> Reply:
        return await self.call(
            "PUT",
            f"/v1/repositories/{name}/",
            auth=auth,
            headers={"X-Docker-Token": "true", "Content-Type": "application/json"},
            data=json.dumps(entries).encode(),
        )

    async def put_json(
        self, image: AnyV1Image, auth: str | None, body: bytes | None = None
    ) -> Reply:
        return await self.call(
            "PUT",
            f"/v1/images/{image.id}/json",
            auth=auth,
            headers={"Content-Type": "application/json"},
            data=image.json if body is None else body,
        )

    async def put_layer(
        self, image: AnyV1Image, auth: str | None, body: bytes | None = None, chunked: bool = True
    ) -> Reply:
        """The layer (or `body`), chunked with no Content-Length as Docker 1.2 sends it, or in
        one piece without `chunked` (an in-memory image or `body` only)."""
        data: Any
        if body is not None:
            data = chunks(body) if chunked else body
        elif chunked:
            data = image.body()
        else:
            assert isinstance(image, V1Image), "a layer file is streamed"
            data = image.layer
        return await self.call(
            "PUT",
            f"/v1/images/{image.id}/layer",
            auth=auth,
            headers={"Content-Type": "application/octet-stream"},
            data=data,
        )

    async def put_checksum(
        self,
        image: AnyV1Image,
        auth: str | None,
        *,
        payload: str | None = "",
        tarsum: str | None = "",
    ) -> Reply:
        """Both headers by default; pass None to leave one out, a string to override it."""
        headers = {}
        if tarsum is not None:
            headers["X-Docker-Checksum"] = tarsum or image.tarsum
        if payload is not None:
            headers["X-Docker-Checksum-Payload"] = payload or image.payload
        return await self.call("PUT", f"/v1/images/{image.id}/checksum", auth=auth, headers=headers)

    async def upload(self, image: AnyV1Image, auth: str | None) -> None:
        """PUT json, layer (chunked) and checksum; each must answer 200."""
        self.expect(await self.put_json(image, auth), 200)
        self.expect(await self.put_layer(image, auth), 200)
        self.expect(await self.put_checksum(image, auth), 200)

    async def put_tag(self, name: str, tag: str, image_id: str, auth: str | None) -> Reply:
        return await self.call(
            "PUT",
            f"/v1/repositories/{name}/tags/{tag}",
            auth=auth,
            headers={"Content-Type": "application/json"},
            data=json.dumps(image_id).encode(),
        )

    async def open_push(
        self, name: str, images: Sequence[AnyV1Image], auth: str | None = EMPTY_BASIC
    ) -> str:
        """`PUT /v1/repositories/R/` declaring `images`; returns the `Token ...` header value."""
        reply = self.expect(await self.start_push(name, [{"id": i.id} for i in images], auth), 200)
        return token_auth(reply.headers["X-Docker-Token"])

    async def push_images(
        self, name: str, images: Sequence[AnyV1Image], tags: dict[str, str] | None = None
    ) -> str:
        """Open a push (no login), upload `images` in order, set `tags`; returns the token."""
        token = await self.open_push(name, images)
        for image in images:
            await self.upload(image, token)
        for tag, image_id in (tags or {}).items():
            self.expect(await self.put_tag(name, tag, image_id, token), 200)
        return token

    # Reads, each with the checks Docker 1.2 makes on its answer.

    async def tags(self, name: str, auth: str | None) -> dict[str, str]:
        """`GET /v1/repositories/L(N)/tags`: the tag map."""
        reply = await self.call("GET", f"/v1/repositories/{library(name)}/tags", auth=auth)
        if reply.status == 404:
            raise self.fail(f"Repository not found {reply!r}")
        tags = self.expect(reply, 200).json()
        if not isinstance(tags, dict):
            raise self.fail(f"tag map is not an object: {reply!r}")
        return tags

    async def tag(self, name: str, tag: str, auth: str | None) -> str:
        """`GET /v1/repositories/L(N)/tags/T`: the image id."""
        reply = await self.call("GET", f"/v1/repositories/{library(name)}/tags/{tag}", auth=auth)
        image_id = self.expect(reply, 200).json()
        if not isinstance(image_id, str):
            raise self.fail(f"tag is not an image id: {reply!r}")
        return image_id

    async def ancestry(self, image_id: str, auth: str | None) -> list[str]:
        """`GET /v1/images/ID/ancestry`: the ids, the image itself first."""
        reply = self.expect(
            await self.call("GET", f"/v1/images/{image_id}/ancestry", auth=auth), 200
        )
        ids = reply.json()
        if not isinstance(ids, list) or not ids or ids[0] != image_id:
            raise self.fail(f"ancestry must start with the image itself: {reply!r}")
        return ids

    async def get_json(self, image_id: str, auth: str | None) -> Reply:
        """`GET /v1/images/ID/json`: 200, a decimal `X-Docker-Size`, a JSON object whose `id`
        is the image's."""
        reply = self.expect(await self.call("GET", f"/v1/images/{image_id}/json", auth=auth), 200)
        size = reply.headers.get("X-Docker-Size", "")
        if not size.isdigit():
            raise self.fail(f"X-Docker-Size missing or not a decimal: {reply!r}")
        document = reply.json()
        if not isinstance(document, dict) or document.get("id") != image_id:
            raise self.fail(f"image JSON does not describe {image_id}: {reply!r}")
        return reply

    async def get_layer(
        self,
        image_id: str,
        auth: str | None,
        size: int = -1,
        *,
        resume: bool = False,
        keep: bool = True,
    ) -> tuple[bytes, str, int]:
        """`GET /v1/images/ID/layer`: (the bytes, or b"" without `keep`; their sha256 digest;
        their length). The body is hashed as it streams, so without `keep` a layer of any size
        costs no memory. With `resume` and the layer's `size`, the download is broken off
        half-way and resumed with `Range: bytes=n-SIZE`, as Docker's resumable reader does
        after a dropped connection."""
        path = f"/v1/images/{image_id}/layer"
        headers = {"User-Agent": USER_AGENT}
        if auth is not None:
            headers["Authorization"] = auth
        hasher = hashlib.sha256()
        kept: list[bytes] = []
        length = 0

        def take(piece: bytes) -> None:
            nonlocal length
            hasher.update(piece)
            length += len(piece)
            if keep:
                kept.append(piece)

        cut = None
        async with self.http.get(path, headers=headers, allow_redirects=False) as resp:
            first = Reply("GET", path, resp.status, resp.headers, b"", headers)
            self.log.append(first)
            if resp.status != 200:
                first.body = await resp.read()
                raise self.fail(f"layer: expected 200, got {first!r}")
            if resume and size > 1 and resp.headers.get("Accept-Ranges") == "bytes":
                cut = size // 2  # the connection "breaks" after half the layer
                take(await resp.content.readexactly(cut))
                resp.close()
            else:
                async for piece in resp.content.iter_chunked(FILE_CHUNK):
                    take(piece)
            first.body = b"".join(kept)
        if cut is not None:
            range_header = {"Range": f"bytes={cut}-{size}"}
            take(
                self.expect(await self.call("GET", path, auth=auth, headers=range_header), 206).body
            )
        return b"".join(kept), "sha256:" + hasher.hexdigest(), length

    # -- the life of a push (contract 7.3) -------------------------------------------------

    async def push(
        self,
        name: str,
        images: Sequence[AnyV1Image],
        tags: dict[str, Sequence[str]] | None = None,
        auth: str = EMPTY_BASIC,
    ) -> PushResult:
        """`docker push H/name` of `images` (root first); `tags` maps image id -> its tags.
        `name` is used as typed (one component stays one component), as Docker 1.2 does on
        every push call."""
        tags = tags or {}
        start = len(self.log)
        entries: list[dict[str, str]] = []
        for image in images:
            if tags.get(image.id):
                entries += [{"id": image.id, "Tag": t} for t in tags[image.id]]
            else:
                entries.append({"id": image.id})
        reply = self.expect(await self.start_push(name, entries, auth), 200, 201)
        token = reply.headers.get("X-Docker-Token", "")
        endpoints = [e.strip() for e in reply.headers.get("X-Docker-Endpoints", "").split(",")]
        if not token:
            raise self.fail(f"Index response didn't contain an access token {reply!r}")
        if not [e for e in endpoints if e]:
            raise self.fail(f"Index response didn't contain any endpoints {reply!r}")
        result = PushResult(token, endpoints)
        for endpoint in endpoints:
            # One origin serves index and registry; the endpoint must be it.
            if endpoint != self.host:
                raise self.fail(f"endpoint {endpoint!r} is not this registry {self.host!r}")
            for image in images:
                await self._push_image(name, image, tags.get(image.id, ()), result)
        urls = ", ".join(f"http://{e}/v1/" for e in endpoints)
        self.expect(
            await self.call(
                "PUT",
                f"/v1/repositories/{name}/images",
                auth=auth,
                headers={
                    "X-Docker-Token": "true",
                    "X-Docker-Endpoints": urls,
                    "Content-Type": "application/json",
                },
                data=b"[]",
            ),
            204,
        )
        result.replies = self.log[start:]
        return result

    async def _push_image(
        self, name: str, image: AnyV1Image, image_tags: Sequence[str], result: PushResult
    ) -> None:
        auth = token_auth(result.token)
        probe = await self.call("GET", f"/v1/images/{image.id}/json", auth=auth)
        if probe.status == 200:
            result.skipped.append(image.id)
        else:
            reply = await self.put_json(image, auth)
            if reply.status != 200 and _decodes_to_exists(reply.body):
                result.skipped.append(image.id)
            else:
                self.expect(reply, 200)
                self.expect(await self.put_layer(image, auth), 200)
                self.expect(await self.put_checksum(image, auth), 200)
                result.uploaded.append(image.id)
        for tag in image_tags:
            self.expect(await self.put_tag(name, tag, image.id, auth), 200, 201)

    # -- the life of a pull (contract 7.2) -------------------------------------------------

    async def pull(
        self,
        name: str,
        tag: str | None = None,
        auth: str | None = None,
        *,
        resume: bool = True,
        have: set[str] | None = None,
        index_token: bool = True,
        keep_layers: bool = True,
    ) -> PullResult:
        """`docker pull H/name[:tag]`; `auth` is the Basic header of a logged-in user. With
        `resume`, every layer download is broken off half-way and resumed (`get_layer`).
        Without `index_token` the image list is asked for without `X-Docker-Token: true` and
        the registry calls carry `Authorization: Token ` with nothing after it, as Docker 1.2
        sends when the index returned no token. Without `keep_layers` layers are hashed as
        they stream and dropped (`Pulled.digest`, `Pulled.length`)."""
        start = len(self.log)
        have = set() if have is None else have
        headers = {"X-Docker-Token": "true"}
        if not index_token:
            headers = {}
        listed = await self.call(
            "GET", f"/v1/repositories/{name}/images", auth=auth, headers=headers
        )
        if listed.status == 401:
            raise self.fail(f"Authentication is required. {listed!r}")
        if listed.status == 404:
            raise self.fail(f"Error: image {name} not found {listed!r}")
        image_list = self.expect(listed, 200).json()
        if not isinstance(image_list, list):
            raise self.fail(f"image list is not a list: {listed!r}")
        tokens = listed.headers.getall("X-Docker-Token", []) if index_token else []
        endpoint_header = listed.headers.get("X-Docker-Endpoints")
        endpoints = [e.strip() for e in (endpoint_header or self.host).split(",")]
        registry_auth = "Token " + ",".join(tokens)  # "Token " alone when no token came
        result = PullResult(tokens[0] if tokens else None, endpoints, image_list, tags={})
        for endpoint in endpoints:
            if endpoint != self.host:
                raise self.fail(f"endpoint {endpoint!r} is not this registry {self.host!r}")
        result.tags = await self.tags(name, registry_auth)
        if tag is not None:
            if tag not in result.tags:
                raise self.fail(f"Tag {tag} not found in repository {name}: {result.tags}")
            wanted = [result.tags[tag]]
        else:
            wanted = list(dict.fromkeys(result.tags.values()))
        for image_id in wanted:
            ancestry = await self.ancestry(image_id, registry_auth)
            result.ancestries[image_id] = ancestry
            for ancestor in reversed(ancestry):
                if ancestor in have:
                    continue
                meta = await self.get_json(ancestor, registry_auth)
                size = int(meta.headers["X-Docker-Size"])
                layer, digest, length = await self.get_layer(
                    ancestor, registry_auth, size, resume=resume, keep=keep_layers
                )
                result.images[ancestor] = Pulled(ancestor, meta.body, size, layer, digest, length)
                have.add(ancestor)
        result.replies = self.log[start:]
        return result


def _decodes_to_exists(body: bytes) -> bool:
    try:
        return bool(json.loads(body) == {"error": "Image already exists"})
    except ValueError:
        return False


# -- assertions --------------------------------------------------------------------------------


def assert_error(reply: Reply, status: int, message: str | None = None) -> dict[str, str]:
    """A v1 error: the status, `application/json`, a flat object of strings with `error`."""
    assert reply.status == status, f"expected {status}, got {reply!r}"
    if reply.method == "HEAD":
        return {}
    assert reply.headers.get("Content-Type", "").startswith("application/json"), reply.headers
    body = reply.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str), body
    assert all(isinstance(v, str) for v in body.values()), body
    if message is not None:
        assert body["error"] == message, body
    return body


def assert_true(reply: Reply, status: int = 200) -> None:
    assert reply.status == status, reply
    assert reply.json() is True, reply


# -- raw HTTP (targets aiohttp would normalise, bodies cut short) -----------------------------


async def raw_exchange(
    http: HttpClient, head: str, body: bytes = b"", *, hang_up: bool = False
) -> Reply | None:
    """Send `head` (request line and headers, without the blank line) and `body` exactly as
    given over a fresh socket. With `hang_up` the connection is dropped right after sending
    (a client that died mid-body) and None is returned."""
    server = http.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(head.encode("latin-1") + b"\r\n\r\n" + body)
        await writer.drain()
        if hang_up:
            writer.transport.abort()
            return None
        raw = await asyncio.wait_for(reader.read(), timeout=30)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    head_bytes, _, rest = raw.partition(b"\r\n\r\n")
    status_line, *lines = head_bytes.decode("latin-1").split("\r\n")
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines:
        key, _, value = line.partition(":")
        headers.add(key.strip(), value.strip())
    if "Content-Length" in headers:
        rest = rest[: int(headers["Content-Length"])]
    method, target = head.split(" ", 2)[:2]
    return Reply(method, target, int(status_line.split()[1]), CIMultiDictProxy(headers), rest)


def chunked_frames(data: bytes, size: int = CHUNK) -> bytes:
    """`data` in chunked transfer-encoding framing, without the final zero-length chunk."""
    return b"".join(
        f"{len(data[at : at + size]):x}\r\n".encode() + data[at : at + size] + b"\r\n"
        for at in range(0, len(data), size)
    )
