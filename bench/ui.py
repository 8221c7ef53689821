#!/usr/bin/env python3
"""The web interface's benchmark (issue 13): how long its first pages take at scale.

A data directory is made with the metadata store (its own migrations make the schema), then
filled through it in bulk: REPOS repositories (100 namespaces), each with one tagged image
manifest linking two shared blobs, and one more repository, `big/app`, with TAGS tags on as
many manifests. A registry runs on it in-process (the app `moorage serve` runs, on a real
socket), and each page is fetched WARM times first, then RUNS times, one after another over
one keep-alive connection. Reported per page: median, p95 and max of the time from sending
the request to the last byte (server time plus loopback), and the page's size.

    python3 bench/ui.py                        # 100,000 repositories, 10,000 tags
    python3 bench/ui.py --repos 10000 --tags 1000 --runs 20   # quick

Nothing is asserted about timings; the run fails if a page does not answer 200 or shows the
wrong rows.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import Connection, insert

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moorage.app import create_app
from moorage.config import Settings
from moorage.metadata import MetadataStore
from moorage.metadata import schema as t

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
BATCH = 10_000


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _manifest(config: str, layer: str, note: str) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config,
                "size": 100,
            },
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer}
                | {"size": 1 << 20}
            ],
            "annotations": {"bench": note},
        },
        sort_keys=True,
    ).encode()


def _rows(repos: int, tags: int) -> dict[str, list[dict[str, Any]]]:
    now = time.time()
    config, layer = _digest(b"config"), _digest(b"layer")
    rows: dict[str, list[dict[str, Any]]] = {k: [] for k in ("r", "rb", "m", "mr", "tg")}
    rows["b"] = [
        {"digest": d, "storage_key": d, "size": size, "created": now, "touched": now}
        for d, size in ((config, 100), (layer, 1 << 20))
    ]
    names = [f"org-{i % 100:02d}/repo-{i:06d}" for i in range(repos)]
    # big/app: TAGS manifests, one tag each; every other repository one of each.
    plan = [(name, 1) for name in names] + [("big/app", tags)]
    for repo_id, (name, count) in enumerate(plan, start=1):
        rows["r"].append({"id": repo_id, "name": name, "created": now})
        for d in (config, layer):
            rows["rb"].append({"repository_id": repo_id, "digest": d, "created": now})
        for n in range(count):
            body = _manifest(config, layer, f"{name}:{n}")
            digest = _digest(body)
            rows["m"].append(
                {
                    "repository_id": repo_id,
                    "digest": digest,
                    "media_type": OCI_MANIFEST,
                    "content": body,
                    "artifact_type": "application/vnd.oci.image.config.v1+json",
                    "created": now - n,
                    "touched": now,
                }
            )
            for d in (config, layer):
                rows["mr"].append({"repository_id": repo_id, "digest": digest, "child": d})
            tag = "latest" if count == 1 else f"v{n:05d}"
            rows["tg"].append(
                {"repository_id": repo_id, "name": tag, "digest": digest, "updated": now - n}
            )
    return rows


async def seed(datadir: Path, repos: int, tags: int) -> float:
    """Fill a new data directory through the metadata store; the seconds it took."""
    started = time.perf_counter()
    store = MetadataStore(f"sqlite:///{datadir / 'metadata.db'}")
    await store.open()
    rows = _rows(repos, tags)
    tables = {
        "b": t.blobs,
        "r": t.repositories,
        "rb": t.repository_blobs,
        "m": t.manifests,
        "mr": t.manifest_references,
        "tg": t.tags,
    }
    for key, table in tables.items():
        batch = rows[key]
        for start in range(0, len(batch), BATCH):
            part = batch[start : start + BATCH]

            def work(conn: Connection, table: Any = table, part: Any = part) -> None:
                conn.execute(insert(table), part)

            await store._write(work)
    await store.close()
    return time.perf_counter() - started


async def measure(
    client: TestClient[Any, Any], path: str, warm: int, runs: int, expect: str
) -> dict[str, Any]:
    times = []
    size = 0
    for n in range(warm + runs):
        started = time.perf_counter()
        resp = await client.get(path)
        body = await resp.read()
        elapsed = time.perf_counter() - started
        if resp.status != 200 or expect.encode() not in body:
            raise SystemExit(f"{path}: {resp.status}, expected {expect!r} in the page")
        if n >= warm:
            times.append(elapsed * 1000)
        size = len(body)
    times.sort()
    return {
        "page": path,
        "median_ms": round(statistics.median(times), 2),
        "p95_ms": round(times[int(len(times) * 0.95) - 1], 2),
        "max_ms": round(times[-1], 2),
        "bytes": size,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repos", type=int, default=100_000)
    parser.add_argument("--tags", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warm", type=int, default=5)
    parser.add_argument("--out", type=Path, help="also write the results here (JSON)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="moorage-bench-ui-") as tmp:
        datadir = Path(tmp) / "data"
        filled = await seed(datadir, args.repos, args.tags)
        print(f"filled {args.repos} repositories and {args.tags} tags in {filled:.1f} s")
        app = create_app(Settings(datadir=datadir, metrics={"enabled": False}))
        # A repository halfway through org-50, and the one after it in name order.
        half = args.repos // 200 * 100 + 50
        middle, following = f"org-50/repo-{half:06d}", f"org-50/repo-{half + 100:06d}"
        pages = [
            ("/", "org-00/repo-000000"),
            (f"/?after={middle}", following),
            (f"/?q=repo-{args.repos - 1:06d}", f"repo-{args.repos - 1:06d}"),
            ("/repositories/big/app", "v00000"),
            ("/repositories/big/app?sort=pushed", "v00000"),
            (
                f"/repositories/big/app?sort=name&after=v{args.tags // 2:05d}",
                f"v{args.tags // 2 + 1:05d}",
            ),
        ]
        results = []
        async with TestClient(TestServer(app)) as client:
            for path, expect in pages:
                result = await measure(client, path, args.warm, args.runs, expect)
                results.append(result)
                print(
                    f"{path:50} median {result['median_ms']:7.2f} ms  p95 "
                    f"{result['p95_ms']:7.2f} ms  max {result['max_ms']:7.2f} ms  "
                    f"{result['bytes'] / 1024:6.1f} KiB"
                )
        if args.out:
            report = {"repos": args.repos, "tags": args.tags, "fill_s": filled, "pages": results}
            args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
