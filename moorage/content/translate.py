"""Pure translation between the v1 image model and v2 image manifests.

Three conversions, each a pure function of its arguments, so the same input always gives the
same bytes and therefore the same digests and ids:

- `v1_to_v2`: a v1 ancestry -> Docker schema 2 config and manifest (built when a v1 tag is set).
- `v2_to_v1`: an image manifest and its config -> v1 images with deterministic ids (what a v1
  pull of v2-pushed content serves).
- `schema1_from_v2`: an image manifest and its config -> the unsigned schema 1 payload that
  Distribution 2.x serves to clients that cannot take schema 2.

This module must not do I/O of any kind (storage, database, clock, randomness), persist the
v1 <-> v2 id mapping, decide access, or sign: those belong to the content layer and to
`moorage.content.schema1`. Malformed input raises `TranslationError` (a ValueError).
See docs/design/v1-v2-translation.md for the mappings, the id recipe and what is lost.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, TypeGuard

from moorage.content import digest as digests
from moorage.content import jsondoc, schema1
from moorage.content.manifests import DOCKER_MANIFEST

DOCKER_CONFIG: Final = "application/vnd.docker.container.image.v1+json"
OCI_CONFIG: Final = "application/vnd.oci.image.config.v1+json"
DOCKER_LAYER_GZIP: Final = "application/vnd.docker.image.rootfs.diff.tar.gzip"
# distribution's schema2.MediaTypeUncompressedLayer: Docker has its own uncompressed type, so a
# v1 image with a plain-tar layer still fits a Docker schema 2 manifest.
DOCKER_LAYER_TAR: Final = "application/vnd.docker.image.rootfs.diff.tar"
OCI_LAYER_TAR: Final = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP: Final = "application/vnd.oci.image.layer.v1.tar+gzip"

CONFIG_TYPES: Final = frozenset({DOCKER_CONFIG, OCI_CONFIG})
# Layers a v1 client can unpack and the registry holds. Old Docker sniffs gzip, bzip2 and xz but
# not zstd; foreign and non-distributable layers usually live elsewhere.
V1_LAYER_TYPES: Final = frozenset(
    {DOCKER_LAYER_GZIP, DOCKER_LAYER_TAR, OCI_LAYER_TAR, OCI_LAYER_GZIP}
)

# The 32-byte gzip of an empty tar (1024 zero bytes), as Distribution writes it for the
# throwaway entries of schema 1 manifests. A schema 1 payload that names it needs this blob
# to be servable; the content layer stores it (it is not in any v2 manifest).
EMPTY_LAYER: Final = bytes.fromhex(
    "1f8b0800 00096e88 00ff6218 05a36014 8c580008 0000ffff 2eafb5ef 00040000"
)
EMPTY_LAYER_DIGEST: Final = (
    "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4"
)

# Keys of a v1 image JSON that have no place in a v2 config: Docker's list
# (moby image/v1 MakeConfigFromV1Config) plus the Docker 1.4 layer checksum.
V1_ONLY_KEYS: Final = ("id", "parent", "Size", "parent_id", "layer_id", "throwaway", "checksum")
# Keys of a v2 config that have no place in a v1 image JSON (or that the translation sets).
V2_ONLY_KEYS: Final = ("rootfs", "history", "id", "parent", "throwaway")

# Old v1 images may lack platform fields; v2 clients match a single manifest's config against
# their platform, and v1 registries only ever served linux/amd64 in practice.
DEFAULT_PLATFORM: Final = (("architecture", "amd64"), ("os", "linux"))

# What Go writes for a zero time.Time; Distribution's schema 1 entries always carry "created".
GO_ZERO_TIME: Final = "0001-01-01T00:00:00Z"
# Domain separation: our v1 ids can never equal a hash of the same bytes made for another use.
_ID_DOMAIN: Final = "moorage v1 id 1"

_IMAGE_ID = re.compile(r"[0-9a-f]{64}")


class TranslationError(ValueError):
    """The input cannot be translated (malformed, inconsistent, or without a v1 form)."""


@dataclass(frozen=True)
class V1Layer:
    """One v1 image as stored after a v1 push."""

    id: str  # 64 hex
    json: bytes  # the image JSON exactly as pushed
    blob_digest: str  # digest of the layer bytes as pushed (the v2 blob)
    size: int  # layer byte length
    diff_id: str  # sha256 of the uncompressed tar
    compressed: bool  # gzip (True) or plain tar (False)


@dataclass(frozen=True)
class BuiltImage:
    """A v2 image made from a v1 ancestry; the bytes are what gets stored and served."""

    config: bytes
    config_digest: str
    manifest: bytes  # Docker schema 2
    manifest_digest: str


@dataclass(frozen=True)
class DerivedV1:
    """One v1 image derived from v2 content."""

    id: str
    parent: str | None
    json: bytes
    blob_digest: str
    size: int


@dataclass(frozen=True)
class _Layer:
    digest: str
    size: int


# --- v1 -> v2 -------------------------------------------------------------------------------


def v1_to_v2(ancestry: Sequence[V1Layer]) -> BuiltImage:
    """Build the v2 config and Docker schema 2 manifest for a v1 image (ancestry root first).

    The config is the top image's JSON without the v1-only keys, plus `rootfs` and `history`,
    as Docker converts v1 images; every other member keeps its value as pushed (compacted).
    """
    if not ancestry:
        raise TranslationError("empty ancestry")
    documents = [_check_v1_layer(layer, i, ancestry) for i, layer in enumerate(ancestry)]

    members = _members(ancestry[-1].json, "top image JSON")
    for key in V1_ONLY_KEYS:
        members.pop(key, None)
    for key, default in DEFAULT_PLATFORM:
        if documents[-1].get(key) in (None, ""):
            members[key] = _encode(default)
    members["rootfs"] = _encode({"type": "layers", "diff_ids": [x.diff_id for x in ancestry]})
    members["history"] = _encode([_history_from_v1(document) for document in documents])
    config = _object(members)
    config_digest = digests.of(config)

    manifest = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG, "size": len(config), "digest": config_digest},
        "layers": [
            {
                "mediaType": DOCKER_LAYER_GZIP if layer.compressed else DOCKER_LAYER_TAR,
                "size": layer.size,
                "digest": layer.blob_digest,
            }
            for layer in ancestry
        ],
    }
    manifest_bytes = _encode(manifest).encode("utf-8")
    return BuiltImage(config, config_digest, manifest_bytes, digests.of(manifest_bytes))


def _check_v1_layer(layer: V1Layer, index: int, ancestry: Sequence[V1Layer]) -> dict[str, Any]:
    where = f"ancestry[{index}]"
    if not _IMAGE_ID.fullmatch(layer.id):
        raise TranslationError(f"{where}: image id is not 64 lowercase hex")
    document = _load_object(layer.json, f"{where} JSON")
    if document.get("id") != layer.id:
        raise TranslationError(f"{where}: JSON id does not match the image id")
    # Catches an ancestry handed over top first, or with a gap: the manifest would be wrong.
    expected_parent = ancestry[index - 1].id if index else None
    if (document.get("parent") or None) != expected_parent:
        raise TranslationError(f"{where}: parent does not match the ancestry (root first)")
    for what, value in (("blob_digest", layer.blob_digest), ("diff_id", layer.diff_id)):
        if not digests.is_valid(value):
            raise TranslationError(f"{where}: {what} is not a valid digest")
    if not _is_size(layer.size):
        raise TranslationError(f"{where}: size must be a non-negative integer")
    return document


def _history_from_v1(document: Mapping[str, Any]) -> dict[str, str]:
    # Field order is Docker's image.History; empty fields are left out.
    fields = (
        ("created", _go_time(document.get("created"))),
        ("author", _string(document.get("author"))),
        ("created_by", _command(document.get("container_config"))),
        ("comment", _string(document.get("comment"))),
    )
    return {name: value for name, value in fields if value}


def _command(container_config: Any) -> str:
    if not isinstance(container_config, dict):
        return ""
    cmd = container_config.get("Cmd")
    if isinstance(cmd, list):
        return " ".join(part for part in cmd if isinstance(part, str))
    return cmd if isinstance(cmd, str) else ""


# --- v2 -> v1 -------------------------------------------------------------------------------


def v2_to_v1(manifest: Mapping[str, Any], config: bytes) -> list[DerivedV1]:
    """Derive one v1 image per layer of an image manifest, root first.

    Ids are deterministic (see `_v1_id`): lower images depend only on their chain, so images
    built on the same base share them; the top one also depends on the config digest.
    Empty-layer history entries are dropped (their effect is in the top image's config).
    """
    config_digest, layers = _image(manifest, config)
    document = _load_object(config, "config")
    diff_ids = _diff_ids(document, len(layers))
    history = _layer_history(document, len(layers))
    top_members = _members(config, "config")
    for key in V2_ONLY_KEYS:
        top_members.pop(key, None)

    images: list[DerivedV1] = []
    parent: str | None = None
    for i, (layer, diff_id, entry) in enumerate(zip(layers, diff_ids, history, strict=True)):
        is_top = i == len(layers) - 1
        fields: dict[str, str] = {}
        if parent is not None:
            fields["parent"] = _encode(parent)
        created = _go_time(entry.get("created"))
        if created:
            fields["created"] = _encode(created)
        for key in ("author", "comment"):
            value = _string(entry.get(key))
            if value:
                fields[key] = _encode(value)
        created_by = _string(entry.get("created_by"))
        if created_by:
            fields["container_config"] = _encode({"Cmd": [created_by]})
        if is_top:
            # As Docker's own v1 view of an image: the whole config; its created, author and
            # container_config win over the top history entry's.
            fields.update(top_members)
        image_id = _v1_id(layer, diff_id, config_digest if is_top else "", fields)
        text = _object({**fields, "id": _encode(image_id)})
        images.append(DerivedV1(image_id, parent, text, layer.digest, layer.size))
        parent = image_id
    return images


def _v1_id(layer: _Layer, diff_id: str, config_digest: str, fields: Mapping[str, str]) -> str:
    """sha256 over the domain tag, layer digest, diff_id, config digest (top only, else empty)
    and the image's JSON without `id`, newline-separated.

    The JSON holds the parent id and the layer's history, so an id names exactly one
    (JSON, layer) pair: two images that would serve different bytes never share an id.
    """
    recipe = "\n".join((_ID_DOMAIN, layer.digest, diff_id, config_digest)) + "\n"
    return hashlib.sha256(recipe.encode("utf-8") + _object(fields)).hexdigest()


def _layer_history(document: Mapping[str, Any], count: int) -> list[dict[str, Any]]:
    """The history entry of each layer (root first): the non-empty entries, in order.

    When they do not pair up one to one with the layers, no attribution is better than a
    wrong one, so every layer gets an empty entry.
    """
    real = [entry for entry in _history(document) if entry.get("empty_layer") is not True]
    return real if len(real) == count else [{} for _ in range(count)]


# --- v2 -> schema 1 -------------------------------------------------------------------------


def schema1_from_v2(name: str, tag: str, manifest: Mapping[str, Any], config: bytes) -> bytes:
    """The unsigned schema 1 payload for an image manifest, ready for `schema1.sign`.

    Follows Distribution 2.x (manifest/schema1/config_builder.go) byte for byte: one entry per
    history entry, top first; empty layers become throwaway entries on the empty gzip tar;
    ids are sha256(blob hex + " " + parent id), and the top one also covers the config bytes;
    the top v1Compatibility is the config without rootfs and history.
    """
    _, layers = _image(manifest, config)
    document = _load_object(config, "config")
    if isinstance(document.get("rootfs"), dict) and document["rootfs"].get("base_layer"):
        raise TranslationError("images with a Windows base layer have no schema 1 form here")
    _diff_ids(document, len(layers))
    history = _schema1_history(document, len(layers))

    blob_sums: list[str] = []
    entries: list[str] = []
    parent = ""
    remaining = iter(layers)
    for entry in history[:-1]:
        empty = entry.get("empty_layer") is True
        blob_sum = EMPTY_LAYER_DIGEST if empty else next(remaining).digest
        v1_id = hashlib.sha256(f"{_encoded(blob_sum)} {parent}".encode()).hexdigest()
        # Field order and omissions are those of Distribution's v1Compatibility struct.
        compat: dict[str, Any] = {"id": v1_id}
        if parent:
            compat["parent"] = parent
        if _string(entry.get("comment")):
            compat["comment"] = entry["comment"]
        compat["created"] = _go_time(entry.get("created")) or GO_ZERO_TIME
        compat["container_config"] = {"Cmd": [_string(entry.get("created_by"))]}
        if _string(entry.get("author")):
            compat["author"] = entry["author"]
        if empty:
            compat["throwaway"] = True
        blob_sums.append(blob_sum)
        entries.append(_encode(compat))
        parent = v1_id

    last = history[-1]
    empty = last.get("empty_layer") is True
    blob_sum = EMPTY_LAYER_DIGEST if empty else next(remaining).digest
    seed = f"{_encoded(blob_sum)} {parent} ".encode()
    top = _members(config, "config")
    for key in ("rootfs", "history"):
        top.pop(key, None)
    top["id"] = _encode(hashlib.sha256(seed + config).hexdigest())
    if parent:
        top["parent"] = _encode(parent)
    if empty:
        top["throwaway"] = "true"
    blob_sums.append(blob_sum)
    entries.append(_object(top).decode("utf-8"))

    architecture = _string(document.get("architecture"))
    return schema1.build_payload(name, tag, architecture, blob_sums[::-1], entries[::-1])


def _schema1_history(document: Mapping[str, Any], count: int) -> list[dict[str, Any]]:
    """All history entries, or one blank entry per layer when the history is missing or its
    non-empty entries do not pair up with the layers (Distribution refuses those images)."""
    entries = _history(document)
    real = sum(1 for entry in entries if entry.get("empty_layer") is not True)
    return entries if entries and real == count else [{} for _ in range(count)]


# --- shared input checks --------------------------------------------------------------------


def _image(manifest: Mapping[str, Any], config: bytes) -> tuple[str, list[_Layer]]:
    """Check an image manifest against its config bytes; return the config digest and layers."""
    if not isinstance(manifest, Mapping):
        raise TranslationError("manifest is not an object")
    descriptor = manifest.get("config")
    if not isinstance(descriptor, Mapping) or descriptor.get("mediaType") not in CONFIG_TYPES:
        raise TranslationError("manifest config is not an image config")
    config_digest = descriptor.get("digest")
    if not isinstance(config_digest, str) or not digests.is_valid(config_digest):
        raise TranslationError("manifest config digest is invalid")
    algorithm = config_digest.partition(":")[0]
    if digests.of(config, algorithm) != config_digest:
        raise TranslationError("config bytes do not match the manifest's config digest")
    entries = manifest.get("layers")
    if not isinstance(entries, list) or not entries:
        raise TranslationError("manifest has no layers")
    layers: list[_Layer] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise TranslationError(f"layers[{i}] is not an object")
        if entry.get("mediaType") not in V1_LAYER_TYPES:
            raise TranslationError(f"layers[{i}] has a media type v1 clients cannot unpack")
        digest, size = entry.get("digest"), entry.get("size")
        if not isinstance(digest, str) or not digests.is_valid(digest) or not _is_size(size):
            raise TranslationError(f"layers[{i}] needs a valid digest and size")
        layers.append(_Layer(digest, size))
    return config_digest, layers


def _diff_ids(document: Mapping[str, Any], count: int) -> list[str]:
    rootfs = document.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise TranslationError('config rootfs must be {"type": "layers", ...}')
    diff_ids = rootfs.get("diff_ids")
    if not isinstance(diff_ids, list) or not all(
        isinstance(d, str) and digests.is_valid(d) for d in diff_ids
    ):
        raise TranslationError("config rootfs.diff_ids must be a list of digests")
    if len(diff_ids) != count:
        raise TranslationError("config diff_ids and manifest layers differ in number")
    return diff_ids


def _history(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    history = document.get("history")
    if not isinstance(history, list):
        return []
    return [entry if isinstance(entry, dict) else {} for entry in history]


def _is_size(value: Any) -> TypeGuard[int]:
    # bool is an int in Python but not a JSON number.
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _string(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _encoded(digest: str) -> str:
    return digest.partition(":")[2]


# --- JSON as Go writes it -------------------------------------------------------------------
#
# Every document here is written the way Go's encoding/json writes it, because that is what
# Docker and Distribution write: objects built from parsed input have their keys sorted (Go
# marshals maps sorted), values taken from input are kept as their raw JSON text, compacted
# (as json.RawMessage), and strings escape <, >, & and U+2028/U+2029. So our bytes equal
# Docker's and Distribution's for the same input, and depend on nothing but the input.


def _load_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = jsondoc.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except ValueError as exc:  # JSONInvalid: malformed, not UTF-8, or nested too deep
        raise TranslationError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise TranslationError(f"{what} is not a JSON object")
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant)


def _members(data: bytes, what: str) -> dict[str, str]:
    """The members of a JSON object as raw JSON value text, Go-compacted (last duplicate wins).

    Keeping the text rather than re-encoding parsed values preserves numbers (1.50, 1e3,
    huge integers) and escapes exactly as they were written.
    """
    _load_object(data, what)  # full validation first: the scan below assumes valid JSON
    text = data.decode("utf-8")
    members: dict[str, str] = {}
    pos = _skip(text, _skip(text, 0) + 1)  # past "{"
    while text[pos] != "}":
        key, pos = _DECODER.raw_decode(text, pos)
        start = _skip(text, _skip(text, pos) + 1)  # past ":"
        _, pos = _DECODER.raw_decode(text, start)
        # Go decodes the key (invalid surrogates become U+FFFD) before re-encoding it.
        members[_SURROGATE.sub("\ufffd", key)] = _go_compact(text[start:pos])
        pos = _skip(text, pos)
        if text[pos] == ",":
            pos = _skip(text, pos + 1)
    return members


def _skip(text: str, pos: int) -> int:
    """The position of the first non-whitespace character at or after pos."""
    while text[pos] in " \t\n\r":
        pos += 1
    return pos


def _object(members: Mapping[str, str]) -> bytes:
    """A JSON object from key -> encoded value text, keys sorted as Go sorts map keys."""
    body = ",".join(f"{_encode(key)}:{members[key]}" for key in sorted(members))
    return ("{" + body + "}").encode("utf-8")


def _encode(value: Any) -> str:
    """Compact JSON for a value built here (dicts keep their insertion order)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return _go_compact(text)


_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[ \t\n\r]+', re.DOTALL)
_SURROGATE = re.compile("[\ud800-\udfff]")
_GO_ESCAPE = re.compile("[<>&\u2028\u2029\ud800-\udfff]")


def _go_compact(text: str) -> str:
    """Go's json.Compact with HTML escaping, applied to valid JSON text."""
    return _TOKEN.sub(_compact_token, text)


def _compact_token(match: re.Match[str]) -> str:
    token = match.group()
    if token[0] != '"':
        return ""  # whitespace between tokens
    return _GO_ESCAPE.sub(_go_escape, token)


def _go_escape(match: re.Match[str]) -> str:
    char = match.group()
    # Lone surrogates (only possible in values built here) are invalid UTF-8 to Go.
    return "\\ufffd" if _SURROGATE.match(char) else f"\\u{ord(char):04x}"


_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})", re.ASCII
)


def _go_time(value: Any) -> str | None:
    """An RFC 3339 timestamp as Go's time.Time writes it back (fraction without trailing
    zeros, at most 9 digits; a zero offset as Z), or None if Go would not parse it."""
    if not isinstance(value, str):
        return None
    match = _RFC3339.fullmatch(value)
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    try:
        datetime(int(year), int(month), int(day), int(hour), int(minute), int(second))
    except ValueError:
        return None
    if zone != "Z":
        if int(zone[1:3]) > 24 or int(zone[4:6]) > 60:  # Go's own bounds
            return None
        if zone[1:] == "00:00":
            zone = "Z"
    digits = (fraction or "")[:9].rstrip("0")
    return f"{year}-{month}-{day}T{hour}:{minute}:{second}{'.' + digits if digits else ''}{zone}"
