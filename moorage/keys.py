"""Keys and secrets: derived from the deployment's shared secret (`http.secret`, the same on
every node), or created on first start and kept in the data directory (one node). Creation is
safe when several workers start at once: the first key written wins and everyone loads it."""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# What each derived value is for: a different purpose gives an unrelated value.
V1_TOKENS = "moorage v1 token mac"
TOKEN_SIGNING = "moorage token signing key"
SCHEMA1_SIGNING = "moorage schema1 signing key"
CURSORS = "moorage pagination cursor key"
UI_SESSIONS = "moorage web interface session key"

_P256_ORDER = int("FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551", 16)


def derive_secret(shared: str, purpose: str, size: int = 32) -> bytes:
    """`size` bytes for `purpose` from the deployment secret (HKDF-SHA256)."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=size, salt=b"moorage", info=purpose.encode())
    return hkdf.derive(shared.encode())


def derive_ec_key(shared: str, purpose: str) -> ec.EllipticCurvePrivateKey:
    """A P-256 private key for `purpose`, the same on every node with the same secret. The
    scalar is 48 derived bytes reduced into [1, n-1] (the bias of 128 spare bits is nil)."""
    value = int.from_bytes(derive_secret(shared, purpose, 48), "big")
    return ec.derive_private_key(value % (_P256_ORDER - 1) + 1, ec.SECP256R1())


class Sealer:
    """Seals a short text into an opaque token only this deployment can open (AES-GCM): a
    position a client must be able to hand back without learning what it names."""

    PREFIX = "~"  # never the first character of a repository name or a tag

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, text: str, purpose: bytes) -> str:
        nonce = os.urandom(12)
        sealed = nonce + self._aead.encrypt(nonce, text.encode(), purpose)
        return self.PREFIX + base64.urlsafe_b64encode(sealed).decode().rstrip("=")

    def open(self, token: str, purpose: bytes) -> str | None:
        """The text sealed in `token`, or None if it is not a token of ours for `purpose`."""
        if not token.startswith(self.PREFIX):
            return None
        body = token[len(self.PREFIX) :]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            return self._aead.decrypt(raw[:12], raw[12:], purpose).decode()
        except (binascii.Error, ValueError, InvalidTag, UnicodeDecodeError):
            return None


def load_or_create_ec_key(path: Path) -> ec.EllipticCurvePrivateKey:
    if not path.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path}: expected an EC private key")
    return loaded
