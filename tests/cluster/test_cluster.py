"""Three stateless nodes on one PostgreSQL database and one S3 bucket, behind HAProxy
round-robin: real processes, real services (tests/services), nothing shared but the database,
the bucket and `http.secret`.

What each test shows is a race or a hand-over between nodes from docs/design/cluster.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from moorage.metadata import migrations
from tests.clients.conftest import ContainersRun, layer_statuses, pushed_digest, running_dockerd
from tests.clients.conftest import Registry as Registry_
from tests.clients.test_skopeo import PULL, PUSH
from tests.harness import MoorageProcess
from tests.images import MemoryImage, blob_bytes, memory_image, tagged_digest
from tests.images import make_image as oci_image
from tests.process.registry import TIMEOUT, Registry, sha256
from tests.services.fixtures import (
    POSTGRES,
    Settings,
    create_database,
    database_url,
    start_service,
    stop_service,
)
from tests.v1.client import RemoteHttp, V1Client, make_chain

pytestmark = pytest.mark.timeout(300)

NODES = 3
SECRET = "one secret every node of this cluster shares"


@dataclass
class Cluster:
    nodes: list[MoorageProcess]
    lb_url: str

    def node_log(self, i: int) -> str:
        return self.nodes[i].log_path.read_text(errors="replace")


def node_env(database: str, bucket: str, s3: Settings, **extra: str) -> dict[str, str]:
    return {
        "MOORAGE_METADATA_URL": database,
        "MOORAGE_STORAGE_DRIVER": "s3",
        "MOORAGE_STORAGE_S3_ENDPOINT": s3["S3_ENDPOINT"],
        "MOORAGE_STORAGE_S3_REGION": s3["S3_REGION"],
        "MOORAGE_STORAGE_S3_BUCKET": bucket,
        "MOORAGE_STORAGE_S3_ACCESSKEY": s3["S3_ACCESS_KEY"],
        "MOORAGE_STORAGE_S3_SECRETKEY": s3["S3_SECRET_KEY"],
        "MOORAGE_HTTP_SECRET": SECRET,
        "MOORAGE_LOG_ACCESSLOG": "true",
        **extra,
    }


@pytest.fixture
async def cluster(
    tmp_path: Path,
    migrated_database: str,
    fresh_bucket: str,
    s3_service: Settings,
    haproxy: Callable[..., Settings],
) -> AsyncIterator[Cluster]:
    env = node_env(migrated_database, fresh_bucket, s3_service)
    nodes = [MoorageProcess(tmp_path / f"node{i}" / "data", env=env) for i in range(NODES)]
    try:
        await asyncio.gather(*(node.start() for node in nodes))
        lb = haproxy(*(node.host for node in nodes))
        yield Cluster(nodes, lb["LB_URL"])
    finally:
        for node in nodes:
            node.cleanup()


@pytest.fixture
async def fresh() -> AsyncIterator[aiohttp.ClientSession]:
    """A new TCP connection per request: round robin then spreads requests over the nodes."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(timeout=TIMEOUT, connector=connector) as session:
        yield session


def _patches(log: str, location: str) -> int:
    upload_id = location.rstrip("/").rsplit("/", 1)[-1]
    return sum(1 for line in log.splitlines() if "PATCH" in line and upload_id in line)


