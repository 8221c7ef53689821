"""A Docker 1.2 v1 client for the in-process tests (contract: docs v1-protocol.md).

`V1Client.push` and `V1Client.pull` replay the seed's "life of a push" and "life of a pull"
request by request, with the headers Docker 1.2 sends and the checks it makes on each answer
(contract 7.2 and 7.3); a step the real client would reject raises `V1FlowError`. The low-level
`call` sends any single request, records it in `log`, and never follows redirects.

Images are built here: real tar layers (ustar, fixed owners and mtimes), gzip-compressed,
with Docker 1.2 style JSON. The checksums a client sends are computed here, independently of
the server's code: the payload checksum (section 5.1) and TarSum v0 with the JSON as prefix
(section 5.2) by a small ustar parser of our own; `test_client.py` checks both against the
contract's vectors.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import hashlib
import io
import json
import secrets
import tarfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import ClientSession
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

HttpClient = TestClient[Any, Any]

USER_AGENT = (
    "docker/1.2.0 go/go1.3.1 git-commit/fa7b24f kernel/3.13.0-24-generic os/linux arch/amd64"
)
EMPTY_BASIC = "Basic Og=="  # Docker 1.2 when the user never logged in
MTIME = 1411549921  # 2014-09-24T09:12:01Z, tar entry times of every built layer
CHUNK = 16 * 1024
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


# -- checksums (independent of moorage.content) -------------------------------------------


def payload_checksum(image_json: bytes, layer: bytes) -> str:
    """`X-Docker-Checksum-Payload`: sha256 of the JSON, one LF byte, the layer as sent."""
    return sha256(image_json + b"\n" + layer)


def _octal(field_bytes: bytes) -> int:
    text = field_bytes.rstrip(b"\0 ").strip()
    return int(text, 8) if text else 0


def _text(field_bytes: bytes) -> bytes:
    return field_bytes.split(b"\0", 1)[0]


def tarsum_v0(archive: bytes, extra: bytes = b"") -> str:
    """TarSum Version 0 of an uncompressed ustar archive (no PAX or GNU extensions; the layers
    built here have none), with `extra` hashed first."""
    sums: list[str] = []
    at = 0
    while at + 512 <= len(archive):
        block = archive[at : at + 512]
        if block == bytes(512):
            break
        name = _text(block[0:100])
        if block[257:263] == b"ustar\0" and _text(block[345:500]):
            name = _text(block[345:500]) + b"/" + name
        size = _octal(block[124:136])
        typeflag = block[156:157]
        device = typeflag in (b"3", b"4")
        header = b"".join(
            [
                b"name" + name,
                b"mode%d" % _octal(block[100:108]),
                b"uid%d" % _octal(block[108:116]),
                b"gid%d" % _octal(block[116:124]),
                b"size%d" % size,
                b"mtime%d" % _octal(block[136:148]),
                b"typeflag" + typeflag,
                b"linkname" + _text(block[157:257]),
                b"uname" + _text(block[265:297]),
                b"gname" + _text(block[297:329]),
                b"devmajor%d" % (_octal(block[329:337]) if device else 0),
                b"devminor%d" % (_octal(block[337:345]) if device else 0),
            ]
        )
        at += 512
        content = b""
        if typeflag not in (b"1", b"2", b"3", b"4", b"5", b"6"):
            content = archive[at : at + size]
            at += (size + 511) // 512 * 512
        sums.append(hashlib.sha256(header + content).hexdigest())
    final = hashlib.sha256(extra)
    for entry in sorted(sums):
        final.update(entry.encode())
    return "tarsum+sha256:" + final.hexdigest()


# -- images ----------------------------------------------------------------------------------


def build_tar(files: dict[str, bytes], *, end_blocks: bool = True) -> bytes:
    """A deterministic ustar archive: the parent directories of `files`, then the files.
    Without `end_blocks` the two zero blocks (and the record padding) are cut off, as Docker
    1.2's TarSum writer left them out."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        dirs = sorted({name.rsplit("/", 1)[0] + "/" for name in files if "/" in name})
        for directory in dirs:
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, MTIME
            tar.addfile(info)
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, MTIME
            info.uid = info.gid = 0
            tar.addfile(info, io.BytesIO(data))
    data = out.getvalue()
    if end_blocks:
        return data
    end = 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        for member in tar.getmembers():
            end = max(end, member.offset_data + (member.size + 511) // 512 * 512)
    return data[:end]


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)


