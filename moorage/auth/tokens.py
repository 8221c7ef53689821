"""Docker token auth: JWTs issued by the built-in token server and checked by the registry.

The built-in server signs with an EC P-256 key that Moorage creates on first start in its data
directory. The registry trusts that key, plus any public keys or certificate bundle configured
for an external token server (Distribution-compatible: `iss`, `aud` = service, `exp`/`nbf`,
`access` claims; `kid` = libtrust fingerprint or an `x5c` chain ending at a trusted root).

Refresh tokens are JWTs of the same key with a different audience (`<service>/refresh`), so the
registry can never mistake one for an access token.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from moorage import metrics
from moorage.auth.access import Scope
from moorage.config import TokenSettings
from moorage.content.names import canonical_repository
from moorage.content.schema1 import key_id
from moorage.errors import NameInvalid
from moorage.keys import load_or_create_ec_key

ALGORITHMS = ["ES256", "ES384", "ES512", "RS256", "RS384", "RS512"]
LEEWAY = 30
REFRESH_SECONDS = 30 * 24 * 3600

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


class InvalidToken(Exception):
    """The token is malformed, forged, expired, or not for us."""


@dataclass(frozen=True, slots=True)
class Claims:
    subject: str
    access: dict[tuple[str, str], frozenset[str]]


def load_or_create_key(path: Path) -> ec.EllipticCurvePrivateKey:
    return load_or_create_ec_key(path)


def _load_public_keys(paths: list[Path]) -> list[PublicKey]:
    keys: list[PublicKey] = []
    for path in paths:
        data = path.read_bytes()
        try:
            key: Any = serialization.load_pem_public_key(data)
        except ValueError:
            key = x509.load_pem_x509_certificate(data).public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise ValueError(f"{path}: unsupported key type")
        keys.append(key)
    return keys


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    if not constraints.ca:
        return False
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return bool(usage.key_cert_sign)


class TokenService:
    def __init__(self, settings: TokenSettings, signing_key: ec.EllipticCurvePrivateKey | None):
        self.settings = settings
        self.signing_key = signing_key
        trusted = _load_public_keys(settings.publickeys)
        if signing_key is not None:
            trusted.append(signing_key.public_key())
        self.trusted = {key_id(k): k for k in trusted}
        self.roots = (
            x509.load_pem_x509_certificates(settings.rootcertbundle.read_bytes())
            if settings.rootcertbundle
            else []
        )

    # -- issuing (the built-in token server) ---------------------------------------------

    def _sign(self, claims: dict[str, Any]) -> str:
        assert self.signing_key is not None
        kid = key_id(self.signing_key.public_key())
        return jwt.encode(claims, self.signing_key, algorithm="ES256", headers={"kid": kid})

    def issue(self, subject: str, scopes: list[Scope]) -> tuple[str, int, int]:
        """An access token for `subject` granting `scopes`: (token, expires_in, issued_at)."""
        now = int(time.time())
        expires_in = self.settings.expiration
        claims = {
            "iss": self.settings.issuer,
            "sub": subject,
            "aud": self.settings.service,
            "exp": now + expires_in,
            "nbf": now - 1,
            "iat": now,
            "jti": secrets.token_urlsafe(18),
            "access": [
                {"type": s.type, "name": s.name, "actions": sorted(s.actions)} for s in scopes
            ],
        }
        return self._sign(claims), expires_in, now

    def issue_refresh(self, subject: str) -> str:
        now = int(time.time())
        return self._sign(
            {
                "iss": self.settings.issuer,
                "sub": subject,
                "aud": f"{self.settings.service}/refresh",
                "exp": now + REFRESH_SECONDS,
                "iat": now,
                "jti": secrets.token_urlsafe(18),
            }
        )

    def check_refresh(self, token: str) -> str:
        """The subject of a refresh token we issued."""
        try:
            return self._check_refresh(token)
        except InvalidToken:
            metrics.LOGIN_FAILURES.inc(("token",))
            raise

    def _check_refresh(self, token: str) -> str:
        claims = self._decode(token, f"{self.settings.service}/refresh")
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise InvalidToken("refresh token has no subject")
        return subject

    # -- checking (the registry) ---------------------------------------------------------

    def _key_for(self, header: dict[str, Any]) -> PublicKey:
        chain = header.get("x5c")
        if chain:
            return self._key_from_chain(chain)
        kid = header.get("kid")
        if isinstance(kid, str) and kid in self.trusted:
            return self.trusted[kid]
        if kid is None and len(self.trusted) == 1:
            return next(iter(self.trusted.values()))
        raise InvalidToken("token signed by an unknown key")

    def _key_from_chain(self, chain: Any) -> PublicKey:
        import base64

        if not self.roots or not isinstance(chain, list):
            raise InvalidToken("certificate chains are not trusted")
        try:
            certs = [x509.load_der_x509_certificate(base64.b64decode(c)) for c in chain]
        except (ValueError, TypeError) as exc:
            raise InvalidToken("bad x5c chain") from exc
        now = time.time()
        for intermediate in certs[1:]:
            if not _is_ca(intermediate):
                raise InvalidToken("certificate chain passes through a non-CA certificate")
        for cert, issuer in zip(certs, [*certs[1:], None], strict=True):
            if (
                not cert.not_valid_before_utc.timestamp()
                <= now
                <= cert.not_valid_after_utc.timestamp()
            ):
                raise InvalidToken("certificate outside its validity")
            candidates = [issuer] if issuer is not None else self.roots
            if not any(self._signed_by(cert, c) for c in candidates):
                raise InvalidToken("certificate chain does not end at a trusted root")
        key = certs[0].public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise InvalidToken("unsupported key in certificate")
        return key

    @staticmethod
    def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, Exception):
            return False
        return True

    def _decode(self, token: str, audience: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key_for(header),
                algorithms=ALGORITHMS,
                audience=audience,
                issuer=self.settings.issuer,
                leeway=LEEWAY,
                # iat is informational (Distribution ignores it too); exp/nbf bound validity.
                options={"require": ["exp", "iss", "aud"], "verify_iat": False},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc)) from exc
        return claims

    def verify(self, token: str) -> Claims:
        try:
            return self._verify(token)
        except InvalidToken:
            metrics.LOGIN_FAILURES.inc(("token",))
            raise

    def _verify(self, token: str) -> Claims:
        claims = self._decode(token, self.settings.service)
        access: dict[tuple[str, str], frozenset[str]] = {}
        entries = claims.get("access") or []
        if not isinstance(entries, list):
            raise InvalidToken("access claim is not a list")
        for entry in entries:
            if not isinstance(entry, dict):
                raise InvalidToken("access entry is not an object")
            kind, name, actions = entry.get("type"), entry.get("name"), entry.get("actions")
            if not isinstance(kind, str) or not isinstance(name, str):
                raise InvalidToken("access entry lacks type or name")
            if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
                raise InvalidToken("access entry actions are not strings")
            if kind == "repository":
                # `busybox` and `library/busybox` are one repository here.
                with contextlib.suppress(NameInvalid):
                    name = canonical_repository(name)
            key = (kind, name)
            access[key] = access.get(key, frozenset()) | frozenset(actions)
        subject = claims.get("sub") or ""
        return Claims(subject if isinstance(subject, str) else "", access)