async def test_a_chunked_upload_whose_chunks_visit_every_node(
    cluster: Cluster, fresh: aiohttp.ClientSession
) -> None:
    reg = Registry(fresh, cluster.lb_url)
    data = os.urandom(6 * 256 * 1024 + 17)
    chunk = 256 * 1024
    location = first = await reg.start_upload("cluster/chunked")
    for start in range(0, len(data), chunk):
        location = await reg.patch(location, data[start : start + chunk], start)
    await reg.finish(location, sha256(data))
    per_node = [_patches(cluster.node_log(i), first) for i in range(NODES)]
    assert all(count > 0 for count in per_node), per_node  # every node took chunks
    assert sum(per_node) == -(-len(data) // chunk)
    for node in cluster.nodes:  # and every node serves the blob
        status, body, _ = await Registry(fresh, node.url).get_blob("cluster/chunked", sha256(data))
        assert status == 200 and body == data


async def test_two_nodes_push_the_same_blobs_into_one_new_repository_at_once(
    cluster: Cluster, fresh: aiohttp.ClientSession
) -> None:
    image = memory_image(7, (300_000, 200_000), "same blobs")
    one, two = (Registry(fresh, node.url) for node in cluster.nodes[:2])
    digests = await asyncio.gather(
        *(reg.push_image("cluster/same", f"t{i}", image) for i, reg in enumerate((one, two)))
    )
    assert digests == [image.digest, image.digest]
    status, body, _ = await Registry(fresh, cluster.nodes[2].url).get_manifest("cluster/same", "t1")
    assert status == 200 and body == image.manifest


async def test_a_v1_push_through_one_node_pulls_through_v2_on_another(
    cluster: Cluster, fresh: aiohttp.ClientSession
) -> None:
    chain = make_chain(2)
    v1 = V1Client(RemoteHttp(fresh, cluster.nodes[0].url))
    await v1.push("cluster/v1", chain, tags={chain[-1].id: ["latest"]})
    other = Registry(fresh, cluster.nodes[1].url)
    status, body, _ = await other.get_manifest("cluster/v1", "latest")
    assert status == 200, body[:300]
    for image in chain:
        status, blob, _ = await other.get_blob("cluster/v1", image.blob_digest)
        assert status == 200 and blob == image.layer


async def test_a_token_from_one_node_is_accepted_by_another(
    tmp_path: Path, migrated_database: str, fresh_bucket: str, s3_service: Settings
) -> None:
    from moorage.auth import htpasswd

    users = tmp_path / "htpasswd"
    htpasswd.write(users, {"alice": htpasswd.hash_password("alice-password")})
    env = node_env(
        migrated_database,
        fresh_bucket,
        s3_service,
        MOORAGE_AUTH_MODE="token",
        MOORAGE_AUTH_HTPASSWD=str(users),
    )
    nodes = [MoorageProcess(tmp_path / f"tok{i}" / "data", env=env, ready=(401,)) for i in range(2)]
    try:
        await asyncio.gather(*(node.start() for node in nodes))
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
            basic = {"Authorization": aiohttp.encode_basic_auth("alice", "alice-password")}
            params = {"service": "moorage", "scope": "repository:team/app:pull,push"}
            token_url = f"{nodes[0].url}/auth/token"
            async with session.get(token_url, params=params, headers=basic) as resp:
                assert resp.status == 200, await resp.text()
                token = (await resp.json())["token"]
            bearer = {"Authorization": f"Bearer {token}"}
            async with session.post(
                f"{nodes[1].url}/v2/team/app/blobs/uploads/", headers=bearer
            ) as resp:
                assert resp.status == 202, await resp.text()
            async with session.post(f"{nodes[1].url}/v2/team/app/blobs/uploads/") as resp:
                assert resp.status == 401  # and without the token, no
    finally:
        for node in nodes:
            node.cleanup()


async def test_a_node_killed_in_the_middle_of_pushes(
    cluster: Cluster, fresh: aiohttp.ClientSession
) -> None:
    """Clients push through the balancer while one node is killed with SIGKILL. A push that
    fails is retried from the start, as clients do; every acknowledged push is whole."""
    reg = Registry(fresh, cluster.lb_url)
    acknowledged: list[tuple[str, MemoryImage]] = []

    async def pusher(worker: int) -> None:
        for i in range(6):
            image = memory_image(worker * 100 + i, (150_000, 90_000), f"kill {worker}/{i}")
            for _attempt in range(5):
                try:
                    await reg.push_image(f"cluster/kill-{worker}", f"t{i}", image, chunk=64_000)
                    acknowledged.append((f"cluster/kill-{worker}:t{i}", image))
                    break
                except (AssertionError, aiohttp.ClientError):
                    await asyncio.sleep(0.5)

    async def killer() -> None:
        await asyncio.sleep(1.0)
        victim = cluster.nodes[1]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(victim.pid, signal.SIGKILL)

    await asyncio.gather(*(pusher(w) for w in range(3)), killer())
    assert cluster.nodes[1].proc is not None and cluster.nodes[1].proc.poll() is not None
    assert len(acknowledged) == 18, [name for name, _ in acknowledged]
    survivor = Registry(fresh, cluster.nodes[0].url)
    for name, image in acknowledged:
        repo, _, tag = name.partition(":")
        status, body, _ = await survivor.get_manifest(repo, tag)
        assert status == 200 and body == image.manifest, name
        for blob in image.blobs:
            status, data, _ = await survivor.get_blob(repo, sha256(blob))
            assert status == 200 and data == blob, name


def _balancer(cluster: Cluster, tmp_path: Path) -> ContainersRun:
    """Private skopeo/podman state (tests/clients) pointed at the balancer."""
    host = cluster.lb_url.removeprefix("http://")
    first = cluster.nodes[0]
    assert first.proc is not None
    target = Registry_(cluster.lb_url, host, first.pid, first.data_dir, first.log_path)
    return ContainersRun(tmp_path / "containers", target)


async def test_skopeo_and_podman_push_and_pull_through_the_balancer(
    cluster: Cluster, tmp_path: Path
) -> None:
    run = _balancer(cluster, tmp_path)
    try:
        skopeo, podman = run.skopeo(), run.podman()
        img = oci_image(tmp_path / "src", layers=[3 << 20, 70_000, 300], seed=11, tag="v1")
        ref = run.registry.ref("cluster/tools", "v1")
        await asyncio.to_thread(skopeo, *PUSH, img.ref, ref)
        out = tmp_path / "pulled"
        await asyncio.to_thread(skopeo, *PULL, ref, f"oci:{out}:v1")
        assert tagged_digest(out, "v1") == img.digest
        for blob in img.blobs:
            assert blob_bytes(out, blob.digest) == blob.read(), blob.digest
        name = run.registry.name("cluster/tools", "v1")
        await asyncio.to_thread(podman, "pull", "--tls-verify=false", name)
        inspected = await asyncio.to_thread(
            podman, "image", "inspect", "--format", "{{.Digest}}", name
        )
        assert inspected.stdout.strip() == img.digest
    finally:
        run.cleanup()


async def test_docker_pushes_and_pulls_through_the_balancer(
    cluster: Cluster, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A real dockerd pushes an image through the balancer (its layer uploads and the manifest
    land on whichever nodes HAProxy picks), forgets it, and pulls it back."""
    run = _balancer(cluster, tmp_path)
    try:
        img = oci_image(
            tmp_path / "src", layers=[2 << 20, 90_000, 700], seed=13, tag="v1", cmd=["/bin/true"]
        )
        archive = tmp_path / "image.tar"
        local = "moorage-test/cluster-docker:v1"
        await asyncio.to_thread(run.skopeo(), "copy", img.ref, f"docker-archive:{archive}:{local}")
        remote = run.registry.name("cluster/docker", "v1")
        with running_dockerd(tmp_path_factory.mktemp("dk"), run.registry) as docker:
            await asyncio.to_thread(docker, "load", "-i", archive)
            await asyncio.to_thread(docker, "tag", local, remote)
            pushed = (await asyncio.to_thread(docker, "push", remote)).stdout
            digest = pushed_digest(pushed, "v1")
            assert set(layer_statuses(pushed).values()) == {"Pushed"}, pushed
            await asyncio.to_thread(docker, "rmi", local, remote)
            pulled = (await asyncio.to_thread(docker, "pull", remote)).stdout
            assert f"Digest: {digest}" in pulled, pulled
            image_id = await asyncio.to_thread(
                docker, "image", "inspect", "--format", "{{.Id}}", remote
            )
            assert image_id.stdout.strip() == img.config.digest
        served = [i for i in range(NODES) if "/v2/cluster/docker/" in cluster.node_log(i)]
        assert len(served) > 1, "the balancer sent all of docker's requests to one node"
        # What docker pushed (layers it compressed itself) is what every node serves, whole.
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
            for node in cluster.nodes:
                reg = Registry(session, node.url)
                status, body, headers = await reg.get_manifest("cluster/docker", "v1")
                assert status == 200 and headers["Docker-Content-Digest"] == digest, node.url
                manifest = json.loads(body)
                assert manifest["config"]["digest"] == img.config.digest
                assert len(manifest["layers"]) == len(img.layers)
                for layer in manifest["layers"]:
                    status, data, _ = await reg.get_blob("cluster/docker", layer["digest"])
                    assert status == 200 and sha256(data) == layer["digest"], node.url
    finally:
        run.cleanup()


async def test_postgresql_restarted_under_load(
    tmp_path: Path,
    fresh_bucket: str,
    s3_service: Settings,
    haproxy: Callable[..., Settings],
) -> None:
    """Two nodes behind the balancer on a PostgreSQL of this test's own, which is stopped and
    started again while clients push and pull. During the outage requests answer 503 (never
    another 5xx, never a hang); afterwards pushes work again without restarting a node, and
    every push acknowledged before, during or after is whole."""
    run_dir = tmp_path / "pg"
    run_dir.mkdir()
    pg = start_service(POSTGRES, run_dir)
    try:
        await create_database(pg, "cluster")
        database = database_url(pg, "cluster")
        await migrations.run_async(database, migrations.upgrade)
        env = node_env(database, fresh_bucket, s3_service)
        nodes = [MoorageProcess(tmp_path / f"n{i}" / "data", env=env) for i in range(2)]
        try:
            await asyncio.gather(*(node.start() for node in nodes))
            lb = haproxy(*(node.host for node in nodes))["LB_URL"]
            await _push_through_a_restart(lb, run_dir, pg)
        finally:
            for node in nodes:
                node.cleanup()
    finally:
        stop_service(POSTGRES, run_dir)


async def _push_through_a_restart(lb: str, run_dir: Path, pg: Settings) -> None:
    statuses: list[int] = []
    acknowledged: list[tuple[str, MemoryImage]] = []
    done = asyncio.Event()
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(timeout=TIMEOUT, connector=connector) as session:
        reg = Registry(session, lb)

        async def pusher() -> None:
            i = 0
            while not done.is_set():
                image = memory_image(1000 + i, (40_000,), f"restart {i}")
                try:
                    await reg.push_image("cluster/restart", f"t{i}", image)
                    acknowledged.append((f"t{i}", image))
                except AssertionError as exc:  # a refused step: which status?
                    statuses.append(int(str(exc).split(": ", 1)[1].split()[0]))
                i += 1
                await asyncio.sleep(0.05)

        task = asyncio.create_task(pusher())
        await asyncio.sleep(1.0)
        for _ in range(300):  # a busy machine: at least one push through before the outage
            if acknowledged or task.done():
                break
            await asyncio.sleep(0.1)
        before = len(acknowledged)
        await asyncio.to_thread(stop_service, POSTGRES, run_dir)
        await asyncio.sleep(2.0)
        again = await asyncio.to_thread(start_service, POSTGRES, run_dir)
        assert again["PGPORT"] == pg["PGPORT"]
        during = len(acknowledged)
        await asyncio.sleep(3.0)
        for _ in range(300):  # and at least one after it, without restarting a node
            if len(acknowledged) > during or task.done():
                break
            await asyncio.sleep(0.1)
        done.set()
        await asyncio.wait_for(task, 60)
        assert before > 0 and len(acknowledged) > during, (before, during, len(acknowledged))
        assert statuses and set(statuses) == {503}, statuses
        for tag, image in acknowledged:
            status, body, _ = await reg.get_manifest("cluster/restart", tag)
            assert status == 200 and body == image.manifest, tag
