"""An upstream registry's /v2/ API, as a client: Basic credentials, or the token flow that a
`WWW-Authenticate: Bearer realm=...,service=...` challenge asks for (with the configured
credentials, or anonymously as Docker Hub allows for public images).

Tokens are kept per scope until shortly before they expire; a 401 with a token in hand gets
one new token and one retry. Connection failures, timeouts, 5xx and 429 are `UpstreamDown`:
the cache serves what it holds instead.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from urllib.parse import urlsplit

import aiohttp

from moorage import metrics
from moorage.config import Upstream

log = logging.getLogger("moorage.mirror")

# Seconds to connect, and the longest pause between bytes of an answer.
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
# A token is renewed this long before the upstream said it expires.
TOKEN_MARGIN = 10.0
_PARAM = re.compile(r'(\w+)="([^"]*)"')
DOCKER_HUB = frozenset({"registry-1.docker.io", "docker.io", "index.docker.io"})


class UpstreamDown(Exception):
    """The upstream did not answer usefully: unreachable, timed out, 5xx or 429."""


def challenge(header: str) -> tuple[str, dict[str, str]]:
    """The scheme (lowercase) and parameters of a WWW-Authenticate header."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), {k.lower(): v for k, v in _PARAM.findall(rest)}


class UpstreamClient:
    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.url = upstream.url
        self._basic = (
            aiohttp.encode_basic_auth(upstream.username, upstream.password.get_secret_value())
            if upstream.username is not None and upstream.password is not None
            else None
        )
        self._session: aiohttp.ClientSession | None = None
        self._tokens: dict[str, tuple[str, float]] = {}  # scope -> (token, expires)
        # Set once the upstream asked for Basic: sent with every request from then on.
        self._send_basic = False

    def name(self, local: str) -> str:
        """The upstream's name for a repository (Docker Hub's official images are library/)."""
        host = urlsplit(self.url).hostname or ""
        if "/" not in local and host in DOCKER_HUB:
            return f"library/{local}"
        return local

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT
                ),
                auto_decompress=False,
                # Blob bodies in large pieces: each piece is hashed, written and sent on
                # (cache.STORE_BLOCK).
                read_bufsize=256 << 10,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _authorization(self, scope: str) -> dict[str, str]:
        token = self._tokens.get(scope)
        if token is not None and token[1] > time.monotonic():
            return {"Authorization": f"Bearer {token[0]}"}
        if self._send_basic and self._basic is not None:
            return {"Authorization": self._basic}
        return {}

    async def request(
        self, method: str, repository: str, path: str, headers: Mapping[str, str] | None = None
    ) -> aiohttp.ClientResponse:
        """`METHOD /v2/<repository>/<path>` on the upstream, authenticated as it asks. The
        caller reads and releases the answer; 5xx and 429 are raised as UpstreamDown."""
        scope = f"repository:{repository}:pull"
        url = f"{self.url}/v2/{repository}/{path}"
        response = await self._send(method, url, {**(headers or {}), **self._authorization(scope)})
        if response.status == 401:
            header = response.headers.get("WWW-Authenticate", "")
            response.release()
            await self._authenticate(header, scope)
            retry = {**(headers or {}), **self._authorization(scope)}
            response = await self._send(method, url, retry)
        if response.status >= 500 or response.status == 429:
            response.release()
            raise UpstreamDown(f"{self.url} answered {response.status} to {method} {url}")
        return response

    async def _send(self, method: str, url: str, headers: dict[str, str]) -> aiohttp.ClientResponse:
        kind = "blob" if "/blobs/" in url else "manifest"
        metrics.MIRROR_REQUESTS.inc((self.url, method, kind))
        try:
            return await self.session().request(method, url, headers=headers)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise UpstreamDown(f"{self.url}: {exc or type(exc).__name__}") from exc

    async def _authenticate(self, header: str, scope: str) -> None:
        scheme, params = challenge(header)
        if scheme == "basic":
            self._send_basic = True
            return
        if scheme != "bearer" or "realm" not in params:
            return  # the retry answers 401 again, which the caller reports
        query = {"scope": scope}
        if "service" in params:
            query["service"] = params["service"]
        try:
            basic = {"Authorization": self._basic} if self._basic else {}
            async with self.session().get(params["realm"], params=query, headers=basic) as response:
                if response.status >= 500 or response.status == 429:
                    raise UpstreamDown(f"token service {params['realm']}: {response.status}")
                if response.status != 200:
                    log.warning(
                        "upstream token service refused",
                        extra={"upstream": self.url, "status": response.status},
                    )
                    return
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            raise UpstreamDown(f"token service {params['realm']}: {exc}") from exc
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str):
            return
        lifetime = body.get("expires_in", 60)
        if not isinstance(lifetime, int | float) or lifetime <= 0:
            lifetime = 60
        self._tokens[scope] = (token, time.monotonic() + max(lifetime - TOKEN_MARGIN, 1.0))
