"""Who is calling a v1 endpoint, and what they may do.

Open mode (auth off) checks nothing: every credential, even a wrong one, is anonymous and
allowed, as the reference standalone registry behaved. Authenticated mode accepts Basic,
`Token <v1 token>` (any number of leading `Token` words) and `Bearer <jwt>`; `Basic Og==` and
an empty `Token` are anonymous.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from moorage.api.auth import authenticator, client_address
from moorage.api.context import V1TOKENS
from moorage.api.v1.errors import AccessDenied, V1Unauthorized
from moorage.auth.service import BadCredentials, parse_basic, parse_bearer
from moorage.auth.tokens import InvalidToken
from moorage.auth.v1tokens import BadToken, V1Token, strip_token_words

# v1 access level -> the action in the access rules
ACTION = {"read": "pull", "write": "push", "delete": "delete"}
# what a v1 token's access lets its holder do, by HTTP method
TOKEN_METHODS = {
    "read": {"GET", "HEAD"},
    "write": {"GET", "HEAD", "PUT", "POST"},
    "delete": {"GET", "HEAD", "DELETE"},
}


@dataclass(frozen=True, slots=True)
class Caller:
    user: str | None
    token: V1Token | None = None
    open_mode: bool = False

    @property
    def anonymous(self) -> bool:
        return self.user is None


CALLER = web.RequestKey("v1_caller", Caller)


def _challenge(request: web.Request, token_route: bool) -> str:
    return "Token" if token_route else f'Basic realm="{authenticator(request).realm}"'


async def caller(request: web.Request, token_route: bool) -> Caller:
    if CALLER in request:
        return request[CALLER]
    auth = authenticator(request)
    if not auth.enabled:
        result = Caller(None, open_mode=True)
        request[CALLER] = result
        return result
    header = request.headers.get("Authorization", "").strip()
    result = Caller(None)
    try:
        if header[:5].lower() == "token":
            value = strip_token_words(header)
            if value:
                token = request.app[V1TOKENS].verify(value)
                result = Caller(token.user, token)
        elif header[:6].lower() == "bearer":
            bearer = parse_bearer(header)
            if bearer is not None and auth.tokens is not None:
                result = Caller(auth.tokens.verify(bearer).subject or None)
        elif header:
            credentials = parse_basic(header)
            if credentials is not None:
                result = Caller(await auth.login(credentials, client_address(request)))
    except (BadCredentials, BadToken, InvalidToken) as exc:
        raise V1Unauthorized(_challenge(request, token_route)) from exc
    request[CALLER] = result
    return result


def allowed(request: web.Request, who: Caller, repository: str, access: str) -> bool:
    if who.open_mode:
        return True
    auth = authenticator(request)
    return ACTION[access] in auth.policy.allowed(who.user, "repository", repository)


def require(
    request: web.Request, who: Caller, repository: str, access: str, token_route: bool
) -> None:
    """401 (anonymous) or 403 unless the caller may take `access` on `repository`."""
    if who.open_mode:
        return
    if who.token is not None:
        if who.token.repository != repository:
            raise AccessDenied(repository)
        if request.method not in TOKEN_METHODS[who.token.access]:
            raise AccessDenied(repository)
        return
    if allowed(request, who, repository, access):
        return
    if who.anonymous:
        raise V1Unauthorized(_challenge(request, token_route))
    raise AccessDenied(repository)


def readable(request: web.Request, who: Caller) -> Callable[[list[str]], bool]:
    """Predicate over the repositories an image is linked to: may the caller read it?"""
    if who.open_mode:
        return lambda _repositories: True
    auth = authenticator(request)

    def check(repositories: list[str]) -> bool:
        return any("pull" in auth.policy.allowed(who.user, "repository", r) for r in repositories)

    return check
