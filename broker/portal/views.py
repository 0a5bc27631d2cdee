"""The portal: its routes and sessions, a user's keys and usage, and the admin pages.

Sessions are aiohttp-session encrypted cookies (HttpOnly, SameSite=Lax, Secure when
the public URL is https). Every form that changes state carries the session's CSRF
token (`broker.portal.pages`). Raw keys are shown once, from the session, and then
forgotten. The landing page, and signing in and out, are `broker.portal.signin`.
"""

from __future__ import annotations

import json
import shlex
import time
import warnings
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp_session import Session, session_middleware
from aiohttp_session.cookie_storage import EncryptedCookieStorage
from cryptography.fernet import Fernet

from broker.accounts.change import KeyRevoked, UserChanged
from broker.accounts.records import User
from broker.portal.access import add_access_routes
from broker.portal.connectors import CONNECTOR_PATHS, add_connector_routes
from broker.portal.cookies import SESSION_COOKIE, SESSION_MAX_AGE, session_key
from broker.portal.gitlab import GitLab
from broker.portal.pages import (
    GITLAB,
    TEMPLATES,
    admin_only,
    error_page,
    form_of,
    public_url,
    render,
    signed_in,
    when,
)
from broker.portal.pairing import PAIR_PATHS, add_pairing_routes
from broker.portal.reveals import REVEALS, Reveals
from broker.portal.signin import callback, landing, login, logout
from broker.relay.link import ConnectorLink
from broker.services import SERVICES
from broker.settings import BrokerSettings

log = structlog.get_logger("remotellm.broker.portal")

