"""The pages: one handler each, rendering a jinja2 template (autoescaped: every string a user
or a manifest supplied is escaped) with the security headers every page carries.

Who is asking comes from the session cookie (`sessions.py`); what they may see and do is the
API's answer for the same user (`Policy.allowed`): a repository they may not pull does not
exist here either (404, like one that does not exist), and delete buttons appear only where
the API would accept the delete.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from aiohttp import web

from moorage.api.context import AUTH, EVENTS, REGISTRY, REQUEST_ID, SETTINGS
from moorage.api.maintenance import MAINTENANCE
from moorage.api.proxy import client_address, external_base
from moorage.auth.service import BadCredentials, Credentials, RateLimited
from moorage.config import Upstream
from moorage.content import jsondoc, manifests, names
from moorage.content.events import RequestInfo, Target
from moorage.content.registry import CatalogFilter, Registry
from moorage.errors import RegistryError
from moorage.metadata import MetadataStore
from moorage.metadata.browse import TagOrder, format_after, parse_after
from moorage.mirror.client import DOCKER_HUB
from moorage.ui.sessions import Session, Sessions

if TYPE_CHECKING:
    import jinja2

PAGE_SIZE = 50
# Garbage collection cycles listed on the storage page, newest first.
GC_RUNS_SHOWN = 10
# What a page shows of a long list or document, at most: every page stays well under 200 KB.
RAW_LIMIT = 64 * 1024
CONFIG_LIMIT = 1 << 20
# Rows of a list on a page (layers, platforms, history, referrers, labels), and characters of
# a string a manifest or config supplies (a command, a label's value).
LIST_LIMIT = 100
TEXT_LIMIT = 300
# Platforms named in a row of the tags (the manifest's page lists them all).
ROW_PLATFORMS = 8

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


KINDS = {
    manifests.OCI_MANIFEST: "OCI image",
    manifests.OCI_INDEX: "OCI index",
    manifests.DOCKER_MANIFEST: "Docker image",
    manifests.DOCKER_LIST: "Docker manifest list",
    manifests.SCHEMA1_SIGNED: "Docker schema 1",
    manifests.SCHEMA1: "Docker schema 1",
}
# What an image manifest's artifact type is when it is no artifact: its config's media type.
IMAGE_CONFIGS = frozenset(
    {"application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"}
)


def kind(media_type: str, artifact_type: str | None) -> str:
    """What a manifest is, in words: an artifact's type, else the kind of image or index."""
    if artifact_type and artifact_type not in IMAGE_CONFIGS:
        return artifact_type
    return KINDS.get(media_type, media_type)


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
    registry, auth = _registry(request), request.app[AUTH]
    term = request.query.get("q", "").strip()[:255]
    after = request.query.get("after") or None
    policy = auth.policy
    globs: tuple[str, ...] | None = None
    if policy.enabled and not policy.sees_everything(who.user):
        globs = policy.pull_globs(who.user)
    only = None
    if globs is not None or term:

        def visible(name: str) -> bool:
            return "pull" in policy.allowed(who.user, "repository", name)

        only = CatalogFilter(globs if globs is not None else ("*",), visible, contains=term)
    page = await registry.catalog(after, PAGE_SIZE, only)
    rows = await registry.metadata.repository_summaries(page.items)
    following = page.next_last
    next_url = None
    if following is not None:
        query = {"after": following, **({"q": term} if term else {})}
        next_url = "?" + urlencode(query)
    template = "repository_rows.html" if request.query.get("fragment") else "repositories.html"
    return render(
        request, who, template, title="Repositories", rows=rows, term=term, next_url=next_url
    )


# -- a repository ----------------------------------------------------------------------


async def repository(request: web.Request) -> web.Response:
    who = visitor(request)
    name = _repository(request, who, request.match_info["name"])
    if name is None:
        return not_found(request, who, "No such repository.")
    order: TagOrder = "pushed" if request.query.get("sort") == "pushed" else "name"
    after = parse_after(request.query.get("after"), order)
    tags = await _registry(request).metadata.tag_page(
        name, order, after, PAGE_SIZE + 1, expand=manifests.INDEX_TYPES
    )
    if tags is None:
        return not_found(request, who, "No such repository.")
    more = len(tags) > PAGE_SIZE
    tags = tags[:PAGE_SIZE]
    next_url = None
    if more and tags:
        next_url = "?" + urlencode({"sort": order, "after": format_after(tags[-1], order)})
    origins = await _registry(request).metadata.v1_origins(name, [t.digest for t in tags])
    rows = []
    for tag in tags:
        platforms = _platforms(tag.content)
        rows.append(
            {
                "v1": origins.get(tag.digest),
                "tag": tag,
                "kind": kind(tag.media_type, tag.artifact_type),
                "platforms": platforms[:ROW_PLATFORMS],
                "more_platforms": len(platforms) - len(platforms[:ROW_PLATFORMS]),
            }
        )
    host = external_base(request).split("://", 1)[-1]
    return render(
        request,
        who,
        "repository.html",
        title=name,
        name=name,
        rows=rows,
        order=order,
        next_url=next_url,
        host=host,
        deletable=can_delete(request, who.user, name),
        deleted=request.query.get("deleted"),
    )


