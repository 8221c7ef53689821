"""Helpers for the auth tests (contract: docs/contracts/oci-distribution.md §12 and §16).

Users, passwords and access rules shared by every auth test module, plus small request
helpers that carry credentials. Kept separate from tests/api so the auth tests stand alone.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import jwt
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from yarl import URL

from moorage.content.schema1 import key_id

Client = TestClient[Any, Any]

VERSION_HEADER = "Docker-Distribution-API-Version"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"

# alice: admin, everything everywhere. bob: group "devs" (pull+push on team/*), push-only on
# drop/*. carol: pull on team/*. dave: pull on team/a only. erin: no rule names her.
USERS = ("alice", "bob", "carol", "dave", "erin")
PASSWORDS = {name: f"{name}-secret-pw" for name in USERS}
GROUPS = {"devs": ["bob"]}
ADMINS = ["alice"]
RULES: list[dict[str, Any]] = [
    {"repository": "*", "users": ["alice"], "actions": ["*"]},
    {"repository": "team/*", "groups": ["devs"], "actions": ["pull", "push"]},
    {"repository": "drop/*", "users": ["bob"], "actions": ["push"]},
    {"repository": "team/*", "users": ["carol"], "actions": ["pull"]},
    {"repository": "team/a", "users": ["dave"], "actions": ["pull"]},
    {"repository": "public/*", "users": ["*", "anonymous"], "actions": ["pull"]},
]


# --- credentials --------------------------------------------------------------------------


def basic(user: str, password: str | None = None) -> dict[str, str]:
    secret = PASSWORDS.get(user, "") if password is None else password
    value = base64.b64encode(f"{user}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {value}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def claims_of(token: str) -> dict[str, Any]:
    """A JWT's claims, unverified (the test only reads what the server issued)."""
    return jwt.decode(token, options={"verify_signature": False})  # type: ignore[no-any-return]


def access_of(token: str) -> dict[tuple[str, str], list[str]]:
    return {(e["type"], e["name"]): sorted(e["actions"]) for e in claims_of(token)["access"]}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def challenge(resp: ClientResponse) -> tuple[str, dict[str, str]]:
    """The WWW-Authenticate header as (scheme, parameters)."""
    header = resp.headers.get("WWW-Authenticate")
    assert header, f"no WWW-Authenticate on {resp.status}: {dict(resp.headers)}"
    scheme, _, rest = header.partition(" ")
    params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    return scheme, params


# --- responses ----------------------------------------------------------------------------


async def assert_error(resp: ClientResponse, status: int, code: str) -> dict[str, Any]:
    """A v2 error: status, version header, JSON body whose first code is `code`."""
    text = await resp.text()
    assert resp.status == status, f"expected {status}, got {resp.status}: {text[:500]}"
    assert resp.headers.get(VERSION_HEADER) == "registry/2.0"
    if resp.method == "HEAD":
        return {}
    assert resp.content_type == "application/json", resp.headers.get("Content-Type")
    body: dict[str, Any] = json.loads(text)
    assert body["errors"][0]["code"] == code, body
    return body


async def assert_unauthorized(
    resp: ClientResponse, *, error: str | None = None, scope: str | None = None
) -> dict[str, str]:
    """401 UNAUTHORIZED with a Bearer challenge naming our service; checks `error` and `scope`
    (None: must be absent). Returns the challenge parameters."""
    await assert_error(resp, 401, "UNAUTHORIZED")
    scheme, params = challenge(resp)
    assert scheme == "Bearer", resp.headers["WWW-Authenticate"]
    assert params.get("realm"), params
    assert params.get("service") == "moorage", params
    assert params.get("error") == error, params
    assert params.get("scope") == scope, params
    return params


async def assert_basic_challenge(resp: ClientResponse, status: int = 401) -> None:
    await assert_error(resp, status, "UNAUTHORIZED")
    assert resp.headers["WWW-Authenticate"] == 'Basic realm="Moorage"'


# --- the token endpoint -------------------------------------------------------------------


