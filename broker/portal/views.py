"""The portal's pages: sign-in, a user's keys and usage, and the admin pages.

Sessions are aiohttp-session encrypted cookies (HttpOnly, SameSite=Lax, Secure when
the public URL is https). Every form that changes state carries the session's CSRF
token. Raw keys are shown once, from the session, and then forgotten.
"""

from __future__ import annotations

import hmac
import json
import secrets
import shlex
import time
import warnings
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp.web_exceptions import NotAppKeyWarning
from aiohttp_session import Session, get_session, new_session, session_middleware
from aiohttp_session.cookie_storage import EncryptedCookieStorage
from cryptography.fernet import Fernet

from broker.keys import ACCOUNTS, HUB, SETTINGS, STORE
from broker.portal.cookies import SESSION_COOKIE, SESSION_MAX_AGE, session_key
from broker.portal.gitlab import GitLab, GitLabError, NotInGroup, SignInRefused
from broker.portal.reveals import REVEALS, Reveals
from broker.records import User
from broker.relay import ConnectorLink
from broker.settings import BrokerSettings

log = structlog.get_logger("remotellm.broker.portal")

GITLAB = web.AppKey("gitlab", GitLab)
TEMPLATES = web.AppKey("templates", jinja2.Environment)

PORTAL_PATHS = ("/login", "/logout", "/auth/", "/portal", "/admin", "/static/")
SIGN_IN_MAX_AGE = 600
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

View = Callable[[web.Request], Awaitable[web.StreamResponse]]


def public_url(request: web.Request) -> str:
    configured = request.app[SETTINGS].public_url
    if configured:
        return configured.rstrip("/")
    return f"{request.scheme}://{request.host}"


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
    warnings.filterwarnings("ignore", category=NotAppKeyWarning, module="aiohttp_session")

    @web.middleware
    async def portal_sessions(request: web.Request, handler: Handler) -> web.StreamResponse:
        # The API never touches sessions: only the portal's pages pay for them.
        if request.path != "/" and not request.path.startswith(PORTAL_PATHS):
            return await handler(request)
        response = await sessions(request, handler)
        if not request.path.startswith("/static/"):
            response.headers.update(SECURITY_HEADERS)
        return response

    app.middlewares.append(portal_sessions)
    app[REVEALS] = Reveals()
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
        )
    add = app.router
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


# --- rendering -----------------------------------------------------------------


def render(
    request: web.Request,
    template: str,
    status: int = 200,
    session: Session | None = None,
    **context: Any,
) -> web.Response:
    env = request.app[TEMPLATES]
    html = env.get_template(template).render(
        csrf=session.get("csrf", "") if session is not None else "",
        signed_in=context.pop("user", None),
        gitlab=GITLAB in request.app,
        **context,
    )
    return web.Response(text=html, status=status, content_type="text/html")


def error_page(
    request: web.Request, status: int, title: str, message: str, **extra: Any
) -> web.Response:
    return render(request, "error.html", status=status, title=title, message=message, **extra)


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


# --- sessions, CSRF and the signed-in user ---------------------------------------


async def _session(request: web.Request) -> Session:
    session = await get_session(request)
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session


async def _check_csrf(request: web.Request, session: Session) -> web.Response | None:
    form = await request.post()
    given = form.get("csrf")
    expected = session.get("csrf")
    if isinstance(given, str) and expected and _same(given, str(expected)):
        return None
    return error_page(
        request,
        403,
        "This form has expired",
        "The page was open too long or came from somewhere else. Go back, reload it and try again.",
    )


def _same(a: str, b: str) -> bool:
    """Constant-time equality of two strings of any characters."""
    return hmac.compare_digest(a.encode(), b.encode())


async def _signed_in(request: web.Request) -> tuple[Session, User] | web.Response:
    """The session and its active user, or where to send the browser instead."""
    session = await _session(request)
    user_id = session.get("uid")
    user = await request.app[STORE].user(user_id) if isinstance(user_id, int) else None
    if user is None:
        session.pop("uid", None)  # a session of a user the store no longer has: start over
        raise web.HTTPFound("/")
    if user.blocked:
        return render(request, "blocked.html", status=403, session=session, user=None)
    return session, user


# --- sign-in -------------------------------------------------------------------------