PORTAL_PATHS = ("/login", "/logout", "/auth/", "/portal", "/admin", "/static/")
MAX_KEYS = 10  # live keys a user may make in the portal (limits are counted per key)
USAGE_DAYS = 30
STATIC_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:;"
        " form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def setup_portal(app: web.Application, settings: BrokerSettings) -> None:
    """Add the portal's routes, templates and session handling to a broker app."""
    secure = (settings.public_url or "").startswith("https://") or settings.tls is not None
    storage = EncryptedCookieStorage(
        Fernet(session_key(settings)),
        cookie_name=SESSION_COOKIE,
        max_age=SESSION_MAX_AGE,
        httponly=True,
        samesite="Lax",
        secure=secure,
    )
    sessions = session_middleware(storage)
    # aiohttp-session stores its state under plain string request keys, which aiohttp
    # warns about on every portal request; the warning is about that library, not us.
    warnings.filterwarnings("ignore", category=web.NotAppKeyWarning, module="aiohttp_session")

    @web.middleware
    async def portal_sessions(request: web.Request, handler: Handler) -> web.StreamResponse:
        # The API never touches sessions: only the portal's pages pay for them.
        portal = request.path in ("/", *PAIR_PATHS) or request.path.startswith(
            (*PORTAL_PATHS, *CONNECTOR_PATHS)
        )
        if not portal:
            return await handler(request)
        response = await sessions(request, handler)
        if not request.path.startswith("/static/"):
            response.headers.update(SECURITY_HEADERS)
        return response

    app.middlewares.append(portal_sessions)
    app[REVEALS] = Reveals()
    if settings.cluster:
        app.cleanup_ctx.append(_shared_reveals)
    app[TEMPLATES] = jinja2.Environment(
        loader=jinja2.PackageLoader("broker.portal", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    app[TEMPLATES].filters["num"] = "{:,}".format
    if settings.gitlab_client_id and settings.gitlab_client_secret:
        app[GITLAB] = GitLab(
            settings.gitlab_url,
            settings.gitlab_client_id,
            settings.gitlab_client_secret.get_secret_value(),
            list(settings.gitlab_allowed_group),
            read_groups=settings.gitlab_read_groups,
        )
    _add_routes(app.router)


async def _shared_reveals(app: web.Application) -> AsyncIterator[None]:
    """Cluster mode: new keys wait in Redis, so whichever broker the browser comes back to
    shows them (once)."""
    from broker.cluster.reveals import RedisReveals

    services = app[SERVICES]
    secret = services.settings.cluster_secret
    assert secret is not None  # required in cluster mode
    app[REVEALS].shared = RedisReveals(services.redis, secret.get_secret_value())
    yield


def _add_routes(add: web.UrlDispatcher) -> None:
    """Route the portal's pages, its sign-in and its static files."""
    add.add_get("/", landing)
    add.add_get("/login", login)
    add.add_get("/auth/callback", callback)
    add.add_post("/logout", logout)
    add.add_get("/portal", home)
    add.add_get("/portal/keys", keys_page)
    add.add_post("/portal/keys", create_key)
    add.add_post("/portal/keys/{key_id:\\d+}/revoke", revoke_key)
    add.add_get("/portal/usage", usage_page)
    add.add_get("/admin", admin_page)
    add.add_post("/admin/users/{user_id:\\d+}/{action:block|unblock}", admin_user)
    add.add_get("/static/{name}", static)
    add_pairing_routes(add)
    add_connector_routes(add)
    add_access_routes(add)


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    suffix = Path(name).suffix
    if suffix not in STATIC_TYPES or "/" in name or name.startswith("."):
        raise web.HTTPNotFound()
    resource = resources.files("broker.portal").joinpath("static", name)
    if not resource.is_file():
        raise web.HTTPNotFound()
    response = web.Response(body=resource.read_bytes(), content_type=STATIC_TYPES[suffix])
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response


# --- a user's pages ----------------------------------------------------------------


def _models_for(request: web.Request, user: User) -> list[str]:
    models = sorted(request.app[SERVICES].hub.models_for(user.id))
    if user.models is not None:
        models = [m for m in models if m in user.models]
    return models


async def home(request: web.Request) -> web.Response:
    signed = await signed_in(request)
    if isinstance(signed, web.Response):
        return signed
    session, user = signed
    new_key = await _revealed(request, session, user)
    models = _models_for(request, user)
    return render(
        request,
        "home.html",
        session=session,
        user=user,
        base_url=public_url(request) + "/v1",
        models=models,
        **_reveal(request, user, new_key),
    )


async def _revealed(request: web.Request, session: Session, user: User) -> str | None:
    nonce = session.pop("reveal", None)
    return await request.app[REVEALS].claim(nonce, user.id) if isinstance(nonce, str) else None


def _reveal(request: web.Request, user: User, new_key: str | None) -> dict[str, Any]:
    """The template values that show a new key once, with examples that work as pasted."""
    if new_key is None:
        return {"new_key": None}
    base = public_url(request) + "/v1"
    models = _models_for(request, user)
    model = models[0] if models else "MODEL"
    payload = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello!"}]})
    # Quoted for the shell and for Python: a model name is never code when pasted.
    curl = (
        f"curl {shlex.quote(base + '/chat/completions')} \\\n"
        f"  -H {shlex.quote('Authorization: Bearer ' + new_key)} \\\n"
        "  -H 'Content-Type: application/json' \\\n"
        f"  -d {shlex.quote(payload)}"
    )
    python = (
        "from openai import OpenAI\n\n"
        f"client = OpenAI(base_url={json.dumps(base)}, api_key={json.dumps(new_key)})\n"
        "reply = client.chat.completions.create(\n"
        f"    model={json.dumps(model)},\n"
        '    messages=[{"role": "user", "content": "Hello!"}],\n'
        ")\n"
        "print(reply.choices[0].message.content)"
    )
    return {
        "new_key": new_key,
        "curl_example": curl,
        "python_example": python,
        "no_model": not models,
    }


async def keys_page(request: web.Request) -> web.Response:
    signed = await signed_in(request)
    if isinstance(signed, web.Response):
        return signed
    session, user = signed
    new_key = await _revealed(request, session, user)
    return render(
        request,
        "keys.html",
        session=session,
        user=user,
        keys=await request.app[SERVICES].store.keys(user.id),
        now=time.time(),
        fmt=when,
        max_keys=MAX_KEYS,
        base_url=public_url(request) + "/v1",
        **_reveal(request, user, new_key),
    )


async def create_key(request: web.Request) -> web.Response:
    signed = await form_of(request)
    if isinstance(signed, web.Response):
        return signed
    session, user = signed
    form = await request.post()
    name = str(form.get("name") or "").strip()[:100] or "unnamed"
    store = request.app[SERVICES].store
    live = [k for k in await store.keys(user.id) if k.usable(time.time())]
    if len(live) >= MAX_KEYS:
        return error_page(
            request,
            400,
            "Too many keys",
            f"You have {len(live)} keys that work; revoke one you no longer use first.",
        )
    raw, key = await store.create_key(user.id, name)
    log.info("key created", username=user.username, record=key.id)
    session["reveal"] = await request.app[REVEALS].keep(user.id, raw)
    raise web.HTTPFound("/portal/keys")


async def revoke_key(request: web.Request) -> web.Response:
    signed = await form_of(request)
    if isinstance(signed, web.Response):
        return signed
    _, user = signed
    key_id = int(request.match_info["key_id"])
    services = request.app[SERVICES]
    if not await services.store.revoke_key(key_id, user_id=user.id):
        return error_page(
            request, 404, "No such key", "This key does not exist or is already revoked."
        )
    await services.changes.made(KeyRevoked(key_id))
    log.info("key revoked", username=user.username, record=key_id)
    raise web.HTTPFound("/portal/keys")


async def usage_page(request: web.Request) -> web.Response:
    signed = await signed_in(request)
    if isinstance(signed, web.Response):
        return signed
    session, user = signed
    since = (time.time() // 86400 - USAGE_DAYS + 1) * 86400
    rows = await request.app[SERVICES].store.usage.by_day_and_model(user.id, since)
    return render(request, "usage.html", session=session, user=user, rows=rows, days=USAGE_DAYS)


# --- admin ---------------------------------------------------------------------------


async def admin_page(request: web.Request) -> web.Response:
    signed = await admin_only(request)
    if isinstance(signed, web.Response):
        return signed
    session, user = signed
    services = request.app[SERVICES]
    store, hub = services.store, services.hub
    tokens = {t.id: t for t in await store.connector_tokens()}
    users = await store.list_users()
    online = []
    for link in hub.links:
        if not isinstance(link, ConnectorLink):
            continue  # attached to another broker of the cluster
        token = tokens.get(link.token_id) if link.token_id is not None else None
        online.append(
            {
                "name": link.name,
                "token": token.name if token else "(configured token)",
                "models": sorted(link.models),
                "in_flight": hub.load(link),
                "max": link.max_concurrency,
                "since": when(link.since),
            }
        )
    since = (time.time() // 86400 - USAGE_DAYS + 1) * 86400
    return render(
        request,
        "admin.html",
        session=session,
        user=user,
        users=users,
        online=online,
        tokens=list(tokens.values()),
        owners={u.id: u.username for u in users},
        by_user=await store.usage.totals("user", since),
        by_model=await store.usage.totals("model", since),
        days=USAGE_DAYS,
        fmt=when,
    )


async def admin_user(request: web.Request) -> web.Response:
    signed = await form_of(request, admin=True)
    if isinstance(signed, web.Response):
        return signed
    _, admin = signed
    user_id = int(request.match_info["user_id"])
    action = request.match_info["action"]
    if user_id == admin.id:
        return error_page(request, 400, "Not yourself", "An admin cannot block their own account.")
    services = request.app[SERVICES]
    store = services.store
    if await store.user(user_id) is None:
        return error_page(request, 404, "No such user", "This user does not exist.")
    await store.set_status(user_id, "blocked" if action == "block" else "active")
    await services.changes.made(UserChanged(user_id))
    log.info(f"user {action}ed", by=admin.username, user_id=user_id)
    raise web.HTTPFound("/admin")
