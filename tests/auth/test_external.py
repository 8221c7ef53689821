"""Trusting an external token server (§12.4): `auth.token.realm` announces it in challenges,
`auth.token.publickeys` / `rootcertbundle` say whose signatures count, no htpasswd needed."""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.auth.conftest import MakeRegistry
from tests.auth.helpers import (
    Client,
    assert_error,
    bearer,
    challenge,
    kid_of,
    make_claims,
    new_key,
    public_pem,
    push_blob,
    push_image,
    random_bytes,
    sign,
)

REALM = "https://auth.example.com/token"
ISSUER = "auth.example.com"
SERVICE = "registry.example.com"


def claims(sub: str, access: list[tuple[str, list[str]]], **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("iss", ISSUER)
    kwargs.setdefault("aud", SERVICE)
    return make_claims(sub, access, **kwargs)


async def external(
    make_registry: MakeRegistry,
    tmp_path: Path,
    keys: list[ec.EllipticCurvePrivateKey],
    **token: Any,
) -> Client:
    files = []
    for number, key in enumerate(keys):
        path = tmp_path / f"trusted-{number}.pem"
        path.write_bytes(public_pem(key))
        files.append(path)
    settings = {
        "realm": REALM,
        "issuer": ISSUER,
        "service": SERVICE,
        "publickeys": files,
        **token,
    }
    reg = await make_registry(
        "token", htpasswd=None, rules=[], admins=[], groups={}, token=settings
    )
    return reg.client


async def refused(client: Client, bad: str) -> None:
    resp = await client.get("/v2/team/app/tags/list", headers=bearer(bad))
    await assert_error(resp, 401, "UNAUTHORIZED")
    scheme, params = challenge(resp)
    assert scheme == "Bearer"
    assert params["error"] == "invalid_token", params
    assert params["realm"] == REALM


async def test_challenge_announces_the_configured_realm(
    make_registry: MakeRegistry, tmp_path: Path
) -> None:
    client = await external(make_registry, tmp_path, [new_key()])
    resp = await client.get("/v2/team/app/manifests/v1")
    await assert_error(resp, 401, "UNAUTHORIZED")
    scheme, params = challenge(resp)
    assert scheme == "Bearer"
    assert params == {
        "realm": REALM,
        "service": SERVICE,
        "scope": "repository:team/app:pull",
    }
    resp = await client.get("/v2/")
    assert challenge(resp)[1] == {"realm": REALM, "service": SERVICE}
    # No built-in token server without its own signing key.
    resp = await client.get("/auth/token", params={"service": SERVICE})
    assert resp.status == 404


async def test_tokens_signed_by_the_trusted_key_are_accepted(
    make_registry: MakeRegistry, tmp_path: Path
) -> None:
    key = new_key()
    client = await external(make_registry, tmp_path, [key])
    writer = sign(claims("ci-bot", [("team/app", ["pull", "push"])]), key)
    digest, body = await push_image(client, "team/app", "v1", bearer(writer))
    reader = sign(claims("someone", [("team/app", ["pull"])]), key)
    resp = await client.get("/v2/team/app/manifests/v1", headers=bearer(reader))
    assert resp.status == 200, await resp.text()
    assert await resp.read() == body
    assert resp.headers["Docker-Content-Digest"] == digest
    # The token's access is all that counts: pull-only cannot push, nothing on other repos.
    resp = await client.post("/v2/team/app/blobs/uploads/", headers=bearer(reader))
    assert resp.status == 401
    assert challenge(resp)[1]["error"] == "insufficient_scope"
    resp = await client.get("/v2/team/other/tags/list", headers=bearer(reader))
    assert resp.status == 401
    # The base endpoint takes any valid token, including an anonymous one.
    anonymous = sign(claims("", []), key)
    assert (await client.get("/v2/", headers=bearer(anonymous))).status == 200
    # Catalog with registry:catalog:*.
    catalog = sign(claims("someone", [("catalog", ["*"])], kind="registry"), key)
    resp = await client.get("/v2/_catalog", headers=bearer(catalog))
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["repositories"] == ["team/app"]


async def test_only_the_trusted_issuer_audience_and_key(
    make_registry: MakeRegistry, tmp_path: Path
) -> None:
    key = new_key()
    client = await external(make_registry, tmp_path, [key])
    access = [("team/app", ["pull"])]
    await refused(client, sign(claims("x", access, iss="moorage"), key))
    await refused(client, sign(claims("x", access, aud="moorage"), key))
    await refused(client, sign(claims("x", access, exp_delta=-120), key))
    stranger = new_key()
    await refused(client, sign(claims("x", access), stranger))
    await refused(client, sign(claims("x", access), stranger, kid=None))
    await refused(client, sign(claims("x", access), stranger, kid=kid_of(key)))


async def test_several_trusted_keys_are_told_apart_by_kid(
    make_registry: MakeRegistry, tmp_path: Path
) -> None:
    one, two = new_key(), new_key()
    client = await external(make_registry, tmp_path, [one, two])
    await push_image(
        client, "team/app", "v1", bearer(sign(claims("w", [("team/app", ["*"])]), one))
    )
    for key in (one, two):
        token = sign(claims("r", [("team/app", ["pull"])]), key)
        resp = await client.get("/v2/team/app/tags/list", headers=bearer(token))
        assert resp.status == 200, await resp.text()
    # With several keys, a token without kid names none of them.
    await refused(client, sign(claims("r", [("team/app", ["pull"])]), two, kid=None))


async def test_star_action_covers_everything(make_registry: MakeRegistry, tmp_path: Path) -> None:
    key = new_key()
    client = await external(make_registry, tmp_path, [key])
    token = bearer(sign(claims("w", [("team/app", ["*"])]), key))
    digest, _ = await push_image(client, "team/app", "v1", token)
    resp = await client.delete(f"/v2/team/app/manifests/{digest}", headers=token)
    assert resp.status == 202, await resp.text()


async def test_one_component_name_as_the_client_asked_for_it(
    make_registry: MakeRegistry, tmp_path: Path
) -> None:
    """`docker pull host/busybox` asks the token server for `repository:busybox:pull` and a
    Distribution-compatible token server grants exactly that name."""
    key = new_key()
    client = await external(make_registry, tmp_path, [key])
    # Pushed under the name Moorage stores it by, so only the pull below is in question.
    writer = sign(claims("w", [("library/busybox", ["*"])]), key)
    await push_image(client, "busybox", "v1", bearer(writer))
    reader = sign(claims("r", [("busybox", ["pull"])]), key)
    resp = await client.get("/v2/busybox/manifests/v1", headers=bearer(reader))
    assert resp.status == 200, await resp.text()


# --- certificate chains (x5c + rootcertbundle) ---------------------------------------------


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    days: int = 30,
    start: dt.datetime | None = None,
) -> x509.Certificate:
    start = start or dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    return builder.sign(issuer_key, hashes.SHA256())


