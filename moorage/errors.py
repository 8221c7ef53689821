"""Registry errors, as data.

Domain code raises these; each protocol renders them in its own dialect (v2: the
`{"errors": [...]}` JSON of the OCI spec). Nothing else builds error bodies.

    RegistryError                      code, HTTP status, message, detail
    ├── BlobUnknown                    404 BLOB_UNKNOWN
    ├── BlobUploadInvalid              404 BLOB_UPLOAD_INVALID
    ├── BlobUploadUnknown              404 BLOB_UPLOAD_UNKNOWN
    ├── DigestInvalid                  400 DIGEST_INVALID
    ├── ManifestBlobUnknown            400 MANIFEST_BLOB_UNKNOWN
    ├── ManifestInvalid                400 MANIFEST_INVALID
    │   └── ManifestTooLarge           413 MANIFEST_INVALID
    ├── ManifestUnknown                404 MANIFEST_UNKNOWN
    ├── ManifestUnverified             400 MANIFEST_UNVERIFIED
    ├── NameInvalid                    400 NAME_INVALID
    ├── NameUnknown                    404 NAME_UNKNOWN
    ├── SizeInvalid                    400 SIZE_INVALID
    ├── TagInvalid                     400 TAG_INVALID
    ├── PaginationNumberInvalid        400 PAGINATION_NUMBER_INVALID
    ├── RangeInvalid                   416 BLOB_UPLOAD_INVALID (upload offset problems)
    ├── Unauthorized                   401 UNAUTHORIZED
    ├── Denied                         403 DENIED
    ├── Unsupported                    405 UNSUPPORTED
    │   └── ReadOnly                   405 UNSUPPORTED (a write in read-only mode)
    ├── TooManyRequests                429 TOOMANYREQUESTS
    ├── Unavailable                    503 UNAVAILABLE
    └── StorageFull                    507 STORAGE_FULL (no space left for blobs or metadata)

Several errors can travel together (one MANIFEST_BLOB_UNKNOWN per missing blob): raise an
`ErrorGroup`-like `RegistryErrors` holding them.

`StorageFull` is Moorage's own code (the spec lets a registry add codes). It answers 507
Insufficient Storage rather than 500 or 503: docker and podman show only the status line of a
5xx answer, and "507 Insufficient Storage" names the problem where "500 Internal Server Error"
or "503 Service Unavailable" do not; a 5xx also tells clients not to retry at once. The storage
driver and the metadata store raise it themselves (`moorage.storage.StorageFull` is one), so
every protocol renders it without each caller translating it.
"""

from __future__ import annotations

from typing import Any


class RegistryError(Exception):
    code: str = "UNKNOWN"
    status: int = 500
    default_message: str = "unknown error"

    def __init__(self, message: str | None = None, detail: Any = None) -> None:
        self.message = message or self.default_message
        self.detail = detail
        # Extra response headers a protocol should send with this error (e.g. Allow).
        self.headers: dict[str, str] = {}
        super().__init__(self.message)

    def as_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            entry["detail"] = self.detail
        return entry


class RegistryErrors(RegistryError):
    """Several errors answered together; the status is that of the first."""

    def __init__(self, errors: list[RegistryError]) -> None:
        assert errors
        self.errors = errors
        super().__init__(errors[0].message, errors[0].detail)
        self.code = errors[0].code
        self.status = errors[0].status


class BlobUnknown(RegistryError):
    code, status, default_message = "BLOB_UNKNOWN", 404, "blob unknown to registry"


class BlobUploadInvalid(RegistryError):
    code, status, default_message = "BLOB_UPLOAD_INVALID", 404, "blob upload invalid"


class BodyMalformed(RegistryError):
    """A request body's framing (chunked transfer-encoding) is malformed."""

    code, status, default_message = "BLOB_UPLOAD_INVALID", 400, "malformed request body"


class BlobUploadUnknown(RegistryError):
    code, status, default_message = "BLOB_UPLOAD_UNKNOWN", 404, "blob upload unknown to registry"


class DigestInvalid(RegistryError):
    code, status = "DIGEST_INVALID", 400
    default_message = "provided digest did not match uploaded content"


class ManifestBlobUnknown(RegistryError):
    code, status, default_message = "MANIFEST_BLOB_UNKNOWN", 400, "blob unknown to registry"


class ManifestInvalid(RegistryError):
    code, status, default_message = "MANIFEST_INVALID", 400, "manifest invalid"


class ManifestTooLarge(ManifestInvalid):
    status, default_message = 413, "manifest too large"


class ManifestUnknown(RegistryError):
    code, status, default_message = "MANIFEST_UNKNOWN", 404, "manifest unknown"


class ManifestUnverified(RegistryError):
    code, status = "MANIFEST_UNVERIFIED", 400
    default_message = "manifest failed signature verification"


class NameInvalid(RegistryError):
    code, status, default_message = "NAME_INVALID", 400, "invalid repository name"


class NameUnknown(RegistryError):
    code, status, default_message = "NAME_UNKNOWN", 404, "repository name not known to registry"


class SizeInvalid(RegistryError):
    code, status, default_message = "SIZE_INVALID", 400, "provided length did not match content"


class TagInvalid(RegistryError):
    code, status, default_message = "TAG_INVALID", 400, "manifest tag did not match URI"


class PaginationNumberInvalid(RegistryError):
    code, status = "PAGINATION_NUMBER_INVALID", 400
    default_message = "invalid number of results requested"


class RangeInvalid(RegistryError):
    """Upload offset problem: answered 416 with the session's current Range."""

    code, status, default_message = "BLOB_UPLOAD_INVALID", 416, "invalid content range"


class Unauthorized(RegistryError):
    code, status, default_message = "UNAUTHORIZED", 401, "authentication required"


class Denied(RegistryError):
    code, status, default_message = "DENIED", 403, "requested access to the resource is denied"


class Unsupported(RegistryError):
    code, status, default_message = "UNSUPPORTED", 405, "the operation is unsupported"


class ReadOnly(Unsupported):
    """A write while the registry is in read-only mode (`maintenance.readonly.enabled`)."""

    default_message = "registry is in read-only mode"


class TooManyRequests(RegistryError):
    code, status, default_message = "TOOMANYREQUESTS", 429, "too many requests"


class Unavailable(RegistryError):
    code, status, default_message = "UNAVAILABLE", 503, "service unavailable"


class StorageFull(RegistryError):
    """The disk (or quota) holding blobs or metadata has no space left."""

    code, status = "STORAGE_FULL", 507
    default_message = "storage full: the registry has no space left"
