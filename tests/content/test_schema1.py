"""Schema 1 signed manifests: our signatures round-trip, real Docker ones verify, forgeries fail."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from moorage.content import schema1
from moorage.errors import ManifestInvalid, ManifestUnverified

DATA = Path(__file__).parent / "data"

# moby/moby distribution/fixtures/validate_manifest/good_manifest: pushed by Docker 1.7.1
# (libtrust ES256); moby's TestValidateManifest expects this payload digest.
MOBY_GOOD = DATA / "schema1-moby-hello-world.json"
MOBY_GOOD_DIGEST = "sha256:02fee8c3220ba806531f606525eceb83f4feb654f62b207191b1c9209188dedd"
MOBY_GOOD_KID = "OIH7:HQFS:44FK:45VB:3B53:OIAG:TPL4:ATF5:6PNE:MGHN:NHQX:2GE4"
# moby's extra_data_manifest: the same, with a forged second "fsLayers" outside the payload.
MOBY_EXTRA = DATA / "schema1-moby-extra-data.json"
# containers/image internal/manifest/testdata/v2s1.manifest.json: its payload digest is the
# one containers/image states, but the fixture was edited after signing, so the ES256
# signature no longer matches.
STALE = DATA / "schema1-containers-image-stale-signature.json"
STALE_DIGEST = "sha256:7364fea9d84ee548ab67d4c46c6006289800c98de3fbf8c0a97138dfcc23f000"

LAYERS = [
    "sha256:" + hashlib.sha256(b"top layer").hexdigest(),
    "sha256:" + hashlib.sha256(b"base layer").hexdigest(),
]
HISTORY = ['{"id":"top","parent":"base"}', '{"id":"base","comment":"a <b> & c"}']
KID = re.compile(r"^[A-Z2-7]{4}(:[A-Z2-7]{4}){11}$")


@pytest.fixture(scope="module")
def p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def other_p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def payload() -> bytes:
    return schema1.build_payload("library/app", "v1", "amd64", LAYERS, HISTORY)


def _format_length(raw: bytes, index: int = 0) -> int:
    protected = json.loads(raw)["signatures"][index]["protected"]
    header = json.loads(base64.urlsafe_b64decode(protected + "=" * (-len(protected) % 4)))
    length: int = header["formatLength"]
    return length


def _resplice(raw: bytes, signatures: list[dict[str, Any]]) -> bytes:
    """The same signed prefix with a different signatures array (any formatting)."""
    cut = _format_length(raw)
    return raw[:cut] + b',\n   "signatures": ' + json.dumps(signatures).encode() + b"\n}"


def _signatures(raw: bytes) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads(raw)["signatures"]
    return entries


def _flip(text: str) -> str:
    # Change the first character: the last one may only carry padding bits.
    return ("B" if text[0] == "A" else "A") + text[1:]


# --- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make_key", "alg"),
    [
        (lambda: ec.generate_private_key(ec.SECP256R1()), "ES256"),
        (lambda: ec.generate_private_key(ec.SECP384R1()), "ES384"),
        (lambda: ec.generate_private_key(ec.SECP521R1()), "ES512"),
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"),
    ],
    ids=["P-256", "P-384", "P-521", "RSA-2048"],
)
def test_sign_then_verify_round_trips(make_key: Any, alg: str, payload: bytes) -> None:
    key = make_key()
    raw = schema1.sign(payload, key)

    result = schema1.verify(raw)

    assert result.payload == payload
    assert result.name == "library/app"
    assert result.tag == "v1"
    assert result.blob_sums == LAYERS
    assert result.manifest["architecture"] == "amd64"
    (entry,) = result.manifest["signatures"]
    assert entry["header"]["alg"] == alg
    assert entry["header"]["jwk"] == schema1.jwk(key.public_key())
    assert entry["header"]["jwk"]["kid"] == schema1.key_id(key.public_key())


def test_signed_document_has_libtrust_layout(p256: ec.EllipticCurvePrivateKey) -> None:
    payload = schema1.build_payload("a/b", "t", "arm64", LAYERS[:1], HISTORY[:1])
    raw = schema1.sign(payload, p256)

    (entry,) = _signatures(raw)
    public = schema1.jwk(p256.public_key())
    expected = (
        payload[:-2].decode()
        + ',\n   "signatures": [\n      {\n         "header": {\n            "jwk": {\n'
        + f'               "crv": "P-256",\n               "kid": "{public["kid"]}",\n'
        + f'               "kty": "EC",\n               "x": "{public["x"]}",\n'
        + f'               "y": "{public["y"]}"\n            }},\n'
        + '            "alg": "ES256"\n         },\n'
        + f'         "signature": "{entry["signature"]}",\n'
        + f'         "protected": "{entry["protected"]}"\n      }}\n   ]\n}}'
    )
    assert raw.decode() == expected
    protected = entry["protected"]
    header = json.loads(base64.urlsafe_b64decode(protected + "=" * (-len(protected) % 4)))
    assert list(header) == ["formatLength", "formatTail", "time"]
    assert header["formatLength"] == len(payload) - 2
    assert header["formatTail"] == "Cn0"  # base64url of "\n}"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", header["time"])
    assert len(base64.urlsafe_b64decode(entry["signature"] + "==")) == 64  # r||s, not DER


def test_build_payload_writes_docker_field_order_and_go_escaping() -> None:
    payload = schema1.build_payload("n", "t", "amd64", LAYERS, HISTORY)

    text = payload.decode()
    assert text.startswith('{\n   "schemaVersion": 1,\n   "name": "n",\n   "tag": "t",\n')
    assert text.endswith("\n   ]\n}")
    assert list(json.loads(payload)) == [
        "schemaVersion",
        "name",
        "tag",
        "architecture",
        "fsLayers",
        "history",
    ]
    # Go's encoder escapes <, > and & inside strings; Python's would not.
    assert "\\u003cb\\u003e \\u0026 c" in text
    assert json.loads(payload)["history"][1]["v1Compatibility"] == HISTORY[1]
    with pytest.raises(ValueError):
        schema1.build_payload("n", "t", "amd64", LAYERS, HISTORY[:1])


def test_digest_is_sha256_of_payload_not_of_upload(
    payload: bytes, p256: ec.EllipticCurvePrivateKey, rsa_key: rsa.RSAPrivateKey
) -> None:
    by_ec = schema1.verify(schema1.sign(payload, p256))
    by_rsa = schema1.verify(schema1.sign(payload, rsa_key))

    expected = "sha256:" + hashlib.sha256(payload).hexdigest()
    assert by_ec.digest == expected
    assert by_rsa.digest == expected  # different signatures, same content


def test_sign_refuses_what_libtrust_cannot_splice(p256: ec.EllipticCurvePrivateKey) -> None:
    for bad in (b"[1, 2]", b"{}", b"not json", b'{"a": 1,}'):
        with pytest.raises(ValueError):
            schema1.sign(bad, p256)


def test_compact_payload_is_signed_compactly(p256: ec.EllipticCurvePrivateKey) -> None:
    payload = b'{"schemaVersion":1,"name":"a","tag":"b","fsLayers":[],"history":[]}'

    raw = schema1.sign(payload, p256)

    assert raw.startswith(payload[:-1] + b',"signatures":[{"header":{"jwk":{"crv":"P-256"')
    assert schema1.verify(raw).payload == payload


# --- tampering ------------------------------------------------------------------------------


def test_tampered_payload_byte_is_unverified(
    payload: bytes, p256: ec.EllipticCurvePrivateKey
) -> None:
    raw = schema1.sign(payload, p256)
    at = raw.index(LAYERS[0].encode()) + len("sha256:")
    forged = raw[:at] + (b"0" if raw[at : at + 1] != b"0" else b"1") + raw[at + 1 :]
    assert json.loads(forged)["fsLayers"][0]["blobSum"] != LAYERS[0]

    with pytest.raises(ManifestUnverified):
        schema1.verify(forged)


def test_tampered_signature_is_unverified(
    payload: bytes, p256: ec.EllipticCurvePrivateKey, rsa_key: rsa.RSAPrivateKey
) -> None:
    for key in (p256, rsa_key):
        raw = schema1.sign(payload, key)
        (entry,) = _signatures(raw)
        forged = raw.replace(entry["signature"].encode(), _flip(entry["signature"]).encode())

        with pytest.raises(ManifestUnverified):
            schema1.verify(forged)


def test_two_valid_signatures_verify(
    payload: bytes, p256: ec.EllipticCurvePrivateKey, rsa_key: rsa.RSAPrivateKey
) -> None:
    raw = schema1.sign(payload, p256, rsa_key)

    result = schema1.verify(raw)

    assert result.payload == payload
    kids = [entry["header"]["jwk"]["kid"] for entry in result.manifest["signatures"]]
    # libtrust orders signatures by key id.
    assert kids == sorted([schema1.key_id(p256.public_key()), schema1.key_id(rsa_key.public_key())])


def test_one_bad_signature_of_two_is_unverified(
    payload: bytes, p256: ec.EllipticCurvePrivateKey, other_p256: ec.EllipticCurvePrivateKey
) -> None:
    raw = schema1.sign(payload, p256, other_p256)
    for index in (0, 1):
        entries = _signatures(raw)
        entries[index]["signature"] = _flip(entries[index]["signature"])

        with pytest.raises(ManifestUnverified):
            schema1.verify(_resplice(raw, entries))
    assert schema1.verify(_resplice(raw, _signatures(raw))).payload == payload


def test_signature_from_another_key_is_unverified(
    payload: bytes, p256: ec.EllipticCurvePrivateKey, other_p256: ec.EllipticCurvePrivateKey
) -> None:
    raw = schema1.sign(payload, p256)
    entries = _signatures(raw)
    entries[0]["header"]["jwk"] = schema1.jwk(other_p256.public_key())

    with pytest.raises(ManifestUnverified):
        schema1.verify(_resplice(raw, entries))


def test_content_outside_the_signed_payload_is_unverified(
    payload: bytes, p256: ec.EllipticCurvePrivateKey
) -> None:
    raw = schema1.sign(payload, p256)
    cut = _format_length(raw)
    forged = raw[:cut] + b',\n   "tag": "latest"' + raw[cut:]

    with pytest.raises(ManifestUnverified, match="outside its signed payload"):
        schema1.verify(forged)


@pytest.mark.parametrize(
    "change",
    [
        {"alg": "HS256"},
        {"alg": "ES384"},  # a P-256 key only signs ES256
        {"alg": None},
        {"jwk": None},
        {"jwk": {"kty": "oct", "k": "c2VjcmV0"}},
        {"jwk": {"kty": "EC", "crv": "P-192", "x": "AA", "y": "AA"}},
        {"kid": "AAAA:AAAA:AAAA:AAAA:AAAA:AAAA:AAAA:AAAA:AAAA:AAAA:AAAA:AAAA"},
        {"x": "AAAA"},  # wrong coordinate length
        {"x5c": ["not base64!"]},
        {"jwk": {"kty": "RSA", "e": "AQAB", "n": "_" * 2732}},  # 16392-bit modulus
    ],
    ids=lambda change: ",".join(change),
)
def test_unsupported_or_inconsistent_keys_are_unverified(
    change: dict[str, Any], payload: bytes, p256: ec.EllipticCurvePrivateKey
) -> None:
    raw = schema1.sign(payload, p256)
    entries = _signatures(raw)
    header = entries[0]["header"]
    for field, value in change.items():
        target = header if field in ("alg", "jwk", "x5c") else header["jwk"]
        if value is None:
            del target[field]
        else:
            target[field] = value

    with pytest.raises(ManifestUnverified):
        schema1.verify(_resplice(raw, entries))


# --- x5c ------------------------------------------------------------------------------------


def _certificate(key: ec.EllipticCurvePrivateKey) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "moorage test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


def test_x5c_leaf_certificate_key_verifies(
    payload: bytes, p256: ec.EllipticCurvePrivateKey, other_p256: ec.EllipticCurvePrivateKey
) -> None:
    raw = schema1.sign(payload, p256)
    entries = _signatures(raw)
    entries[0]["header"] = {"alg": "ES256", "x5c": [_certificate(p256)]}

    assert schema1.verify(_resplice(raw, entries)).payload == payload

    # The chain wins over the jwk, as in libtrust: a leaf for another key fails.
    entries[0]["header"] = {
        "jwk": schema1.jwk(p256.public_key()),
        "alg": "ES256",
        "x5c": [_certificate(other_p256)],
    }
    with pytest.raises(ManifestUnverified):
        schema1.verify(_resplice(raw, entries))


# --- malformed documents --------------------------------------------------------------------

DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.fixture(scope="module")
def malformed(payload: bytes, p256: ec.EllipticCurvePrivateKey) -> dict[str, bytes]:
    raw = schema1.sign(payload, p256)
    entries = _signatures(raw)
    cut = _format_length(raw)

    def with_protected(fields: dict[str, Any] | bytes) -> bytes:
        changed = json.loads(json.dumps(entries))
        text = fields if isinstance(fields, bytes) else json.dumps(fields).encode()
        encoded = base64.urlsafe_b64encode(text).rstrip(b"=")
        changed[0]["protected"] = encoded.decode()
        return _resplice(raw, changed)

    def signed(document: dict[str, Any]) -> bytes:
        return schema1.sign(json.dumps(document, indent=3).encode(), p256)

    valid = json.loads(payload)
    # A longer tag moves formatLength: the two signatures disagree on where the payload ends.
    other_payload = schema1.sign(payload.replace(b'"v1"', b'"v10"'), p256)
    return {
        "not json": b"{not json",
        "not utf-8": b'{"schemaVersion": 1, "name": "\xff"}',
        "array": b"[1]",
        "schemaVersion 2": raw.replace(b'"schemaVersion": 1', b'"schemaVersion": 2'),
        "schemaVersion true": raw.replace(b'"schemaVersion": 1', b'"schemaVersion": true'),
        "no signatures": payload,
        "empty signatures": raw[:cut] + b',\n   "signatures": []\n}',
        "signature not an object": _resplice(raw, ["x"]),  # type: ignore[list-item]
        "protected not base64": _resplice(raw, [{**entries[0], "protected": "!!!"}]),
        "protected not json": _resplice(raw, [{**entries[0], "protected": "bm90IGpzb24"}]),
        "no formatLength": with_protected({"formatTail": "Cn0"}),
        "formatLength negative": with_protected({"formatLength": -1, "formatTail": "Cn0"}),
        "formatLength too long": with_protected({"formatLength": 10**6, "formatTail": "Cn0"}),
        "formatLength not int": with_protected({"formatLength": "12", "formatTail": "Cn0"}),
        "no formatTail": with_protected({"formatLength": cut}),
        "payload cut short": with_protected({"formatLength": 10, "formatTail": "Cn0"}),
        "payloads differ": _resplice(raw, entries + _signatures(other_payload)),
        "fsLayers missing": signed({k: v for k, v in valid.items() if k != "fsLayers"}),
        "history shorter": signed({**valid, "history": valid["history"][:1]}),
        "blobSum not a string": signed({**valid, "fsLayers": [{"blobSum": 1}, {"blobSum": 2}]}),
        "name missing": signed({k: v for k, v in valid.items() if k != "name"}),
        "payload carries signatures": signed({**valid, "signatures": []}),
        # Nested past any recursion limit: refused as invalid, not a RecursionError.
        "manifest nested deep": b'{"schemaVersion": 1, "x": ' + DEEP + b"}",
        "protected nested deep": with_protected(b'{"formatLength": ' + DEEP + b"}"),
    }


MALFORMED = [
    "not json",
    "not utf-8",
    "array",
    "schemaVersion 2",
    "schemaVersion true",
    "no signatures",
    "empty signatures",
    "signature not an object",
    "protected not base64",
    "protected not json",
    "no formatLength",
    "formatLength negative",
    "formatLength too long",
    "formatLength not int",
    "no formatTail",
    "payload cut short",
    "payloads differ",
    "fsLayers missing",
    "history shorter",
    "blobSum not a string",
    "name missing",
    "payload carries signatures",
    "manifest nested deep",
    "protected nested deep",
]


def test_every_malformed_case_is_exercised(malformed: dict[str, bytes]) -> None:
    assert sorted(malformed) == sorted(MALFORMED)


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_manifest_is_invalid(case: str, malformed: dict[str, bytes]) -> None:
    with pytest.raises(ManifestInvalid) as caught:
        schema1.verify(malformed[case])
    assert caught.value.code == "MANIFEST_INVALID"
    assert caught.value.status == 400


# --- keys -----------------------------------------------------------------------------------


def test_key_id_is_libtrust_fingerprint(
    p256: ec.EllipticCurvePrivateKey, rsa_key: rsa.RSAPrivateKey
) -> None:
    for key in (p256.public_key(), rsa_key.public_key()):
        kid = schema1.key_id(key)
        assert KID.fullmatch(kid), kid
        der = key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        expected = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode()
        assert kid.replace(":", "") == expected
    assert schema1.key_id(p256.public_key()) != schema1.key_id(rsa_key.public_key())


def test_rsa_jwk_uses_minimal_big_endian(rsa_key: rsa.RSAPrivateKey) -> None:
    public = schema1.jwk(rsa_key.public_key())

    assert list(public) == ["e", "kid", "kty", "n"]
    assert public["e"] == "AQAB"
    assert public["kty"] == "RSA"
    assert len(base64.urlsafe_b64decode(public["n"] + "==")) == 256


# --- real manifests -------------------------------------------------------------------------


def test_real_docker_manifest_verifies() -> None:
    raw = MOBY_GOOD.read_bytes()

    result = schema1.verify(raw)

    assert result.digest == MOBY_GOOD_DIGEST
    assert result.digest != "sha256:" + hashlib.sha256(raw).hexdigest()
    assert result.name == "library/hello-world"
    assert result.tag == "latest"
    assert result.blob_sums == [
        "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4",
        "sha256:03f4658f8b782e12230c1783426bd3bacce651ce582a4ffb6fbbfa2079428ecb",
    ]
    (entry,) = result.manifest["signatures"]
    assert entry["header"]["jwk"]["kid"] == MOBY_GOOD_KID


def test_real_docker_jwk_fingerprint_matches_its_kid() -> None:
    jwk = _signatures(MOBY_GOOD.read_bytes())[0]["header"]["jwk"]
    x, y = (int.from_bytes(base64.urlsafe_b64decode(jwk[c] + "="), "big") for c in "xy")
    key = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()

    assert schema1.key_id(key) == MOBY_GOOD_KID
    assert schema1.jwk(key) == jwk


def test_our_encoders_reproduce_docker_bytes_exactly() -> None:
    raw = MOBY_GOOD.read_bytes()
    result = schema1.verify(raw)
    history = [entry["v1Compatibility"] for entry in result.manifest["history"]]

    rebuilt = schema1.build_payload(result.name, result.tag, "amd64", result.blob_sums, history)

    assert rebuilt == result.payload
    assert schema1.assemble(result.payload, result.manifest["signatures"]) == raw


def test_real_tampered_docker_manifests_are_unverified() -> None:
    # moby accepts extra_data_manifest (it reads only the payload); we refuse it because we
    # serve the uploaded bytes, whose forged fsLayers a naive client would believe.
    with pytest.raises(ManifestUnverified, match="outside its signed payload"):
        schema1.verify(MOBY_EXTRA.read_bytes())

    stale = STALE.read_bytes()
    payload = stale[: _format_length(stale)] + b"\n}"
    assert "sha256:" + hashlib.sha256(payload).hexdigest() == STALE_DIGEST
    with pytest.raises(ManifestUnverified, match="does not verify"):
        schema1.verify(stale)
