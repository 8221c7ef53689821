"""The front door of auth: who is calling, and what may they do.

Modes: `none` (everyone may do everything; meant for loopback), `basic` (htpasswd users on
every request) and `token` (Docker token auth: bearer JWTs from the built-in token server or a
trusted external one).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec

from moorage import keys, metrics
from moorage.auth.access import ANONYMOUS_IDENTITY, Identity, Policy, Scope
from moorage.auth.htpasswd import Htpasswd
from moorage.auth.ratelimit import LoginLimiter
from moorage.auth.tokens import InvalidToken, TokenService, load_or_create_key
from moorage.config import Settings


class BadCredentials(Exception):
    """Credentials were given but are wrong (or the token is invalid)."""


def _signing_key(settings: Settings) -> ec.EllipticCurvePrivateKey:
    """The built-in token server's key: `auth.token.key` when set (a file every node shares),
    else derived from `http.secret` (the same on every node), else created in the data
    directory (one node)."""
    if settings.auth.token.key is not None:
        return load_or_create_key(settings.auth.token.key)
    if settings.http.secret is not None:
        return keys.derive_ec_key(settings.http.secret.get_secret_value(), keys.TOKEN_SIGNING)
    return load_or_create_key(settings.datadir / "auth" / "token-key.pem")


class RateLimited(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed logins; retry after {retry_after}s")
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Credentials:
    user: str
    password: str


def parse_basic(header: str) -> Credentials | None:
    """Credentials of a `Basic` Authorization header; None if it is not Basic or is empty
    (`Basic Og==`, an empty user and password, is what some v1 clients send: anonymous)."""
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise BadCredentials("malformed basic credentials") from exc
    user, sep, password = decoded.partition(":")
    if not sep:
        raise BadCredentials("malformed basic credentials")
    if not user and not password:
        return None
    return Credentials(user, password)


def parse_bearer(header: str) -> str | None:
    scheme, _, value = header.strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        auth = settings.auth
        self.mode = auth.mode
        self.realm = auth.realm
        self.policy = Policy(auth)
        self.limiter = LoginLimiter(auth.maxfailures, auth.maxaddressfailures, auth.window)
        self.users: Htpasswd | None = None
        if auth.htpasswd is not None:
            self.users = Htpasswd(auth.htpasswd)
        if self.mode == "basic" and self.users is None:
            raise ValueError("auth mode basic needs an htpasswd file (auth.htpasswd)")
        self.tokens: TokenService | None = None
        if self.mode == "token":
            builtin = auth.token.realm is None
            signing = _signing_key(settings) if builtin else None
            if builtin and self.users is None:
                raise ValueError("the built-in token server needs an htpasswd file")
            self.tokens = TokenService(auth.token, signing)

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    @property
    def issues_tokens(self) -> bool:
        return self.tokens is not None and self.tokens.signing_key is not None

    async def login(self, credentials: Credentials, client: str) -> str:
        """Check a user's password; returns the user name. Raises BadCredentials or
        RateLimited (too many recent failures from this client address, for this user or
        for any: never for the user alone, see `ratelimit.py`)."""
        wait = await self.limiter.retry_after(credentials.user, client)
        if wait:
            metrics.LOGIN_FAILURES.inc(("ratelimited",))
            raise RateLimited(wait)
        assert self.users is not None
        if not await asyncio.to_thread(self.users.check, credentials.user, credentials.password):
            metrics.LOGIN_FAILURES.inc(("password",))
            await self.limiter.failed(credentials.user, client)
            raise BadCredentials("wrong user name or password")
        return credentials.user

    async def identify(self, authorization: str | None, client: Callable[[], str]) -> Identity:
        """Who sent the request. Anonymous without credentials; BadCredentials if they are
        wrong; RateLimited after too many failures. `client` gives the caller's address (for
        the failed-login counts), asked only when a password is checked."""
        if not self.enabled or not authorization:
            return ANONYMOUS_IDENTITY
        if self.mode == "token":
            token = parse_bearer(authorization)
            if token is None:
                return ANONYMOUS_IDENTITY
            assert self.tokens is not None
            try:
                claims = self.tokens.verify(token)
            except InvalidToken as exc:
                raise BadCredentials(str(exc)) from exc
            return Identity(claims.subject or None, claims.access)
        credentials = parse_basic(authorization)
        if credentials is None:
            return ANONYMOUS_IDENTITY
        return Identity(await self.login(credentials, client()))

    def permitted(self, identity: Identity, scope_type: str, name: str) -> frozenset[str]:
        if not self.enabled:
            return frozenset(("pull", "push", "delete", "*"))
        if identity.token_access is not None:
            actions = identity.token_access.get((scope_type, name), frozenset())
            return actions | ({"pull", "push", "delete"} if "*" in actions else set())
        if self.mode == "token":
            return frozenset()
        return self.policy.allowed(identity.name, scope_type, name)

    def can_pull(self, identity: Identity, repository: str) -> bool:
        return "pull" in self.permitted(identity, "repository", repository)

    def can_pull_by_rules(self, identity: Identity, repository: str) -> bool:
        """The caller's own right to pull, whatever its token names: an automatic mount looks
        for a source the client never named, so no token can cover it. Only the built-in
        token server's subjects are known users here; other tokens count as they are."""
        if identity.token_access is not None and not self.issues_tokens:
            return self.can_pull(identity, repository)
        return self.may_list(identity, repository)

    def catalog_globs(self, identity: Identity) -> tuple[str, ...] | None:
        """The repository globs the catalog must be filtered to for `identity` (what it may
        pull by the rules, see `may_list`); None when it sees everything."""
        if not self.enabled or self.policy.sees_everything(identity.name):
            return None
        return self.policy.pull_globs(identity.name)

    def may_list(self, identity: Identity, repository: str) -> bool:
        # The catalog shows what the caller could pull by the rules, whatever the token's
        # scope: a token is scoped to the catalog, not to every repository in it.
        if not self.enabled:
            return True
        return "pull" in self.policy.allowed(identity.name, "repository", repository)

    def grant(self, user: str | None, wanted: list[Scope]) -> list[Scope]:
        return [self.policy.grant(user, scope) for scope in wanted]
