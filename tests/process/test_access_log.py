"""The access log of a real server (`log.format: json`): one JSON object per request, naming
the request id the client got back, user, repository, status and bytes; a path crafted to
start a forged line stays inside its own line."""

from __future__ import annotations

import json

import aiohttp

from tests.harness import MakeServer
from tests.images import memory_image
from tests.process.registry import Registry


async def test_one_json_line_per_request(make_server: MakeServer) -> None:
    server = make_server(env={"MOORAGE_LOG_FORMAT": "json"})
    await server.start()
    async with aiohttp.ClientSession() as http:
        reg = Registry(http, server.url)
        image = memory_image(5, (2000,), "logged")
        await reg.push_image("logs/app", "v1", image)
        async with http.get(f"{server.url}/v2/logs/app/manifests/v1") as resp:
            request_id = resp.headers["X-Request-Id"]
            size = len(await resp.read())
        forged = "/v2/logs%0a2026-01-01%2000:00:00,000%20ERROR%20forged/tags/list"
        async with http.get(f"{server.url}{forged}") as resp:
            assert resp.status in (400, 404)
    await server.stop()
    lines = server.log_path.read_text().splitlines()
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(entries) == len([line for line in lines if line.strip()]), lines[:5]
    access = [e for e in entries if e["logger"] == "moorage.access"]
    (pulled,) = [e for e in access if e["request_id"] == request_id]
    assert pulled["message"] == "GET /v2/logs/app/manifests/v1 200"
    assert (pulled["status"], pulled["bytes"], pulled["repository"]) == (200, size, "logs/app")
    assert pulled["remote"] == "127.0.0.1" and pulled["useragent"].startswith("Python")
    assert pulled["seconds"] >= 0
    assert not any(line.startswith("2026-01-01") for line in lines)
    assert any("forged" in e["message"] and "\n" in e["message"] for e in access)
