"""The pages: one handler each, rendering a jinja2 template (autoescaped: every string a user
or a manifest supplied is escaped) with the security headers every page carries. What a page
shows comes from the content layer (`moorage/content/browse.py`), as the API's answers do.

Who is asking comes from the session cookie (`sessions.py`); what they may see and do is the
API's answer for the same user (`Policy.allowed`): a repository they may not pull does not
exist here either (404, like one that does not exist), and delete buttons appear only where
the API would accept the delete.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from aiohttp import web

from moorage.api.context import AUTH, EVENTS, REGISTRY, REQUEST_ID, SETTINGS
from moorage.api.maintenance import MAINTENANCE
from moorage.api.proxy import client_address, external_base
from moorage.auth.service import BadCredentials, Credentials, RateLimited
from moorage.content import names
from moorage.content.browse import Browse
from moorage.content.events import RequestInfo, Target
from moorage.content.registry import Registry
from moorage.errors import RegistryError
from moorage.mirror.client import DOCKER_HUB
from moorage.ui.sessions import Session, Sessions

if TYPE_CHECKING:
    import jinja2

PAGE_SIZE = 50

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
STATIC_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}


@dataclass
class Pages:
    base: str
    sessions: Sessions

    @functools.cached_property
    def templates(self) -> jinja2.Environment:
        """Made for the first page a worker renders. jinja2 is imported only then: a registry
        that serves no pages (most of them, most of the time) does not carry it, ~2 MiB of
        the process tree (docs/performance.md, issue 14)."""
        import jinja2

        templates = jinja2.Environment(
            loader=jinja2.PackageLoader("moorage.ui", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        templates.filters["size"] = human_size
        templates.filters["when"] = when
        templates.filters["short"] = short_digest
        return templates


UI = web.AppKey("ui", Pages)


def human_size(value: int | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{value} B"


def when(value: float | None) -> str:
    if value is None:
        return "-"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M UTC")


def short_digest(value: str) -> str:
    algorithm, _, hex_ = value.partition(":")
    return f"{algorithm}:{hex_[:12]}" if hex_ else value


# -- who is asking ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Visitor:
    session: Session
    # A session made for this request (its cookie goes out with the response).
    fresh: bool

    @property
    def user(self) -> str | None:
        return self.session.user


def _pages(request: web.Request) -> Pages:
    return request.app[UI]


def _registry(request: web.Request) -> Registry:
    return request.app[REGISTRY]


def _browse(request: web.Request) -> Browse:
    return Browse(request.app[REGISTRY])


def _secure(request: web.Request) -> bool:
    return external_base(request).startswith("https://")


def visitor(request: web.Request) -> Visitor:
    """The request's session, or a new anonymous one. A signed-in user who is no longer in
    the htpasswd file is signed out."""
    pages, auth = _pages(request), request.app[AUTH]
    session = pages.sessions.read(request)
    if session is not None and session.user is not None:
        users = auth.users if auth.enabled else None
        if users is None or session.user not in users.users():
            session = None
    if session is None:
        return Visitor(pages.sessions.new(None), True)
    return Visitor(session, False)


def actions(request: web.Request, user: str | None, repository: str) -> frozenset[str]:
    """What `user` may do to `repository` by the access rules (everything with auth off)."""
    return request.app[AUTH].policy.allowed(user, "repository", repository)


def can_delete(request: web.Request, user: str | None, repository: str) -> bool:
    settings = request.app[SETTINGS]
    return (
        settings.deletes.enabled
        and not request.app[MAINTENANCE].readonly
        and "delete" in actions(request, user, repository)
    )


def _why_not_delete(request: web.Request) -> str:
    if not request.app[SETTINGS].deletes.enabled:
        return "Deleting is turned off on this registry (deletes.enabled)."
    if request.app[MAINTENANCE].readonly:
        return "The registry is read-only for maintenance."
    return "You may not delete in this repository."


def render(
    request: web.Request,
    who: Visitor,
    template: str,
    status: int = 200,
    **context: Any,
) -> web.Response:
    pages = _pages(request)
    auth = request.app[AUTH]
    body = pages.templates.get_template(template).render(
        base=pages.base,
        user=who.user,
        csrf=pages.sessions.csrf(who.session),
        signin=auth.enabled and auth.users is not None,
        **context,
    )
    response = web.Response(
        text=body, status=status, content_type="text/html", charset="utf-8", headers=HEADERS
    )
    if who.fresh:
        pages.sessions.store(response, who.session, _secure(request))
    return response


def not_found(request: web.Request, who: Visitor, what: str) -> web.Response:
    return render(request, who, "error.html", status=404, title="Not found", message=what)


def not_allowed(request: web.Request, who: Visitor) -> web.Response:
    """403 for a delete the visitor may not make, saying why."""
    message = _why_not_delete(request)
    return render(request, who, "error.html", status=403, title="Not allowed", message=message)


def _repository(request: web.Request, who: Visitor, given: str) -> str | None:
    """The repository `given` names (canonical), if it is valid and the visitor may pull it."""
    try:
        name = names.canonical_repository(given)
    except RegistryError:
        return None
    if "pull" not in actions(request, who.user, name):
        return None
    return name


# -- repositories ------------------------------------------------------------------------


async def repositories(request: web.Request) -> web.Response:
    who = visitor(request)
    term = request.query.get("q", "").strip()[:255]
    after = request.query.get("after") or None
    policy = request.app[AUTH].policy
    globs: tuple[str, ...] | None = None
    if policy.enabled and not policy.sees_everything(who.user):
        globs = policy.pull_globs(who.user)

    def visible(name: str) -> bool:
        return "pull" in policy.allowed(who.user, "repository", name)

    page = await _browse(request).repositories(after, PAGE_SIZE, term, globs, visible)
    next_url = None
    if page.following is not None:
        query = {"after": page.following, **({"q": term} if term else {})}
        next_url = "?" + urlencode(query)
    template = "repository_rows.html" if request.query.get("fragment") else "repositories.html"
    return render(
        request, who, template, title="Repositories", rows=page.rows, term=term, next_url=next_url
    )


# -- a repository ----------------------------------------------------------------------


async def repository(request: web.Request) -> web.Response:
    who = visitor(request)
    name = _repository(request, who, request.match_info["name"])
    if name is None:
        return not_found(request, who, "No such repository.")
    page = await _browse(request).tags(
        name, request.query.get("sort"), request.query.get("after"), PAGE_SIZE
    )
    if page is None:
        return not_found(request, who, "No such repository.")
    next_url = None
    if page.following is not None:
        next_url = "?" + urlencode({"sort": page.order, "after": page.following})
    host = external_base(request).split("://", 1)[-1]
    return render(
        request,
        who,
        "repository.html",
        title=name,
        name=name,
        rows=page.rows,
        order=page.order,
        next_url=next_url,
        host=host,
        deletable=can_delete(request, who.user, name),
        deleted=request.query.get("deleted"),
    )


# -- a manifest --------------------------------------------------------------------------


async def manifest(request: web.Request) -> web.Response:
    who = visitor(request)
    name = _repository(request, who, request.match_info["name"])
    if name is None:
        return not_found(request, who, "No such repository.")
    try:
        context = await _browse(request).manifest(name, request.match_info["digest"])
    except RegistryError:
        return not_found(request, who, "No such manifest in this repository.")
    context["deletable"] = can_delete(request, who.user, name)
    return render(request, who, "manifest.html", title=f"{name}@{context['digest']}", **context)


async def v1_image(request: web.Request) -> web.Response:
    """A v1 image of the repository and its ancestry (self first): what each layer ran."""
    who = visitor(request)
    name = _repository(request, who, request.match_info["name"])
    image_id = request.match_info["id"]
    chain = None if name is None else await _browse(request).v1_image(name, image_id)
    if name is None or chain is None:
        return not_found(request, who, "No such v1 image in this repository.")
    return render(
        request,
        who,
        "v1image.html",
        title=f"{name} v1 {image_id[:12]}",
        name=name,
        image_id=image_id,
        chain=chain,
    )


# -- deleting ----------------------------------------------------------------------------


async def confirm_delete(request: web.Request) -> web.Response:
    """What a delete would take with it, and the button that does it."""
    who = visitor(request)
    name = _repository(request, who, request.query.get("repository", ""))
    reference = request.query.get("reference", "")
    if name is None or not reference:
        return not_found(request, who, "No such repository.")
    if not can_delete(request, who.user, name):
        return not_allowed(request, who)
    try:
        preview = await _browse(request).delete_preview(name, reference)
    except RegistryError:
        return not_found(request, who, "No such tag or manifest.")
    return render(
        request,
        who,
        "confirm.html",
        title="Delete",
        name=name,
        reference=reference,
        digest=preview.digest,
        by_digest=":" in reference,
        tags=preview.tags,
        other_tags=[t for t in preview.tags if t != reference],
        referrers=preview.referrers,
        children=preview.children,
    )


async def delete(request: web.Request) -> web.StreamResponse:
    who = visitor(request)
    form = await request.post()
    pages = _pages(request)
    if who.fresh or not pages.sessions.csrf_ok(who.session, str(form.get("csrf", ""))):
        return render(
            request,
            who,
            "error.html",
            status=403,
            title="Refused",
            message="The form had expired; open the page again.",
        )
    name = _repository(request, who, str(form.get("repository", "")))
    reference = str(form.get("reference", ""))
    if name is None or not reference:
        return not_found(request, who, "No such repository.")
    if not can_delete(request, who.user, name):
        return not_allowed(request, who)
    try:
        await _registry(request).delete_manifest(name, reference)
    except RegistryError as exc:
        return render(
            request, who, "error.html", status=exc.status, title="Not deleted", message=exc.message
        )
    await _record_delete(request, who, name, reference)
    target = f"{pages.base}repositories/{name}?" + urlencode({"deleted": reference})
    raise web.HTTPSeeOther(target, headers=HEADERS)


async def _record_delete(request: web.Request, who: Visitor, name: str, reference: str) -> None:
    """The event the API's DELETE of the same manifest or tag records (webhooks), with the
    signed-in user as its actor."""
    events = request.app.get(EVENTS)
    if events is None or not events.wanted("delete"):
        return
    base = external_base(request)
    by_digest = ":" in reference
    target = Target(
        name,
        digest=reference if by_digest else None,
        tag=None if by_digest else reference,
        url=f"{base}/v2/{name}/manifests/{reference}",
    )
    info = RequestInfo(
        id=request.get(REQUEST_ID, ""),
        addr=client_address(request),
        host=base.split("://", 1)[-1],
        method=request.method,
        useragent=request.headers.get("User-Agent", ""),
        actor=who.user,
    )
    await events.record("delete", [target], info)


# -- signing in and out ----------------------------------------------------------------


async def signin_form(request: web.Request) -> web.Response:
    who = visitor(request)
    return render(request, who, "signin.html", title="Sign in", error=None, username="")


async def signin(request: web.Request) -> web.StreamResponse:
    who = visitor(request)
    pages, auth = _pages(request), request.app[AUTH]
    form = await request.post()
    username = str(form.get("username", ""))[:255]
    error = None
    if who.fresh or not pages.sessions.csrf_ok(who.session, str(form.get("csrf", ""))):
        error = "The form had expired; try again."
    elif not auth.enabled or auth.users is None:
        error = "This registry has no users to sign in as."
    else:
        try:
            credentials = Credentials(username, str(form.get("password", "")))
            user = await auth.login(credentials, client_address(request))
        except RateLimited as exc:
            error = f"Too many failed attempts; try again in {exc.retry_after} seconds."
        except BadCredentials:
            error = "Wrong user name or password."
    if error is not None:
        return render(
            request,
            who,
            "signin.html",
            status=401,
            title="Sign in",
            error=error,
            username=username,
        )
    response = web.HTTPSeeOther(pages.base, headers=HEADERS)
    pages.sessions.store(response, pages.sessions.new(user), _secure(request))
    raise response


async def signout(request: web.Request) -> web.StreamResponse:
    who = visitor(request)
    pages = _pages(request)
    form = await request.post()
    response = web.HTTPSeeOther(pages.base, headers=HEADERS)
    if pages.sessions.csrf_ok(who.session, str(form.get("csrf", ""))):
        pages.sessions.store(response, pages.sessions.new(None), _secure(request))
    raise response


# -- storage -----------------------------------------------------------------------------


async def storage(request: web.Request) -> web.Response:
    who = visitor(request)
    auth, settings = request.app[AUTH], request.app[SETTINGS]
    if auth.enabled and not auth.policy.sees_everything(who.user):
        return render(
            request,
            who,
            "error.html",
            status=403,
            title="Not allowed",
            message="Storage usage is shown to administrators (auth.admins).",
        )
    usage = await _browse(request).storage(DOCKER_HUB)
    status = usage.status
    starts = [d.start for d in status.days]
    return render(
        request,
        who,
        "storage.html",
        title="Storage",
        usage=status,
        growth=_bars([d.stored for d in status.days], starts),
        stored=_bars([d.manifests for d in status.days], starts),
        pushes=_bars([d.pushes for d in status.days], starts),
        pulls=_bars([d.pulls for d in status.days], starts),
        pulled=_bars([d.pulled_bytes for d in status.days], starts),
        quotas=usage.quotas,
        largest=usage.largest,
        total=usage.total,
        gc_interval=settings.gc.interval,
        runs=usage.runs,
        upstreams=usage.upstreams,
        now=time.time(),
    )


CHART_HEIGHT = 100
BAR_WIDTH = 12


def _bars(values: list[int], starts: list[float]) -> list[dict[str, Any]]:
    """Bars of a chart drawn as SVG by the template (no script, no inline style): each with
    its place, height and what its tooltip says."""
    top = max(values, default=0) or 1
    bars = []
    for n, (value, start) in enumerate(zip(values, starts, strict=True)):
        height = round(value / top * (CHART_HEIGHT - 4), 1)
        bars.append(
            {
                "x": n * BAR_WIDTH,
                "y": CHART_HEIGHT - height,
                "width": BAR_WIDTH - 2,
                "height": height,
                "day": datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%d"),
                "value": value,
            }
        )
    return bars


# -- static files ----------------------------------------------------------------------


async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["file"]
    kind = STATIC_TYPES.get(name[name.rfind(".") :]) if "." in name else None
    source = resources.files("moorage.ui") / "static" / name
    if kind is None or "/" in name or not source.is_file():
        raise web.HTTPNotFound()
    headers = {**HEADERS, "Cache-Control": "public, max-age=3600"}
    return web.Response(body=source.read_bytes(), content_type=kind, headers=headers)


def add_routes(app: web.Application, base: str) -> None:
    digest = r"{digest:[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+}"
    router = app.router
    # Named for the request metrics (`moorage_http_requests...{route="ui.repository"}`).
    router.add_get(base, repositories, name="ui.repositories")
    if base != "/":
        router.add_get(base.rstrip("/"), _to_base, name="ui.base")
    router.add_get(
        f"{base}repositories/{{name:.+}}/manifests/{digest}", manifest, name="ui.manifest"
    )
    router.add_get(
        base + "repositories/{name:.+}/v1/{id:[0-9a-f]{64}}", v1_image, name="ui.v1image"
    )
    router.add_get(base + "repositories/{name:.+}", repository, name="ui.repository")
    router.add_get(base + "delete", confirm_delete, name="ui.delete")
    router.add_post(base + "delete", delete, name="ui.delete")
    router.add_get(base + "signin", signin_form, name="ui.signin")
    router.add_post(base + "signin", signin, name="ui.signin")
    router.add_post(base + "signout", signout, name="ui.signout")
    router.add_get(base + "storage", storage, name="ui.storage")
    router.add_get(base + "static/{file}", static, name="ui.static")


async def _to_base(request: web.Request) -> web.StreamResponse:
    raise web.HTTPMovedPermanently(_pages(request).base)
