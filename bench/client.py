"""Small registry client helpers (aiohttp for control requests, curl and wrk for bulk work)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from datagen import sha256_digest
from servers import Server
from yarl import URL

OCTET = "application/octet-stream"


class BenchError(Exception):
    """A wrong answer from a server (or a tool that failed): the run is not valid."""


async def expect(resp: aiohttp.ClientResponse, *statuses: int) -> None:
    if resp.status not in statuses:
        body = (await resp.read())[:500].decode(errors="replace")
        raise BenchError(
            f"{resp.method} {resp.url}: expected {'/'.join(map(str, statuses))}, "
            f"got {resp.status}: {body}"
        )


def session() -> aiohttp.ClientSession:
    """The benchmark's HTTP client: no cap on connections (the workloads set their own
    concurrency), no overall deadline, 10 minutes for any one read."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=600),
    )


def absolute(server: Server, location: str) -> str:
    """Distribution answers absolute Locations, Moorage paths; both are followed as given."""
    return location if location.startswith(("http://", "https://")) else server.url + location


def with_digest(url: str, digest: str) -> URL:
    sep = "&" if "?" in url else "?"
    return URL(f"{url}{sep}digest={quote(digest, safe='')}", encoded=True)


def check_digest_header(resp: aiohttp.ClientResponse, digest: str) -> None:
    got = resp.headers.get("Docker-Content-Digest")
    if got != digest:
        raise BenchError(
            f"{resp.method} {resp.url}: Docker-Content-Digest {got}, expected {digest}"
        )


async def start_upload(session: aiohttp.ClientSession, server: Server, repo: str) -> str:
    async with session.post(f"{server.url}/v2/{repo}/blobs/uploads/") as resp:
        await expect(resp, 202)
        return absolute(server, resp.headers["Location"])


async def push_bytes(session: aiohttp.ClientSession, server: Server, repo: str, data: bytes) -> str:
    """Monolithic push (POST, then PUT ?digest= with the body); returns the digest."""
    digest = sha256_digest(data)
    location = await start_upload(session, server, repo)
    async with session.put(
        with_digest(location, digest), data=data, headers={"Content-Type": OCTET}
    ) as resp:
        await expect(resp, 201)
        check_digest_header(resp, digest)
    return digest


async def push_manifest(
    session: aiohttp.ClientSession,
    server: Server,
    repo: str,
    reference: str,
    body: bytes,
    media_type: str,
) -> None:
    async with session.put(
        f"{server.url}/v2/{repo}/manifests/{reference}",
        data=body,
        headers={"Content-Type": media_type},
    ) as resp:
        await expect(resp, 201)
        check_digest_header(resp, sha256_digest(body))


async def mount(
    session: aiohttp.ClientSession, server: Server, repo: str, digest: str, source: str
) -> None:
    async with session.post(
        f"{server.url}/v2/{repo}/blobs/uploads/", params={"mount": digest, "from": source}
    ) as resp:
        await expect(resp, 201)


