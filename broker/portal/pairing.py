"""The person's side of pairing a connector: the code form, the consent page, approve or deny.

`GET /pair` (optionally `?code=XXXX-XXXX`, as the connector's link carries it) needs a signed-in
user; a browser that is not is sent through GitLab sign-in and back here. The consent page names
the connector, the address it asked from and when; its Approve and Deny buttons post, with the
session's CSRF token, to `/pair/decide`. Who may approve is `--pairing`. Every consent page
opened with a code and every decision posted counts against the signed-in user's limit
(`broker.api.pairing.CODE_ENTRIES_PER_WINDOW`).
"""

from __future__ import annotations

from urllib.parse import quote

import structlog
from aiohttp import web

from broker.accounts.pairing import Pairing, why_undecidable
from broker.accounts.pairingcode import code_hash, normalise_user_code, shown_user_code
from broker.accounts.records import User
from broker.api.pairing import PAIRING, code_entry_key
from broker.portal.pages import error_page, form_of, render, session_of, signed_in, when
from broker.services import SERVICES

log = structlog.get_logger("remotellm.broker.portal")

PAIR_PATHS = ("/pair", "/pair/decide")


def add_pairing_routes(add: web.UrlDispatcher) -> None:
    add.add_get("/pair", pair_page)
    add.add_post("/pair/decide", decide)


def _may_pair(request: web.Request, user: User) -> web.Response | None:
    """None when this user may approve a pairing on this broker, else the page saying why not."""
    policy = request.app[SERVICES].settings.pairing
    if policy == "off":
        return error_page(
            request,
            403,
            "Pairing is off",
            "This broker does not pair connectors by sign-in; ask its admin for a connector token.",
        )
    if policy == "admins" and not user.admin:
        return error_page(
            request,
            403,
            "Only admins may pair connectors here",
            "Ask one of this broker's admins to approve the connector, or for a connector token.",
        )
    return None


async def _find(request: web.Request, user: User, typed: str) -> Pairing | web.Response:
    """The pending pairing behind a typed code, or the page that says why there is none."""
    wait = await request.app[PAIRING].code_entries.count(code_entry_key(user.id))
    if wait is not None:
        page = error_page(
            request,
            429,
            "Too many codes",
            f"You entered too many codes; try again in {wait} seconds.",
        )
        page.headers["Retry-After"] = str(wait)
        return page
    code = normalise_user_code(typed)
    found = (
        await request.app[SERVICES].store.pairings.by_user_code(code_hash(code))
        if code is not None
        else None
    )
    if found is None:
        return error_page(
            request,
            404,
            "No connector has this code",
            "Check the code the connector shows (8 letters and digits, like BCDF-2345) and"
            " type it again.",
            pair_again=True,
        )
    why = why_undecidable(found, request.app[PAIRING].now())
    if why is not None:
        text = (
            "This code was already used: the connector was approved or denied. Start the"
            " pairing again on the connector for a new code."
            if why == "decided"
            else "This code has expired. Start the pairing again on the connector for a new code."
        )
        return error_page(request, 410, "This code cannot be used", text, pair_again=True)
    return found


async def pair_page(request: web.Request) -> web.Response:
    """The code form, or (with `?code=`) the consent page of that connector."""
    session = await session_of(request)
    if not isinstance(session.get("uid"), int):
        raise web.HTTPFound("/login?next=" + quote(request.path_qs, safe=""))
    signed = await signed_in(request)
    if isinstance(signed, web.Response):
        return signed
    session, user = signed
    refused = _may_pair(request, user)
    if refused is not None:
        return refused
    typed = request.query.get("code", "")
    if not typed:
        return render(request, "pair.html", session=session, user=user, pairing=None)
    found = await _find(request, user, typed)
    if isinstance(found, web.Response):
        return found
    return render(
        request,
        "pair.html",
        session=session,
        user=user,
        pairing=found,
        code=shown_user_code(normalise_user_code(typed) or ""),
        asked=when(found.created),
    )


async def decide(request: web.Request) -> web.Response:
    """Approve or deny the pairing named by the posted code."""
    signed = await form_of(request)
    if isinstance(signed, web.Response):
        return signed
    session, user = signed
    refused = _may_pair(request, user)
    if refused is not None:
        return refused
    form = await request.post()
    found = await _find(request, user, str(form.get("code") or ""))
    if isinstance(found, web.Response):
        return found
    approve = form.get("decision") == "approve"
    store = request.app[SERVICES].store
    if not await store.pairings.decide(found, user.id, approve, request.app[PAIRING].now()):
        return error_page(
            request,
            410,
            "This code cannot be used",
            "The pairing was decided or expired meanwhile. Start it again on the connector.",
            pair_again=True,
        )
    log.info(
        "pairing approved" if approve else "pairing denied",
        username=user.username,
        connector=found.name,
        record=found.id,
    )
    return render(
        request, "paired.html", session=session, user=user, approved=approve, name=found.name
    )