def _platforms(content: bytes | None) -> list[str]:
    if content is None:
        return []
    try:
        document = jsondoc.loads(content)
    except ValueError:
        return []
    entries = document.get("manifests") if isinstance(document, dict) else None
    found = []
    for entry in _list(entries)[:LIST_LIMIT]:
        platform = entry.get("platform") if isinstance(entry, dict) else None
        if isinstance(platform, dict) and platform.get("os"):
            found.append(_text(_platform_name(platform))[:60])
    return found


def _platform_name(platform: dict[str, Any]) -> str:
    parts = [platform.get("os"), platform.get("architecture"), platform.get("variant")]
    return "/".join(str(p) for p in parts if p)


# -- a manifest --------------------------------------------------------------------------


async def manifest(request: web.Request) -> web.Response:
    who = visitor(request)
    name = _repository(request, who, request.match_info["name"])
    if name is None:
        return not_found(request, who, "No such repository.")
    digest = request.match_info["digest"]
    registry = _registry(request)
    try:
        stored = await registry.get_manifest(name, digest)
    except RegistryError:
        return not_found(request, who, "No such manifest in this repository.")
    try:
        document = jsondoc.loads(stored.content)
    except ValueError:
        document = {}
    if not isinstance(document, dict):
        document = {}
    context: dict[str, Any] = {
        "name": name,
        "digest": stored.digest,
        "media_type": stored.media_type,
        "size": len(stored.content),
        "annotations": _strings(document.get("annotations")),
        "subject": _descriptor(document.get("subject")),
        "artifact_type": _text(document.get("artifactType")),
        "children": [],
        "layers": [],
        "layers_total": 0,
        "history": [],
        "labels": {},
        "hidden": {},
    }
    hidden = context["hidden"]
    if stored.media_type in manifests.INDEX_TYPES:
        children = [d for d in map(_descriptor, _list(document.get("manifests"))) if d]
        hidden["children"] = max(0, len(children) - LIST_LIMIT)
        children = children[:LIST_LIMIT]
        sizes = await registry.metadata.referenced_sizes(name, [c["digest"] for c in children])
        for child in children:
            child["total"] = child["size"] + sizes.get(child["digest"], 0)
        context["children"] = children
    elif stored.media_type in manifests.IMAGE_TYPES:
        layers = [d for d in map(_descriptor, _list(document.get("layers"))) if d]
        context["layers"] = layers[:LIST_LIMIT]
        context["layers_total"] = sum(layer["size"] for layer in layers)
        hidden["layers"] = max(0, len(layers) - LIST_LIMIT)
        config = _descriptor(document.get("config"))
        if config is not None:
            details = await _config(registry, name, config)
            context.update(details)
            _pair_history(context["history"], layers)
            hidden["history"] = max(0, details.get("history_count", 0) - LIST_LIMIT)
            context["history"] = context["history"][:LIST_LIMIT]
    referrers = await registry.referrers(name, stored.digest, None, None)
    found = [d for d in map(_descriptor, referrers.descriptors) if d]
    context["referrers"] = found[:LIST_LIMIT]
    hidden["referrers"] = max(0, len(found) - LIST_LIMIT)
    context["tags"] = await registry.metadata.tag_pushes(name, stored.digest)
    hidden["tags"] = max(0, len(context["tags"]) - LIST_LIMIT)
    context["tags"] = context["tags"][:LIST_LIMIT]
    context["v1"] = (await registry.metadata.v1_origins(name, [stored.digest])).get(stored.digest)
    context["raw"], context["raw_truncated"] = _raw(stored.content)
    context["deletable"] = can_delete(request, who.user, name)
    return render(request, who, "manifest.html", title=f"{name}@{stored.digest}", **context)


def _text(value: Any) -> str:
    """A string from a document, cut to what a page shows."""
    text = "" if value is None else str(value)
    return text if len(text) <= TEXT_LIMIT else text[:TEXT_LIMIT] + "…"


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _strings(value: Any) -> dict[str, str]:
    """The first LIST_LIMIT entries of a map of strings (labels, annotations), cut to size."""
    if not isinstance(value, dict):
        return {}
    return {_text(k): _text(v) for k, v in list(value.items())[:LIST_LIMIT]}


def _descriptor(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, dict) or not isinstance(value.get("digest"), str):
        return None
    size = value.get("size")
    platform = value.get("platform")
    return {
        "digest": _text(value["digest"]),
        "media_type": _text(value.get("mediaType")),
        "size": size if isinstance(size, int) else 0,
        "artifact_type": _text(value.get("artifactType")),
        "platform": _platform_name(platform) if isinstance(platform, dict) else "",
        "annotations": _strings(value.get("annotations")),
    }


