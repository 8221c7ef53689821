"""The S3 `ObjectDriver`: objects in one bucket, under an optional prefix (aiobotocore).

A writer is a multipart upload at the object's own key, created with its first part; its
`commit` is CompleteMultipartUpload, so the uploaded object simply becomes the object (no byte
is copied). Parts must be at least 5 MiB (but the last) and there are at most 10,000, while an
upload's size is unknown until it ends: part n is `part_size(n)`, 5 MiB doubling every 2,000
parts (a 100 GiB object takes about 6,700 parts; the schedule reaches about 300 GiB). Bytes
that do not fill a part yet are kept in memory and, when the caller asks for the writer's
state, stored as small "tail" objects `<key>.tail.<id>` that the next part starts with.
Memory stays flat at any object size: a writer holds at most about one part, a reader one
chunk.

The state records the ETag of every part. CompleteMultipartUpload lists exactly those, so a
part that a writer that lost its lease uploaded late over one of them makes the commit fail
(InvalidPart: `StaleWriter`) rather than letting its bytes in. What this cannot stop, and what
the design note says about it: docs/design/storage-drivers.md.

Works with AWS and S3-compatible servers (path-style addressing when an endpoint is given;
checksums only when required; Content-MD5 on DeleteObjects, which Swift's s3api requires).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from aiobotocore.config import AioConfig  # type: ignore[import-untyped]
from aiobotocore.session import get_session  # type: ignore[import-untyped]
from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

from moorage.storage import paths
from moorage.storage.base import PathNotFound, StorageError
from moorage.storage.objects import (
    REDIRECT_EXPIRES,
    Listed,
    ObjectDriver,
    ObjectWriter,
    StaleWriter,
    decode_state,
    encode_state,
)

DRIVER = "s3"
MIN_PART = 5 << 20
PARTS_PER_STEP = 2000
MAX_PARTS = 10_000
MAX_TAIL_SEGMENTS = 16  # past this, the tail objects are merged into one on the next state()
READ_CHUNK = 1 << 20
COPY_MAX = 5 << 30  # the largest object CopyObject copies; larger ones are copied in parts
DELETE_BATCH = 1000
# A part upload that takes longer is abandoned (the connection is closed before the part is
# whole). Keep it under two thirds of `uploads.lease`: see the design note.
PART_TIMEOUT = 30.0
LIST_PAGE = 1000  # keys per ListObjectsV2 page (the most S3 returns)
_TAIL = re.compile(r"\.tail\.[0-9a-f]{32}$")  # a writer's tail object: no object of its own


def part_size(number: int) -> int:
    """Size of part `number` (1-based) of a writer's multipart upload, all but the last."""
    if not 1 <= number <= MAX_PARTS:
        raise StorageError(f"an upload has at most {MAX_PARTS} parts")
    return MIN_PART << ((number - 1) // PARTS_PER_STEP)


def _check_key(key: str) -> None:
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") or "\0" in p for p in parts):
        raise StorageError(f"invalid storage key {key!r}")


def _valid_key(key: str) -> bool:
    try:
        _check_key(key)
    except StorageError:
        return False
    return True


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _missing(exc: ClientError) -> bool:
    return _code(exc) in ("NoSuchKey", "404", "NotFound")


def _content_md5(params: dict[str, Any], **_: Any) -> None:
    """Swift's s3api wants Content-MD5 on DeleteObjects; botocore >= 1.36 sends a CRC32."""
    body = params.get("body") or b""
    body = body.encode() if isinstance(body, str) else body
    params["headers"]["Content-MD5"] = base64.b64encode(hashlib.md5(body).digest()).decode()


class S3ObjectWriter:
    def __init__(
        self,
        driver: S3Driver,
        key: str,
        upload: str | None,
        etags: list[str],
        tail: list[tuple[str, int]],
    ) -> None:
        self._driver = driver
        self._key = key
        self._name = driver._name(key)
        self._upload = upload
        self._etags = etags
        self._tail = tail  # (id, size) of the tail objects, in order
        self._pending = bytearray()  # bytes after the tail objects, in memory only
        self._size = sum(part_size(n) for n in range(1, len(etags) + 1))
        self._size += sum(size for _, size in tail)
        self._open = True

    @property
    def size(self) -> int:
        return self._size

    def _tail_name(self, token: str) -> str:
        return f"{self._name}.tail.{token}"

    def _check_open(self) -> None:
        if not self._open:
            raise StorageError(f"writer of {self._key} is closed")

    async def write(self, data: bytes) -> None:
        self._check_open()
        self._pending += data
        self._size += len(data)
        while self._buffered() >= part_size(len(self._etags) + 1):
            await self._upload_part(part_size(len(self._etags) + 1))

    def expect(self, size: int) -> None:
        pass  # every part is sized by its number, whatever the object's size

    def blocking_write(self) -> None:
        return None  # parts are sent from the event loop

    def _buffered(self) -> int:
        return sum(size for _, size in self._tail) + len(self._pending)

    async def _take(self, size: int) -> bytes:
        """The next `size` bytes: the tail objects, then pending bytes. The tail objects read
        are forgotten (and deleted by the caller)."""
        body = bytearray()
        for token, _ in self._tail:
            body += await self._driver._get(self._tail_name(token), StaleWriter)
        take = size - len(body)
        body += self._pending[:take]
        del self._pending[:take]
        return bytes(body)

    async def _upload_part(self, size: int) -> None:
        client, bucket = self._driver.client, self._driver.bucket
        old_tail = self._tail
        body = await self._take(size)
        if self._upload is None:
            created = await client.create_multipart_upload(Bucket=bucket, Key=self._name)
            self._upload = str(created["UploadId"])
        number = len(self._etags) + 1
        try:
            async with asyncio.timeout(self._driver.part_timeout):
                done = await client.upload_part(
                    Bucket=bucket,
                    Key=self._name,
                    UploadId=self._upload,
                    PartNumber=number,
                    Body=body,
                )
        except TimeoutError as exc:
            raise StorageError(f"a part of {self._key} took too long to upload") from exc
        except ClientError as exc:
            if _code(exc) == "NoSuchUpload":
                raise StaleWriter(f"the upload of {self._key} is gone") from exc
            raise
        self._etags.append(str(done["ETag"]).strip('"'))
        self._tail = []
        await self._driver._delete_names([self._tail_name(t) for t, _ in old_tail])

    async def state(self) -> bytes:
        self._check_open()
        if self._pending:
            merged = self._tail
            if len(self._tail) >= MAX_TAIL_SEGMENTS:
                data = await self._take(self._buffered())
                self._tail = []
            else:
                data, merged = bytes(self._pending), []
                self._pending.clear()
            token = uuid.uuid4().hex
            await self._driver.client.put_object(
                Bucket=self._driver.bucket, Key=self._tail_name(token), Body=data
            )
            self._tail.append((token, len(data)))
            await self._driver._delete_names([self._tail_name(t) for t, _ in merged])
        return encode_state(
            DRIVER, upload=self._upload, etags=self._etags, tail=self._tail, size=self._size
        )

    async def close(self) -> None:
        self._open = False
        self._pending.clear()

    async def commit(self, target: str | None = None) -> str:
        """As `ObjectWriter.commit`; `target` is ignored (the object would be copied there)."""
        self._check_open()
        if target is not None and not paths.is_content_addressed(target):
            raise ValueError(f"a commit's target must be content-addressed: {target}")
        try:
            if paths.is_content_addressed(self._key) and await self._driver.stat(self._key):
                await self._free()  # the same content is there already
                return self._key
            if not self._etags:
                body = await self._take(self._buffered())
                await self._driver.client.put_object(
                    Bucket=self._driver.bucket, Key=self._name, Body=body
                )
            else:
                await self._complete()
            await self._free()
        finally:
            await self.close()
        return self._key

    async def _complete(self) -> None:
        if self._buffered():
            await self._upload_part(self._buffered())
        parts = [{"PartNumber": n, "ETag": f'"{e}"'} for n, e in enumerate(self._etags, 1)]
        try:
            await self._driver.client.complete_multipart_upload(
                Bucket=self._driver.bucket,
                Key=self._name,
                UploadId=self._upload,
                MultipartUpload={"Parts": parts},
            )
        except ClientError as exc:
            if _code(exc) not in ("InvalidPart", "NoSuchUpload", "InvalidPartOrder"):
                raise
            await self._free()
            raise StaleWriter(
                f"a part of {self._key} was replaced by another writer or the upload is gone:"
                " nothing was committed"
            ) from exc
        self._upload = None

    async def _free(self) -> None:
        """Delete the tail objects and abort every unfinished upload of this key: this
        writer's, and any that a writer that lost its lease started."""
        self._pending.clear()
        self._tail = []
        await self._driver._free_writers(self._name)

    async def cancel(self) -> None:
        await self._free()
        await self.close()


@functools.cache
def _session() -> Any:
    """The process's botocore session: a new one loads botocore's data files again (50 to
    150 ms per client made), and a session holds no connection or event loop, only what it
    loaded and the credential chain."""
    return get_session()


class S3Driver:
    def __init__(
        self, client: Any, bucket: str, prefix: str = "", part_timeout: float = PART_TIMEOUT
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.part_timeout = part_timeout
        self.list_page = LIST_PAGE
        self._exit: contextlib.AsyncExitStack | None = None

    @classmethod
    async def open(
        cls,
        bucket: str | None,
        *,
        endpoint: str | None = None,
        region: str | None = None,
        prefix: str = "",
        accesskey: str | None = None,
        secretkey: str | None = None,
        part_timeout: float = PART_TIMEOUT,
    ) -> S3Driver:
        """A driver with its own client (`close` it). Without `accesskey`/`secretkey`,
        credentials come from the AWS environment and credential chain; without `region`, from
        AWS_DEFAULT_REGION (us-east-1 when there is none and an endpoint is given)."""
        if not bucket:
            raise StorageError("the s3 driver needs a bucket (storage.s3.bucket)")
        config = AioConfig(
            signature_version="s3v4",
            # S3-compatible servers rarely have wildcard DNS for bucket.host
            s3={"addressing_style": "path" if endpoint else "auto"},
            # Swift (and others) refuse botocore's default aws-chunked bodies with trailers
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"mode": "standard", "max_attempts": 5},
        )
        session = _session()
        region = region or session.get_config_variable("region")
        stack = contextlib.AsyncExitStack()
        client = await stack.enter_async_context(
            session.create_client(
                "s3",
                endpoint_url=endpoint,
                region_name=region or ("us-east-1" if endpoint else None),
                aws_access_key_id=accesskey,
                aws_secret_access_key=secretkey,
                config=config,
            )
        )
        client.meta.events.register("before-call.s3.DeleteObjects", _content_md5)
        driver = cls(client, bucket, prefix, part_timeout)
        driver._exit = stack
        return driver

    async def close(self) -> None:
        if self._exit is not None:
            await self._exit.aclose()
            self._exit = None

    async def create_bucket(self) -> None:
        """Create the bucket unless it is there (Swift answers 409 BucketAlreadyOwnedByYou)."""
        try:
            await self.client.create_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _code(exc) != "BucketAlreadyOwnedByYou":
                raise

    async def check(self) -> None:
        """The bucket answers (HeadBucket): the endpoint is up, the bucket there, the
        credentials good."""
        try:
            await self.client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"bucket {self.bucket}: {exc}") from exc

    def _name(self, key: str) -> str:
        _check_key(key)
        return self.prefix + key

    async def stat(self, key: str) -> int | None:
        try:
            head = await self.client.head_object(Bucket=self.bucket, Key=self._name(key))
        except ClientError as exc:
            if _missing(exc):
                return None
            raise
        return int(head["ContentLength"])

    async def reader(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        name = self._name(key)
        if length == 0 or offset < 0 or (length is not None and length < 0):
            if await self.stat(key) is None:
                raise PathNotFound(key)
            return
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": name}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            args["Range"] = f"bytes={offset}-{end}"
        try:
            response = await self.client.get_object(**args)
        except ClientError as exc:
            if _missing(exc):
                raise PathNotFound(key) from exc
            if _code(exc) == "InvalidRange":  # at or past the end: nothing to read
                if await self.stat(key) is None:
                    raise PathNotFound(key) from exc
                return
            raise
        body = response["Body"]
        try:
            async for chunk in body.iter_chunks(READ_CHUNK):
                yield chunk
        finally:
            body.close()

    async def _get(self, name: str, missing: type[StorageError] = PathNotFound) -> bytes:
        try:
            response = await self.client.get_object(Bucket=self.bucket, Key=name)
        except ClientError as exc:
            if _missing(exc):
                raise missing(name) from exc
            raise
        async with response["Body"] as body:
            return bytes(await body.read())

    async def get(self, key: str) -> bytes:
        return await self._get(self._name(key))

    async def put(self, key: str, data: bytes) -> None:
        # Swift's s3api has no conditional PUT (If-None-Match: 501): check first. Two puts of
        # one content-addressed key that race both write the same bytes.
        if paths.is_content_addressed(key) and await self.stat(key) is not None:
            return
        await self.client.put_object(Bucket=self.bucket, Key=self._name(key), Body=data)

    async def writer(self, key: str, state: bytes | None = None) -> S3ObjectWriter:
        self._name(key)
        if state is None:
            return S3ObjectWriter(self, key, None, [], [])
        fields = decode_state(DRIVER, state)
        try:
            upload = fields["upload"]
            etags = [str(e) for e in fields["etags"]]
            tail = [(str(t), int(s)) for t, s in fields["tail"]]
            size = int(fields["size"])
        except (KeyError, TypeError, ValueError) as exc:
            raise StorageError("malformed s3 writer state") from exc
        writer = S3ObjectWriter(self, key, None if upload is None else str(upload), etags, tail)
        if writer.size != size:
            raise StorageError("inconsistent s3 writer state")
        return writer

    async def move(self, source: str, target: str) -> bool:
        size = await self.stat(source)
        if size is None:
            raise PathNotFound(source)
        if paths.is_content_addressed(target) and await self.stat(target) is not None:
            return False
        src = {"Bucket": self.bucket, "Key": self._name(source)}
        if size <= COPY_MAX:
            await self.client.copy_object(
                Bucket=self.bucket, Key=self._name(target), CopySource=src
            )
        else:
            await self._copy_in_parts(src, self._name(target), size)
        await self.delete(source)
        return True

    async def _copy_in_parts(self, source: dict[str, str], target: str, size: int) -> None:
        step = max(MIN_PART, -(-size // MAX_PARTS))
        created = await self.client.create_multipart_upload(Bucket=self.bucket, Key=target)
        upload = created["UploadId"]
        try:
            parts = []
            for number, start in enumerate(range(0, size, step), 1):
                end = min(start + step, size) - 1
                done = await self.client.upload_part_copy(
                    Bucket=self.bucket,
                    Key=target,
                    UploadId=upload,
                    PartNumber=number,
                    CopySource=source,
                    CopySourceRange=f"bytes={start}-{end}",
                )
                parts.append({"PartNumber": number, "ETag": done["CopyPartResult"]["ETag"]})
            await self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=target, UploadId=upload, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            await self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=target, UploadId=upload
            )
            raise

    async def _delete_names(self, names: list[str]) -> None:
        for start in range(0, len(names), DELETE_BATCH):
            batch = [{"Key": n} for n in names[start : start + DELETE_BATCH]]
            await self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
            )

    async def _list(self, prefix: str) -> list[str]:
        names: list[str] = []
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        async for page in pages:
            names.extend(str(o["Key"]) for o in page.get("Contents", []))
        return names

    async def _abort_uploads(self, name: str, below: bool) -> None:
        """Abort the unfinished multipart uploads of `name` (and below `name/` if `below`)."""
        pages = self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=name
        )
        async for page in pages:
            for upload in page.get("Uploads", []):
                key = str(upload["Key"])
                if key == name or (below and key.startswith(f"{name}/")):
                    with contextlib.suppress(ClientError):  # finished or aborted meanwhile
                        await self.client.abort_multipart_upload(
                            Bucket=self.bucket, Key=key, UploadId=upload["UploadId"]
                        )

    async def _free_writers(self, name: str) -> None:
        await self._abort_uploads(name, below=False)
        await self._delete_names(await self._list(f"{name}.tail."))

    async def delete(self, key: str) -> None:
        name = self._name(key)
        await self._abort_uploads(name, below=True)
        names = [
            n
            for n in await self._list(name)
            if n == name or n.startswith((f"{name}/", f"{name}.tail."))
        ]
        await self._delete_names(names if name in names else [name, *names])

    async def walk(self, prefix: str = "", after: str | None = None) -> AsyncIterator[Listed]:
        """One ListObjectsV2 page in memory at a time, in the store's key order (StartAfter
        resumes it); the time is the store's LastModified (a move is a copy: a new object)."""
        base = self._name(prefix) if prefix else self.prefix
        start = {} if after is None else {"StartAfter": self.prefix + after}
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket,
            Prefix=base,
            PaginationConfig={"PageSize": self.list_page},
            **start,
        )
        async for page in pages:
            for found in page.get("Contents", []):
                name = str(found["Key"])
                if prefix and name != base and not name.startswith(f"{base}/"):
                    continue  # a sibling that only shares the prefix's name
                key = name[len(self.prefix) :]
                if _TAIL.search(key) or not _valid_key(key):
                    continue
                yield Listed(key, int(found["Size"]), found["LastModified"].timestamp())

    async def redirect_url(
        self, key: str, method: Literal["GET", "HEAD"] = "GET", expires: int = REDIRECT_EXPIRES
    ) -> str | None:
        operation = "get_object" if method == "GET" else "head_object"
        url = await self.client.generate_presigned_url(
            operation,
            Params={"Bucket": self.bucket, "Key": self._name(key)},
            ExpiresIn=expires,
            HttpMethod=method,
        )
        return str(url)

    def local_path(self, key: str) -> Path | None:
        return None


if TYPE_CHECKING:  # mypy checks that the classes meet the protocols
    _driver: ObjectDriver = S3Driver(None, "bucket")
    _writer: ObjectWriter = cast(S3ObjectWriter, None)