def _x5c(*certs: x509.Certificate) -> list[str]:
    return [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in certs]


@pytest.fixture
def root(tmp_path: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path]:
    key = new_key()
    cert = _cert("Test Token Root", key, "Test Token Root", key, ca=True, days=365)
    bundle = tmp_path / "roots.pem"
    bundle.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key, bundle


async def _chain_registry(make_registry: MakeRegistry, tmp_path: Path, bundle: Path) -> Client:
    # No public keys, only the root bundle.
    reg = await make_registry(
        "token",
        htpasswd=None,
        rules=[],
        admins=[],
        token={"realm": REALM, "issuer": ISSUER, "service": SERVICE, "rootcertbundle": bundle},
    )
    return reg.client


def _chain_token(key: ec.EllipticCurvePrivateKey, chain: list[x509.Certificate]) -> str:
    body = claims("x", [("team/app", ["pull"])])
    return sign(body, key, kid=None, extra_headers={"x5c": _x5c(*chain)})


async def test_x5c_chain_to_a_trusted_root_is_accepted(
    make_registry: MakeRegistry, tmp_path: Path, root: Any
) -> None:
    root_cert, root_key, bundle = root
    client = await _chain_registry(make_registry, tmp_path, bundle)
    signer = new_key()
    leaf = _cert("token signer", signer, "Test Token Root", root_key, ca=False)
    resp = await client.get("/v2/", headers=bearer(_chain_token(signer, [leaf])))
    assert resp.status == 200, await resp.text()
    resp = await client.get("/v2/", headers=bearer(_chain_token(signer, [leaf, root_cert])))
    assert resp.status == 200, await resp.text()


async def test_x5c_chains_that_must_be_refused(
    make_registry: MakeRegistry, tmp_path: Path, root: Any
) -> None:
    _, root_key, bundle = root
    client = await _chain_registry(make_registry, tmp_path, bundle)
    signer = new_key()
    # Another root entirely.
    other_root = new_key()
    foreign = _cert("token signer", signer, "Test Token Root", other_root, ca=False)
    await refused(client, _chain_token(signer, [foreign]))
    # A good certificate, but the token signed by some other key.
    leaf = _cert("token signer", signer, "Test Token Root", root_key, ca=False)
    await refused(client, _chain_token(new_key(), [leaf]))
    # Expired certificate.
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=60)
    expired = _cert("token signer", signer, "Test Token Root", root_key, ca=False, start=old)
    await refused(client, _chain_token(signer, [expired]))
    # Garbage in x5c.
    garbage = sign(claims("x", []), signer, kid=None, extra_headers={"x5c": ["!!"]})
    await refused(client, garbage)


async def test_x5c_chain_through_a_non_ca_certificate_is_refused(
    make_registry: MakeRegistry, tmp_path: Path, root: Any
) -> None:
    """Whoever holds the key of any end-entity certificate under the root (CA:FALSE, no
    keyCertSign) must not be able to issue certificates of their own that the registry
    trusts."""
    _, root_key, bundle = root
    client = await _chain_registry(make_registry, tmp_path, bundle)
    holder = new_key()
    end_entity = _cert("some service", holder, "Test Token Root", root_key, ca=False)
    attacker = new_key()
    minted = _cert("token signer", attacker, "some service", holder, ca=False)
    await refused(client, _chain_token(attacker, [minted, end_entity]))


async def test_pull_with_a_random_blob_under_external_trust(
    make_registry: MakeRegistry, tmp_path: Path
) -> None:
    key = new_key()
    client = await external(make_registry, tmp_path, [key])
    data = random_bytes(77)
    digest = await push_blob(
        client, "team/app", data, bearer(sign(claims("w", [("team/app", ["pull", "push"])]), key))
    )
    resp = await client.get(
        f"/v2/team/app/blobs/{digest}",
        headers=bearer(sign(claims("r", [("team/app", ["pull"])]), key)),
    )
    assert resp.status == 200
    assert await resp.read() == data
