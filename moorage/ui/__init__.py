"""The web interface: server-rendered pages to browse, search, inspect and delete, in the
registry's own process, with the API's access rules (docs/ui/README.md).

Pages live under `ui.path` ("/" by default) and never take a path the API answers
(`config.UISettings` refuses such a prefix, and with "/" every page has a path of its own
beside /v1, /v2 and the rest, registered after them).
"""

from __future__ import annotations

from aiohttp import web

from moorage import keys
from moorage.api.context import SETTINGS
from moorage.ui import views
from moorage.ui.sessions import Sessions


def setup(app: web.Application, secret: bytes) -> None:
    """Add the pages, if `ui.enabled`. `secret`: the node's secret (the same on every node of
    a deployment sharing `http.secret`), from which the session key is derived."""
    settings = app[SETTINGS]
    if not settings.ui.enabled:
        return
    base = settings.ui.path.rstrip("/") + "/"
    key = keys.derive_secret(secret.hex(), keys.UI_SESSIONS)
    app[views.UI] = views.Pages(base, Sessions(key, base))
    views.add_routes(app, base)
