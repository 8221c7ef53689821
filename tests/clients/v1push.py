"""A small Docker v1 registry client for tests: Docker 1.2's push flow and its pull reads.

Push (contract v1-protocol.md 7.3), byte for byte what the Docker 1.2 daemon sends:

1. `PUT /v1/repositories/R/` with `X-Docker-Token: true`, `Authorization: Basic Og==` (no login)
   and the (image, tag) list, root first, `Tag` with a capital T; the answer must carry
   `X-Docker-Token` and `X-Docker-Endpoints`.
2. Per image, on the endpoint: `GET images/X/json` (200 = already there, skip), `PUT json`,
   `PUT layer` (chunked, no Content-Length), `PUT checksum` with `X-Docker-Checksum` (TarSum v0,
   the JSON as prefix) and `X-Docker-Checksum-Payload` (sha256 of json + LF + layer), then
   `PUT repositories/R/tags/T` for each tag of that image, every call with `Token <token>`.
3. `PUT /v1/repositories/R/images` with body `[]`: exactly 204.

Pull reads (7.2): the index image list with `X-Docker-Token: true`, then tags, ancestry, json and
layer with the read token. Every answer is checked the way the Docker client checks it; a
failure raises `V1ProtocolError` with the request and the answer.

Images are built here too (`build_chain`): real tar layers, gzip-compressed, with Docker 1.2
style JSON (`id`, `parent`, `created`, `container_config`, `config`, ...).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import json
import random
import secrets
import tarfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from moorage.content.tarsum import tarsum

USER_AGENT = (
    "docker/1.2.0 go/go1.3.1 git-commit/fa7b24f kernel/3.13.0-24-generic os/linux arch/amd64"
)
EMPTY_BASIC = "Basic Og=="  # Docker 1.2 when the user never logged in
CHUNK = 32 * 1024
#: Fixed mtime for layer entries (2014-09-24T09:12:01Z, the Docker 1.2 era).
MTIME = 1411549921


class V1ProtocolError(AssertionError):
    """A v1 answer a Docker 1.2 client would not accept."""


@dataclass(frozen=True)
class Response:
    method: str
    path: str
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def __str__(self) -> str:
        return f"{self.method} {self.path} -> {self.status} {self.body[:300]!r}"


# ---------------------------------------------------------------------------------------------
# Images


@dataclass(frozen=True)
class Entry:
    """One tar member of a layer: a directory, a regular file or a symlink."""

    name: str
    kind: str = "file"  # file | dir | symlink
    data: bytes = b""
    mode: int = 0o644
    target: str = ""


def file(name: str, data: bytes, mode: int = 0o644) -> Entry:
    return Entry(name, "file", data, mode)


def directory(name: str, mode: int = 0o755) -> Entry:
    return Entry(name.rstrip("/") + "/", "dir", mode=mode)


def symlink(name: str, target: str) -> Entry:
    return Entry(name, "symlink", mode=0o777, target=target)


def make_tar(entries: Sequence[Entry], terminated: bool = True) -> bytes:
    """An uncompressed tar as Docker 1.2 exported layers: relative names, directories with a
    trailing slash, root-owned, fixed mtime. `terminated=False` leaves out the end-of-archive
    blocks, as Docker 1.2's push stream did (its TarSum writer never closed the archive)."""
    out = io.BytesIO()
    end = 0
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.mode = entry.mode
            info.mtime = MTIME
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if entry.kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif entry.kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = entry.target
                tar.addfile(info)
            else:
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))
        end = tar.offset
    return out.getvalue() if terminated else out.getvalue()[:end]


def gzip_bytes(data: bytes, flush_every: int | None = None) -> bytes:
    """gzip of `data`; with `flush_every`, a sync flush after every that many input bytes, as
    Docker 1.2's push wrote layers (a gzip writer flushed after every chunk)."""
    if flush_every is None:
        return gzip.compress(data, compresslevel=6, mtime=0)
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    out = bytearray()
    for offset in range(0, len(data), flush_every):
        out += compressor.compress(data[offset : offset + flush_every])
        out += compressor.flush(zlib.Z_SYNC_FLUSH)
    out += compressor.flush(zlib.Z_FINISH)
    return bytes(out)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class V1Image:
    """A v1 image as a client holds it: its JSON bytes and its layer."""

    id: str
    parent: str | None
    json: bytes  # exactly what PUT json sends
    tar: bytes  # the uncompressed layer
    layer: bytes  # what PUT layer sends (gzip of `tar`)

    @property
    def document(self) -> dict[str, Any]:
        return json.loads(self.json)  # type: ignore[no-any-return]

    @property
    def payload_checksum(self) -> str:
        """`X-Docker-Checksum-Payload`: sha256(json || LF || layer as sent)."""
        return "sha256:" + hashlib.sha256(self.json + b"\n" + self.layer).hexdigest()

    @property
    def tarsum(self) -> str:
        """`X-Docker-Checksum`: TarSum v0 of the uncompressed layer with the JSON as prefix."""
        return tarsum(self.tar, extra=self.json)

    @property
    def blob_digest(self) -> str:
        """The v2 blob digest of the layer."""
        return sha256_digest(self.layer)

    @property
    def diff_id(self) -> str:
        return sha256_digest(self.tar)


