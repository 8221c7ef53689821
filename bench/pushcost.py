"""What a push costs the server: CPU seconds of its whole process tree (supervisor and
workers) per GiB taken in, for a monolithic push, a streamed one (one PATCH in chunked
transfer-encoding, as Docker pushes), a chunked push and a v1 layer PUT.

The data directory is on tmpfs (/dev/shm), so the disk does not enter the figure: what is left
is the server's own work (reading the socket, hashing, copying, writing to the page cache,
fsync of a tmpfs file is nearly free); `--data-root DIR` puts it on a disk instead. The client
is curl sending a file from tmpfs; its CPU is not counted. Each case is repeated and every
repetition printed, as the machine may be shared with other jobs (CPU seconds are much less
sensitive to that than wall time). Each pushed blob is removed after its repetition.

    python -m bench.pushcost [--size MiB] [--repeat N] [--workers N]
                             [--cases mono,stream,chunked,v1] [--data-root DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import psutil

from bench.profiling import PySpy, summarize
from tests.harness import MoorageProcess
from tests.v1.client import image_json

MiB = 1 << 20
GiB = 1 << 30
PIECE = 4 * MiB


def _tree_cpu(root: psutil.Process) -> tuple[float, float, int]:
    """User and system CPU seconds of `root` and its live descendants so far, and their page
    faults (minor and major)."""
    user = system = 0.0
    faults = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            with open(f"/proc/{proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (psutil.NoSuchProcess, FileNotFoundError):
            continue
        user += t.user
        system += t.system
        faults += int(fields[7]) + int(fields[9])  # minflt, majflt
    return user, system, faults


PROFILE: Path | None = None  # --profile: py-spy samples each measured push into this folder


@contextmanager
def measured(server: MoorageProcess, result: dict[str, float]) -> Iterator[None]:
    root = psutil.Process(server.pid)
    spy = None
    if PROFILE is not None:
        PROFILE.mkdir(parents=True, exist_ok=True)
        spy = PySpy(server.pid, PROFILE / f"push-{time.monotonic_ns()}.txt").__enter__()
        time.sleep(1)  # py-spy attaches
    (user0, sys0, faults0), t0 = _tree_cpu(root), time.perf_counter()
    yield
    if spy is not None:
        spy.__exit__(None, None, None)
        print(summarize(spy.out, 25))
    result["wall_s"] = time.perf_counter() - t0
    user, system, faults = _tree_cpu(root)
    result["user_s"], result["sys_s"] = user - user0, system - sys0
    result["cpu_s"] = result["user_s"] + result["sys_s"]
    result["faults"] = faults - faults0


def _write(path: Path, size: int, seed: str) -> str:
    """`size` bytes, three quarters random (gzip cannot shrink them) and a quarter zeros, and
    their sha256."""
    h = hashlib.sha256()
    rng = random.Random(seed)
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            piece = rng.randbytes(3 * MiB // 4) + bytes(MiB // 4)
            h.update(piece)
            f.write(piece)
    return "sha256:" + h.hexdigest()


async def _curl(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "-sS",
        "-H",
        "Expect:",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        *args,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


async def _start(session: aiohttp.ClientSession, url: str, repo: str) -> str:
    async with session.post(f"{url}/v2/{repo}/blobs/uploads/") as resp:
        assert resp.status == 202, resp.status
        location = resp.headers["Location"]
    return location if location.startswith("http") else url + location


def _location(headers: Path, url: str) -> str:
    """The Location of the response whose headers curl wrote to `headers` (`-D`)."""
    for line in headers.read_text().splitlines():
        if line.lower().startswith("location:"):
            loc = line.split(":", 1)[1].strip()
            return loc if loc.startswith("http") else url + loc
    raise AssertionError(f"no Location in {headers}")


def _with(location: str, query: str) -> str:
    return location + ("&" if "?" in location else "?") + query


async def mono(
    session: aiohttp.ClientSession,
    server: MoorageProcess,
    path: Path,
    digest: str,
    size: int,
    n: int,
) -> dict[str, float]:
    location = await _start(session, server.url, f"cost/mono{n}")
    result: dict[str, float] = {}
    with measured(server, result):
        rc, code = await _curl(
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/octet-stream",
            "-T",
            str(path),
            _with(location, f"digest={digest}"),
        )
    assert rc == 0 and code == "201", (rc, code)
    return result


async def stream(
    session: aiohttp.ClientSession,
    server: MoorageProcess,
    path: Path,
    digest: str,
    size: int,
    n: int,
) -> dict[str, float]:
    """As Docker pushes a layer: one PATCH of the whole blob in chunked transfer-encoding (no
    length), then an empty PUT with the digest."""
    location = await _start(session, server.url, f"cost/stream{n}")
    result: dict[str, float] = {}
    headers = path.with_suffix(".h")
    with measured(server, result):
        rc, code = await _curl(
            "-X",
            "PATCH",
            "-H",
            "Transfer-Encoding: chunked",
            "-H",
            "Content-Type: application/octet-stream",
            "-T",
            str(path),
            "-D",
            str(headers),
            location,
        )
        assert rc == 0 and code == "202", (rc, code)
        location = _location(headers, server.url)
        rc, code = await _curl("-X", "PUT", _with(location, f"digest={digest}"))
    headers.unlink(missing_ok=True)
    assert rc == 0 and code == "201", (rc, code)
    return result


async def chunked(
    session: aiohttp.ClientSession,
    server: MoorageProcess,
    path: Path,
    digest: str,
    size: int,
    n: int,
    chunk: int = 64 * MiB,
) -> dict[str, float]:
    """PATCHes of `chunk` bytes (curl, each from its own file range), then an empty PUT."""
    location = await _start(session, server.url, f"cost/chunked{n}")
    parts = []
    for i, start in enumerate(range(0, size, chunk)):
        part = path.with_name(f"{path.name}.{i}")
        with open(path, "rb") as src, open(part, "wb") as dst:
            src.seek(start)
            dst.write(src.read(chunk))
        parts.append((start, part))
    # The parts hold the blob now: the whole file too would make three copies of it in tmpfs
    # (with the upload's), more than this VM keeps ready (see `main`). It is written again
    # before the next push.
    path.unlink()
    result: dict[str, float] = {}
    try:
        with measured(server, result):
            for start, part in parts:
                end = start + part.stat().st_size - 1
                rc, code = await _curl(
                    "-X",
                    "PATCH",
                    "-H",
                    "Content-Type: application/octet-stream",
                    "-H",
                    f"Content-Range: {start}-{end}",
                    "-T",
                    str(part),
                    "-D",
                    str(part) + ".h",
                    location,
                )
                assert rc == 0 and code == "202", (rc, code)
                part.unlink()  # sent: its memory goes back for the next ones
                location = _location(Path(str(part) + ".h"), server.url)
            rc, code = await _curl("-X", "PUT", _with(location, f"digest={digest}"))
            assert rc == 0 and code == "201", (rc, code)
    finally:
        for _, part in parts:
            part.unlink(missing_ok=True)
            Path(str(part) + ".h").unlink(missing_ok=True)
    return result


def _v1_layer(path: Path, size: int) -> tuple[str, str]:
    """A gzip (level 1) tar of one file of `size` bytes; returns its file path and the layer's
    checksum payload prefix. Only the layer file is needed: the server computes the sums."""
    import gzip
    import tarfile

    data = path.with_suffix(".data")
    _write(data, size, "v1")
    with gzip.open(path, "wb", compresslevel=1) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        tar.add(data, arcname="layer.bin")
    data.unlink()
    return str(path), ""


async def v1(
    session: aiohttp.ClientSession,
    server: MoorageProcess,
    path: Path,
    digest: str,
    size: int,
    n: int,
) -> dict[str, float]:
    image_id = hashlib.sha256(f"pushcost/{n}/{time.time()}".encode()).hexdigest()
    document = image_json(image_id, None, size=size)
    async with session.put(f"{server.url}/v1/repositories/cost/v1-{n}/", json=[]) as resp:
        assert resp.status in (200, 201), resp.status
    async with session.put(
        f"{server.url}/v1/images/{image_id}/json",
        data=document,
        headers={"Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 200, (resp.status, await resp.text())
    result: dict[str, float] = {}
    with measured(server, result):
        rc, code = await _curl(
            "-X",
            "PUT",
            "-H",
            "Transfer-Encoding: chunked",
            "-H",
            "Content-Type: application/octet-stream",
            "-T",
            str(path),
            f"{server.url}/v1/images/{image_id}/layer",
        )
    assert rc == 0 and code == "200", (rc, code)
    return result


CASES: dict[str, Callable[..., object]] = {
    "mono": mono,
    "stream": stream,
    "chunked": chunked,
    "v1": v1,
}


def _drop_blobs(data: Path) -> None:
    """Remove the stored blobs below `data` (the pushes are all of fresh content)."""
    for path in list(data.rglob("*")):
        if "blobs" in path.relative_to(data).parts and path.is_file():
            path.unlink()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="MiB per push")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cases", default="mono,stream,chunked,v1")
    parser.add_argument("--pause", action="store_true", help="wait for Enter before each push")
    parser.add_argument("--profile", type=Path, help="py-spy each push, summaries printed")
    parser.add_argument("--source", type=Path, help="run the moorage package in this folder")
    parser.add_argument("--label", default="", help="a name printed with each result")
    parser.add_argument(
        "--data-root",
        type=Path,
        default=Path("/dev/shm"),
        help="where the data directory goes (default tmpfs; a disk's folder adds its writes)",
    )
    args = parser.parse_args()
    if args.profile is not None and not PySpy.available():
        parser.error("--profile needs py-spy (pip install py-spy)")
    global PROFILE
    PROFILE = args.profile
    size = args.size * MiB
    tmp = Path(tempfile.mkdtemp(prefix="pushcost-", dir="/dev/shm"))  # the client's files
    data = Path(tempfile.mkdtemp(prefix="pushcost-data-", dir=args.data_root))
    server = MoorageProcess(data, tmp, workers=args.workers, source=args.source)
    try:
        src = tmp / "blob.bin"
        layer = tmp / "layer.tar.gz"
        digest = ""
        await server.start()
        print(f"server pid {server.pid}, {args.workers} workers, data in {data}", flush=True)
        async with aiohttp.ClientSession() as session:
            for case in args.cases.split(","):
                if case == "v1":
                    # Only the files this case sends are kept in tmpfs (see below).
                    src.unlink(missing_ok=True)
                    await asyncio.to_thread(_v1_layer, layer, size)
                for n in range(args.repeat):
                    if case != "v1":
                        # A fresh blob each time (no deduplication): change its first MiB.
                        digest = await asyncio.to_thread(_write, src, size, f"{case}-{n}")
                    if args.pause:
                        await asyncio.to_thread(input, f"{case} {n}: Enter to push ")
                    fn = CASES[case]
                    target = layer if case == "v1" else src
                    nbytes = layer.stat().st_size if case == "v1" else size
                    r = await fn(session, server, target, digest, size, n)  # type: ignore[operator]
                    # The pushed blob goes again: each push then takes pages the last one
                    # freed, as the first did. On a VM whose host takes back free memory, a
                    # page never used before costs several times more system time (see
                    # docs/performance.md); every repetition would otherwise pay more of it.
                    await asyncio.to_thread(_drop_blobs, data)
                    r["cpu_s_per_gib"] = r["cpu_s"] / (nbytes / GiB)
                    r["mb_s"] = nbytes / 1e6 / r["wall_s"]
                    print(
                        json.dumps(
                            {
                                "label": args.label,
                                "case": case,
                                "n": n,
                                **{k: round(v, 3) for k, v in r.items()},
                            }
                        ),
                        flush=True,
                    )
    finally:
        await server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(data, ignore_errors=True)
        os.sync()


if __name__ == "__main__":
    asyncio.run(main())
