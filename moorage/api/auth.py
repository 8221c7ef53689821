"""Access checks for protocol handlers: who is calling, and 401/403 when they may not.

The caller's identity is resolved once per request and kept in `request[IDENTITY]`.
"""

from __future__ import annotations

from aiohttp import web

from moorage.api.context import AUTH, IDENTITY, settings
from moorage.api.proxy import client_address, external_base
from moorage.auth.access import Identity, Scope
from moorage.auth.service import Authenticator, BadCredentials, RateLimited
from moorage.errors import Denied, RegistryError, TooManyRequests, Unauthorized

TOKEN_PATH = "/auth/token"
__all__ = ["TOKEN_PATH", "authenticator", "challenge", "client_address", "identify"]


def authenticator(request: web.Request) -> Authenticator:
    return request.app[AUTH]


def realm_url(request: web.Request) -> str:
    configured = settings(request).auth.token.realm
    if configured:
        return configured
    return external_base(request) + TOKEN_PATH


def challenge(request: web.Request, scopes: list[Scope], error: str | None = None) -> str:
    auth = authenticator(request)
    if auth.mode == "basic":
        return f'Basic realm="{auth.realm}"'
    assert auth.tokens is not None
    parts = [f'realm="{realm_url(request)}"', f'service="{auth.tokens.settings.service}"']
    if scopes:
        parts.append(f'scope="{" ".join(str(s) for s in scopes)}"')
    if error:
        parts.append(f'error="{error}"')
    return "Bearer " + ",".join(parts)


def _unauthorized(
    request: web.Request, scopes: list[Scope], message: str, error: str | None = None
) -> RegistryError:
    detail = [
        {"Type": s.type, "Name": s.name, "Action": action}
        for s in scopes
        for action in sorted(s.actions)
    ]
    exc = Unauthorized(message, detail or None)
    exc.headers["WWW-Authenticate"] = challenge(request, scopes, error)
    return exc


async def identify(request: web.Request) -> Identity:
    if IDENTITY in request:
        return request[IDENTITY]
    auth = authenticator(request)
    try:
        identity = await auth.identify(
            request.headers.get("Authorization"), lambda: client_address(request)
        )
    except RateLimited as exc:
        error = TooManyRequests(str(exc))
        error.headers["Retry-After"] = str(exc.retry_after)
        raise error from exc
    except BadCredentials as exc:
        kind = "invalid_token" if auth.mode == "token" else None
        raise _unauthorized(request, [], str(exc), kind) from exc
    request[IDENTITY] = identity
    return identity


async def authorize(
    request: web.Request, scopes: list[Scope], shown: list[Scope] | None = None
) -> Identity:
    """The caller's identity if it may take every action in `scopes`; else 401 or 403.

    No scopes (the base endpoint) still needs an authenticated caller when auth is on.
    `shown` are the scopes to name in a challenge (the repository as the client named it)."""
    shown = scopes if shown is None else shown
    auth = authenticator(request)
    identity = await identify(request)
    if not auth.enabled:
        return identity
    if identity.anonymous and identity.token_access is None and not scopes:
        raise _unauthorized(request, [], "authentication required")
    missing = [s for s in scopes if not s.actions <= auth.permitted(identity, s.type, s.name)]
    if not missing:
        return identity
    if auth.mode == "token":
        error = "insufficient_scope" if identity.token_access is not None else None
        raise _unauthorized(request, shown, "insufficient scope", error)
    if identity.anonymous:
        raise _unauthorized(request, shown, "authentication required")
    raise Denied(detail=[{"Type": s.type, "Name": s.name} for s in missing])
