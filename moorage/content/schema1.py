"""Docker schema 1 signed manifests: verify and produce libtrust "pretty JWS" documents.

A schema 1 manifest carries its signatures inside itself. The signer formats the manifest
(3-space indented JSON), cuts off the closing `\\n}`, and splices in a `"signatures"` array;
each signature's protected header records how many leading bytes belong to the original
(`formatLength`) and what was cut off (`formatTail`), so the signed payload can be rebuilt as
`raw[:formatLength] + formatTail`. That payload, not the uploaded bytes, is what the manifest's
digest is computed over (spec §7.4).

The byte layout produced by `sign` and `assemble` is the one libtrust (and therefore Docker and
Distribution) writes, down to Go's JSON escaping, so manifests we sign look like theirs and
`build_payload` reproduces Docker's payload bytes exactly.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from moorage.content import jsondoc
from moorage.errors import ManifestInvalid, ManifestUnverified

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

SIGNATURES_KEY: Final = "signatures"
# Docker formats schema 1 payloads with json.MarshalIndent(m, "", "   ").
INDENT: Final = "   "


@dataclass(frozen=True)
class _Curve:
    name: str  # JWK "crv"
    alg: str  # the only JWS alg libtrust accepts for this curve
    curve: ec.EllipticCurve
    hash: hashes.HashAlgorithm
    octets: int  # size of one coordinate, and of r and s in a signature


_CURVES: Final = {
    c.name: c
    for c in (
        _Curve("P-256", "ES256", ec.SECP256R1(), hashes.SHA256(), 32),
        _Curve("P-384", "ES384", ec.SECP384R1(), hashes.SHA384(), 48),
        _Curve("P-521", "ES512", ec.SECP521R1(), hashes.SHA512(), 66),
    )
}
_CURVE_BY_OID_NAME: Final = {c.curve.name: c for c in _CURVES.values()}
_RSA_HASHES: Final[dict[str, hashes.HashAlgorithm]] = {
    "RS256": hashes.SHA256(),
    "RS384": hashes.SHA384(),
    "RS512": hashes.SHA512(),
}

_RSA_MAX_BITS: Final = 16384
_B64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")


@dataclass(frozen=True)
class Schema1:
    """A schema 1 manifest whose every signature checked out."""

    payload: bytes  # the signed bytes; what the digest is computed over
    manifest: dict[str, Any]  # the uploaded document, signatures included
    name: str
    tag: str
    blob_sums: list[str]  # fsLayers order: top layer first

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.payload).hexdigest()


@dataclass(frozen=True)
class _Signature:
    index: int
    header: dict[str, Any]
    signature: str
    protected: str
    format_length: int
    format_tail: bytes


# --- verification ---------------------------------------------------------------------------


def verify(raw: bytes) -> Schema1:
    """Check a signed schema 1 manifest and return its signed payload and main fields.

    Raises ManifestInvalid for documents that are not well-formed schema 1, and
    ManifestUnverified when a signature does not verify or uses an unsupported key or alg.
    """
    manifest = _load_object(raw, "manifest")
    if not _is_int(manifest.get("schemaVersion"), 1):
        raise ManifestInvalid("schemaVersion must be 1")
    entries = manifest.get(SIGNATURES_KEY)
    if not isinstance(entries, list) or not entries:
        raise ManifestInvalid("schema1 manifest has no signatures")
    signatures = [_parse_signature(entry, i) for i, entry in enumerate(entries)]

    # One document, one payload: libtrust refuses signatures that disagree on where it ends.
    first = signatures[0]
    for sig in signatures[1:]:
        if (sig.format_length, sig.format_tail) != (first.format_length, first.format_tail):
            raise ManifestInvalid("signatures cover different payloads", {"signature": sig.index})
    if first.format_length > len(raw):
        raise ManifestInvalid("formatLength is beyond the end of the manifest")
    payload = raw[: first.format_length] + first.format_tail
    content = _load_object(payload, "signed payload")
    if SIGNATURES_KEY in content:
        raise ManifestInvalid("signed payload must not contain signatures")
    name, tag, blob_sums = _fields(content)

    encoded = _b64url(payload)
    for sig in signatures:
        _verify_signature(sig, encoded)

    # libtrust stops here, but then anything appended after the payload (a second "fsLayers"
    # placed after the signatures, say) would be served as part of a "verified" manifest.
    # Legitimate signers only ever add the signatures key.
    unsigned = {k: v for k, v in manifest.items() if k != SIGNATURES_KEY}
    if unsigned != content:
        raise ManifestUnverified("manifest has content outside its signed payload")
    return Schema1(payload, manifest, name, tag, blob_sums)


def _load_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = jsondoc.loads(data)
    except jsondoc.JSONInvalid as exc:
        raise ManifestInvalid(f"{what} is not valid JSON", {"reason": str(exc)}) from None
    if not isinstance(value, dict):
        raise ManifestInvalid(f"{what} is not a JSON object")
    return value


def _is_int(value: Any, expected: int | None = None) -> bool:
    # bool is an int in Python but not a JSON number.
    ok = isinstance(value, int) and not isinstance(value, bool)
    return ok and (expected is None or value == expected)


def _parse_signature(entry: Any, index: int) -> _Signature:
    detail = {"signature": index}
    if not isinstance(entry, dict):
        raise ManifestInvalid("signature entry is not an object", detail)
    header = entry.get("header")
    signature = entry.get("signature")
    protected = entry.get("protected")
    if not isinstance(header, dict):
        raise ManifestInvalid("signature has no header", detail)
    if not isinstance(signature, str) or not isinstance(protected, str):
        raise ManifestInvalid("signature and protected must be strings", detail)
    try:
        fields = jsondoc.loads(_b64url_decode(protected))
    except ValueError:  # bad base64url (binascii.Error) or jsondoc.JSONInvalid
        raise ManifestInvalid("protected header is not base64url JSON", detail) from None
    if not isinstance(fields, dict):
        raise ManifestInvalid("protected header is not a JSON object", detail)
    length, tail = fields.get("formatLength"), fields.get("formatTail")
    if not isinstance(length, int) or isinstance(length, bool) or length < 0:
        raise ManifestInvalid("protected header lacks a valid formatLength", detail)
    if not isinstance(tail, str):
        raise ManifestInvalid("protected header lacks formatTail", detail)
    try:
        format_tail = _b64url_decode(tail)
    except ValueError:
        raise ManifestInvalid("formatTail is not base64url", detail) from None
    return _Signature(index, header, signature, protected, length, format_tail)


def _fields(content: dict[str, Any]) -> tuple[str, str, list[str]]:
    name, tag = content.get("name"), content.get("tag")
    if not isinstance(name, str) or not isinstance(tag, str):
        raise ManifestInvalid("name and tag must be strings")
    layers, history = content.get("fsLayers"), content.get("history")
    if not isinstance(layers, list) or not isinstance(history, list):
        raise ManifestInvalid("fsLayers and history must be arrays")
    if len(layers) != len(history):
        raise ManifestInvalid(
            "fsLayers and history differ in length",
            {"fsLayers": len(layers), "history": len(history)},
        )
    blob_sums: list[str] = []
    for i, layer in enumerate(layers):
        blob_sum = layer.get("blobSum") if isinstance(layer, dict) else None
        if not isinstance(blob_sum, str):
            raise ManifestInvalid("fsLayers entry without a string blobSum", {"fsLayer": i})
        blob_sums.append(blob_sum)
    for i, entry in enumerate(history):
        if not isinstance(entry, dict) or not isinstance(entry.get("v1Compatibility"), str):
            raise ManifestInvalid("history entry without a string v1Compatibility", {"history": i})
    return name, tag, blob_sums


def _verify_signature(sig: _Signature, encoded_payload: str) -> None:
    detail = {"signature": sig.index}
    alg = sig.header.get("alg")
    if not isinstance(alg, str):
        raise ManifestUnverified("signature header has no alg", detail)
    key = _signing_key(sig.header, detail)
    try:
        signature = _b64url_decode(sig.signature)
    except ValueError:
        raise ManifestUnverified("signature is not base64url", detail) from None
    signing_input = f"{sig.protected}.{encoded_payload}".encode("ascii")
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            curve = _CURVE_BY_OID_NAME.get(key.curve.name)
            if curve is None:
                raise ManifestUnverified(f"unsupported curve {key.curve.name}", detail)
            # Each curve has exactly one JWS alg; an "ES256" claim on a P-384 key is refused.
            if alg != curve.alg:
                raise ManifestUnverified(f"alg {alg} does not fit a {curve.name} key", detail)
            # JWS carries r||s at fixed width, where cryptography wants DER.
            if len(signature) != 2 * curve.octets:
                raise ManifestUnverified("EC signature has the wrong length", detail)
            r = int.from_bytes(signature[: curve.octets], "big")
            s = int.from_bytes(signature[curve.octets :], "big")
            key.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(curve.hash))
        else:
            digest = _RSA_HASHES.get(alg)
            if digest is None:
                raise ManifestUnverified(f"alg {alg} does not fit an RSA key", detail)
            key.verify(signature, signing_input, padding.PKCS1v15(), digest)
    except InvalidSignature:
        raise ManifestUnverified("manifest signature does not verify", detail) from None


def _signing_key(header: dict[str, Any], detail: dict[str, int]) -> PublicKey:
    # As libtrust: an x5c chain wins over a jwk, and only its leaf matters here (deciding
    # whether to trust the chain is not this module's job).
    chain = header.get("x5c")
    if chain:
        if not isinstance(chain, list) or not isinstance(chain[0], str):
            raise ManifestUnverified("x5c is not a list of certificates", detail)
        try:
            cert = x509.load_der_x509_certificate(base64.b64decode(chain[0], validate=True))
            key = cert.public_key()
        except ValueError:
            raise ManifestUnverified("x5c leaf certificate does not parse", detail) from None
        if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise ManifestUnverified("x5c leaf key type is not supported", detail)
        return key
    jwk_ = header.get("jwk")
    if not isinstance(jwk_, dict):
        raise ManifestUnverified("signature header has no public key", detail)
    try:
        key = _key_from_jwk(jwk_)
    except ValueError as exc:
        raise ManifestUnverified(f"unusable jwk: {exc}", detail) from None
    # libtrust refuses a jwk whose kid names another key; so do we.
    kid = jwk_.get("kid")
    if kid is not None and kid != key_id(key):
        raise ManifestUnverified("jwk kid does not match its key", detail)
    return key


def _key_from_jwk(data: dict[str, Any]) -> PublicKey:
    """Raises ValueError for anything it cannot turn into a supported key."""
    kty = data.get("kty")
    if kty == "EC":
        crv = data.get("crv")
        curve = _CURVES.get(crv) if isinstance(crv, str) else None
        if curve is None:
            raise ValueError(f"unsupported curve {crv!r}")
        x, y = _jwk_bytes(data, "x"), _jwk_bytes(data, "y")
        if len(x) != curve.octets or len(y) != curve.octets:
            raise ValueError("coordinate has the wrong length")
        numbers = ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve.curve
        )
        return numbers.public_key()  # ValueError when the point is not on the curve
    if kty == "RSA":
        n = int.from_bytes(_jwk_bytes(data, "n"), "big")
        e = int.from_bytes(_jwk_bytes(data, "e"), "big")
        # Bounds keep a hostile key from making verification slow: OpenSSL's own modulus
        # ceiling, and libtrust's 4-byte exponent.
        if n.bit_length() > _RSA_MAX_BITS or e >= 2**32:
            raise ValueError("RSA key is too large")
        return rsa.RSAPublicNumbers(e, n).public_key()
    raise ValueError(f"unsupported key type {kty!r}")


def _jwk_bytes(data: dict[str, Any], member: str) -> bytes:
    value = data.get(member)
    if not isinstance(value, str):
        raise ValueError(f"{member} is missing")
    return _b64url_decode(value)


# --- keys -----------------------------------------------------------------------------------


def key_id(public_key: PublicKey) -> str:
    """The libtrust fingerprint: SHA-256 of the DER SubjectPublicKeyInfo, 240 bits, base32.

    Shaped like `ABCD:EFGH:IJKL:MNOP:QRST:UVWX:YZ23:4567:ABCD:EFGH:IJKL:MNOP`.
    """
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # 30 bytes are exactly 48 base32 characters, so there is never padding to strip.
    text = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode("ascii")
    return ":".join(text[i : i + 4] for i in range(0, len(text), 4))


def jwk(public_key: PublicKey) -> dict[str, str]:
    """The public key as libtrust writes it into a signature header (keys in Go's order)."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        curve = _curve_of(public_key)
        numbers = public_key.public_numbers()
        return {
            "crv": curve.name,
            "kid": key_id(public_key),
            "kty": "EC",
            # Fixed width, leading zeros kept, as the JWA spec and libtrust require.
            "x": _b64url(numbers.x.to_bytes(curve.octets, "big")),
            "y": _b64url(numbers.y.to_bytes(curve.octets, "big")),
        }
    rsa_numbers = public_key.public_numbers()
    return {
        "e": _b64url(_minimal_bytes(rsa_numbers.e)),
        "kid": key_id(public_key),
        "kty": "RSA",
        "n": _b64url(_minimal_bytes(rsa_numbers.n)),
    }


def _curve_of(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> _Curve:
    curve = _CURVE_BY_OID_NAME.get(key.curve.name)
    if curve is None:
        raise ValueError(f"unsupported curve {key.curve.name}; use P-256, P-384 or P-521")
    return curve


def _minimal_bytes(value: int) -> bytes:
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


# --- signing --------------------------------------------------------------------------------


def sign(payload: bytes, key: PrivateKey, *more_keys: PrivateKey) -> bytes:
    """Sign a formatted manifest payload and return the pretty-JWS document.

    `payload` is the manifest without signatures, formatted as Docker does (see
    `build_payload`); the result verifies with `verify`, whose `.payload` is `payload` again.
    EC keys sign with the alg their curve implies, RSA keys with RS256, as libtrust does.
    Raises ValueError when the payload is not a non-empty JSON object.
    """
    format_length = _format_length(payload)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    header_fields = {
        "formatLength": format_length,
        "formatTail": _b64url(payload[format_length:]),
        "time": now,
    }
    protected = _b64url(_marshal(header_fields, None).encode("utf-8"))
    signing_input = f"{protected}.{_b64url(payload)}".encode("ascii")
    entries: list[dict[str, Any]] = []
    for private_key in (key, *more_keys):
        alg, signature = _sign_bytes(private_key, signing_input)
        entries.append(
            {
                "header": {"jwk": jwk(private_key.public_key()), "alg": alg},
                "signature": _b64url(signature),
                "protected": protected,
            }
        )
    return assemble(payload, entries)


def assemble(payload: bytes, signatures: Sequence[dict[str, Any]]) -> bytes:
    """Splice signature entries into a payload the way libtrust's PrettySignature does.

    The entries are sorted by key id then signature, and written with the payload's own
    indentation (compact when the payload is compact).
    """
    if not signatures:
        raise ValueError("at least one signature is needed")
    format_length = _format_length(payload)
    ordered = sorted(signatures, key=_signature_order)
    indent = _detect_indent(payload)
    head = payload[:format_length].decode("utf-8")
    if indent:
        body = _marshal(ordered, indent, indent)
        text = f'{head},\n{indent}"{SIGNATURES_KEY}": {body}\n}}'
    else:
        text = f'{head},"{SIGNATURES_KEY}":{_marshal(ordered, None)}}}'
    return text.encode("utf-8")


def _signature_order(entry: dict[str, Any]) -> tuple[str, str]:
    kid = entry.get("header", {}).get("jwk", {}).get("kid", "")
    return (str(kid), str(entry.get("signature", "")))


def _format_length(payload: bytes) -> int:
    """Where libtrust cuts the payload: just after the last token before the closing brace."""
    try:
        content = jsondoc.loads(payload)
    except ValueError as exc:
        raise ValueError(f"payload is not JSON: {exc}") from None
    if not isinstance(content, dict) or not content:
        # An empty object would splice into `{,"signatures"...}`, which is not JSON.
        raise ValueError("payload must be a non-empty JSON object")
    close = len(payload.rstrip())
    # It parsed as an object, so the last non-space byte is its closing brace.
    return len(payload[: close - 1].rstrip())


def _detect_indent(payload: bytes) -> str:
    # libtrust's detectJSONIndent: the whitespace between "{\n" and the first quote.
    if len(payload) > 2 and payload.startswith(b"{\n"):
        quote = payload.find(b'"', 1)
        if quote > 1:
            return payload[2:quote].decode("utf-8")
    return ""


def _sign_bytes(key: PrivateKey, data: bytes) -> tuple[str, bytes]:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        curve = _curve_of(key)
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(curve.hash)))
        return curve.alg, r.to_bytes(curve.octets, "big") + s.to_bytes(curve.octets, "big")
    return "RS256", key.sign(data, padding.PKCS1v15(), hashes.SHA256())


