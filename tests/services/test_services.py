"""The service fixtures start real servers that do what the scale-out tests rely on."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import asyncpg
import sqlalchemy as sa
from aiohttp import web
from sqlalchemy.ext.asyncio import create_async_engine

from tests.services.fixtures import (
    POSTGRES,
    SWIFT_S3,
    Settings,
    s3_client,
    start_service,
    stop_service,
)

MiB = 1024 * 1024


async def test_fresh_database_is_empty_and_takes_sqlalchemy_url(fresh_database: str) -> None:
    assert fresh_database.startswith("postgresql+asyncpg://")
    engine = create_async_engine(fresh_database)
    try:
        async with engine.begin() as conn:
            tables = await conn.scalar(
                sa.text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            )
            assert tables == 0
            await conn.execute(sa.text("CREATE TABLE t (id int PRIMARY KEY, name text)"))
            await conn.execute(sa.text("INSERT INTO t VALUES (1, 'one'), (2, 'two')"))
        async with engine.connect() as conn:
            rows = (await conn.execute(sa.text("SELECT id, name FROM t ORDER BY id"))).all()
        assert [tuple(r) for r in rows] == [(1, "one"), (2, "two")]
    finally:
        await engine.dispose()


async def test_postgres_restart_and_kill_keep_data_and_settings(tmp_path: Path) -> None:
    run_dir = tmp_path / "pg"
    try:
        first = await asyncio.to_thread(start_service, POSTGRES, run_dir)
        conn = await asyncpg.connect(first["DATABASE_URL"])
        await conn.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('before')")
        await conn.close()

        await asyncio.to_thread(stop_service, POSTGRES, run_dir)
        status = subprocess.run([str(POSTGRES), "status", str(run_dir)], capture_output=True)
        assert status.returncode == 1

        second = await asyncio.to_thread(start_service, POSTGRES, run_dir)
        assert second == first
        conn = await asyncpg.connect(second["DATABASE_URL"])
        assert await conn.fetchval("SELECT v FROM kept") == "before"
        await conn.close()

        # a killed server leaves lock files behind (and a zombie pid): start copes with both
        postmaster = Path(first["PG_DATA"]) / "postmaster.pid"
        os.kill(int(postmaster.read_text().split()[0]), signal.SIGKILL)
        third = await asyncio.to_thread(start_service, POSTGRES, run_dir)
        assert third == first
        conn = await asyncpg.connect(third["DATABASE_URL"])
        assert await conn.fetchval("SELECT v FROM kept") == "before"
        await conn.close()
    finally:
        await asyncio.to_thread(stop_service, POSTGRES, run_dir)


async def test_s3_objects_ranges_multipart_delete(s3_service: Settings, fresh_bucket: str) -> None:
    bucket = fresh_bucket
    data = os.urandom(100_000)
    async with s3_client(s3_service) as s3:
        await s3.put_object(Bucket=bucket, Key="small", Body=data)
        got = await s3.get_object(Bucket=bucket, Key="small")
        async with got["Body"] as body:
            assert await body.read() == data
        ranged = await s3.get_object(Bucket=bucket, Key="small", Range="bytes=10-19")
        assert ranged["ResponseMetadata"]["HTTPStatusCode"] == 206
        async with ranged["Body"] as body:
            assert await body.read() == data[10:20]

        # the smallest two-part upload: a non-last part must be at least 5 MiB
        parts = [os.urandom(5 * MiB), b"!"]
        upload = await s3.create_multipart_upload(Bucket=bucket, Key="big")
        etags = []
        for number, part in enumerate(parts, 1):
            done = await s3.upload_part(
                Bucket=bucket, Key="big", UploadId=upload["UploadId"], PartNumber=number, Body=part
            )
            etags.append(done["ETag"])
        await s3.complete_multipart_upload(
            Bucket=bucket,
            Key="big",
            UploadId=upload["UploadId"],
            MultipartUpload={
                "Parts": [{"ETag": e, "PartNumber": n} for n, e in enumerate(etags, 1)]
            },
        )
        head = await s3.head_object(Bucket=bucket, Key="big")
        assert head["ContentLength"] == 5 * MiB + 1
        got = await s3.get_object(Bucket=bucket, Key="big")
        async with got["Body"] as body:
            assert (
                hashlib.sha256(await body.read()).digest()
                == hashlib.sha256(b"".join(parts)).digest()
            )

        # DeleteObjects needs the Content-MD5 handler that s3_client registers
        deleted = await s3.delete_objects(
            Bucket=bucket, Delete={"Objects": [{"Key": "small"}, {"Key": "big"}]}
        )
        assert sorted(d["Key"] for d in deleted["Deleted"]) == ["big", "small"]
        assert "Errors" not in deleted
        listed = await s3.list_objects_v2(Bucket=bucket)
        assert listed["KeyCount"] == 0


async def test_s3_restart_keeps_objects_and_settings(tmp_path: Path) -> None:
    run_dir = tmp_path / "s3"
    try:
        first = await asyncio.to_thread(start_service, SWIFT_S3, run_dir)
        async with s3_client(first) as s3:
            await s3.create_bucket(Bucket="kept")
            await s3.put_object(Bucket="kept", Key="k", Body=b"before")
        await asyncio.to_thread(stop_service, SWIFT_S3, run_dir)
        status = subprocess.run([str(SWIFT_S3), "status", str(run_dir)], capture_output=True)
        assert status.returncode == 1

        second = await asyncio.to_thread(start_service, SWIFT_S3, run_dir)
        assert second == first
        async with s3_client(second) as s3:
            got = await s3.get_object(Bucket="kept", Key="k")
            async with got["Body"] as body:
                assert await body.read() == b"before"
    finally:
        await asyncio.to_thread(stop_service, SWIFT_S3, run_dir)


async def test_s3_presigned_get_works_with_a_plain_http_client(
    s3_service: Settings, fresh_bucket: str
) -> None:
    data = os.urandom(1000)
    async with s3_client(s3_service) as s3:
        await s3.put_object(Bucket=fresh_bucket, Key="a/b", Body=data)
        url = await s3.generate_presigned_url(
            "get_object", Params={"Bucket": fresh_bucket, "Key": "a/b"}, ExpiresIn=60
        )
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as resp:
            assert resp.status == 200
            assert await resp.read() == data
        async with http.get(url, headers={"Range": "bytes=0-9"}) as resp:
            assert resp.status == 206
            assert await resp.read() == data[:10]
        # a tampered signature is refused: the URL really is checked
        async with http.get(url.replace("Signature=", "Signature=0")) as resp:
            assert resp.status == 403


async def _backend(name: str) -> web.AppRunner:
    """An HTTP server on 127.0.0.1 that names itself on GET and digests PUT bodies as they
    stream in."""

    async def get(request: web.Request) -> web.Response:
        return web.Response(text=name)

    async def put(request: web.Request) -> web.Response:
        digest, size = hashlib.sha256(), 0
        async for chunk in request.content.iter_chunked(MiB):
            digest.update(chunk)
            size += len(chunk)
        return web.json_response({"node": name, "size": size, "sha256": digest.hexdigest()})

    app = web.Application()
    app.router.add_get("/", get)
    app.router.add_put("/upload", put)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


def _address(runner: web.AppRunner) -> str:
    host, port = runner.addresses[0][:2]
    return f"{host}:{port}"


async def test_haproxy_round_robin_and_streamed_upload(haproxy: Callable[..., Settings]) -> None:
    runners = [await _backend("a"), await _backend("b")]
    try:
        lb = await asyncio.to_thread(haproxy, *(_address(r) for r in runners))
        async with aiohttp.ClientSession() as http:
            names = []
            for _ in range(6):
                async with http.get(lb["LB_URL"] + "/") as resp:
                    assert resp.status == 200
                    names.append(await resp.text())
            assert names in (["a", "b"] * 3, ["b", "a"] * 3)

            sent = hashlib.sha256()

            async def body() -> AsyncIterator[bytes]:
                for _ in range(50):
                    chunk = os.urandom(MiB)
                    sent.update(chunk)
                    yield chunk

            async with http.put(lb["LB_URL"] + "/upload", data=body()) as resp:
                assert resp.status == 200
                received = await resp.json()
        assert received["size"] == 50 * MiB
        assert received["sha256"] == sent.hexdigest()
    finally:
        for runner in runners:
            await runner.cleanup()
