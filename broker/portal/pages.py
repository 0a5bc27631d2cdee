"""What every portal page shares: rendering, the session, CSRF, and who is signed in.

Sessions are aiohttp-session encrypted cookies (set up by `setup_portal`). Every form
that changes state carries the session's CSRF token, checked in constant time. Also
here: the app keys of the GitLab client and of the templates, and `when`, the time
format of the pages.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
import time
from typing import Any

import jinja2
from aiohttp import web
from aiohttp_session import Session, get_session

from broker.accounts.records import User
from broker.edge.aiohttpcall import hang_up
from broker.portal.gitlab import GitLab
from broker.services import SERVICES

GITLAB = web.AppKey("gitlab", GitLab)
TEMPLATES = web.AppKey("templates", jinja2.Environment)


def public_url(request: web.Request) -> str:
    configured = request.app[SERVICES].settings.public_url
    if configured:
        return configured.rstrip("/")
    return f"{request.scheme}://{request.host}"


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


async def session_of(request: web.Request) -> Session:
    """The browser's session, with a CSRF token from its first page on."""
    session = await get_session(request)
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session


async def check_csrf(request: web.Request, session: Session) -> web.Response | None:
    """None when the posted form carries the session's CSRF token, else the error page."""
    form = None
    try:
        # A form is small: all of it must come within the body timeout.
        async with asyncio.timeout(request.app[SERVICES].settings.body_timeout):
            form = await request.post()
    except TimeoutError:
        pass
    if form is None:
        await hang_up(request, "the form stopped arriving")
    given = form.get("csrf")
    expected = session.get("csrf")
    if isinstance(given, str) and expected and same(given, str(expected)):
        return None
    return error_page(
        request,
        403,
        "This form has expired",
        "The page was open too long or came from somewhere else. Go back, reload it and try again.",
    )


def same(a: str, b: str) -> bool:
    """Constant-time equality of two strings of any characters."""
    return hmac.compare_digest(a.encode(), b.encode())


async def signed_in(request: web.Request) -> tuple[Session, User] | web.Response:
    """The session and its active user, or where to send the browser instead."""
    session = await session_of(request)
    user_id = session.get("uid")
    user = await request.app[SERVICES].store.user(user_id) if isinstance(user_id, int) else None
    if user is None:
        session.pop("uid", None)  # a session of a user the store no longer has: start over
        raise web.HTTPFound("/")
    if user.blocked:
        return render(request, "blocked.html", status=403, session=session, user=None)
    return session, user


async def form_of(
    request: web.Request, *, admin: bool = False
) -> tuple[Session, User] | web.Response:
    """A form post that changes something: signed in (as an admin if asked), with the CSRF token."""
    signed = await (admin_only(request) if admin else signed_in(request))
    if isinstance(signed, web.Response):
        return signed
    denied = await check_csrf(request, signed[0])
    return denied if denied is not None else signed


async def admin_only(request: web.Request) -> tuple[Session, User] | web.Response:
    """The session and its signed-in admin, or the page to show instead."""
    signed = await signed_in(request)
    if isinstance(signed, web.Response):
        return signed
    if not signed[1].admin:
        return error_page(request, 403, "Admins only", "This page is for the broker's admins.")
    return signed


def when(stamp: float | None) -> str:
    """A time as the pages show it (UTC, to the minute), or "never"."""
    if stamp is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(stamp))
