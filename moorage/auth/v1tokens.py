"""v1 tokens (`X-Docker-Token`): one repository, one access, one principal, short-lived.

A token is a MAC over its fields with a server secret kept in the data directory (created on
first start), so every worker and node can check it without shared state:

    signature=<HMAC-SHA256>,repository="ns/name",access=write,expires=1700000000,user=alice

The value has no spaces and does not start with `Token` (the client prepends that word).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from moorage import metrics

ACCESS = ("read", "write", "delete")
_FIELD = re.compile(r'\s*([A-Za-z_]+)=("([^"]*)"|[^,]*)\s*')


class BadToken(Exception):
    pass


@dataclass(frozen=True, slots=True)
class V1Token:
    repository: str
    access: str
    user: str | None
    expires: int


def load_or_create_secret(path: Path) -> bytes:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
        try:
            os.link(tmp, path)  # first writer wins when several workers start at once
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_bytes()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class V1Tokens:
    def __init__(self, secret: bytes, lifetime: int = 6 * 3600) -> None:
        self._secret = secret
        self.lifetime = lifetime

    def _mac(self, repository: str, access: str, expires: int, user: str) -> str:
        message = "\0".join((repository, access, str(expires), user)).encode()
        return _b64(hmac.new(self._secret, message, hashlib.sha256).digest())

    def issue(self, repository: str, access: str, user: str | None) -> str:
        assert access in ACCESS
        expires = int(time.time()) + self.lifetime
        who = user or ""
        signature = self._mac(repository, access, expires, who)
        return (
            f'signature={signature},repository="{repository}",access={access},'
            f"expires={expires},user={who}"
        )

    def verify(self, value: str) -> V1Token:
        """Check an `Authorization: Token ...` value (leading `Token` words already
        stripped or not: any number is tolerated)."""
        try:
            return self._verify(value)
        except BadToken:
            metrics.LOGIN_FAILURES.inc(("token",))
            raise

    def _verify(self, value: str) -> V1Token:
        text = strip_token_words(value)
        fields: dict[str, str] = {}
        for part in _split(text):
            match = _FIELD.fullmatch(part)
            if not match:
                raise BadToken("malformed token")
            fields[match.group(1)] = (
                match.group(3) if match.group(3) is not None else match.group(2)
            )
        try:
            signature, repository = fields["signature"], fields["repository"]
            access, expires = fields["access"], int(fields["expires"])
        except (KeyError, ValueError) as exc:
            raise BadToken("malformed token") from exc
        user = fields.get("user", "")
        if access not in ACCESS:
            raise BadToken("malformed token")
        expected = self._mac(repository, access, expires, user)
        if not hmac.compare_digest(expected, signature):
            raise BadToken("invalid token")
        if expires < time.time():
            raise BadToken("token expired")
        return V1Token(repository, access, user or None, expires)


def _split(text: str) -> list[str]:
    """Split on commas outside double quotes."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if current:
        parts.append("".join(current))
    return [p for p in parts if p.strip()]


def strip_token_words(value: str) -> str:
    text = value.strip()
    while text[:5].lower() == "token" and (len(text) == 5 or text[5] in " \t"):
        text = text[5:].strip()
    return text