async def landing(request: web.Request) -> web.Response:
    session = await _session(request)
    if isinstance(session.get("uid"), int):
        raise web.HTTPFound("/portal")
    return render(request, "landing.html", session=session, base_url=public_url(request) + "/v1")


async def login(request: web.Request) -> web.Response:
    if GITLAB not in request.app:
        return error_page(
            request,
            404,
            "Sign-in is not set up",
            "This broker has no GitLab application configured. Ask its operator for an API key.",
        )
    auth = request.app[GITLAB].authorize(public_url(request) + "/auth/callback")
    session = await _session(request)
    session["oauth"] = {"state": auth.state, "verifier": auth.verifier, "at": time.time()}
    raise web.HTTPFound(auth.url)


async def callback(request: web.Request) -> web.Response:
    if GITLAB not in request.app:
        raise web.HTTPFound("/")
    session = await _session(request)
    pending = session.pop("oauth", None)  # single use, whatever happens next
    query = request.query
    state, code = query.get("state", ""), query.get("code", "")
    valid = (
        isinstance(pending, dict)
        and bool(state)
        and _same(str(pending.get("state", "")), state)
        and time.time() - float(pending.get("at", 0)) <= SIGN_IN_MAX_AGE
    )
    if valid and query.get("error"):
        # Only for a sign-in that started here: nobody can put words on this page by link.
        return error_page(
            request,
            400,
            "GitLab did not sign you in",
            f"GitLab said: {query.get('error_description') or query['error']}.",
            retry=True,
        )
    if not valid or not code:
        log.warning("sign-in state mismatch or expired")
        return error_page(
            request,
            400,
            "This sign-in link is not valid",
            "It was already used, has expired, or did not start here."
            " Sign in again from the start.",
            retry=True,
        )
    gitlab = request.app[GITLAB]
    try:
        found = await gitlab.sign_in(
            public_url(request) + "/auth/callback", code, pending["verifier"]
        )
    except SignInRefused as exc:
        log.warning("gitlab refused the sign-in code", reason=str(exc))
        return error_page(
            request,
            400,
            "GitLab refused this sign-in",
            "The sign-in code was already used or has expired. Sign in again from the start.",
            retry=True,
        )
    except GitLabError as exc:
        log.error("gitlab unavailable during sign-in", error=str(exc))
        return error_page(
            request,
            502,
            "GitLab is not answering",
            "RemoteLLM could not reach GitLab to finish signing you in. Try again in a minute.",
            retry=True,
        )
    except NotInGroup as exc:
        log.warning("sign-in outside the allowed groups", username=exc.user.username)
        return error_page(
            request,
            403,
            "Your GitLab account is not allowed here",
            "Only members of these GitLab groups may use this broker: "
            + ", ".join(gitlab.groups)
            + ". Ask a group owner to add you.",
        )
    store = request.app[STORE]
    user, new = await store.sign_in(found.id, found.username, found.name)
    log.info("signed in", username=user.username, new_user=new)
    if user.blocked:
        return render(request, "blocked.html", status=403, user=None)
    fresh = await new_session(request)  # a new session on sign-in: no fixation
    fresh["uid"] = user.id
    fresh["csrf"] = secrets.token_urlsafe(32)
    if new or not any(k.usable(time.time()) for k in await store.keys(user.id)):
        raw, _ = await store.create_key(user.id, "default")
        fresh["reveal"] = request.app[REVEALS].put(user.id, raw)
    raise web.HTTPFound("/portal")


async def logout(request: web.Request) -> web.Response:
    session = await _session(request)
    denied = await _check_csrf(request, session)
    if denied is not None:
        return denied
    session.invalidate()
    raise web.HTTPFound("/")


# --- a user's pages ----------------------------------------------------------------


def _models_for(request: web.Request, user: User) -> list[str]:
    models = sorted(request.app[HUB].models())
    if user.models is not None:
        models = [m for m in models if m in user.models]
    return models


async def home(request: web.Request) -> web.Response:
    signed = await _signed_in(request)
    if isinstance(signed, web.Response):
        return signed
    session, user = signed
    new_key = _revealed(request, session, user)
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


