"""What the pull-through cache fetches, when, and how it stores it (docs/mirror.md).

Manifests: by digest, fetched once and never asked for again; by tag, fetched when not
cached and revalidated with a HEAD once older than the upstream's `ttl` (a tag's age is the
time since it was stored or last confirmed). An upstream that is down, or answers 5xx or 429,
leaves the cached tag served as it is, with a warning in the log.

Blobs: one upstream GET per missing blob at a time in this process (`BlobFetch`), read by
every client that asks for it meanwhile, as it arrives, while the same bytes are hashed and
written to an upload session of the content layer (a little behind the clients, within
`WINDOW`); the blob is committed only when whole and its digest verified. If the upstream
breaks off, the session is dropped and every reader's connection is cut: a client sees a
short body, never a wrong one.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import logging
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any

import aiohttp

from moorage import metrics
from moorage.config import Settings
from moorage.content import digest as digests
from moorage.content import jsondoc, manifests, names, v1
from moorage.content import mirror as stored
from moorage.content.registry import Registry
from moorage.errors import BlobUnknown, ManifestUnknown, NameUnknown, Unavailable
from moorage.mirror.client import UpstreamClient, UpstreamDown

log = logging.getLogger("moorage.mirror")

ACCEPT = ", ".join(
    [
        manifests.OCI_INDEX,
        manifests.OCI_MANIFEST,
        manifests.DOCKER_LIST,
        manifests.DOCKER_MANIFEST,
        manifests.SCHEMA1_SIGNED,
        manifests.SCHEMA1,
    ]
)


@dataclass(frozen=True, slots=True)
class Target:
    """Where a mirrored repository comes from: its upstream and its name there."""

    client: UpstreamClient
    name: str
    # The upstream's `repositories` allow the name: otherwise only what is cached is served.
    allowed: bool

    @property
    def source(self) -> str:
        return f"{self.client.url}/{self.name}"


# A blob fetch's claim (across workers and nodes) lasts this long unless renewed, which its
# fetcher does every third of it; the others look for the stored blob this often.
FETCH_LEASE = 30.0
FETCH_POLL = 0.1


def unavailable(target: Target, exc: UpstreamDown) -> Unavailable:
    """503 for what the upstream could not give and the cache does not hold; `reason` says
    what the upstream did (unreachable, a status such as 401 for refused credentials)."""
    return Unavailable(
        f"mirror upstream {target.client.url} is unavailable",
        {"upstream": target.client.url, "reason": str(exc)},
    )


class FetchBroken(Exception):
    """The upstream fetch a reader was following failed after its answer had begun."""


class LeftBehind(Exception):
    """A client fell more than `WINDOW` behind the upstream: it goes on from storage, at
    `offset`, once the blob is stored (`BlobFetch.wait`)."""

    def __init__(self, offset: int) -> None:
        super().__init__(offset)
        self.offset = offset


# What one fetch holds in memory beyond its slowest reader. The store (hash and write) may lag
# the upstream by this much before the fetch waits for it, so that clients get the bytes as
# they arrive rather than at the pace of the hash; a client lagging by more is left behind.
WINDOW = 2 << 20


# Blocks the store hashes and writes: the largest piece the upstream's connection hands on
# (asyncio reads 256 KiB at a time; client.py's buffer is as large), so that such a piece goes
# to the store as it is, the same bytes the clients are sent and the window holds, and only
# smaller ones are joined (into a block of less than twice this).
STORE_BLOCK = 256 << 10


class _Stored:
    """A fetch as its store reads it: its pieces, in blocks of `STORE_BLOCK`
    (`streams.block_size`)."""

    block_size = STORE_BLOCK

    def __init__(self, pieces: AsyncIterator[bytes]) -> None:
        self._pieces = pieces

    def __aiter__(self) -> _Stored:
        return self

    async def __anext__(self) -> bytes:
        return await anext(self._pieces)

    async def aclose(self) -> None:
        aclose = getattr(self._pieces, "aclose", None)
        if aclose is not None:
            await aclose()


class Reader:
    __slots__ = ("behind", "index", "offset", "store")

    def __init__(self, store: bool) -> None:
        self.index = 0  # of its next chunk, in the whole blob
        self.offset = 0  # bytes it has been given
        self.store = store
        self.behind = False


class BlobFetch:
    """One upstream GET of a blob, read as it arrives by the store and any number of clients.

    Memory stays bounded whatever the clients do: bytes are kept only until every reader has
    passed them, the upstream is read no more than `WINDOW` ahead of the store, and a client
    more than `WINDOW` behind (slow, or stalled on purpose) is let go of: it waits for the
    blob to be stored and reads the rest from there. A client that asks once the first bytes
    are gone (`open` answers None) is served from storage in the same way, from the start.

    A client's answer ends once the blob is stored: its last bytes go out as they arrive,
    but a blob that fails verification ends the connection instead of the body."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.base = 0  # the index, in the whole blob, of chunks[0]
        self.received = 0  # bytes from the upstream so far
        self.readers: list[Reader] = []
        self.store: Reader | None = None
        self.size: int | None = None
        self.begun = False
        self.complete = False  # every byte received
        self.done = False  # stored (or failed)
        self.error: BaseException | None = None
        self._changed = asyncio.Event()
        self._room = asyncio.Event()  # the store is back within WINDOW

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _trim(self) -> None:
        low = min((r.index for r in self.readers), default=self.base + len(self.chunks))
        if low > self.base:
            del self.chunks[: low - self.base]
            self.base = low

    @property
    def held(self) -> int:
        """Bytes in memory now."""
        return sum(map(len, self.chunks))

    def begin(self, size: int | None) -> None:
        self.size, self.begun = size, True
        self._notify()

    async def add(self, chunk: bytes) -> None:
        """A chunk from the upstream; returns once the store is within WINDOW of it."""
        self.chunks.append(chunk)
        self.received += len(chunk)
        for reader in [r for r in self.readers if not r.store]:
            if self.received - reader.offset > WINDOW:
                reader.behind = True
                self.readers.remove(reader)
        self._trim()
        self._notify()
        while self.store is not None and self.received - self.store.offset > WINDOW:
            self._room.clear()
            await self._room.wait()

    def finish(self) -> None:
        """Every byte received."""
        self.complete = True
        self._notify()

    def end(self, error: BaseException | None) -> None:
        self.done, self.error = True, error
        self._notify()

    @property
    def elsewhere(self) -> bool:
        """Ended without fetching: another worker or node stored the blob."""
        return self.done and not self.begun and self.error is None

    def open(self, store: bool = False) -> Reader | None:
        """A reader from the first byte; None when the first bytes are gone already. The
        store's reader ends with the last byte and holds the upstream back; a client's ends
        once the blob is stored."""
        if self.base:
            return None
        reader = Reader(store)
        self.readers.append(reader)
        if store:
            self.store = reader
        return reader

    def close(self, reader: Reader) -> None:
        if reader is self.store:
            self.store = None
            self._room.set()
        if reader in self.readers:
            self.readers.remove(reader)
            self._trim()

    async def started(self) -> int | None:
        """The blob's size (None: the upstream did not say) once the upstream answered; what
        went wrong before any byte arrived is raised as is (BlobUnknown, Unavailable)."""
        while not self.begun and not self.done:
            await self._changed.wait()
        if not self.begun and self.error is not None:
            raise self.error
        return self.size

    async def wait(self) -> None:
        """Until the blob is stored; what went wrong is raised."""
        while not self.done:
            await self._changed.wait()
        if self.error is not None:
            raise self.error

    async def read(self, reader: Reader) -> AsyncIterator[bytes]:
        """The bytes for `reader` (from `open`) as they arrive; FetchBroken if the fetch
        fails, LeftBehind if the client fell too far behind."""
        while True:
            if reader.behind:
                raise LeftBehind(reader.offset)
            position = reader.index - self.base
            if position < len(self.chunks):
                chunk = self.chunks[position]
                reader.index += 1
                reader.offset += len(chunk)
                if reader.store and self.received - reader.offset <= WINDOW:
                    self._room.set()
                self._trim()
                yield chunk
            elif self.error is not None:
                raise FetchBroken(str(self.error)) from self.error
            elif self.done or (reader.store and self.complete):
                return
            else:
                await self._changed.wait()

    def fail(self, error: BaseException) -> None:
        """The upstream broke off: every reader, the store's included, is told."""
        self.error = error
        self._notify()