def new_image_id() -> str:
    """A random 256-bit id, as Docker generates them (never 64 hex digits of one number)."""
    while True:
        candidate = secrets.token_hex(32)
        if not candidate.isdigit():
            return candidate


def build_chain(
    layers: Sequence[Sequence[Entry]],
    commands: Sequence[Sequence[str]],
    config: dict[str, Any] | None = None,
    created: Sequence[str] | None = None,
    parent: V1Image | None = None,
    docker12_stream: bool = False,
) -> list[V1Image]:
    """One image per layer, root first, each the parent of the next, with fresh random ids.

    `commands[i]` becomes image i's `container_config.Cmd` (what `docker history` shows);
    `config` is every image's run configuration (Docker copies it up the chain). With
    `parent`, the first new image sits on it (the result then starts above `parent`).
    `docker12_stream` makes every layer body the way Docker 1.2 streamed it: an unterminated
    tar, gzip-flushed after every 32 KiB.
    """
    assert len(layers) == len(commands)
    config = config or {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]}
    images: list[V1Image] = []
    parent_id = parent.id if parent else None
    for i, (entries, cmd) in enumerate(zip(layers, commands, strict=True)):
        image_id = new_image_id()
        tar = make_tar(entries, terminated=not docker12_stream)
        document: dict[str, Any] = {"id": image_id}
        if parent_id:
            document["parent"] = parent_id
        document.update(
            {
                "created": created[i] if created else f"2014-09-24T09:12:{i + 1:02d}.5+00:00",
                "container": secrets.token_hex(32),
                "container_config": {
                    "Hostname": "b0b5bd5ff1a4",
                    "Cmd": list(cmd),
                    "Env": config.get("Env"),
                    "Image": parent_id or "",
                },
                "docker_version": "1.2.0",
                "author": "moorage tests <tests@moorage.invalid>",
                "config": config,
                "architecture": "amd64",
                "os": "linux",
                "Size": len(tar),
            }
        )
        body = json.dumps(document, separators=(",", ":")).encode()
        layer = gzip_bytes(tar, CHUNK if docker12_stream else None)
        images.append(V1Image(image_id, parent_id, body, tar, layer))
        parent_id = image_id
    return images


def random_bytes(size: int, seed: str) -> bytes:
    return random.Random(seed).randbytes(size)


# ---------------------------------------------------------------------------------------------
# The client


@dataclass
class PushResult:
    token: str
    endpoints: list[str]
    uploaded: list[str] = field(default_factory=list)  # ids whose json/layer/checksum went up
    skipped: list[str] = field(default_factory=list)  # ids the server already had
    calls: list[Response] = field(default_factory=list)