async def token_response(
    client: Client,
    user: str | None,
    *scopes: str,
    password: str | None = None,
    offline: bool = False,
    status: int = 200,
) -> dict[str, Any]:
    """GET /auth/token (Basic credentials when `user`), one `scope` parameter per scope."""
    params: list[tuple[str, str]] = [("service", "moorage")]
    params += [("scope", s) for s in scopes]
    if offline:
        params += [("offline_token", "true"), ("client_id", "docker")]
    if user is not None:
        params.append(("account", user))
    headers = basic(user, password) if user is not None else {}
    resp = await client.get("/auth/token", params=params, headers=headers)
    text = await resp.text()
    assert resp.status == status, f"expected {status}, got {resp.status}: {text[:500]}"
    return json.loads(text)  # type: ignore[no-any-return]


async def token(client: Client, user: str | None, *scopes: str) -> str:
    body = await token_response(client, user, *scopes)
    return str(body["token"])


async def post_token(client: Client, **form: str) -> ClientResponse:
    form.setdefault("service", "moorage")
    return await client.post("/auth/token", data=form)


def realm_path(realm: str) -> str:
    return str(URL(realm).relative())


# --- content ------------------------------------------------------------------------------


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def random_bytes(size: int = 64) -> bytes:
    return os.urandom(size)


def local(location: str) -> str:
    url = URL(location)
    return str(url.relative()) if url.absolute else location


async def push_blob(
    client: Client, repo: str, data: bytes, headers: dict[str, str] | None = None
) -> str:
    """POST + PUT upload as the caller of `headers`; returns the digest."""
    digest = sha256(data)
    resp = await client.post(f"/v2/{repo}/blobs/uploads/", headers=headers)
    assert resp.status == 202, await resp.text()
    location = URL(local(resp.headers["Location"])).update_query(digest=digest)
    resp = await client.put(str(location), data=data, headers=headers)
    assert resp.status == 201, await resp.text()
    return digest


def manifest_for(config: bytes, layer: bytes) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": sha256(layer), "size": len(layer)}],
        }
    ).encode()


async def push_image(
    client: Client, repo: str, tag: str = "v1", headers: dict[str, str] | None = None
) -> tuple[str, bytes]:
    """Config, one layer and an OCI manifest tagged `tag`; returns (manifest digest, body)."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "n": os.urandom(8).hex()})
    layer = random_bytes(100)
    await push_blob(client, repo, config.encode(), headers)
    await push_blob(client, repo, layer, headers)
    body = manifest_for(config.encode(), layer)
    resp = await put_manifest(client, repo, tag, body, headers)
    assert resp.status == 201, await resp.text()
    return resp.headers["Docker-Content-Digest"], body


async def put_manifest(
    client: Client, repo: str, ref: str, body: bytes, headers: dict[str, str] | None = None
) -> ClientResponse:
    return await client.put(
        f"/v2/{repo}/manifests/{ref}",
        data=body,
        headers={"Content-Type": OCI_MANIFEST, **(headers or {})},
    )


# --- signing tokens ourselves -------------------------------------------------------------

_KID_DEFAULT = object()


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def kid_of(key: ec.EllipticCurvePrivateKey) -> str:
    return key_id(key.public_key())


def make_claims(
    sub: str,
    access: list[tuple[str, list[str]]],
    *,
    iss: str = "moorage",
    aud: str | list[str] = "moorage",
    exp_delta: int = 300,
    kind: str = "repository",
) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": iss,
        "sub": sub,
        "aud": aud,
        "exp": now + exp_delta,
        "nbf": now - 5,
        "iat": now,
        "jti": os.urandom(8).hex(),
        "access": [{"type": kind, "name": name, "actions": actions} for name, actions in access],
    }


def sign(
    claims: dict[str, Any],
    key: ec.EllipticCurvePrivateKey,
    kid: Any = _KID_DEFAULT,
    extra_headers: dict[str, Any] | None = None,
) -> str:
    """ES256 JWT; `kid` defaults to the libtrust fingerprint of `key` (None: no kid)."""
    headers: dict[str, Any] = dict(extra_headers or {})
    if kid is _KID_DEFAULT:
        headers["kid"] = kid_of(key)
    elif kid is not None:
        headers["kid"] = kid
    return jwt.encode(claims, key, algorithm="ES256", headers=headers)


def public_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
