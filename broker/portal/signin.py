"""The landing page, and signing in with GitLab (OAuth 2 with PKCE) and out.

`login` sends the browser to GitLab with a one-time state; `callback` checks that
state, trades the code for the GitLab user, and starts a fresh session (no session
fixation). A user's first sign-in, or one without a working key, gets a key made
and revealed once on the portal's home page.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import structlog
from aiohttp import web
from aiohttp_session import new_session

from broker.accounts.change import AccessChanged
from broker.portal.gitlab import GitLabError, GitLabUser, NotInGroup, SignInRefused
from broker.portal.pages import (
    GITLAB,
    check_csrf,
    error_page,
    public_url,
    render,
    same,
    session_of,
)
from broker.portal.reveals import REVEALS
from broker.services import SERVICES

log = structlog.get_logger("remotellm.broker.portal")

SIGN_IN_MAX_AGE = 600
"""Seconds a sign-in may take between leaving for GitLab and coming back."""


async def landing(request: web.Request) -> web.Response:
    session = await session_of(request)
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
    session = await session_of(request)
    session["oauth"] = {
        "state": auth.state,
        "verifier": auth.verifier,
        "at": time.time(),
        "next": back_to(request.query.get("next", "")),
    }
    raise web.HTTPFound(auth.url)


async def callback(request: web.Request) -> web.Response:
    if GITLAB not in request.app:
        raise web.HTTPFound("/")
    session = await session_of(request)
    pending = session.pop("oauth", None)  # single use, whatever happens next
    verifier = _verifier(request, pending)
    if isinstance(verifier, web.Response):
        return verifier
    found = await _gitlab_user(request, verifier)
    if isinstance(found, web.Response):
        return found
    return await _start_session(request, found, back_to(str(pending.get("next", ""))))


def back_to(path: str) -> str:
    """Where to land after signing in: the pairing page when it sent the browser here (only
    that local page, so a link cannot send a fresh session elsewhere), else the portal."""
    if path == "/pair" or path.startswith("/pair?"):
        return path
    return "/portal"


def _verifier(request: web.Request, pending: Any) -> str | web.Response:
    """The PKCE verifier of the sign-in this browser started here, or the error page."""
    query = request.query
    state, code = query.get("state", ""), query.get("code", "")
    valid = (
        isinstance(pending, dict)
        and bool(state)
        and same(str(pending.get("state", "")), state)
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
    return str(pending["verifier"])


async def _gitlab_user(request: web.Request, verifier: str) -> GitLabUser | web.Response:
    """The GitLab user behind the returned code, or the page that says why not."""
    gitlab = request.app[GITLAB]
    code = request.query["code"]
    try:
        return await gitlab.sign_in(public_url(request) + "/auth/callback", code, verifier)
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


async def _start_session(
    request: web.Request, found: GitLabUser, landing_page: str = "/portal"
) -> web.Response:
    """Sign the GitLab user in: a fresh session, and a first key if they have none that works."""
    store = request.app[SERVICES].store
    user, new = await store.sign_in(found.id, found.username, found.name)
    log.info("signed in", username=user.username, new_user=new)
    if found.groups is not None:
        await _record_groups(request, user.id, found.groups)
    if user.blocked:
        return render(request, "blocked.html", status=403, user=None)
    fresh = await new_session(request)  # a new session on sign-in: no fixation
    fresh["uid"] = user.id
    fresh["csrf"] = secrets.token_urlsafe(32)
    if new or not any(k.usable(time.time()) for k in await store.keys(user.id)):
        raw, _ = await store.create_key(user.id, "default")
        fresh["reveal"] = await request.app[REVEALS].keep(user.id, raw)
    raise web.HTTPFound(landing_page)


async def _record_groups(request: web.Request, user_id: int, groups: tuple[str, ...]) -> None:
    """Keep the user's GitLab groups, and route by them from now on (connectors shared with
    groups); the sign-in goes on if the connectors' rules cannot be read again now."""
    services = request.app[SERVICES]
    if set(await services.store.access.groups(user_id)) == set(groups):
        return
    await services.store.access.set_groups(user_id, groups)
    await services.changes.made(AccessChanged(None))


async def logout(request: web.Request) -> web.Response:
    session = await session_of(request)
    denied = await check_csrf(request, session)
    if denied is not None:
        return denied
    session.invalidate()
    raise web.HTTPFound("/")