def _revealed(request: web.Request, session: Session, user: User) -> str | None:
    nonce = session.pop("reveal", None)
    return request.app[REVEALS].take(nonce, user.id) if isinstance(nonce, str) else None


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
    signed = await _signed_in(request)
    if isinstance(signed, web.Response):
        return signed
    session, user = signed
    new_key = _revealed(request, session, user)
    return render(
        request,
        "keys.html",
        session=session,
        user=user,
        keys=await request.app[STORE].keys(user.id),
        now=time.time(),
        fmt=_when,
        max_keys=MAX_KEYS,
        base_url=public_url(request) + "/v1",
        **_reveal(request, user, new_key),
    )


async def create_key(request: web.Request) -> web.Response:
    signed = await _form(request)
    if isinstance(signed, web.Response):
        return signed
    session, user = signed
    form = await request.post()
    name = str(form.get("name") or "").strip()[:100] or "unnamed"
    store = request.app[STORE]
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
    session["reveal"] = request.app[REVEALS].put(user.id, raw)
    raise web.HTTPFound("/portal/keys")


async def revoke_key(request: web.Request) -> web.Response:
    signed = await _form(request)
    if isinstance(signed, web.Response):
        return signed
    _, user = signed
    key_id = int(request.match_info["key_id"])
    if not await request.app[STORE].revoke_key(key_id, user_id=user.id):
        return error_page(
            request, 404, "No such key", "This key does not exist or is already revoked."
        )
    request.app[ACCOUNTS].forget()
    log.info("key revoked", username=user.username, record=key_id)
    raise web.HTTPFound("/portal/keys")


async def usage_page(request: web.Request) -> web.Response:
    signed = await _signed_in(request)
    if isinstance(signed, web.Response):
        return signed
    session, user = signed
    since = (time.time() // 86400 - USAGE_DAYS + 1) * 86400
    rows = await request.app[STORE].usage.by_day_and_model(user.id, since)
    return render(request, "usage.html", session=session, user=user, rows=rows, days=USAGE_DAYS)


async def _form(
    request: web.Request, *, admin: bool = False
) -> tuple[Session, User] | web.Response:
    """A form post that changes something: signed in (as an admin if asked), with the CSRF token."""
    signed = await (_admin(request) if admin else _signed_in(request))
    if isinstance(signed, web.Response):
        return signed
    denied = await _check_csrf(request, signed[0])
    return denied if denied is not None else signed


# --- admin ---------------------------------------------------------------------------


async def _admin(request: web.Request) -> tuple[Session, User] | web.Response:
    signed = await _signed_in(request)
    if isinstance(signed, web.Response):
        return signed
    if not signed[1].admin:
        return error_page(request, 403, "Admins only", "This page is for the broker's admins.")
    return signed


async def admin_page(request: web.Request) -> web.Response:
    signed = await _admin(request)
    if isinstance(signed, web.Response):
        return signed
    session, user = signed
    store, hub = request.app[STORE], request.app[HUB]
    tokens = {t.id: t for t in await store.connector_tokens()}
    online = []
    for link in hub.links:
        assert isinstance(link, ConnectorLink)
        token = tokens.get(link.token_id) if link.token_id is not None else None
        online.append(
            {
                "name": link.name,
                "token": token.name if token else "(configured token)",
                "models": sorted(link.models),
                "in_flight": hub.load(link),
                "max": link.max_concurrency,
                "since": _when(link.since),
            }
        )
    since = (time.time() // 86400 - USAGE_DAYS + 1) * 86400
    return render(
        request,
        "admin.html",
        session=session,
        user=user,
        users=await store.list_users(),
        online=online,
        tokens=list(tokens.values()),
        by_user=await store.usage.totals("user", since),
        by_model=await store.usage.totals("model", since),
        days=USAGE_DAYS,
        fmt=_when,
    )


async def admin_user(request: web.Request) -> web.Response:
    signed = await _form(request, admin=True)
    if isinstance(signed, web.Response):
        return signed
    _, admin = signed
    user_id = int(request.match_info["user_id"])
    action = request.match_info["action"]
    if user_id == admin.id:
        return error_page(request, 400, "Not yourself", "An admin cannot block their own account.")
    store = request.app[STORE]
    if await store.user(user_id) is None:
        return error_page(request, 404, "No such user", "This user does not exist.")
    await store.set_status(user_id, "blocked" if action == "block" else "active")
    request.app[ACCOUNTS].forget()
    log.info(f"user {action}ed", by=admin.username, user_id=user_id)
    raise web.HTTPFound("/admin")


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(stamp))
