"""The built-in token server (Docker token auth), at /auth/token.

GET: `?service=&scope=...&scope=...&account=&offline_token=` with optional Basic credentials.
POST (OAuth2 form): `grant_type=password|refresh_token`, `service`, `scope` (space-separated),
`access_type=offline`, `username`/`password` or `refresh_token`. Both answer with `token` and
`access_token` so no client needs a fallback round trip. The granted scope is the intersection
of what was asked and what the rules allow (possibly nothing: that is not an error).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from moorage.api.auth import TOKEN_PATH, authenticator, client_address
from moorage.auth.access import Scope, parse_scopes
from moorage.auth.service import BadCredentials, Credentials, RateLimited, parse_basic
from moorage.auth.tokens import InvalidToken
from moorage.content import names
from moorage.errors import NameInvalid


def _error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"errors": [{"code": code, "message": message}], "error": message}
    return web.json_response(body, status=status, headers=headers)


def _canonical(scopes: list[Scope]) -> list[Scope]:
    result = []
    for scope in scopes:
        if scope.type == "repository":
            try:
                scope = Scope(scope.type, names.canonical_repository(scope.name), scope.actions)
            except NameInvalid:
                continue
        result.append(scope)
    return result


async def _answer(
    request: web.Request, subject: str | None, scopes: list[Scope], offline: bool
) -> web.Response:
    auth = authenticator(request)
    assert auth.tokens is not None
    granted = auth.grant(subject, _canonical(scopes))
    token, expires_in, issued_at = auth.tokens.issue(subject or "", granted)
    body: dict[str, Any] = {
        "token": token,
        "access_token": token,
        "expires_in": expires_in,
        "issued_at": datetime.fromtimestamp(issued_at, UTC).isoformat().replace("+00:00", "Z"),
        "scope": " ".join(str(s) for s in granted),
    }
    if offline and subject:
        body["refresh_token"] = auth.tokens.issue_refresh(subject)
    return web.json_response(body)


def _service_ok(request: web.Request, service: str | None) -> bool:
    auth = authenticator(request)
    assert auth.tokens is not None
    return service is None or service == auth.tokens.settings.service


async def _login(request: web.Request, credentials: Credentials) -> str:
    return await authenticator(request).login(credentials, client_address(request))


async def get_token(request: web.Request) -> web.StreamResponse:
    if not _service_ok(request, request.query.get("service")):
        return _error(400, "UNSUPPORTED", "unknown service")
    subject = None
    try:
        header = request.headers.get("Authorization")
        credentials = parse_basic(header) if header else None
        if credentials is not None:
            subject = await _login(request, credentials)
    except RateLimited as exc:
        return _error(429, "TOOMANYREQUESTS", str(exc), {"Retry-After": str(exc.retry_after)})
    except BadCredentials as exc:
        auth = authenticator(request)
        return _error(
            401, "UNAUTHORIZED", str(exc), {"WWW-Authenticate": f'Basic realm="{auth.realm}"'}
        )
    scopes = [s for value in request.query.getall("scope", []) for s in parse_scopes(value)]
    offline = request.query.get("offline_token", "").lower() == "true"
    return await _answer(request, subject, scopes, offline)


async def post_token(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    field = {k: v for k, v in form.items() if isinstance(v, str)}
    if not _service_ok(request, field.get("service")):
        return _error(400, "UNSUPPORTED", "unknown service")
    grant_type = field.get("grant_type")
    scopes = parse_scopes(field.get("scope", ""))
    offline = field.get("access_type") == "offline"
    try:
        if grant_type == "password":
            user, password = field.get("username", ""), field.get("password", "")
            subject = await _login(request, Credentials(user, password))
        elif grant_type == "refresh_token":
            auth = authenticator(request)
            assert auth.tokens is not None
            try:
                subject = auth.tokens.check_refresh(field.get("refresh_token", ""))
            except InvalidToken as exc:
                raise BadCredentials(str(exc)) from exc
            if auth.users is None or subject not in auth.users.users():
                # A refresh token outlives nothing: removed users lose access at once.
                raise BadCredentials("unknown user")
        else:
            return _error(400, "UNSUPPORTED", "unsupported_grant_type")
    except RateLimited as exc:
        return _error(429, "TOOMANYREQUESTS", str(exc), {"Retry-After": str(exc.retry_after)})
    except BadCredentials as exc:
        return _error(401, "UNAUTHORIZED", str(exc))
    return await _answer(request, subject, scopes, offline)


def setup(app: web.Application) -> None:
    app.router.add_get(TOKEN_PATH, get_token, name="token")
    app.router.add_post(TOKEN_PATH, post_token, name="token")
