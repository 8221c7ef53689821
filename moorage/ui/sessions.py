"""Sessions of the web interface: who signed in, kept in the browser as a sealed cookie.

The cookie holds a random session id, the user (None until someone signs in) and an expiry,
sealed with AES-GCM (`keys.Sealer`) under a key derived from the node's secret: nothing is
stored on the server, every node of a deployment sharing `http.secret` reads it, and a
visitor can neither read nor forge one. It is HttpOnly and SameSite=Strict, and Secure when
the page was reached over HTTPS. Signing out replaces it with an anonymous one.

Forms that change something carry a CSRF token: an HMAC of the session id, so it is valid for
this browser's session only (and SameSite=Strict already keeps other sites' posts cookieless).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from aiohttp import web

from moorage.keys import Sealer

COOKIE = "moorage_ui"
PURPOSE = b"ui session"
LIFETIME = 12 * 3600


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    user: str | None
    expires: float


class Sessions:
    def __init__(self, key: bytes, path: str, lifetime: int = LIFETIME) -> None:
        self._sealer = Sealer(key)
        self._mac_key = hashlib.sha256(b"csrf\0" + key).digest()
        self.path = path
        self.lifetime = lifetime

    def read(self, request: web.Request) -> Session | None:
        """The request's session, if its cookie is one of ours and has not expired."""
        value = request.cookies.get(COOKIE)
        if not value:
            return None
        opened = self._sealer.open(value, PURPOSE)
        if opened is None:
            return None
        try:
            fields = json.loads(opened)
            session = Session(str(fields["s"]), fields["u"], float(fields["e"]))
        except (ValueError, KeyError, TypeError):
            return None
        if session.expires < time.time():
            return None
        return session

    def new(self, user: str | None) -> Session:
        return Session(secrets.token_urlsafe(18), user, time.time() + self.lifetime)

    def store(self, response: web.StreamResponse, session: Session, secure: bool) -> None:
        sealed = self._sealer.seal(
            json.dumps({"s": session.id, "u": session.user, "e": session.expires}), PURPOSE
        )
        response.set_cookie(
            COOKIE,
            sealed,
            path=self.path,
            max_age=self.lifetime,
            httponly=True,
            samesite="Strict",
            secure=secure,
        )

    def csrf(self, session: Session) -> str:
        return hmac.new(self._mac_key, session.id.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, session: Session | None, token: str) -> bool:
        return session is not None and hmac.compare_digest(self.csrf(session), token)