# --- payloads -------------------------------------------------------------------------------


def build_payload(
    name: str, tag: str, architecture: str, fs_layers: list[str], history: list[str]
) -> bytes:
    """A schema 1 payload as Docker formats it, ready for `sign`.

    `fs_layers` are blob digests and `history` the v1Compatibility JSON strings, both top
    layer first and of equal length.
    """
    if len(fs_layers) != len(history):
        raise ValueError("fs_layers and history must have the same length")
    document = {
        "schemaVersion": 1,
        "name": name,
        "tag": tag,
        "architecture": architecture,
        "fsLayers": [{"blobSum": blob_sum} for blob_sum in fs_layers],
        "history": [{"v1Compatibility": entry} for entry in history],
    }
    return _marshal(document, INDENT).encode("utf-8")


def _marshal(value: Any, indent: str | None, prefix: str = "") -> str:
    """Go's json.Marshal (indent None) or json.MarshalIndent(value, prefix, indent).

    Signed bytes must match what Go writes, and Python's json differs in escaping.
    """
    out: list[str] = []
    _emit(value, indent, prefix, 0, out)
    return "".join(out)


def _emit(value: Any, indent: str | None, prefix: str, depth: int, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(_go_string(value))
    elif value is None or isinstance(value, bool | int):
        out.append(json.dumps(value))
    elif isinstance(value, dict | list):
        items = list(value.items()) if isinstance(value, dict) else [(None, v) for v in value]
        opening, closing = ("{", "}") if isinstance(value, dict) else ("[", "]")
        if not items:
            out.append(opening + closing)
            return
        out.append(opening)
        for i, (member, item) in enumerate(items):
            if i:
                out.append(",")
            if indent is not None:
                out.append("\n" + prefix + indent * (depth + 1))
            if member is not None:
                out.append(_go_string(str(member)) + (": " if indent is not None else ":"))
            _emit(item, indent, prefix, depth + 1, out)
        if indent is not None:
            out.append("\n" + prefix + indent * depth)
        out.append(closing)
    else:
        # Floats would need Go's number formatting; manifests never carry them.
        raise TypeError(f"cannot encode {type(value).__name__} as manifest JSON")


_GO_ESCAPES: Final = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _go_string(text: str) -> str:
    # Go escapes <, > and & (HTML safety) and U+2028/U+2029, writes other control characters
    # as \u00XX (lower-case hex), leaves the rest of Unicode as UTF-8, and replaces invalid
    # code points (here: lone surrogates) with \ufffd.
    parts = ['"']
    for char in text:
        code = ord(char)
        if char in _GO_ESCAPES:
            parts.append(_GO_ESCAPES[char])
        elif code < 0x20 or char in "<>&\u2028\u2029":
            parts.append(f"\\u{code:04x}")
        elif 0xD800 <= code <= 0xDFFF:
            parts.append("\\ufffd")
        else:
            parts.append(char)
    parts.append('"')
    return "".join(parts)


# --- base64url ------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    """JOSE base64url: padding optional (libtrust accepts both), nothing else tolerated."""
    if not _B64URL.fullmatch(text) or ("=" in text and len(text) % 4) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error:
        raise ValueError("not base64url") from None
