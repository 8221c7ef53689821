"""Who the client is and which URL it used, behind reverse proxies (`http.trustedproxies`).

A proxy's X-Forwarded-For / -Proto / -Host headers are believed only when the connection comes
from an address in `http.trustedproxies`; then the client is the rightmost address of
X-Forwarded-For that is not itself a trusted proxy (the leftmost ones are whatever the client
claimed). `http.host` (the external URL), when set, wins over anything a request says."""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from aiohttp import web

from moorage.api.context import settings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=8)
def _networks(entries: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(e, strict=False) for e in entries)


def _trusted(address: str | None, networks: tuple[Network, ...]) -> bool:
    if not address or not networks:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def _proxies(request: web.Request) -> tuple[Network, ...]:
    return _networks(tuple(settings(request).http.trustedproxies))


def _first(value: str | None) -> str | None:
    """The first element of a comma-separated header (a chain of proxies adds theirs)."""
    if not value:
        return None
    return value.split(",", 1)[0].strip() or None


def client_address(request: web.Request) -> str:
    peer = request.remote
    networks = _proxies(request)
    if not _trusted(peer, networks):
        return peer or "unknown"
    chain = [a.strip() for a in request.headers.get("X-Forwarded-For", "").split(",") if a.strip()]
    for address in reversed(chain):
        if not _trusted(address, networks):
            return address
    return chain[0] if chain else (peer or "unknown")


def external_base(request: web.Request) -> str:
    """scheme://host[:port] as the client sees the registry."""
    configured = settings(request).http.host or settings(request).baseurl
    if configured:
        return configured.rstrip("/")
    scheme, host = request.scheme, request.host
    if _trusted(request.remote, _proxies(request)):
        scheme = _first(request.headers.get("X-Forwarded-Proto")) or scheme
        host = _first(request.headers.get("X-Forwarded-Host")) or host
    return f"{scheme}://{host}"