def image_json(
    image_id: str, parent: str | None, *, cmd: str = "/bin/sh", size: int = 0, **extra: Any
) -> bytes:
    """Image JSON the way a Docker 1.2 daemon writes it (Go field order, compact)."""
    document: dict[str, Any] = {"id": image_id}
    if parent:
        document["parent"] = parent
    document.update(
        {
            "created": "2014-09-24T09:12:01.123456789Z",
            "container": secrets.token_hex(32),
            "container_config": {
                "Hostname": "",
                "User": "",
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": ["/bin/sh", "-c", cmd],
                "Image": parent or "",
                "WorkingDir": "",
            },
            "docker_version": "1.2.0",
            "config": {"Cmd": ["/bin/sh"], "Env": None},
            "architecture": "amd64",
            "os": "linux",
            "Size": size,
        }
    )
    document.update(extra)
    return json.dumps(document, separators=(",", ":")).encode()


@dataclass(frozen=True)
class V1Image:
    id: str
    parent: str | None
    json: bytes
    tar: bytes  # the uncompressed layer
    layer: bytes  # the bytes sent as the layer body (gzip of `tar`, or `tar` itself)

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


def new_id() -> str:
    return secrets.token_hex(32)


def make_image(
    parent: V1Image | None = None,
    *,
    files: dict[str, bytes] | None = None,
    compress: bool = True,
    end_blocks: bool = True,
    image_id: str | None = None,
    parent_id: str | None = None,
    **extra: Any,
) -> V1Image:
    """One v1 image: a fresh id (unless given), a small random file in its layer; its parent
    is `parent` (or the bare id `parent_id`)."""
    image_id = image_id or new_id()
    if files is None:
        files = {f"etc/{image_id[:12]}.conf": secrets.token_bytes(3000) + b"\n"}
    tar = build_tar(files, end_blocks=end_blocks)
    layer = gzip_bytes(tar) if compress else tar
    parent_id = parent.id if parent else parent_id
    document = image_json(image_id, parent_id, size=len(tar), **extra)
    return V1Image(image_id, parent_id, document, tar, layer)


def make_chain(count: int = 2) -> list[V1Image]:
    """`count` images, root first, each the parent of the next."""
    chain: list[V1Image] = []
    for _ in range(count):
        chain.append(make_image(chain[-1] if chain else None))
    return chain


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


def _expect(reply: Reply, *statuses: int) -> Reply:
    if reply.status not in statuses:
        raise V1FlowError(f"expected {statuses}, got {reply!r}")
    return reply


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
    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    replies: list[Reply] = field(default_factory=list)


@dataclass
class Pulled:
    json: bytes
    size: int
    layer: bytes
    json_headers: CIMultiDictProxy[str]


@dataclass
class PullResult:
    token: str | None
    endpoints: list[str]
    image_list: list[dict[str, Any]]
    tags: dict[str, str]
    ancestries: dict[str, list[str]] = field(default_factory=dict)
    images: dict[str, Pulled] = field(default_factory=dict)
    replies: list[Reply] = field(default_factory=list)


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