class V1Client:
    """Docker 1.2's registry session against one server (`http://HOST:PORT`)."""

    def __init__(
        self, url: str, timeout: float = 60.0, context: Callable[[], str] | None = None
    ) -> None:
        """`context` adds to failure messages (a server log tail, say)."""
        parts = urlsplit(url)
        assert parts.scheme == "http" and parts.hostname and parts.port, url
        self.url = url.rstrip("/")
        self.host = parts.hostname
        self.port = parts.port
        self.timeout = timeout
        self.context = context

    # -- HTTP --------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes | Iterator[bytes] | None = None,
        chunked: bool = False,
    ) -> Response:
        """One request on a fresh connection (Docker 1.2 sends `Connection: close`)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            all_headers = {"User-Agent": USER_AGENT, "Connection": "close", **(headers or {})}
            if chunked:
                all_headers["Transfer-Encoding"] = "chunked"
                conn.request(method, path, body=body, headers=all_headers, encode_chunked=True)
            else:
                if body is None and method in ("PUT", "POST"):
                    all_headers.setdefault("Content-Length", "0")
                conn.request(method, path, body=body, headers=all_headers)
            resp = conn.getresponse()
            data = resp.read()
            return Response(
                method,
                path,
                resp.status,
                {k.lower(): v for k, v in resp.getheaders()},
                data,
            )
        finally:
            conn.close()

    @staticmethod
    def _token_header(token: str | None) -> dict[str, str]:
        # Docker 1.2 sends `Token ` followed by nothing when it holds no token.
        return {"Authorization": f"Token {token}" if token else "Token "}

    def fail(self, message: str) -> V1ProtocolError:
        extra = f"\n{self.context()}" if self.context else ""
        return V1ProtocolError(message + extra)

    def _expect(self, resp: Response, *statuses: int) -> Response:
        if resp.status not in statuses:
            raise self.fail(f"expected {statuses}: {resp}")
        return resp

    # -- push --------------------------------------------------------------------------------

    def push(
        self,
        repository: str,
        images: Sequence[V1Image],
        tags: dict[str, str],
        chunk: int = CHUNK,
    ) -> PushResult:
        """`docker push HOST/repository` of `images` (root first) with `tags` (tag -> id).

        `repository` is used as typed (one component stays one component), as Docker 1.2
        does on every push call.
        """
        by_id: dict[str, list[str]] = {}
        for tag, image_id in tags.items():
            by_id.setdefault(image_id, []).append(tag)
        listing: list[dict[str, str]] = []
        for image in images:
            if image.id in by_id:
                listing.extend({"id": image.id, "Tag": t} for t in by_id[image.id])
            else:
                listing.append({"id": image.id})
        body = json.dumps(listing).encode()
        start = self.request(
            "PUT",
            f"/v1/repositories/{repository}/",
            {
                "Authorization": EMPTY_BASIC,
                "X-Docker-Token": "true",
                "Content-Type": "application/json",
                "Content-Length": str(len(body)),
            },
            body,
        )
        self._expect(start, 200, 201)
        token = start.header("X-Docker-Token")
        endpoints_header = start.header("X-Docker-Endpoints")
        if not token:
            raise self.fail(f"Index response didn't contain an access token: {start}")
        if not endpoints_header:
            raise self.fail(f"Index response didn't contain any endpoints: {start}")
        endpoints = [e.strip() for e in endpoints_header.split(",") if e.strip()]
        result = PushResult(token, endpoints, calls=[start])
        auth = self._token_header(token)
        for image in images:
            probe = self.request("GET", f"/v1/images/{image.id}/json", auth)
            result.calls.append(probe)
            if probe.status == 200:
                result.skipped.append(image.id)
            elif self._push_image(image, auth, result, chunk):
                result.uploaded.append(image.id)
            else:
                result.skipped.append(image.id)
            for tag in by_id.get(image.id, []):
                self.put_tag(repository, tag, image.id, token, result.calls)
        finish = self.request(
            "PUT",
            f"/v1/repositories/{repository}/images",
            {
                "Authorization": EMPTY_BASIC,
                "X-Docker-Token": "true",
                "X-Docker-Endpoints": ", ".join(f"http://{e}/v1/" for e in endpoints),
                "Content-Type": "application/json",
            },
            b"[]",
        )
        result.calls.append(finish)
        self._expect(finish, 204)
        return result

    def _push_image(
        self, image: V1Image, auth: dict[str, str], result: PushResult, chunk: int
    ) -> bool:
        """json, layer, checksum; False when the server says the image already exists."""
        put_json = self.request(
            "PUT",
            f"/v1/images/{image.id}/json",
            {**auth, "Content-Type": "application/json"},
            image.json,
        )
        result.calls.append(put_json)
        if put_json.status != 200:
            try:
                if put_json.json() == {"error": "Image already exists"}:
                    return False
            except ValueError:
                pass
            raise self.fail(f"PUT json failed: {put_json}")

        def pieces() -> Iterator[bytes]:
            for offset in range(0, len(image.layer), chunk):
                yield image.layer[offset : offset + chunk]

        put_layer = self.request(
            "PUT",
            f"/v1/images/{image.id}/layer",
            {**auth, "Content-Type": "application/octet-stream"},
            pieces(),
            chunked=True,
        )
        result.calls.append(put_layer)
        self._expect(put_layer, 200)
        put_checksum = self.request(
            "PUT",
            f"/v1/images/{image.id}/checksum",
            {
                **auth,
                "X-Docker-Checksum": image.tarsum,
                "X-Docker-Checksum-Payload": image.payload_checksum,
            },
        )
        result.calls.append(put_checksum)
        self._expect(put_checksum, 200)
        return True

    def put_tag(
        self,
        repository: str,
        tag: str,
        image_id: str,
        token: str | None = None,
        calls: list[Response] | None = None,
    ) -> Response:
        """`PUT /v1/repositories/R/tags/T` with body `"<id>"`."""
        body = json.dumps(image_id).encode()
        resp = self.request(
            "PUT",
            f"/v1/repositories/{repository}/tags/{tag}",
            {
                **self._token_header(token),
                "Content-Type": "application/json",
                "Content-Length": str(len(body)),
            },
            body,
        )
        if calls is not None:
            calls.append(resp)
        return self._expect(resp, 200, 201)

    def write_token(self, repository: str, images: Sequence[str] = ()) -> str:
        """Open a push session (as step 1 of a push) and return its write token."""
        body = json.dumps([{"id": i} for i in images]).encode()
        resp = self.request(
            "PUT",
            f"/v1/repositories/{repository}/",
            {
                "Authorization": EMPTY_BASIC,
                "X-Docker-Token": "true",
                "Content-Type": "application/json",
            },
            body,
        )
        self._expect(resp, 200, 201)
        token = resp.header("X-Docker-Token")
        assert token, resp
        return token

    # -- pull --------------------------------------------------------------------------------

    def images(self, repository: str) -> tuple[list[dict[str, Any]], str | None, Response]:
        """`GET /v1/repositories/R/images` with `X-Docker-Token: true`: (list, token, answer)."""
        resp = self._expect(
            self.request(
                "GET", f"/v1/repositories/{repository}/images", {"X-Docker-Token": "true"}
            ),
            200,
        )
        listed = resp.json()
        if not isinstance(listed, list):
            raise self.fail(f"image list is not a list: {resp}")
        return listed, resp.header("X-Docker-Token"), resp

    @staticmethod
    def library(repository: str) -> str:
        """L(N): the name Docker 1.2 uses on the tags call."""
        return repository if "/" in repository else f"library/{repository}"

    def tags(self, repository: str, token: str | None = None) -> dict[str, str]:
        resp = self.request(
            "GET", f"/v1/repositories/{self.library(repository)}/tags", self._token_header(token)
        )
        tags = self._expect(resp, 200).json()
        if not isinstance(tags, dict):
            raise self.fail(f"tag map is not an object: {resp}")
        return tags

    def tag(self, repository: str, tag: str, token: str | None = None) -> str:
        resp = self.request(
            "GET",
            f"/v1/repositories/{self.library(repository)}/tags/{tag}",
            self._token_header(token),
        )
        image_id = self._expect(resp, 200).json()
        assert isinstance(image_id, str), resp
        return image_id

    def ancestry(self, image_id: str, token: str | None = None) -> list[str]:
        resp = self.request("GET", f"/v1/images/{image_id}/ancestry", self._token_header(token))
        ids = self._expect(resp, 200).json()
        if not isinstance(ids, list) or not ids or ids[0] != image_id:
            raise self.fail(f"ancestry must start with the image itself: {resp}")
        return ids

    def image_json(self, image_id: str, token: str | None = None) -> tuple[bytes, int]:
        """(JSON bytes, X-Docker-Size), with Docker 1.2's checks: 200, a decimal size, a JSON
        object whose `id` is the image's."""
        resp = self._expect(
            self.request("GET", f"/v1/images/{image_id}/json", self._token_header(token)), 200
        )
        size = resp.header("X-Docker-Size")
        if size is None or not size.isdigit():
            raise self.fail(f"X-Docker-Size missing or not a decimal: {resp.headers}")
        document = resp.json()
        if not isinstance(document, dict) or document.get("id") != image_id:
            raise self.fail(f"image JSON does not describe {image_id}: {resp}")
        return resp.body, int(size)

    def layer(self, image_id: str, token: str | None = None) -> bytes:
        resp = self._expect(
            self.request("GET", f"/v1/images/{image_id}/layer", self._token_header(token)), 200
        )
        return resp.body

    def pull(self, repository: str, tag: str) -> PulledImage:
        """Docker 1.2's pull of one tag: image list and token, tag map, ancestry, then json and
        layer of every ancestor from the root up."""
        listed, token, _ = self.images(repository)
        tags = self.tags(repository, token)
        if tag not in tags:
            raise self.fail(f"Tag {tag} not found in repository {repository}: {tags}")
        top = tags[tag]
        ancestry = self.ancestry(top, token)
        chain: list[PulledLayer] = []
        for image_id in reversed(ancestry):
            body, size = self.image_json(image_id, token)
            layer = self.layer(image_id, token)
            chain.append(PulledLayer(image_id, body, size, layer))
        return PulledImage(repository, tag, top, listed, tags, ancestry, chain)


@dataclass(frozen=True)
class PulledLayer:
    id: str
    json: bytes
    size: int  # X-Docker-Size
    layer: bytes

    @property
    def document(self) -> dict[str, Any]:
        return json.loads(self.json)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class PulledImage:
    repository: str
    tag: str
    id: str
    listed: list[dict[str, Any]]  # the index image list
    tags: dict[str, str]
    ancestry: list[str]  # top first, root last
    chain: list[PulledLayer]  # root first