async def _config(registry: Registry, name: str, config: dict[str, Any]) -> dict[str, Any]:
    """History, labels and platform from an image's config blob (if not too large to read)."""
    if config["size"] > CONFIG_LIMIT or not config["media_type"].endswith("json"):
        return {}
    try:
        blob = await registry.blobs.get(name, config["digest"])
        data = b"".join([chunk async for chunk in registry.blobs.read(blob, 0, blob.size)])
        document = jsondoc.loads(data)
    except (RegistryError, ValueError, OSError):
        return {}
    if not isinstance(document, dict):
        return {}
    found = document.get("config")
    inner: dict[str, Any] = found if isinstance(found, dict) else {}
    entries = [h for h in _list(document.get("history")) if isinstance(h, dict)]
    history = [
        {
            "created": _text(h.get("created")),
            "created_by": _text(h.get("created_by")),
            "empty": bool(h.get("empty_layer")),
            "comment": _text(h.get("comment")),
            "layer": None,
        }
        for h in entries
    ]
    command = [*_list(inner.get("Entrypoint")), *_list(inner.get("Cmd"))]
    return {
        "history": history,
        "history_count": len(history),
        "labels": _strings(inner.get("Labels")),
        "platform": _text(_platform_name(document)),
        "command": _text(" ".join(str(c) for c in command)),
        "created": _text(document.get("created")),
    }


def _pair_history(history: list[dict[str, Any]], layers: list[dict[str, Any]]) -> None:
    """Each history entry that made a layer gets that layer (they come in the same order)."""
    made = iter(layers)
    for entry in history:
        if not entry["empty"]:
            entry["layer"] = next(made, None)


def _raw(content: bytes) -> tuple[str, bool]:
    try:
        text = json.dumps(json.loads(content), indent=2)
    except ValueError:
        text = content.decode("utf-8", "replace")
    if len(text) > RAW_LIMIT:
        return text[:RAW_LIMIT], True
    return text, False


async def v1_image(request: web.Request) -> web.Response:
    """A v1 image of the repository and its ancestry (self first): what each layer ran."""
    who = visitor(request)
    name = _repository(request, who, request.match_info["name"])
    image_id = request.match_info["id"]
    metadata = _registry(request).metadata
    if name is None or name not in await metadata.v1_repositories_of(image_id):
        return not_found(request, who, "No such v1 image in this repository.")
    chain = []
    for row in (await metadata.v1_ancestry(image_id))[:LIST_LIMIT]:
        try:
            document = jsondoc.loads(row.json)
        except ValueError:
            document = {}
        run = document.get("container_config") if isinstance(document, dict) else None
        command = run.get("Cmd") if isinstance(run, dict) else None
        chain.append(
            {
                "id": row.id,
                "created": _text(document.get("created")) if isinstance(document, dict) else "",
                "command": _text(" ".join(map(str, _list(command)))),
                "size": row.size,
                "uploader": row.uploader,
            }
        )
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
    registry = _registry(request)
    try:
        stored = await registry.get_manifest(name, reference)
    except RegistryError:
        return not_found(request, who, "No such tag or manifest.")
    by_digest = ":" in reference
    tags = await registry.metadata.tags_of(name, stored.digest)
    referrers = await registry.referrers(name, stored.digest, None, None)
    children = 0
    if stored.media_type in manifests.INDEX_TYPES:
        try:
            children = len(jsondoc.loads(stored.content).get("manifests") or [])
        except ValueError:
            children = 0
    return render(
        request,
        who,
        "confirm.html",
        title="Delete",
        name=name,
        reference=reference,
        digest=stored.digest,
        by_digest=by_digest,
        tags=tags,
        other_tags=[t for t in tags if t != reference],
        referrers=[d for d in map(_descriptor, referrers.descriptors) if d],
        children=children,
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
    metadata = _registry(request).metadata
    status = await metadata.storage_status()
    runs = await metadata.gc_runs(GC_RUNS_SHOWN)
    quotas = {q.namespace.strip("/"): q.bytes for q in settings.quotas}
    largest = max((n.size for n in status.namespaces), default=0)
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
        quotas=quotas,
        largest=max(largest, 1),
        total=sum(n.size for n in status.namespaces),
        gc_interval=settings.gc.interval,
        runs=runs,
        upstreams=await _upstreams(metadata, settings.proxy.upstreams),
        now=time.time(),
    )


async def _upstreams(metadata: MetadataStore, upstreams: list[Upstream]) -> list[dict[str, Any]]:
    """Each mirrored upstream with the repositories and bytes cached under its prefix (the
    default upstream's: the names under no other prefix that its `repositories` allow)."""
    if not upstreams:
        return []
    default = next((u for u in upstreams if not u.prefix), None)
    cached = await metadata.usage_under(
        [u.prefix for u in upstreams if u.prefix],
        None if default is None else default.repositories,
        # Docker Hub's `library/x` is `x` here (moorage/mirror/client.py).
        library=default is not None and (urlsplit(default.url).hostname or "") in DOCKER_HUB,
    )
    return [
        {
            "prefix": u.prefix,
            "url": u.url,
            "ttl": u.ttl,
            "repositories": u.repositories,
            "cached": cached.get(u.prefix, (0, 0)),
        }
        for u in sorted(upstreams, key=lambda u: u.prefix)
    ]


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