class V1Client:
    def __init__(self, http: HttpClient) -> None:
        self.http = http
        self.log: list[Reply] = []

    @property
    def host(self) -> str:
        url = self.http.make_url("/")
        return f"{url.host}:{url.port}"

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

    async def put_json(self, image: V1Image, auth: str | None, body: bytes | None = None) -> Reply:
        return await self.call(
            "PUT",
            f"/v1/images/{image.id}/json",
            auth=auth,
            headers={"Content-Type": "application/json"},
            data=image.json if body is None else body,
        )

    async def put_layer(
        self, image: V1Image, auth: str | None, body: bytes | None = None, chunked: bool = True
    ) -> Reply:
        data = image.layer if body is None else body
        return await self.call(
            "PUT",
            f"/v1/images/{image.id}/layer",
            auth=auth,
            headers={"Content-Type": "application/octet-stream"},
            data=chunks(data) if chunked else data,
        )

    async def put_checksum(
        self,
        image: V1Image,
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

    async def upload(self, image: V1Image, auth: str | None) -> None:
        """PUT json, layer (chunked) and checksum; each must answer 200."""
        _expect(await self.put_json(image, auth), 200)
        _expect(await self.put_layer(image, auth), 200)
        _expect(await self.put_checksum(image, auth), 200)

    async def put_tag(self, name: str, tag: str, image_id: str, auth: str | None) -> Reply:
        return await self.call(
            "PUT",
            f"/v1/repositories/{name}/tags/{tag}",
            auth=auth,
            headers={"Content-Type": "application/json"},
            data=json.dumps(image_id).encode(),
        )

    async def open_push(
        self, name: str, images: Sequence[V1Image], auth: str | None = EMPTY_BASIC
    ) -> str:
        """`PUT /v1/repositories/R/` declaring `images`; returns the `Token ...` header value."""
        reply = _expect(await self.start_push(name, [{"id": i.id} for i in images], auth), 200)
        return token_auth(reply.headers["X-Docker-Token"])

    async def push_images(
        self, name: str, images: Sequence[V1Image], tags: dict[str, str] | None = None
    ) -> str:
        """Open a push (no login), upload `images` in order, set `tags`; returns the token."""
        token = await self.open_push(name, images)
        for image in images:
            await self.upload(image, token)
        for tag, image_id in (tags or {}).items():
            _expect(await self.put_tag(name, tag, image_id, token), 200)
        return token

    # -- the life of a push (contract 7.3) -------------------------------------------------

    async def push(
        self,
        name: str,
        images: Sequence[V1Image],
        tags: dict[str, Sequence[str]] | None = None,
        auth: str = EMPTY_BASIC,
    ) -> PushResult:
        """`docker push H/name` of `images` (root first); `tags` maps image id -> its tags."""
        tags = tags or {}
        start = len(self.log)
        entries: list[dict[str, str]] = []
        for image in images:
            if tags.get(image.id):
                entries += [{"id": image.id, "Tag": t} for t in tags[image.id]]
            else:
                entries.append({"id": image.id})
        reply = _expect(await self.start_push(name, entries, auth), 200, 201)
        token = reply.headers.get("X-Docker-Token", "")
        endpoints = [e.strip() for e in reply.headers.get("X-Docker-Endpoints", "").split(",")]
        if not token:
            raise V1FlowError("Index response didn't contain an access token")
        if not [e for e in endpoints if e]:
            raise V1FlowError("Index response didn't contain any endpoints")
        result = PushResult(token, endpoints)
        for endpoint in endpoints:
            # In-process there is one origin; the endpoint must be it.
            if endpoint != self.host:
                raise V1FlowError(f"endpoint {endpoint!r} is not this registry {self.host!r}")
            for image in images:
                await self._push_image(name, image, tags.get(image.id, ()), result)
        urls = ", ".join(f"http://{e}/v1/" for e in endpoints)
        _expect(
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
        self, name: str, image: V1Image, image_tags: Sequence[str], result: PushResult
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
                _expect(reply, 200)
                _expect(await self.put_layer(image, auth), 200)
                _expect(await self.put_checksum(image, auth), 200)
                result.uploaded.append(image.id)
        for tag in image_tags:
            _expect(await self.put_tag(name, tag, image.id, auth), 200, 201)

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
    ) -> PullResult:
        """`docker pull H/name[:tag]`; `auth` is the Basic header of a logged-in user. With
        `resume`, every layer download is broken off half-way and resumed with
        `Range: bytes=n-SIZE`, as Docker's resumable reader does after a dropped connection.
        Without `index_token` the image list is asked for without `X-Docker-Token: true` and
        the registry calls carry `Authorization: Token ` with nothing after it, as Docker 1.2
        sends when the index returned no token."""
        start = len(self.log)
        have = set() if have is None else have
        headers = {"X-Docker-Token": "true"}
        if not index_token:
            headers = {}
        listed = await self.call(
            "GET", f"/v1/repositories/{name}/images", auth=auth, headers=headers
        )
        if listed.status == 401:
            raise V1FlowError(f"Authentication is required. {listed!r}")
        if listed.status == 404:
            raise V1FlowError(f"Error: image {name} not found {listed!r}")
        _expect(listed, 200)
        tokens = listed.headers.getall("X-Docker-Token", []) if index_token else []
        endpoint_header = listed.headers.get("X-Docker-Endpoints")
        endpoints = [e.strip() for e in (endpoint_header or self.host).split(",")]
        registry_auth = "Token " + ",".join(tokens)  # "Token " alone when no token came
        result = PullResult(tokens[0] if tokens else None, endpoints, listed.json(), tags={})
        for endpoint in endpoints:
            if endpoint != self.host:
                raise V1FlowError(f"endpoint {endpoint!r} is not this registry {self.host!r}")
        tags_reply = await self.call(
            "GET", f"/v1/repositories/{library(name)}/tags", auth=registry_auth
        )
        if tags_reply.status == 404:
            raise V1FlowError(f"Repository not found {tags_reply!r}")
        _expect(tags_reply, 200)
        result.tags = tags_reply.json()
        if tag is not None:
            if tag not in result.tags:
                raise V1FlowError(f"Tag {tag} not found in repository {name}")
            wanted = [result.tags[tag]]
        else:
            wanted = list(dict.fromkeys(result.tags.values()))
        for image_id in wanted:
            ancestry = _expect(
                await self.call("GET", f"/v1/images/{image_id}/ancestry", auth=registry_auth), 200
            ).json()
            result.ancestries[image_id] = ancestry
            for ancestor in reversed(ancestry):
                if ancestor in have:
                    continue
                result.images[ancestor] = await self._pull_image(ancestor, registry_auth, resume)
                have.add(ancestor)
        result.replies = self.log[start:]
        return result

    async def _pull_image(self, image_id: str, auth: str, resume: bool) -> Pulled:
        meta = _expect(await self.call("GET", f"/v1/images/{image_id}/json", auth=auth), 200)
        size_header = meta.headers.get("X-Docker-Size")
        size = int(size_header) if size_header is not None else -1
        body_id = meta.json()["id"]
        layer = await self._download(body_id, auth, size, resume)
        return Pulled(meta.body, size, layer, meta.headers)

    async def _download(self, image_id: str, auth: str, size: int, resume: bool) -> bytes:
        path = f"/v1/images/{image_id}/layer"
        headers = {"User-Agent": USER_AGENT, "Authorization": auth}
        async with self.http.get(path, headers=headers, allow_redirects=False) as resp:
            first = Reply("GET", path, resp.status, resp.headers, b"", headers)
            if resp.status != 200:
                first.body = await resp.read()
                self.log.append(first)
                raise V1FlowError(f"layer: expected 200, got {first!r}")
            resumable = resp.headers.get("Accept-Ranges") == "bytes" and size > 0
            if not (resume and resumable and size > 1):
                first.body = await resp.read()
                self.log.append(first)
                return first.body
            # The connection "breaks" after half the layer.
            cut = size // 2
            first.body = await resp.content.readexactly(cut)
            self.log.append(first)
            resp.close()
        rest = await self.call("GET", path, auth=auth, headers={"Range": f"bytes={cut}-{size}"})
        _expect(rest, 206)
        return first.body + rest.body


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
