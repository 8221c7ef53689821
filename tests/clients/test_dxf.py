"""python-dxf (library `dxf.DXF` and its `dxf` CLI) against a real Moorage process: blobs as a
content store, aliases (manifests) over them, cross-repository mounts, deletes."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import cast

import dxf  # python-dxf; missing, the module fails to import (and the tests fail)
import dxf.exceptions
import pytest
import requests

from tests.clients.conftest import Registry, clean_env, run

pytestmark = pytest.mark.clients


def _data(size: int, seed: int) -> bytes:
    return random.Random(f"moorage-dxf:{seed}").randbytes(size)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _pull(client: dxf.DXF, digest: str) -> bytes:
    return b"".join(cast(Iterable[bytes], client.pull_blob(digest)))


def _status(excinfo: pytest.ExceptionInfo[requests.HTTPError]) -> int:
    assert excinfo.value.response is not None
    return excinfo.value.response.status_code


def test_blobs_aliases_mounts_and_deletes(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    store = dxf.DXF(registry.host, "dxf/store", insecure=True, timeout=60)
    big = _data(3 * 1024 * 1024 + 17, 1)
    small = _data(1000, 2)
    path = tmp_path / "big.bin"
    path.write_bytes(big)

    # push-blob from a file (one streamed PUT) and from an iterator of chunks.
    d_big = store.push_blob(str(path))
    assert d_big == _digest(big)
    d_small = store.push_blob(data=iter([small[:300], small[300:]]), digest=_digest(small))
    assert d_small == _digest(small)
    # Pushing again is a no-op that finds the blob with HEAD.
    assert store.push_blob(str(path)) == d_big

    # pull-blob gives the same bytes (dxf verifies the digest while reading, too).
    assert _pull(store, d_big) == big
    assert _pull(store, d_small) == small
    assert store.blob_size(d_big) == len(big)
    chunks, size = cast(tuple[Iterable[bytes], int], store.pull_blob(d_small, size=True))
    assert size == len(small)
    assert b"".join(chunks) == small

    # set-alias makes a schema 2 manifest over the blobs; get-alias reads them back.
    manifest = store.set_alias("v1", d_big, d_small)
    assert store.get_alias("v1") == [d_big, d_small]
    assert store.get_alias("v1", sizes=True) == [(d_big, len(big)), (d_small, len(small))]
    assert store.get_digest("v1") == d_big  # dxf uses the first blob as the config
    assert "v1" in store.list_aliases()
    digest, _ = store.head_manifest_and_response("v1")
    assert digest == _digest(manifest.encode())
    served, _ = store.get_manifest_and_response("v1")
    assert served == manifest

    # mount-blob into another repository: 201, and the bytes are readable there.
    other = dxf.DXF(registry.host, "dxf/other", insecure=True, timeout=60)
    with pytest.raises(requests.HTTPError) as missing:
        other.blob_size(d_big)
    assert _status(missing) == 404
    assert other.mount_blob("dxf/store", d_big) == d_big
    assert other.blob_size(d_big) == len(big)
    assert _pull(other, d_big) == big
    # Mounting from a repository that does not have the blob does not succeed.
    nowhere = _digest(b"never pushed")
    with pytest.raises((dxf.exceptions.DXFMountFailed, requests.HTTPError)):
        other.mount_blob("dxf/store", nowhere)

    # Deleting the blob from one repository leaves the other's link alone.
    other.del_blob(d_big)
    with pytest.raises(requests.HTTPError) as after:
        other.blob_size(d_big)
    assert _status(after) == 404
    assert _pull(store, d_big) == big

    # del-alias removes the manifest (and the tag); its blobs stay.
    assert store.del_alias("v1") == [d_big, d_small]
    with pytest.raises(requests.HTTPError) as gone:
        store.get_alias("v1")
    assert _status(gone) == 404
    assert "v1" not in store.list_aliases()
    assert _pull(store, d_small) == small


def test_cli_push_pull_alias_mount(registry: Registry, tmp_path: Path) -> None:
    env = clean_env(DXF_HOST=registry.host, DXF_INSECURE="1", DXF_PROGRESS="0")
    cli = [sys.executable, "-m", "dxf"]
    data = _data(200_000, 3)
    path = tmp_path / "payload.bin"
    path.write_bytes(data)

    pushed = run([*cli, "push-blob", "dxf/cli", path, "@latest"], env=env).stdout.strip()
    assert pushed == _digest(data)
    assert run([*cli, "get-alias", "dxf/cli", "latest"], env=env).stdout.split() == [pushed]

    pulled = subprocess.run(
        [*cli, "pull-blob", "dxf/cli", "@latest"],
        env=env,
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert pulled.stdout == data

    mounted = run(
        [*cli, "mount-blob", "dxf/cli-mounted", "dxf/cli", pushed, "@m"], env=env
    ).stdout.strip()
    assert mounted == pushed
    assert run([*cli, "blob-size", "dxf/cli-mounted", "@m"], env=env).stdout.strip() == str(
        len(data)
    )
    by_digest = subprocess.run(
        [*cli, "pull-blob", "dxf/cli-mounted", pushed],
        env=env,
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert by_digest.stdout == data

    repos = run([*cli, "list-repos"], env=env).stdout.split()
    assert {"dxf/cli", "dxf/cli-mounted"} <= set(repos)
    manifest = json.loads(run([*cli, "get-manifest", "dxf/cli-mounted", "m"], env=env).stdout)
    assert [layer["digest"] for layer in manifest["layers"]] == [pushed]
