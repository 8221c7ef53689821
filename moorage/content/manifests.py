"""Manifests: recognise the media type, validate the shape, list what a manifest references.

Every common type is accepted (OCI image manifest and index, Docker schema 2 and manifest
list, Docker schema 1 signed); bytes are kept exactly as pushed. The digest is over those
bytes, except for signed schema 1, whose digest is over the JWS payload.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from moorage.content import digest as digests
from moorage.content import jsondoc
from moorage.errors import ManifestInvalid, ManifestTooLarge

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"

IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
SCHEMA1_TYPES = frozenset({SCHEMA1_SIGNED, SCHEMA1})
SUPPORTED = IMAGE_TYPES | INDEX_TYPES | SCHEMA1_TYPES


@dataclass(frozen=True, slots=True)
class Manifest:
    media_type: str
    content: bytes
    # The bytes the digest is computed over (the JWS payload for signed schema 1).
    payload: bytes
    blobs: list[str] = field(default_factory=list)
    manifests: list[str] = field(default_factory=list)
    subject: str | None = None
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None
    schema1_name: str | None = None
    schema1_tag: str | None = None

    def digest(self, algorithm: str = "sha256") -> str:
        return digests.of(self.payload, algorithm)

    @property
    def references(self) -> list[str]:
        return [*self.blobs, *self.manifests]


def _invalid(message: str, **detail: Any) -> ManifestInvalid:
    return ManifestInvalid(message, detail or None)


def _descriptor(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _invalid("descriptor is not an object", field=where)
    if not isinstance(value.get("mediaType"), str):
        raise _invalid("descriptor has no mediaType", field=where)
    digest = value.get("digest")
    if not isinstance(digest, str) or not digests.is_valid(digest):
        raise _invalid("descriptor digest is invalid", field=where, digest=digest)
    size = value.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _invalid("descriptor size is invalid", field=where)
    urls = value.get("urls")
    if urls is not None and not (isinstance(urls, list) and all(isinstance(u, str) for u in urls)):
        raise _invalid("descriptor urls must be a list of strings", field=where)
    return value


def _descriptors(document: dict[str, Any], key: str) -> list[dict[str, Any]]:
    items = document.get(key)
    if not isinstance(items, list):
        raise _invalid(f"{key} must be an array", field=key)
    return [_descriptor(item, f"{key}[{i}]") for i, item in enumerate(items)]


def _annotations(document: dict[str, Any]) -> dict[str, str] | None:
    value = document.get("annotations")
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise _invalid("annotations must map strings to strings", field="annotations")
    return value


def _media_type(document: dict[str, Any], content_type: str | None) -> str:
    declared = content_type.split(";", 1)[0].strip().lower() if content_type else ""
    in_body = document.get("mediaType")
    if in_body is not None and not isinstance(in_body, str):
        raise _invalid("mediaType must be a string", field="mediaType")
    if declared in ("", "application/json"):
        if in_body:
            media_type = in_body
        elif document.get("schemaVersion") == 1:
            media_type = SCHEMA1_SIGNED if "signatures" in document else SCHEMA1
        elif "manifests" in document:
            media_type = OCI_INDEX
        elif "config" in document:
            media_type = OCI_MANIFEST
        else:
            raise _invalid("cannot tell the manifest media type")
    else:
        if in_body and in_body != declared:
            raise _invalid(
                "mediaType does not match Content-Type", mediaType=in_body, contentType=declared
            )
        media_type = declared
    if media_type not in SUPPORTED:
        raise _invalid(
            "unsupported manifest media type", mediaType=media_type, supported=sorted(SUPPORTED)
        )
    return media_type


def parse(content: bytes, content_type: str | None, max_size: int, schema1: bool) -> Manifest:
    """Validate a pushed manifest; raise ManifestInvalid (or ManifestUnverified) if it is not."""
    if len(content) > max_size:
        raise ManifestTooLarge(detail={"limit": max_size})
    try:
        document = jsondoc.loads(content)
    except jsondoc.JSONInvalid as exc:
        raise _invalid("manifest is not valid JSON", error=str(exc)) from exc
    if not isinstance(document, dict):
        raise _invalid("manifest is not a JSON object")
    if "schemaVersion" not in document:
        raise _invalid("schemaVersion missing")
    media_type = _media_type(document, content_type)
    if media_type in SCHEMA1_TYPES:
        if not schema1:
            raise _invalid("schema1 not supported", mediaType=media_type)
        return _schema1(content, document, media_type)
    if document.get("schemaVersion") != 2:
        raise _invalid("schemaVersion must be 2", schemaVersion=document.get("schemaVersion"))
    subject = document.get("subject")
    subject_digest = _descriptor(subject, "subject")["digest"] if subject is not None else None
    artifact_type = document.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise _invalid("artifactType must be a string", field="artifactType")
    annotations = _annotations(document)
    if media_type in IMAGE_TYPES:
        if "manifests" in document:
            raise _invalid("an image manifest cannot have manifests", field="manifests")
        config = _descriptor(document.get("config"), "config")
        layers = _descriptors(document, "layers")
        blobs = [config["digest"]] + [layer["digest"] for layer in layers if not layer.get("urls")]
        return Manifest(
            media_type,
            content,
            content,
            blobs=list(dict.fromkeys(blobs)),
            subject=subject_digest,
            artifact_type=artifact_type or config["mediaType"],
            annotations=annotations,
        )
    if "config" in document or "layers" in document:
        raise _invalid("an index cannot have config or layers")
    children = _descriptors(document, "manifests")
    return Manifest(
        media_type,
        content,
        content,
        manifests=list(dict.fromkeys(child["digest"] for child in children)),
        subject=subject_digest,
        artifact_type=artifact_type,
        annotations=annotations,
    )


def _schema1(content: bytes, document: dict[str, Any], media_type: str) -> Manifest:
    from moorage.content import schema1

    if media_type == SCHEMA1 and "signatures" not in document:
        layers = document.get("fsLayers")
        if not isinstance(layers, list) or not all(
            isinstance(x, dict) and isinstance(x.get("blobSum"), str) for x in layers
        ):
            raise _invalid("fsLayers must list blobSum digests", field="fsLayers")
        payload, blob_sums = content, [x["blobSum"] for x in layers]
        name, tag = document.get("name"), document.get("tag")
    else:
        verified = schema1.verify(content)
        payload, blob_sums = verified.payload, verified.blob_sums
        name, tag = verified.name, verified.tag
    for blob_sum in blob_sums:
        if not digests.is_valid(blob_sum):
            raise _invalid("fsLayers blobSum is invalid", digest=blob_sum)
    return Manifest(
        media_type,
        content,
        payload,
        blobs=list(dict.fromkeys(blob_sums)),
        schema1_name=name if isinstance(name, str) else None,
        schema1_tag=tag if isinstance(tag, str) else None,
    )


def referrer_descriptor(
    media_type: str,
    digest: str,
    size: int,
    artifact_type: str | None,
    annotations: dict[str, str] | None,
) -> dict[str, Any]:
    entry: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": size}
    if artifact_type:
        entry["artifactType"] = artifact_type
    if annotations:
        entry["annotations"] = annotations
    return entry