class Mirror:
    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.registry = registry
        upstreams = sorted(settings.proxy.upstreams, key=lambda u: -len(u.prefix))
        self.clients = [(u.prefix, UpstreamClient(u)) for u in upstreams]
        self._manifests: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._blobs: dict[tuple[str, str], BlobFetch] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        for _, client in self.clients:
            await client.close()

    def target(self, repository: str) -> Target | None:
        """The upstream a repository mirrors; None for a local repository. A prefixed
        upstream owns every name under its prefix; the default one (prefix "") the names its
        `repositories` allow (all when empty) that are under no other prefix."""
        for prefix, client in self.clients:
            if prefix and not repository.startswith(prefix + "/"):
                continue
            name = client.name(repository[len(prefix) + 1 :] if prefix else repository)
            globs = client.upstream.repositories
            allowed = not globs or any(fnmatch.fnmatchcase(name, g) for g in globs)
            if not prefix and not allowed:
                return None
            return Target(client, name, allowed)
        return None

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """A fetch that outlives the request that started it (others may be reading it)."""
        task = asyncio.create_task(work)
        self._tasks.add(task)

        def finished(task: asyncio.Task[Any]) -> None:
            self._tasks.discard(task)
            if not task.cancelled():
                task.exception()  # retrieved: whoever awaited it has it

        task.add_done_callback(finished)
        return task

    # -- manifests -----------------------------------------------------------------------

    async def manifest(self, target: Target, repository: str, reference: str) -> None:
        """Make the manifest servable from the cache: fetched if missing, revalidated if a
        tag older than its TTL. Concurrent calls for one reference share one."""
        key = (repository, reference)
        task = self._manifests.get(key)
        if task is None:
            task = self._spawn(self._manifest(target, repository, reference))
            self._manifests[key] = task
            task.add_done_callback(lambda _: self._manifests.pop(key, None))
        await asyncio.shield(task)

    async def _manifest(self, target: Target, repository: str, reference: str) -> None:
        registry = self.registry
        if ":" in reference:
            digests.parse(reference)
            if await registry.metadata.manifest(repository, reference) is not None:
                return
            if not target.allowed:
                raise NameUnknown(detail={"name": repository})
            await self._fetch_manifest(target, repository, reference, None)
            return
        if not names.is_tag(reference):
            return  # the handler answers
        age = await stored.tag_age(registry, repository, reference)
        if age is not None and age < target.client.upstream.ttl:
            return
        if not target.allowed:
            if age is None:
                raise NameUnknown(detail={"name": repository})
            return
        try:
            if age is None:
                await self._fetch_manifest(target, repository, reference, reference)
            else:
                await self._revalidate(target, repository, reference)
        except UpstreamDown as exc:
            if age is None:
                raise unavailable(target, exc) from exc
            metrics.MIRROR_STALE.inc((target.client.url,))
            log.warning(
                "mirror upstream unavailable: serving the cached tag",
                extra={"repository": repository, "tag": reference, "error": str(exc)},
            )

    async def _revalidate(self, target: Target, repository: str, tag: str) -> None:
        row = await self.registry.metadata.tagged_manifest(repository, tag)
        response = await target.client.request(
            "HEAD", target.name, f"manifests/{tag}", {"Accept": ACCEPT}
        )
        async with response:
            status, digest = response.status, response.headers.get("Docker-Content-Digest")
        if status == 404:
            # Gone upstream: gone here (its manifest stays, by digest, until collected).
            await self.registry.metadata.delete_tag(repository, tag)
            log.info("mirrored tag gone upstream", extra={"repository": repository, "tag": tag})
            return
        if status != 200:
            raise UpstreamDown(f"{target.client.url} answered {status} to HEAD {tag}")
        if row is not None and digest == row.digest:
            await stored.confirm_tag(self.registry, repository, tag, row)
            return
        await self._fetch_manifest(target, repository, tag, tag)

    async def _fetch_manifest(
        self, target: Target, repository: str, reference: str, tag: str | None
    ) -> None:
        response = await target.client.request(
            "GET", target.name, f"manifests/{reference}", {"Accept": ACCEPT}
        )
        async with response:
            if response.status == 404:
                raise ManifestUnknown(detail={"reference": reference})
            if response.status != 200:
                raise UpstreamDown(f"{target.client.url} answered {response.status}")
            try:
                content = await response.read()
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise UpstreamDown(f"{target.client.url}: {exc}") from exc
            content_type = response.headers.get("Content-Type", "").partition(";")[0] or None
            expected = None if tag is not None else reference
            if expected is None:
                expected = response.headers.get("Docker-Content-Digest")
        digest = await stored.store_manifest(
            self.registry, repository, tag, content, content_type, expected
        )
        log.info(
            "mirrored manifest",
            extra={"repository": repository, "reference": reference, "digest": digest},
        )

    async def image(self, target: Target, repository: str, tag: str) -> None:
        """Make a tagged image wholly servable from the cache (its manifest, the linux/amd64
        one of an index, and every blob), for the v1 protocol: its clients ask for images by
        v1 ids derived from the stored manifest and config, which must be here first."""
        await self.manifest(target, repository, tag)
        row = await self.registry.metadata.tagged_manifest(repository, tag)
        if row is None:
            return
        document = jsondoc.loads(row.content)
        if row.media_type in manifests.INDEX_TYPES:
            child = v1.platform_child(document)
            if child is None:
                return
            await self.manifest(target, repository, child)
            stored_child = await self.registry.metadata.manifest(repository, child)
            if stored_child is None:
                return
            row, document = stored_child, jsondoc.loads(stored_child.content)
        if row.media_type not in manifests.IMAGE_TYPES:
            return
        wanted = [d.get("digest") for d in [document.get("config"), *document.get("layers", [])]]
        blobs = [d for d in wanted if isinstance(d, str)]
        linked = await self.registry.blobs.linked(repository, blobs)
        for digest in blobs:
            if digest not in linked:
                fetch = await self.blob(target, repository, digest)
                if fetch is not None:
                    await fetch.wait()

    # -- blobs ---------------------------------------------------------------------------

    async def blob(self, target: Target, repository: str, digest: str) -> BlobFetch | None:
        """The fetch of a blob the repository does not hold (started, or joined if one is
        under way); None when it was stored already (another repository of this registry has
        it, and the upstream confirms this one does): it is linked and served as stored."""
        digests.parse(digest)
        key = (repository, digest)
        fetch = self._blobs.get(key)
        if fetch is not None:
            return fetch
        if not target.allowed:
            raise BlobUnknown(detail={"digest": digest})
        row = await self.registry.metadata.blob(digest)
        if row is not None:
            try:
                response = await target.client.request("HEAD", target.name, f"blobs/{digest}")
            except UpstreamDown as exc:
                raise unavailable(target, exc) from exc
            async with response:
                status = response.status
            if status != 200:
                raise BlobUnknown(detail={"digest": digest})
            await self.registry.metadata.link_blobs(repository, [row])
            return None
        fetch = self._blobs.get(key)  # another request may have started it meanwhile
        if fetch is None:
            fetch = BlobFetch()
            self._blobs[key] = fetch
            task = self._spawn(self._fetch_blob(target, repository, digest, fetch))
            task.add_done_callback(lambda _: self._blobs.pop(key, None))
        return fetch

    async def _fetch_blob(
        self, target: Target, repository: str, digest: str, fetch: BlobFetch
    ) -> None:
        """The one fetch of a blob across workers and nodes: whoever claims it (a lease in the
        metadata, renewed while it runs) fetches; the others wait until it is stored, or take
        over once the claim is released or runs out (the fetcher failed or died)."""
        metadata = self.registry.metadata
        claim = "mirror-" + hashlib.sha256(f"{repository}@{digest}".encode()).hexdigest()[:57]
        try:
            while not await metadata.claim(claim, FETCH_LEASE):
                await asyncio.sleep(FETCH_POLL)
                if await metadata.repository_blob(repository, digest) is not None:
                    fetch.end(None)  # stored by the other: served from storage
                    return
            renewer = asyncio.create_task(self._renew(claim))
            try:
                if await metadata.repository_blob(repository, digest) is not None:
                    fetch.end(None)  # stored just before this claim
                    return
                await self._download(target, repository, digest, fetch)
            finally:
                renewer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewer
                await asyncio.shield(metadata.release(claim))
        except UpstreamDown as exc:
            log.warning(
                "mirror upstream failed during a blob fetch",
                extra={"repository": repository, "digest": digest, "error": str(exc)},
            )
            fetch.end(unavailable(target, exc))
            raise
        except BaseException as exc:
            fetch.end(exc)
            raise
        fetch.end(None)
        log.info("mirrored blob", extra={"repository": repository, "digest": digest})

    async def _renew(self, claim: str) -> None:
        while True:
            await asyncio.sleep(FETCH_LEASE / 3)
            await self.registry.metadata.hold(claim, FETCH_LEASE)

    async def _download(
        self, target: Target, repository: str, digest: str, fetch: BlobFetch
    ) -> None:
        response = await target.client.request("GET", target.name, f"blobs/{digest}")
        async with response:
            if response.status == 404:
                raise BlobUnknown(detail={"digest": digest})
            if response.status != 200:
                raise UpstreamDown(f"{target.client.url} answered {response.status}")
            if response.content_length is not None:
                # Over a quota: refused before the client's answer begins (DENIED).
                await self.registry.admit(repository, digest, response.content_length)
            fetch.begin(response.content_length)
            store = fetch.open(store=True)
            assert store is not None  # nothing was read yet
            # The upstream is read by a task of its own, so that clients are not held to the
            # pace of the hash and the disk (up to WINDOW ahead of them).
            pump = asyncio.create_task(self._pump(target, response, fetch))
            try:
                await self.registry.blobs.upload(
                    repository, digest, _Stored(fetch.read(store)), response.content_length
                )
            except FetchBroken:
                if isinstance(fetch.error, UpstreamDown):
                    raise fetch.error from None
                raise
            finally:
                fetch.close(store)
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pump

    @staticmethod
    async def _pump(target: Target, response: aiohttp.ClientResponse, fetch: BlobFetch) -> None:
        try:
            # Each piece as the connection received it: `iter_any` would join what is
            # buffered into a copy.
            async for chunk, _ in response.content.iter_chunks():
                if chunk:
                    await fetch.add(chunk)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            fetch.fail(UpstreamDown(f"{target.client.url}: {exc}"))
        else:
            fetch.finish()
