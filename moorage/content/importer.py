"""Import a CNCF Distribution storage root (`moorage import distribution PATH`): how a user
moves here. docs/operations.md says how to use it.

What Distribution 2.x keeps below its root directory (its registry/storage/paths.go):

    docker/registry/v2/
    ├── blobs/sha256/<2 hex>/<hex>/data                     every blob and manifest, by content
    └── repositories/<name>/                                <name> may have several components
        ├── _layers/sha256/<hex>/link                       the repository may serve blob <hex>
        ├── _manifests/revisions/sha256/<hex>/link          manifest <hex> is in the repository
        ├── _manifests/tags/<tag>/current/link              the manifest the tag names
        └── _uploads/<id>/{data,startedat,hashstates/...}   an upload never finished

A link file holds `sha256:<hex>`. Deleting a manifest removes its revision's `link` file and
the tags that named it; its directory and its bytes stay. Distribution keeps a schema 1
manifest without its signatures and signs it with its own key whenever it serves it: the import
signs it once with Moorage's key (the digest is that of the unsigned payload, so it is the same).

Everything goes in the way a push does, so the server's invariants hold and the import can run
while the server serves: blob bytes through the storage driver and `blobs.place` (on a
filesystem storage, a hard link of Distribution's file when both are on one filesystem: nothing
is copied; otherwise a copy), blob links with `MetadataStore.link_blobs`, manifests and tags
with `Registry.put_manifest`, which validates each and checks that what it references is in the
repository. Every blob is hashed on the way in (the hard-linked file itself, or the bytes as
they are copied); what does not hash to its name is reported, not imported, and so is every
manifest that needs it.

It keeps no state of its own. Each step first asks Moorage whether it has what the step would
bring, so a second run imports nothing twice and a run after an interrupt (Ctrl-C, a kill, a
crash) finishes the rest. A run cut short leaves at most stored files that no row names yet
(the blobs of the last batch), each at a key of its own per content (`paths.imported`, or a
hard link at the content-addressed key): the next run uses or replaces them. Tags are set to
what the root says, also when that moves a tag Moorage has (a run that catches up).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol, TypeVar

from moorage.content import digest as digests
from moorage.content import jsondoc, names
from moorage.content.blobs import drop_if_unused, place
from moorage.content.registry import Registry
from moorage.errors import ManifestBlobUnknown, RegistryError, RegistryErrors
from moorage.metadata import BlobGone, BlobRow, KeyPending
from moorage.storage import paths
from moorage.storage.filesystem import fsync_dir

READ_SIZE = 8 << 20  # bytes hashed per step (a Ctrl-C waits for one step at most)
BATCH = 500  # links per metadata transaction, digests per lookup
AT_ONCE = 8  # blobs brought in at the same time
LINK_MAX = 512  # a link file holds one digest; anything longer is not one
T = TypeVar("T")
# Errors of os.link that mean "cannot hard-link here" (another filesystem, no hard links, not
# allowed on this file, too many links): then the blob is copied.
_NO_LINK = frozenset(
    {errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK, errno.EOPNOTSUPP, errno.ENOTSUP}
)


class SourceError(Exception):
    """The path is not a Distribution storage root."""


class _Corrupt(Exception):
    """A blob whose bytes do not hash to its digest."""


class Progress(Protocol):
    """Where the import says how far it is (moorage/progress.py shows it)."""

    def phase(self, name: str, items: int | None = None, nbytes: int = 0) -> None:
        """A new phase of `items` steps (None: not known) that bring `nbytes` bytes."""

    def advance(self, items: int = 0, nbytes: int = 0) -> None: ...


class NoProgress:
    def phase(self, name: str, items: int | None = None, nbytes: int = 0) -> None:
        pass

    def advance(self, items: int = 0, nbytes: int = 0) -> None:
        pass


@dataclass(frozen=True, slots=True)
class Problem:
    """Something the import could not bring, and why."""

    what: str  # "corrupt blob", "manifest", "tag", ...
    where: str  # a digest, repository@digest or repository:tag
    why: str

    def __str__(self) -> str:
        return f"{self.what} {self.where}: {self.why}"


@dataclass
class Report:
    repositories: int = 0
    blobs_linked: int = 0  # brought in as hard links of Distribution's files
    blobs_copied: int = 0
    bytes_stored: int = 0
    blobs_present: int = 0  # in Moorage already (pushed there, or an earlier run)
    links_made: int = 0
    links_present: int = 0
    manifests_stored: int = 0
    manifests_present: int = 0
    tags_set: int = 0
    tags_moved: int = 0  # of those, tags that named another manifest in Moorage before
    tags_present: int = 0
    deleted_manifests: int = 0  # revisions whose link is gone: deleted in Distribution
    uploads: list[str] = field(default_factory=list)  # "<repository> <id> (<n> bytes)"
    unlinked_blobs: int = 0  # stored in Distribution, named by no link
    problems: list[Problem] = field(default_factory=list)


@dataclass
class SourceRepository:
    """One repository of the root, as its directory holds it."""

    name: str  # as Distribution names it
    path: Path
    layers: list[tuple[str, str]] = field(default_factory=list)  # (digest, what its link holds)
    revisions: list[tuple[str, str]] = field(default_factory=list)
    deleted: set[str] = field(default_factory=set)  # revisions without a link
    tags: list[tuple[str, str | None]] = field(default_factory=list)  # (tag, current link)
    uploads: list[tuple[str, int]] = field(default_factory=list)  # (id, bytes received)


def find_root(path: Path) -> Path:
    """The `docker/registry/v2` directory of a Distribution root: `path` is the
    `rootdirectory` of its configuration, or that directory itself."""
    for candidate in (path / "docker" / "registry" / "v2", path):
        if (candidate / "repositories").is_dir() or (candidate / "blobs").is_dir():
            return candidate
    raise SourceError(
        f"{path} is not a Distribution storage root: it has no docker/registry/v2/repositories"
    )


def _read_link(path: Path) -> str | None:
    """The digest a link file holds; None when there is no such file."""
    try:
        with open(path, "rb") as f:
            data = f.read(LINK_MAX + 1)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return data.decode("utf-8", "replace").strip()


def _digest_dirs(directory: Path) -> list[tuple[str, Path]]:
    """`<algorithm>/<hex>/` directories below `directory`, as (digest, path)."""
    found: list[tuple[str, Path]] = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for algorithm in sorted(os.scandir(directory), key=lambda e: e.name):
            if not algorithm.is_dir():
                continue
            for entry in sorted(os.scandir(algorithm.path), key=lambda e: e.name):
                if entry.is_dir():
                    found.append((f"{algorithm.name}:{entry.name}", Path(entry.path)))
    return found


def _repository_dirs(root: Path) -> list[tuple[str, Path]]:
    """Every repository below `repositories/`, in name order: a directory that holds
    `_layers`, `_manifests` or `_uploads` (a repository's directory may also hold others)."""
    found: list[tuple[str, Path]] = []

    def walk(directory: Path, name: str) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return
        if name and any(
            e.name in ("_layers", "_manifests", "_uploads") and e.is_dir() for e in entries
        ):
            found.append((name, directory))
        for entry in entries:
            if entry.is_dir(follow_symlinks=False) and not entry.name.startswith("_"):
                walk(Path(entry.path), f"{name}/{entry.name}" if name else entry.name)

    walk(root / "repositories", "")
    return sorted(found)


def _scan_repository(name: str, path: Path) -> SourceRepository:
    repo = SourceRepository(name, path)
    for digest, directory in _digest_dirs(path / "_layers"):
        link = _read_link(directory / "link")
        if link is not None:
            repo.layers.append((digest, link))
    for digest, directory in _digest_dirs(path / "_manifests" / "revisions"):
        link = _read_link(directory / "link")
        if link is None:
            repo.deleted.add(digest)
        else:
            repo.revisions.append((digest, link))
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in sorted(os.scandir(path / "_manifests" / "tags"), key=lambda e: e.name):
            if entry.is_dir():
                current = _read_link(Path(entry.path) / "current" / "link")
                repo.tags.append((entry.name, current))
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in sorted(os.scandir(path / "_uploads"), key=lambda e: e.name):
            if entry.is_dir():
                try:
                    received = os.stat(Path(entry.path) / "data").st_size
                except OSError:
                    received = 0
                repo.uploads.append((entry.name, received))
    return repo


def _blob_names(root: Path) -> set[str]:
    """The digests `blobs/` holds data for."""
    found: set[str] = set()
    with contextlib.suppress(FileNotFoundError):
        for algorithm in os.scandir(root / "blobs"):
            if not algorithm.is_dir():
                continue
            for prefix in os.scandir(algorithm.path):
                if prefix.is_dir():
                    found.update(f"{algorithm.name}:{e.name}" for e in os.scandir(prefix.path))
    return found


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _hard_link(source: Path, target: Path) -> bool:
    """Make `target` another name of the file `source` (replacing nothing); False where the
    filesystem or the file does not allow it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno in _NO_LINK:
            return False
        raise
    return True


def _head(path: Path, most: int) -> bytes:
    """The first `most` bytes of a file."""
    with open(path, "rb") as f:
        return f.read(most)


def _hash_step(file: BinaryIO, hasher: hashlib._Hash) -> bytes:
    chunk = file.read(READ_SIZE)
    hasher.update(chunk)
    return chunk


async def _all(steps: Sequence[Awaitable[T]]) -> list[T]:
    """Run the steps together; if one fails (or this is cancelled), cancel the others and let
    them finish their cleanup before the error goes on, as it was."""
    tasks = [asyncio.ensure_future(step) for step in steps]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), BATCH):
        yield items[start : start + BATCH]


class DistributionImport:
    """One run of the import of the root at `root` (see `find_root`) into `registry`."""

    def __init__(
        self,
        root: Path,
        registry: Registry,
        progress: Progress | None = None,
        report: Report | None = None,
    ) -> None:
        self.root = root
        self.registry = registry
        self.metadata = registry.metadata
        self.storage = registry.blobs.storage
        self.progress = progress or NoProgress()
        self.report = report or Report()
        self._sizes: dict[str, int] = {}  # sha256 digest -> bytes of its data, when stored
        self._counted: set[str] = set()  # digests whose bytes the progress has counted
        self._failed: dict[str, str] = {}  # blob digest -> why it was not imported
        self._unstored: dict[tuple[str, str], str] = {}  # (repository, manifest) -> why not

    def _problem(self, what: str, where: str, why: str) -> None:
        self.report.problems.append(Problem(what, where, why))

    def _data(self, digest: str) -> Path:
        algorithm, _, hexpart = digest.partition(":")
        return self.root / "blobs" / algorithm / hexpart[:2] / hexpart / "data"

    async def run(self) -> Report:
        repositories = await self._scan()
        items = sum(len(r.layers) + len(r.revisions) + len(r.tags) for r in repositories)
        self.progress.phase("importing", items, sum(self._sizes.values()))
        for repo in repositories:
            await self._repository(repo)
        return self.report

    # -- what the root holds -------------------------------------------------------------

    async def _scan(self) -> list[SourceRepository]:
        self.progress.phase("scanning repositories")
        found = await asyncio.to_thread(_repository_dirs, self.root)
        repositories: list[SourceRepository] = []
        linked: set[str] = set()
        for name, path in found:
            repo = await asyncio.to_thread(_scan_repository, name, path)
            repositories.append(repo)
            self.report.deleted_manifests += len(repo.deleted)
            self.report.uploads += [f"{name} {id_} ({n} bytes)" for id_, n in repo.uploads]
            linked.update(link for _, link in repo.layers)
            linked.update(link for _, link in repo.revisions)
            self.progress.advance(1)
        stored = await asyncio.to_thread(_blob_names, self.root)
        self.report.unlinked_blobs = len(stored - linked)
        layers = {digest for repo in repositories for digest, _ in repo.layers} & stored
        self._sizes = await asyncio.to_thread(self._stat, layers)
        return repositories

    def _stat(self, blobs: Iterable[str]) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for digest in blobs:
            with contextlib.suppress(OSError):
                sizes[digest] = self._data(digest).stat().st_size
        return sizes

    def _link_problem(self, digest: str, link: str) -> str | None:
        """Why the link `<digest>/link` (holding `link`) cannot be imported, if it cannot."""
        if not digests.is_valid(digest) or not digest.startswith("sha256:"):
            return "not a sha256 digest (Distribution names every blob by its sha256)"
        if link != digest:
            return f"its link holds {link!r}, not its own digest"
        return None

    # -- one repository ------------------------------------------------------------------

    async def _repository(self, repo: SourceRepository) -> None:
        try:
            name = names.canonical_repository(repo.name)
        except RegistryError:
            self._problem("repository", repo.name, "not a valid repository name")
            self.progress.advance(len(repo.layers) + len(repo.revisions) + len(repo.tags))
            return
        self.report.repositories += 1
        await self._layers(repo, name)
        await self._manifests(repo, name)
        await self._tags(repo, name)

    def _count_bytes(self, digest: str) -> None:
        if digest not in self._counted:
            self._counted.add(digest)
            self.progress.advance(nbytes=self._sizes.get(digest, 0))

    async def _layers(self, repo: SourceRepository, name: str) -> None:
        wanted: list[str] = []
        for digest, link in repo.layers:
            why = self._link_problem(digest, link)
            if why is not None:
                self._problem("blob link", f"{repo.name}@{digest}", why)
                self.progress.advance(1)
            else:
                wanted.append(digest)
        linked: set[str] = set()
        for chunk in _chunks(wanted):
            linked |= await self.metadata.linked_blobs(name, chunk)
        existing: list[BlobRow] = []
        bring: list[str] = []
        for digest in wanted:
            if digest in linked:
                self.report.links_present += 1
            elif (row := await self.metadata.blob(digest)) is not None:
                self.report.blobs_present += digest not in self._counted
                existing.append(row)
            else:
                bring.append(digest)
                continue
            self._count_bytes(digest)
            self.progress.advance(1)
        for start in range(0, len(existing), BATCH):
            await self._link(name, existing[start : start + BATCH], [])
        # A few blobs at a time: each one mostly waits for the disk (a hash, fsyncs).
        new: list[BlobRow] = []
        for start in range(0, len(bring), AT_ONCE):
            window = bring[start : start + AT_ONCE]
            brought = await _all([self._bring(digest) for digest in window])
            new += [row for row in brought if row is not None]
            self.progress.advance(len(window))
            if len(new) >= BATCH:
                await self._link(name, [], new)
                new = []
        await self._link(name, [], new)

    async def _link(self, name: str, existing: list[BlobRow], new: list[BlobRow]) -> None:
        """Link stored blobs (`existing`, share-locked as a mount does) and the ones this run
        brought (`new`, recorded as an upload's commit does) into the repository."""
        while existing:
            try:
                await self.metadata.link_blobs(name, existing, existing=True)
            except BlobGone as exc:  # collected since it was looked up: bring it again
                gone = set(exc.digests)
                existing = [row for row in existing if row.digest not in gone]
                for digest in sorted(gone):
                    if (row := await self._bring(digest)) is not None:
                        new.append(row)
            else:
                self.report.links_made += len(existing)
                break
        if not new:
            return
        try:
            await self.metadata.link_blobs(name, new)
            done = new
        except KeyPending:  # one of the keys has a deletion queued: find which, link the rest
            done = []
            for row in new:
                try:
                    await self.metadata.link_blobs(name, [row])
                except KeyPending:
                    self._failed[row.digest] = "garbage collection was deleting its copy"
                    self._problem(
                        "blob",
                        row.digest,
                        "garbage collection was deleting its stored copy "
                        "as it came in: run the import again",
                    )
                else:
                    done.append(row)
        self.report.links_made += len(done)
        for row in done:
            await drop_if_unused(self.storage, self.metadata, row.storage_key, row.digest)

    # -- bytes ---------------------------------------------------------------------------

    async def _bring(self, digest: str) -> BlobRow | None:
        """Store blob `digest` from the root, verified; None (and a problem) if it cannot be."""
        if digest in self._failed:
            return None
        source = self._data(digest)
        try:
            key, size, linked = await self._store(digest, source)
        except FileNotFoundError:
            why = "a link names it, but its data is not in blobs/"
            self._failed[digest] = "missing from the root"
            self._problem("missing blob", digest, why)
            return None
        except _Corrupt as exc:
            self._failed[digest] = "corrupt in the root"
            self._problem("corrupt blob", digest, str(exc))
            return None
        if linked:
            self.report.blobs_linked += 1
        else:
            self.report.blobs_copied += 1
        self.report.bytes_stored += size
        return BlobRow(digest, key, size)

    async def _store(self, digest: str, source: Path) -> tuple[str, int, bool]:
        """Put the blob's bytes in storage: (key, size, hard-linked)."""
        hexpart = digest.partition(":")[2]
        target = paths.blob(hexpart)
        at_target = self.storage.local_path(target)
        if at_target is not None:
            if await asyncio.to_thread(
                _same_file, source, at_target
            ) and not await self.metadata.deletion_pending(target):
                # An interrupted run linked it into place and was stopped before its row.
                return target, await self._verify(digest, source), True
            staging = paths.imported(hexpart)
            staged = self.storage.local_path(staging)
            assert staged is not None
            await self.storage.delete(staging)  # what an interrupted run left there
            if await asyncio.to_thread(_hard_link, source, staged):
                try:
                    size = await self._verify(digest, staged)
                except BaseException:
                    await asyncio.shield(self.storage.delete(staging))
                    raise
                key = await place(self.storage, self.metadata, staging, digest)
                if key == staging:  # not moved (a move syncs its target): make the name durable
                    await asyncio.to_thread(fsync_dir, staged.parent)
                return key, size, True
        key, size = await self._copy(digest, source)
        return await place(self.storage, self.metadata, key, digest), size, False

    async def _verify(self, digest: str, path: Path) -> int:
        """Hash the file; its size if it is blob `digest`, else `_Corrupt`."""
        hasher = hashlib.sha256()
        size = 0
        self._counted.add(digest)
        with await asyncio.to_thread(open, path, "rb") as file:
            while chunk := await asyncio.to_thread(_hash_step, file, hasher):
                size += len(chunk)
                self.progress.advance(nbytes=len(chunk))
        return self._check(digest, hasher, size)

    def _check(self, digest: str, hasher: hashlib._Hash, size: int) -> int:
        got = f"sha256:{hasher.hexdigest()}"
        if got != digest:
            raise _Corrupt(f"its {size} bytes hash to {got}")
        return size

    async def _copy(self, digest: str, source: Path) -> tuple[str, int]:
        """Copy the blob into storage through a writer, hashing it on the way; the key."""
        staging = paths.imported(digest.partition(":")[2])
        await self.storage.delete(staging)  # what an interrupted run left there
        hasher = hashlib.sha256()
        size = 0
        self._counted.add(digest)
        file = await asyncio.to_thread(open, source, "rb")
        writer = await self.storage.writer(staging)
        try:
            with file:
                while chunk := await asyncio.to_thread(_hash_step, file, hasher):
                    await writer.write(chunk)
                    size += len(chunk)
                    self.progress.advance(nbytes=len(chunk))
            self._check(digest, hasher, size)
            key = await writer.commit()
        except BaseException:
            await asyncio.shield(writer.cancel())
            raise
        return key, size

    # -- manifests and tags --------------------------------------------------------------

    async def _manifests(self, repo: SourceRepository, name: str) -> None:
        wanted: list[str] = []
        for digest, link in repo.revisions:
            why = self._link_problem(digest, link)
            if why is not None:
                self._unstored[name, digest] = "its revision link is broken"
                self._problem("manifest", f"{repo.name}@{digest}", why)
                self.progress.advance(1)
            else:
                wanted.append(digest)
        present: set[str] = set()
        for chunk in _chunks(wanted):
            present |= await self.metadata.existing_manifests(name, chunk)
        # Image manifests first, then the indexes, each after the indexes it lists.
        indexes: dict[str, tuple[bytes, list[str]]] = {}
        for digest in wanted:
            if digest in present:
                self.report.manifests_present += 1
                self.progress.advance(1)
                continue
            content = await self._manifest_content(repo, name, digest)
            if content is None:
                self.progress.advance(1)
            elif children := _children(content):
                indexes[digest] = (content, children)
            else:
                await self._put_manifest(repo, name, digest, content)
                self.progress.advance(1)
        for digest in _children_first(indexes):
            await self._put_manifest(repo, name, digest, indexes[digest][0])
            self.progress.advance(1)

    async def _manifest_content(
        self, repo: SourceRepository, name: str, digest: str
    ) -> bytes | None:
        """The manifest's bytes as Moorage is to keep them, verified; None (and a problem)
        when they cannot be had."""
        where = f"{repo.name}@{digest}"
        most = self.registry.settings.manifests.maxsize
        try:
            content = await asyncio.to_thread(_head, self._data(digest), most + 1)
        except FileNotFoundError:
            self._unstored[name, digest] = "its bytes are missing from the root"
            self._problem("manifest", where, "its revision link remains, its bytes are gone")
            return None
        if len(content) > most:
            self._unstored[name, digest] = "it is larger than manifests.maxsize"
            self._problem("manifest", where, f"larger than manifests.maxsize ({most} bytes)")
            return None
        if digests.of(content) != digest:
            self._unstored[name, digest] = "its bytes are corrupt in the root"
            self._problem("manifest", where, f"its bytes hash to {digests.of(content)}")
            return None
        try:
            document = jsondoc.loads(content)
        except ValueError:
            return content  # put_manifest says what is wrong with it
        if (
            isinstance(document, dict)
            and document.get("schemaVersion") == 1
            and "signatures" not in document
        ):
            try:
                return self.registry.sign_schema1(content)
            except ValueError:
                return content
        return content

    async def _put_manifest(
        self, repo: SourceRepository, name: str, digest: str, content: bytes
    ) -> None:
        try:
            await self.registry.put_manifest(name, digest, None, content)
        except RegistryError as exc:
            why = self._describe(exc, name)
            self._unstored[name, digest] = why
            self._problem("manifest", f"{repo.name}@{digest}", why)
        else:
            self.report.manifests_stored += 1

    def _describe(self, exc: RegistryError, name: str) -> str:
        """What a refused put into repository `name` says, with why each missing reference is
        missing."""
        errors = exc.errors if isinstance(exc, RegistryErrors) else [exc]
        missing = [
            e.detail["digest"]
            for e in errors
            if isinstance(e, ManifestBlobUnknown) and isinstance(e.detail, dict)
        ]
        if missing and len(missing) == len(errors):
            return "needs " + ", ".join(f"{d} ({self._missing(name, d)})" for d in missing)
        detail = f" {exc.detail}" if exc.detail else ""
        return f"{exc.code}: {exc.message}{detail}"

    def _missing(self, name: str, digest: str) -> str:
        """Why blob or manifest `digest` is not in repository `name`."""
        if digest in self._failed:
            return self._failed[digest]
        if (name, digest) in self._unstored:
            return f"not imported: {self._unstored[name, digest]}"
        return "not in the repository"

    async def _tags(self, repo: SourceRepository, name: str) -> None:
        for tag, digest in repo.tags:
            where = f"{repo.name}:{tag}"
            self.progress.advance(1)
            if digest is None:
                self._problem("tag", where, "it has no current/link")
                continue
            current = await self.metadata.tagged_manifest(name, tag)
            if current is not None and current.digest == digest:
                self.report.tags_present += 1
                continue
            row = await self.metadata.manifest(name, digest)
            if row is None:
                if digest in repo.deleted:
                    why = "the manifest was deleted"
                else:
                    why = self._unstored.get((name, digest), "it is not in the repository")
                self._problem("tag", where, f"names {digest}, not imported: {why}")
                continue
            try:
                await self.registry.put_manifest(name, tag, row.media_type, row.content)
            except RegistryError as exc:
                self._problem("tag", where, self._describe(exc, name))
            else:
                self.report.tags_set += 1
                self.report.tags_moved += current is not None


def _children(content: bytes) -> list[str]:
    """The manifests an index lists (nothing for anything else, or what does not parse:
    putting it says what is wrong)."""
    try:
        document = jsondoc.loads(content)
    except ValueError:
        return []
    if not isinstance(document, dict) or not isinstance(document.get("manifests"), list):
        return []
    return [
        entry["digest"]
        for entry in document["manifests"]
        if isinstance(entry, dict) and isinstance(entry.get("digest"), str)
    ]


def _children_first(indexes: dict[str, tuple[bytes, list[str]]]) -> list[str]:
    """The indexes in an order that puts each after the indexes it lists."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(digest: str) -> None:
        if digest in seen:
            return
        seen.add(digest)
        for child in indexes[digest][1]:
            if child in indexes:
                visit(child)
        order.append(digest)

    for digest in sorted(indexes):
        visit(digest)
    return order
