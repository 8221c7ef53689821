"""What handlers get from the application: the content layer and the settings."""

from __future__ import annotations

from aiohttp import web

from moorage.auth.access import Identity
from moorage.auth.service import Authenticator
from moorage.auth.v1tokens import V1Tokens
from moorage.config import Settings
from moorage.content.events import Events
from moorage.content.registry import Registry
from moorage.content.v1 import V1Service
from moorage.keys import Sealer

REGISTRY = web.AppKey("registry", Registry)
SETTINGS = web.AppKey("settings", Settings)
AUTH = web.AppKey("auth", Authenticator)
V1 = web.AppKey("v1", V1Service)
V1TOKENS = web.AppKey("v1tokens", V1Tokens)
CURSORS = web.AppKey("cursors", Sealer)
EVENTS = web.AppKey("events", Events)

# Per-request state, resolved once.
IDENTITY = web.RequestKey("identity", Identity)
V2_NAME = web.RequestKey("v2_name", str)
# Set for every request by moorage.api.requestid; sent back as X-Request-Id and logged.
REQUEST_ID = web.RequestKey("request_id", str)


def registry(request: web.Request) -> Registry:
    return request.app[REGISTRY]


def settings(request: web.Request) -> Settings:
    return request.app[SETTINGS]


def request_id(request: web.Request) -> str:
    """The request's id, or "-" before moorage.api.requestid has given it one."""
    value: str = request.get(REQUEST_ID, "-")
    return value