async def fetch_digest(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[str, int, aiohttp.ClientResponse]:
    """GET `url`, hashing the body as it streams: (digest, size, response)."""
    h = hashlib.sha256()
    n = 0
    async with session.get(url, headers=headers) as resp:
        await expect(resp, 200)
        async for chunk in resp.content.iter_chunked(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return "sha256:" + h.hexdigest(), n, resp


async def head_blob(
    session: aiohttp.ClientSession, server: Server, repo: str, digest: str, size: int
) -> None:
    async with session.head(f"{server.url}/v2/{repo}/blobs/{digest}") as resp:
        await expect(resp, 200)
        check_digest_header(resp, digest)
        if resp.headers.get("Content-Length") != str(size):
            raise BenchError(
                f"HEAD {resp.url}: Content-Length {resp.headers.get('Content-Length')}, "
                f"expected {size}"
            )


async def run_tool(*cmd: str, timeout: float = 600, env: dict[str, str] | None = None) -> str:
    """Run a command to completion; its stdout, or BenchError with its stderr."""
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise BenchError(f"{cmd[0]} timed out after {timeout}s") from None
    if proc.returncode != 0:
        raise BenchError(
            f"{' '.join(cmd[:4])} ... exited {proc.returncode}: "
            f"{err.decode(errors='replace')[-2000:]}"
        )
    return out.decode(errors="replace")


async def curl_put_file(location: str, digest: str, path: Path) -> None:
    """PUT a file as the whole upload (streamed by curl, no `Expect: 100-continue`)."""
    out = await run_tool(
        "curl",
        "-sS",
        "-X",
        "PUT",
        "-T",
        str(path),
        "-H",
        f"Content-Type: {OCTET}",
        "-H",
        "Expect:",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %header{docker-content-digest}",
        str(with_digest(location, digest)),
    )
    code, _, got = out.strip().partition(" ")
    if code != "201" or got.strip() != digest:
        raise BenchError(f"PUT {location}: {code} {got!r}, expected 201 {digest}")


async def curl_get(urls: list[str], size: int, parallel: int = 1) -> None:
    """GET every url to /dev/null with one curl (`parallel` transfers at a time); each must
    answer 200 with exactly `size` bytes."""
    cmd = ["curl", "-sS", "-w", "%{http_code} %{size_download}\n"]
    if parallel > 1:
        cmd += ["--parallel", "--parallel-immediate", "--parallel-max", str(parallel)]
    for url in urls:
        cmd += ["-o", "/dev/null", url]
    out = await run_tool(*cmd)
    lines = out.split()
    results = list(zip(lines[::2], lines[1::2], strict=True))
    bad = [r for r in results if r != ("200", str(size))]
    if len(results) != len(urls) or bad:
        raise BenchError(f"GET {urls[0]}: {len(results)} answers, bad: {bad[:5]}")


WRK_DONE = """
done = function(summary, latency, requests)
  io.write(string.format(
    "WRKJSON {\\"requests\\":%d,\\"duration_us\\":%d,\\"bytes\\":%d,\\"connect\\":%d," ..
    "\\"read\\":%d,\\"write\\":%d,\\"status\\":%d,\\"timeout\\":%d," ..
    "\\"p50_us\\":%.0f,\\"p99_us\\":%.0f,\\"mean_us\\":%.1f,\\"max_us\\":%.0f}\\n",
    summary.requests, summary.duration, summary.bytes, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.status, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean, latency.max))
end
"""


async def wrk(
    url: str,
    script_dir: Path,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    duration: float,
    connections: int,
    threads: int,
) -> dict[str, float]:
    """Run wrk against one URL; returns requests/s, latencies in ms and the count of requests
    that took longer than 30 s. Any non-2xx/3xx answer or socket error makes it a BenchError."""
    lines = [f'wrk.method = "{method}"']
    for key, value in (headers or {}).items():
        lines.append(f'wrk.headers["{key}"] = "{value}"')
    script = script_dir / f"wrk-{method.lower()}-{abs(hash((url, method))) % 10**8}.lua"
    script.write_text("\n".join(lines) + "\n" + WRK_DONE)
    stats = await _wrk_run(url, script, method, duration, connections, threads)
    if stats["requests"] == 0:
        # Nothing finished within the window, and nothing failed: a server slower than the
        # window (Distribution on this machine's Swift, in the cluster mode's 2 s of quick).
        # Once more, five times as long, before it counts as a failure.
        stats = await _wrk_run(url, script, method, duration * 5, connections, threads)
    if stats["requests"] == 0:
        raise BenchError(f"wrk {method} {url}: no request completed")
    return {
        "req_per_s": stats["requests"] / (stats["duration_us"] / 1e6),
        "p50_ms": stats["p50_us"] / 1000,
        "p99_ms": stats["p99_us"] / 1000,
        "mean_ms": stats["mean_us"] / 1000,
        "requests": stats["requests"],
        "timeouts": stats["timeout"],
    }


async def _wrk_run(
    url: str, script: Path, method: str, duration: float, connections: int, threads: int
) -> dict[str, Any]:
    """One run of wrk: its summary (WRK_DONE); any socket error or bad status a BenchError."""
    out = await run_tool(
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration:g}s",
        "--timeout",
        "30s",
        "--latency",
        "-s",
        str(script),
        url,
        timeout=duration + 120,
    )
    line = next((x for x in out.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise BenchError(f"wrk printed no summary:\n{out[-2000:]}")
    stats = json.loads(line[len("WRKJSON ") :])
    # A request slower than --timeout is not a wrong answer: it is counted, not failed.
    errors = {k: stats[k] for k in ("connect", "read", "write", "status") if stats[k]}
    if errors:
        raise BenchError(f"wrk {method} {url}: errors {errors} in {stats['requests']} requests")
    return stats


async def hey(
    url: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    duration: float,
    connections: int,
) -> dict[str, float]:
    """Run hey against one URL (for HEAD, which wrk 4.1 cannot parse: it waits for the body
    that Content-Length announces). Same result keys as wrk()."""
    cmd = ["hey", "-z", f"{duration:g}s", "-c", str(connections), "-m", method]
    for key, value in (headers or {}).items():
        cmd += ["-H", f"{key}: {value}"]
    out = await run_tool(*cmd, url, timeout=duration + 120)
    rps = p50 = p99 = mean = None
    statuses: dict[str, int] = {}
    errors: list[str] = []
    section = ""
    for raw in out.splitlines():
        line = raw.strip()
        if line.endswith(":") and not line[0].isdigit():
            section = line
            continue
        if line.startswith("Requests/sec:"):
            rps = float(line.split()[1])
        elif line.startswith("Average:"):
            mean = float(line.split()[1]) * 1000
        elif line.startswith("50% in "):
            p50 = float(line.split()[2]) * 1000
        elif line.startswith("99% in "):
            p99 = float(line.split()[2]) * 1000
        elif section == "Status code distribution:" and line.startswith("["):
            code, count = line.split()[:2]
            statuses[code.strip("[]")] = int(count)
        elif section == "Error distribution:" and line:
            errors.append(line)
    if errors or set(statuses) - {"200"}:
        raise BenchError(f"hey {method} {url}: statuses {statuses}, errors {errors[:5]}")
    if not statuses or rps is None or p99 is None or p50 is None or mean is None:
        raise BenchError(f"hey printed no usable summary:\n{out[-2000:]}")
    return {
        "req_per_s": rps,
        "p50_ms": p50,
        "p99_ms": p99,
        "mean_ms": mean,
        "requests": statuses["200"],
    }
