"""`moorage import distribution PATH` on a real root: Debian's docker-registry (CNCF
Distribution 2.8) is pushed to with skopeo, stopped, and its storage root imported into a fresh
Moorage data directory; then every image is pulled from Moorage with skopeo and compared,
digest by digest and byte by byte, with what the same pull got from Distribution.

The root holds every kind of manifest (an OCI image, an OCI index over two platforms, a Docker
schema 2 image and manifest list, a schema 1 signed image, an artifact whose subject is an
image), a tag moved from one manifest to another, a layer shared by two repositories, a
manifest deleted through the API and an upload never finished.

Also: a second run changes nothing; an import interrupted at any of its progress reports (in
process), or stopped by Ctrl-C or SIGKILL (a process), ends, when run again, with exactly what
an uninterrupted one has, bringing nothing twice; a corrupt blob is reported with everything
that needs it and none of it imported; on a terminal the progress is a bar."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from moorage import config
from moorage.app import open_storage
from moorage.content.importer import DistributionImport, Report, find_root
from moorage.content.registry import Registry as Moorage
from moorage.metadata import MetadataStore
from tests.clients.conftest import (
    ContainersRun,
    ContainersTool,
    Registry,
    clean_env,
    serve,
)
from tests.harness import REPO_ROOT, DistributionProcess
from tests.images import make_artifact, make_image, make_index

pytestmark = [pytest.mark.clients, pytest.mark.timeout(600)]

PUSH = ("copy", "--dest-tls-verify=false")
PULL = ("copy", "--src-tls-verify=false", "--all", "--preserve-digests")
NOTLS = "--tls-verify=false"


class DistributionServer(DistributionProcess):
    """Distribution with schema 1 pushes accepted (the importer's schema 1 cases)."""

    def config(self) -> dict[str, Any]:
        return {**super().config(), "compatibility": {"schema1": {"enabled": True}}}


@dataclass
class Root:
    """A Distribution root and what its server said about it before it was stopped."""

    path: Path  # the `rootdirectory`
    refs: dict[str, str]  # "repo:tag" or "repo@digest" -> manifest digest
    pulled: dict[str, Path]  # the same -> what `skopeo copy --all` to dir: got
    deleted: str  # "repo@digest" of the manifest deleted through the API
    upload: str  # id of the unfinished upload
    shared_layer: str  # a layer both app/one and legacy link

    @property
    def v2(self) -> Path:
        return self.path / "docker" / "registry" / "v2"

    def data(self, digest: str) -> Path:
        hexpart = digest.partition(":")[2]
        return self.v2 / "blobs" / "sha256" / hexpart[:2] / hexpart / "data"


def http(
    method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body or None, method=method, headers=headers or {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=30) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def manifest_digest(skopeo: ContainersTool, path: Path) -> str:
    """The digest of a manifest file as clients compute it (schema 1: signatures left out)."""
    return skopeo("manifest-digest", path).stdout.strip()


def remote_digest(skopeo: ContainersTool, ref: str, scratch: Path) -> str:
    scratch.write_bytes(skopeo("inspect", NOTLS, "--raw", ref).stdout.encode())
    return manifest_digest(skopeo, scratch)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Root]:
    """The root: pushed to, pulled from, then the server stopped."""
    base = tmp_path_factory.mktemp("distribution")
    server = DistributionServer(base / "server", base_env=clean_env())
    tools: ContainersRun | None = None
    try:
        server.start_sync()
        assert server.proc is not None
        registry = Registry(
            server.url, server.host, server.pid, server.root / "data", server.log_path
        )
        tools = ContainersRun(base / "containers", registry)
        skopeo = tools.skopeo()
        src = base / "src"
        one = make_image(src, layers=[300_000, 4096], seed=901, tag="v1")
        old = make_image(src, layers=[2000], seed=902, tag="old")
        index = make_index(src, tag="multi", layers=[3000], seed=903)
        listed = make_index(src, tag="list", layers=[1500], seed=904)
        artifact = make_artifact(src, one, tag="sig")
        first = make_image(src, layers=[1200], seed=905, tag="first")
        second = make_image(src, layers=[1300], seed=906, tag="second")
        gone = make_image(src, layers=[1100], seed=907, tag="gone")
        same = ["--preserve-digests"]
        for source, target, options in [
            (one.ref, "app/one:v1", same),
            (artifact.ref, "app/one:sig", same),
            # The same image as Docker schema 2 and as schema 1 (in a one-part repository,
            # which is library/legacy in Moorage): two repositories link its layer.
            (old.ref, "app/one:s2", ["--format", "v2s2"]),
            (old.ref, "legacy:s1", ["--format", "v2s1"]),
            (index.ref, "app/multi:latest", ["--all", *same]),
            (listed.ref, "app/list:v1", ["--all", "--format", "v2s2"]),
            (first.ref, "app/moved:current", same),
            (second.ref, "app/moved:current", same),  # the tag moves; `first` stays, untagged
            (gone.ref, "app/gone:v1", same),
        ]:
            skopeo(*PUSH, *options, source, f"docker://{server.host}/{target}")

        status, _, _ = http("DELETE", f"{server.url}/v2/app/gone/manifests/{gone.digest}")
        assert status == 202
        status, headers, _ = http("POST", f"{server.url}/v2/app/one/blobs/uploads/")
        assert status == 202
        upload = headers["docker-upload-uuid"]
        status, _, _ = http(
            "PATCH",
            server.url + headers["location"].removeprefix(server.url),
            b"an upload that never finishes",
            {"Content-Type": "application/octet-stream"},
        )
        assert status == 202

        refs: dict[str, str] = {}
        pulled: dict[str, Path] = {}
        scratch = base / "manifest.json"
        for ref in [
            "app/one:v1",
            "app/one:sig",
            "app/one:s2",
            "legacy:s1",
            "app/multi:latest",
            "app/list:v1",
            "app/moved:current",
            f"app/moved@{first.digest}",
        ]:
            source = f"docker://{server.host}/{ref}"
            refs[ref] = remote_digest(skopeo, source, scratch)
            pulled[ref] = base / "pulled" / ref.replace("/", "_").replace(":", "_")
            pulled[ref].parent.mkdir(exist_ok=True)
            skopeo(*PULL, source, f"dir:{pulled[ref]}")
        assert refs[f"app/moved@{first.digest}"] == first.digest
        assert refs["app/moved:current"] == second.digest
        shared = old.layers[0].digest
        server.stop_sync()
        yield Root(server.root / "data", refs, pulled, f"app/gone@{gone.digest}", upload, shared)
    finally:
        server.cleanup()
        if tools is not None:
            tools.cleanup()


# ---------------------------------------------------------------------------------------------
# Running the import, and what it leaves


def import_command(data_dir: Path, root: Path, *args: str) -> list[str]:
    return [
        sys.executable, "-m", "moorage", "import", "distribution", str(root),
        "--data-dir", str(data_dir), *args,
    ]  # fmt: skip


def import_env() -> dict[str, str]:
    env = clean_env()
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    return env


def moorage_import(
    data_dir: Path, root: Path, *args: str, expect: int = 0
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        import_command(data_dir, root, *args),
        capture_output=True,
        text=True,
        timeout=300,
        env=import_env(),
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert done.returncode == expect, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


# Every table the import writes, every column (timestamps too: a run that changes nothing
# leaves them as they were).
DUMP = {
    "repositories": "SELECT * FROM repositories",
    "blobs": "SELECT * FROM blobs",
    "repository_blobs": "SELECT * FROM repository_blobs",
    "manifests": "SELECT * FROM manifests",
    "manifest_references": "SELECT * FROM manifest_references",
    "tags": "SELECT * FROM tags",
    "uploads": "SELECT * FROM uploads",
    "gc_deletions": "SELECT * FROM gc_deletions",
}

# What any import of the root must end with, whatever happened on the way: names, not row ids
# or times (schema 1 manifests are signed with each data directory's own key: their bytes
# differ, their digest does not).
CONTENT = {
    "repositories": "SELECT name FROM repositories",
    "blobs": "SELECT digest, storage_key, size FROM blobs",
    "links": "SELECT r.name, l.digest FROM repository_blobs l "
    "JOIN repositories r ON r.id = l.repository_id",
    "manifests": "SELECT r.name, m.digest, m.media_type, m.subject, m.artifact_type, "
    "CASE WHEN m.media_type LIKE '%prettyjws' THEN NULL ELSE m.content END FROM manifests m "
    "JOIN repositories r ON r.id = m.repository_id",
    "references": "SELECT r.name, x.digest, x.child FROM manifest_references x "
    "JOIN repositories r ON r.id = x.repository_id",
    "tags": "SELECT r.name, t.name, t.digest FROM tags t "
    "JOIN repositories r ON r.id = t.repository_id",
}


def query(data_dir: Path, queries: dict[str, str]) -> dict[str, list[tuple[object, ...]]]:
    db = sqlite3.connect(f"file:{data_dir / 'metadata.db'}?mode=ro", uri=True)
    try:
        return {name: sorted(db.execute(sql).fetchall(), key=repr) for name, sql in queries.items()}
    finally:
        db.close()


def stored(data_dir: Path) -> dict[str, tuple[int, int, int]]:
    """Every file of the blob storage: (inode, size, mtime in ns), by path."""
    storage = data_dir / "storage"
    return {
        str(path.relative_to(storage)): (info.st_ino, info.st_size, info.st_mtime_ns)
        for path in sorted(storage.rglob("*"))
        if path.is_file() and (info := path.stat())
    }


def content(data_dir: Path) -> tuple[dict[str, list[tuple[object, ...]]], list[str]]:
    return query(data_dir, CONTENT), sorted(stored(data_dir))


def assert_same_pull(skopeo: ContainersTool, expected: Path, got: Path) -> None:
    """Two `skopeo copy --all` dir: copies hold the same manifests and blobs, byte for byte
    (a schema 1 manifest: the same digest; each registry signs it with its own key)."""
    names = sorted(p.name for p in expected.iterdir())
    assert sorted(p.name for p in got.iterdir()) == names
    assert "manifest.json" in names and any(len(name) == 64 for name in names)  # and blobs
    for name in names:
        want, have = (expected / name).read_bytes(), (got / name).read_bytes()
        if name.endswith("manifest.json"):
            assert manifest_digest(skopeo, got / name) == manifest_digest(skopeo, expected / name)
            if b'"schemaVersion": 1' in want or b'"schemaVersion":1' in want:
                assert b'"signatures"' in have, "a schema 1 manifest is served signed"
                continue
        assert have == want, f"{got / name} differs from what Distribution served"


def pull_and_compare(skopeo: ContainersTool, moorage: Registry, root: Root, into: Path) -> None:
    """Pull every image of the root from Moorage and compare it with Distribution's."""
    into.mkdir()
    for ref, digest in root.refs.items():
        source = f"docker://{moorage.host}/{ref}"
        assert remote_digest(skopeo, source, into / "manifest.json") == digest, ref
        pulled = into / ref.replace("/", "_").replace(":", "_")
        skopeo(*PULL, source, f"dir:{pulled}")
        assert_same_pull(skopeo, root.pulled[ref], pulled)


def stored_count(report: str) -> int:
    """How many blobs a report says the import stored."""
    return int(report.split("blobs         ", 1)[1].split(" ", 1)[0])


def test_import_a_root_and_pull_every_image(
    root: Root, tmp_path: Path, containers_for: Callable[[Registry], ContainersRun]
) -> None:
    with serve(tmp_path / "moorage", env=clean_env()) as moorage:
        # The server runs while the import writes through the same metadata and storage.
        done = moorage_import(moorage.data_dir, root.path)
        out = done.stdout
        assert "repositories  6" in out, out
        assert "manifests     12 stored, 0 there already" in out, out
        assert "tags          7 set (0 moved), 0 there already" in out, out
        assert "1 deleted manifests" in out, out
        assert "1 unfinished uploads" in out and f"app/one {root.upload} (29 bytes)" in out, out
        assert "could not import" not in out, out
        # Not a terminal: plain progress lines on standard error.
        assert "import: importing: 0/" in done.stderr, done.stderr
        total = done.stderr.split("import: importing: 0/", 1)[1].split(" ", 1)[0]
        assert f"import: importing: {total}/{total} items" in done.stderr, done.stderr

        skopeo = containers_for(moorage).skopeo()
        pull_and_compare(skopeo, moorage, root, tmp_path / "pulled")

        # The manifest deleted in Distribution is not in Moorage; the repository's layers are.
        repository, _, digest = root.deleted.partition("@")
        status, _, _ = http("GET", f"{moorage.url}/v2/{repository}/manifests/{digest}")
        assert status == 404
        # The artifact is a referrer of its subject (Distribution 2.8 had no referrers API).
        status, _, body = http(
            "GET", f"{moorage.url}/v2/app/one/referrers/{root.refs['app/one:v1']}"
        )
        assert status == 200
        assert [d["digest"] for d in json.loads(body)["manifests"]] == [root.refs["app/one:sig"]]

        # Every blob is a hard link of Distribution's file: nothing was copied.
        files = stored(moorage.data_dir)
        blobs = {k: v for k, v in files.items() if k.startswith("blobs/sha256/")}
        assert len(blobs) == stored_count(out) > 10
        for key, (inode, _, _) in blobs.items():
            assert root.data("sha256:" + key.rsplit("/", 1)[1]).stat().st_ino == inode, key
        assert [k for k in files if k.startswith("blobs/uploads/")] == []
        rows = query(
            moorage.data_dir,
            {
                "n": "SELECT COUNT(*) FROM repository_blobs r "
                "JOIN blobs b ON b.digest = r.digest "
                f"WHERE b.digest = '{root.shared_layer}'"
            },
        )
        assert rows["n"] == [(2,)]  # app/one and library/legacy, one stored copy

        # A second run imports nothing and changes nothing.
        before = query(moorage.data_dir, DUMP), stored(moorage.data_dir)
        again = moorage_import(moorage.data_dir, root.path).stdout
        assert "blobs         0 stored" in again and "blob links    0 made" in again, again
        assert "manifests     0 stored, 12 there already" in again, again
        assert "tags          0 set (0 moved), 7 there already" in again, again
        assert (query(moorage.data_dir, DUMP), stored(moorage.data_dir)) == before

        # A tag that names another manifest in Moorage is set back to what the root says (a
        # run that catches up with a root still in use).
        moved = f"docker://{moorage.host}/app/moved:current"
        source = f"docker://{moorage.host}/app/one:v1"
        skopeo(*PUSH, "--src-tls-verify=false", "--preserve-digests", source, moved)
        assert remote_digest(skopeo, moved, tmp_path / "m.json") == root.refs["app/one:v1"]
        caught_up = moorage_import(moorage.data_dir, root.path).stdout
        assert "tags          1 set (1 moved), 6 there already" in caught_up, caught_up
        assert remote_digest(skopeo, moved, tmp_path / "m.json") == root.refs["app/moved:current"]


def test_on_another_filesystem_blobs_are_copied(root: Root, tmp_path: Path) -> None:
    linked = moorage_import(tmp_path / "linked", root.path).stdout
    n = stored_count(linked)
    assert f"{n} stored ({n} hard-linked, 0 copied" in linked, linked
    other = Path(tempfile.mkdtemp(prefix="moorage-import-", dir="/dev/shm"))  # a tmpfs
    try:
        assert other.stat().st_dev != root.path.stat().st_dev
        copied = moorage_import(other / "data", root.path).stdout
        assert f"{n} stored (0 hard-linked, {n} copied" in copied, copied
        assert content(other / "data") == content(tmp_path / "linked")
        for key in stored(other / "data"):
            path = other / "data" / "storage" / key
            digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
            assert path.name == digest[7:]
            assert path.stat().st_ino != root.data(digest).stat().st_ino
    finally:
        shutil.rmtree(other)


def test_into_s3_and_postgresql(
    root: Root,
    tmp_path: Path,
    migrated_database: str,
    fresh_bucket: str,
    s3_service: dict[str, str],
    containers_for: Callable[[Registry], ContainersRun],
) -> None:
    """With `--config` naming PostgreSQL and S3, as `serve` takes it: every blob is copied
    into the bucket, and a server on that configuration serves every image."""
    settings = {
        "metadata": {"url": migrated_database},
        "storage": {
            "driver": "s3",
            "s3": {
                "endpoint": s3_service["S3_ENDPOINT"],
                "region": s3_service["S3_REGION"],
                "bucket": fresh_bucket,
                "accesskey": s3_service["S3_ACCESS_KEY"],
                "secretkey": s3_service["S3_SECRET_KEY"],
            },
        },
    }
    config_file = tmp_path / "moorage.yml"
    config_file.write_text(yaml.safe_dump(settings))
    out = moorage_import(tmp_path / "data", root.path, "--config", str(config_file)).stdout
    n = stored_count(out)
    assert n > 10 and f"{n} stored (0 hard-linked, {n} copied" in out, out
    assert "manifests     12 stored" in out and "could not import" not in out, out
    with serve(tmp_path / "server", "--config", config_file, env=clean_env()) as moorage:
        pull_and_compare(containers_for(moorage).skopeo(), moorage, root, tmp_path / "pulled")
    again = moorage_import(tmp_path / "data", root.path, "--config", str(config_file)).stdout
    assert "blobs         0 stored" in again and "12 there already" in again, again


# ---------------------------------------------------------------------------------------------
# Interrupted, corrupt, and on a terminal


class Interrupted(Exception):
    """Raised where a Ctrl-C would land."""


class StopAt:
    """Progress that interrupts the import at its `at`-th report (0: never), and counts them.
    The import reports after each link, manifest and tag and as it hashes each blob: between
    the steps that store bytes and the ones that record them."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.calls = 0

    def phase(self, name: str, items: int | None = None, nbytes: int = 0) -> None:
        pass

    def advance(self, items: int = 0, nbytes: int = 0) -> None:
        self.calls += 1
        if self.calls == self.at:
            raise Interrupted


async def run_import(data_dir: Path, path: Path, progress: StopAt | None = None) -> Report:
    settings = config.load(None, datadir=data_dir)
    metadata = MetadataStore(settings.metadata_url)
    registry = Moorage(settings, await open_storage(settings), metadata)
    try:
        await metadata.open()
        return await DistributionImport(find_root(path), registry, progress).run()
    finally:
        await registry.close()


def counts(data_dir: Path) -> dict[str, int]:
    tables = ("blobs", "repository_blobs", "manifests", "tags")
    return {t: n for t in tables for (n,) in query(data_dir, {t: f"SELECT COUNT(*) FROM {t}"})[t]}


def linked(data_dir: Path) -> bool:
    """Has an import into `data_dir` made a blob link yet?"""
    try:
        return counts(data_dir)["repository_blobs"] > 0
    except sqlite3.OperationalError:  # no database, or no tables yet
        return False


async def test_an_import_interrupted_anywhere_finishes_when_run_again(
    root: Root, tmp_path: Path
) -> None:
    counter = StopAt(0)
    whole = await run_import(tmp_path / "whole", root.path, counter)
    expected = content(tmp_path / "whole")
    total = counts(tmp_path / "whole")
    assert counter.calls > 40 and whole.problems == []
    for at in range(1, counter.calls + 1):
        data = tmp_path / f"at-{at}"
        with pytest.raises(Interrupted):
            await run_import(data, root.path, StopAt(at))
        done = counts(data) if (data / "metadata.db").exists() else dict.fromkeys(total, 0)
        again = await run_import(data, root.path)
        assert content(data) == expected, f"interrupted at report {at}"
        assert again.problems == []
        # What the first run recorded is not brought again; the rest is.
        assert again.blobs_linked + again.blobs_copied == total["blobs"] - done["blobs"]
        assert again.links_made == total["repository_blobs"] - done["repository_blobs"]
        assert again.manifests_stored == total["manifests"] - done["manifests"]
        assert again.tags_set == total["tags"] - done["tags"]


STOP_ATTEMPTS = 5


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _stop_after_first_links(
    data: Path, root: Path, how: signal.Signals
) -> tuple[subprocess.Popen[str], str, str]:
    """Run an import into `data` and send it `how` once it has made its first links."""
    proc = subprocess.Popen(
        import_command(data, root),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=import_env(),
        # Ctrl-C as at a terminal, whatever this test inherited: a shell that starts a job in
        # the background has it ignore SIGINT, and Python then leaves it ignored.
        preexec_fn=_default_sigint,
    )
    try:
        deadline = time.monotonic() + 60
        while not linked(data) and proc.poll() is None:
            assert time.monotonic() < deadline, "no links after 60 s"
            time.sleep(0.002)
        if proc.poll() is None:
            os.kill(proc.pid, how)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc, out, err


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill"])
def test_a_stopped_import_process_finishes_when_run_again(
    root: Root, tmp_path: Path, how: signal.Signals
) -> None:
    moorage_import(tmp_path / "whole", root.path)
    expected = content(tmp_path / "whole")
    whole = counts(tmp_path / "whole")["repository_blobs"]
    # The root is small: now and then the import has done everything between its first links
    # and the signal. Such a run tests nothing; it is tried again with a new data directory.
    for attempt in range(STOP_ATTEMPTS):
        data = tmp_path / f"stopped-{attempt}"
        proc, out, err = _stop_after_first_links(data, root.path, how)
        if proc.returncode != 0 and counts(data)["repository_blobs"] < whole:
            break
    else:
        pytest.fail(f"the import was done before it was stopped, {STOP_ATTEMPTS} times: {err}")
    if how == signal.SIGINT:
        assert proc.returncode == 130, err
        assert "interrupted: what is imported stays; run the same command again" in err
        assert out.startswith("interrupted after ")
    else:
        assert proc.returncode == -signal.SIGKILL
    done = counts(data)
    assert 0 < done["repository_blobs"] < whole
    assert content(data) != expected  # stopped before the end
    again = moorage_import(data, root.path).stdout
    assert "could not import" not in again
    assert content(data) == expected


def test_a_corrupt_blob_is_reported_and_not_imported(root: Root, tmp_path: Path) -> None:
    """A byte flipped in a layer of app/one:v1 and in one of a platform image of the index
    app/multi:latest: neither layer, nor what needs it (the image, the index over it, their
    tags), is imported, and the report says why; everything else is."""
    copy = tmp_path / "root"
    shutil.copytree(root.path, copy)

    def read(digest: str) -> bytes:
        return (copy / root.data(digest).relative_to(root.path)).read_bytes()

    def corrupt(digest: str) -> str:
        data = bytearray(read(digest))
        data[len(data) // 2] ^= 0x01
        (copy / root.data(digest).relative_to(root.path)).write_bytes(data)
        return f"its {len(data)} bytes hash to sha256:{hashlib.sha256(data).hexdigest()}"

    image, artifact = root.refs["app/one:v1"], root.refs["app/one:sig"]
    index = root.refs["app/multi:latest"]
    child = json.loads(read(index))["manifests"][0]["digest"]
    layer = json.loads(read(image))["layers"][0]["digest"]
    child_layer = json.loads(read(child))["layers"][0]["digest"]
    hashes_to = corrupt(layer)
    child_hashes_to = corrupt(child_layer)

    out = moorage_import(tmp_path / "data", copy, expect=1).stdout
    corrupt_layer = f"{layer} (corrupt in the root)"
    child_needs = f"needs {child_layer} (corrupt in the root)"
    problems = [
        f"corrupt blob {layer}: {hashes_to}",
        f"manifest app/one@{image}: needs {corrupt_layer}",
        f"tag app/one:v1: names {image}, not imported: needs {corrupt_layer}",
        f"corrupt blob {child_layer}: {child_hashes_to}",
        f"manifest app/multi@{child}: {child_needs}",
        f"manifest app/multi@{index}: needs {child} (not imported: {child_needs})",
        f"tag app/multi:latest: names {index}, not imported: needs {child} (not imported: ",
    ]
    assert f"could not import ({len(problems)})" in out, out
    for problem in problems:
        assert f"\n  {problem}" in out, out
    assert (
        "Error: could not import 7 (listed above); the rest is imported"
        in moorage_import(tmp_path / "data", copy, expect=1).stderr
    )  # and so again: nothing corrupt got in meanwhile

    # None of that is in Moorage; everything else is, the artifact whose subject is the image
    # too, and the other platform image of the index.
    imported = query(tmp_path / "data", CONTENT)
    blobs = {row[0] for row in imported["blobs"]}
    assert layer not in blobs and child_layer not in blobs
    names = {p.name for p in (tmp_path / "data" / "storage").rglob("*")}
    assert layer[7:] not in names and child_layer[7:] not in names
    manifests = {(row[0], row[1]) for row in imported["manifests"]}
    assert not {("app/one", image), ("app/multi", child), ("app/multi", index)} & manifests
    assert ("app/one", artifact) in manifests
    other = json.loads(read(index))["manifests"][1]["digest"]
    assert ("app/multi", other) in manifests
    tags = {(row[0], row[1]): row[2] for row in imported["tags"]}
    assert ("app/one", "v1") not in tags and ("app/multi", "latest") not in tags
    assert tags[("app/one", "sig")] == artifact
    assert len(tags) == 5 and len(manifests) == 9


def test_progress_on_a_terminal_is_a_bar(root: Root, tmp_path: Path) -> None:
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        import_command(tmp_path / "data", root.path),
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env={**import_env(), "TERM": "xterm-256color", "COLUMNS": "160"},
    )
    os.close(terminal)
    shown = b""
    try:
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the other end closed: the command is done
                break
            if not chunk:
                break
            shown += chunk
        assert proc.wait(timeout=60) == 0
    finally:
        os.close(controller)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown.decode(errors="replace"))
    report = text[text.index("imported ") :]
    size = report.split("copied, ", 1)[1].split(")", 1)[0]
    last = text[: text.index("imported ")].rstrip().splitlines()[-1]
    assert "importing" in last and "━" in last, last  # the bar, finished
    items = re.search(r" (\d+)/(\d+) ", last)
    assert items is not None and items.group(1) == items.group(2), last
    assert f"{size}/{size}" in last, last
    assert "import: importing:" not in text  # no plain lines on a terminal
