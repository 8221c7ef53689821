"""Renders v1 refusals in the v1 dialect: a flat `{"error": "<message>"}` (contract 3.5).

One table maps every typed exception a v1 request can end in to its status and message: the
v1 domain's (`moorage.content.v1`), the layer checks', the shared registry errors
(`moorage.errors`, e.g. a manifest parse or a name check inside a tag write), the auth
service's, and the few this layer raises itself. One middleware for `/_ping`, `/v1` and
`/v1/...` renders them; anything not in the table is a 500 with a logged traceback.

Messages are protocol: Docker 1.x tells "Image already exists" from any other refusal by its
exact text, and the login flow reads 401 and the raw 400 body. Handlers raise; none builds an
error body.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler

from moorage.api import http
from moorage.auth.service import RateLimited
from moorage.content import v1
from moorage.content.layers import LayerInvalid, LayerTooLarge
from moorage.errors import NameInvalid, RegistryError, TagInvalid

log = logging.getLogger("moorage.api.v1")

TAG_RULE = "Invalid tag name (must match ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$)"
IMAGE_EXISTS = "Image already exists"  # the client skips the image on exactly this text


# -- refusals of the HTTP layer itself ---------------------------------------------------------


class V1Unauthorized(Exception):
    """401 with a challenge: `Token` on image and tag routes, `Basic realm=...` elsewhere."""

    def __init__(self, challenge: str) -> None:
        super().__init__(challenge)
        self.challenge = challenge


class AccessDenied(Exception):
    """403: authenticated, but not allowed (the same whether or not the target exists)."""


class BodyTooLarge(Exception):
    pass


class NotInPush(Exception):
    """An image upload outside every push session the caller opened (contract 9.3)."""


class UserNotFound(Exception):
    pass


class PasswordTooShort(Exception):
    pass


class EndpointNotFound(Exception):
    pass


class MethodNotAllowed(Exception):
    def __init__(self, allow: list[str]) -> None:
        super().__init__(", ".join(allow))
        self.allow = allow


# -- the table -------------------------------------------------------------------------------

Message = str | Callable[[BaseException], str]


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    message: Message


# Most specific first: the first class the exception is an instance of wins.
TABLE: tuple[tuple[type[BaseException], Answer], ...] = (
    # request and access
    (V1Unauthorized, Answer(401, "Requires authorization")),
    (AccessDenied, Answer(403, "Access denied")),
    (RateLimited, Answer(429, str)),
    (BodyTooLarge, Answer(413, "Request body too large")),
    (EndpointNotFound, Answer(404, "Not found")),
    (MethodNotAllowed, Answer(405, "Method not allowed")),
    (NotInPush, Answer(400, "This image does not belong to the repository")),
    (UserNotFound, Answer(404, "User not found")),
    (PasswordTooShort, Answer(400, "Password too short")),
    (v1.BodyUndecodable, Answer(400, "Error Decoding JSON")),
    (v1.DataInvalid, Answer(400, "Invalid data")),
    # names
    (v1.RepositoryNameInvalid, Answer(400, "Invalid repository name")),
    (NameInvalid, Answer(400, "Invalid repository name")),
    (v1.TagNameInvalid, Answer(400, TAG_RULE)),
    (TagInvalid, Answer(400, TAG_RULE)),
    (v1.RepositoryNotFound, Answer(404, "Repository not found")),
    (v1.TagNotFound, Answer(404, "Tag not found")),
    # images
    (v1.ImageIdInvalid, Answer(404, "Invalid image ID")),
    (v1.ImageNotFound, Answer(404, "Image not found")),
    (v1.ImageExists, Answer(409, IMAGE_EXISTS)),
    (v1.ImageBeingUploaded, Answer(400, "Image is being uploaded, retry later")),
    (v1.ImageJSONTooLarge, Answer(413, "Image JSON too large")),
    (v1.ImageJSONMissingId, Answer(400, "Missing key `id' in JSON")),
    (v1.ImageJSONWrongId, Answer(400, "JSON data contains invalid id")),
    (v1.ImageJSONInvalid, Answer(400, "Invalid JSON")),
    (v1.ParentUnknown, Answer(400, "Image depends on a non existing parent")),
    (v1.ParentUnauthorized, Answer(400, "Image depends on an unauthorized parent")),
    (v1.AncestryTooDeep, Answer(400, "Image ancestry too deep")),
    # Over the configured layer limits (contract section 3: 413, upload discarded).
    (LayerTooLarge, Answer(413, lambda exc: getattr(exc, "message", str(exc)))),
    (LayerInvalid, Answer(400, lambda exc: getattr(exc, "message", str(exc)))),
    (v1.UploadRestarted, Answer(409, "Image upload was restarted")),
    (v1.ChecksumMissing, Answer(400, "Missing Image's checksum")),
    (v1.ChecksumMismatch, Answer(400, "Checksum mismatch")),
    (v1.ChecksumAlreadySet, Answer(409, "Cannot set this image checksum")),
    (v1.LayerNotUploaded, Answer(400, "Image layer not uploaded")),
    (v1.NotTaggable, Answer(400, lambda exc: f"Image cannot be tagged through v1: {exc}")),
)

INTERNAL = Answer(500, "Internal server error")


def answer(exc: BaseException) -> Answer:
    """The status and message for `exc`; INTERNAL when it is not a refusal we know."""
    for kind, found in TABLE:
        if isinstance(exc, kind):
            return found
    if isinstance(exc, RegistryError) and exc.code != "UNKNOWN":
        # A shared registry error met on a v1 path (a manifest check inside a tag write, a
        # storage condition): its own status, its message in the v1 shape.
        return Answer(exc.status, exc.message)
    return INTERNAL


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps({"error": message}).encode(),
        content_type="application/json",
        headers=headers,
    )


def render(exc: BaseException, found: Answer) -> web.Response:
    message = found.message if isinstance(found.message, str) else found.message(exc)
    headers: dict[str, str] = {}
    if isinstance(exc, RegistryError):
        headers.update(exc.headers)
    if isinstance(exc, V1Unauthorized):
        headers["WWW-Authenticate"] = exc.challenge
    if isinstance(exc, MethodNotAllowed):
        headers["Allow"] = ", ".join(exc.allow)
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(exc.retry_after)
    return error_response(found.status, message, headers)


def is_v1(path: str) -> bool:
    return path.startswith("/v1/") or path in ("/v1", "/_ping")


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not is_v1(request.path):
        return await handler(request)
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception as exc:
        if http.client_went_away(request, exc):
            return http.went_away(request, log)
        found = answer(exc)
        if found is INTERNAL:
            http.log_unexpected(request, log)
        else:
            log.debug("request refused", extra={"status": found.status, "path": request.path})
        return render(exc, found)
