"""An htpasswd file of bcrypt entries, as Distribution and Apache's `htpasswd -B` write it.

Checks take the same time for unknown users as for known ones (a bcrypt comparison against a
dummy hash), so response times do not reveal which user names exist. A verified password is
remembered for a short while (keyed by a keyed hash, never the password itself), because
Basic-auth clients send credentials with every request and bcrypt costs tens of milliseconds.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from pathlib import Path

import bcrypt

COST = 10
CACHE_SECONDS = 60.0
_DUMMY = bcrypt.hashpw(b"not a password", bcrypt.gensalt(COST))


class HtpasswdError(Exception):
    pass


def hash_password(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(COST)).decode()


def read(path: Path) -> dict[str, str]:
    entries: dict[str, str] = {}
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return entries
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise HtpasswdError(f"{path}:{number}: not a bcrypt htpasswd entry")
        entries[user] = hashed
    return entries


def write(path: Path, entries: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(f"{user}:{hashed}\n" for user, hashed in sorted(entries.items())))
    tmp.chmod(0o600)
    tmp.replace(path)


def valid_user_name(name: str) -> bool:
    return bool(name) and ":" not in name and name.isprintable() and name.strip() == name


class Htpasswd:
    """The identities of one htpasswd file, re-read when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: dict[str, str] = {}
        self._mtime: float | None = None
        self._key = secrets.token_bytes(32)
        self._verified: dict[bytes, float] = {}
        self._lock = threading.Lock()
        self._reload()

    def _reload(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            mtime = None
        if mtime != self._mtime:
            self._entries = read(self.path)
            self._mtime = mtime
            with self._lock:
                self._verified.clear()

    def set_password(self, user: str, password: str) -> None:
        """Change a user's password in the file (blocking: bcrypt)."""
        entries = read(self.path)
        entries[user] = hash_password(password)
        write(self.path, entries)
        self._mtime = None  # re-read even if the mtime did not move
        self._reload()

    def users(self) -> list[str]:
        self._reload()
        return sorted(self._entries)

    def check(self, user: str, password: str) -> bool:
        """True if the password is right. Blocking (bcrypt): call it from a thread."""
        self._reload()
        token = hmac.new(self._key, f"{user}\0{password}".encode(), hashlib.sha256).digest()
        now = time.monotonic()
        with self._lock:
            if self._verified.get(token, 0.0) > now:
                return True
        hashed = self._entries.get(user)
        ok = bcrypt.checkpw(password.encode(), hashed.encode() if hashed else _DUMMY)
        ok = ok and hashed is not None
        if ok:
            with self._lock:
                if len(self._verified) > 10000:
                    self._verified.clear()
                self._verified[token] = now + CACHE_SECONDS
        return ok
