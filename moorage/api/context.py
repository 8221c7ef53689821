"""What handlers get from the application: the content layer and the settings."""

from __future__ import annotations

from aiohttp import web

from moorage.auth.service import Authenticator
from moorage.config import Settings
from moorage.content.registry import Registry

REGISTRY = web.AppKey("registry", Registry)
SETTINGS = web.AppKey("settings", Settings)
AUTH = web.AppKey("auth", Authenticator)


def registry(request: web.Request) -> Registry:
    return request.app[REGISTRY]


def settings(request: web.Request) -> Settings:
    return request.app[SETTINGS]
