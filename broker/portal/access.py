"""The portal's "Who may use this connector" page: `GET/POST /connectors/{id}/access`.

Only the connector's owner (the person who paired it) or an admin sees or changes it;
anyone else gets 404, as for a connector that does not exist. The rule is
`broker.accounts.access`'s; a change is applied to the connected connector at once.
"""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web

from broker.accounts.access import MODES, AccessError, AccessRule, clean_groups
from broker.accounts.change import AccessChanged
from broker.accounts.records import ConnectorToken, StoreError, User
from broker.portal.pages import GITLAB, error_page, form_of, render, signed_in
from broker.services import SERVICES

log = structlog.get_logger("remotellm.broker.portal")

ACCESS_PATH = "/connectors/{token_id:\\d+}/access"


def add_access_routes(add: web.UrlDispatcher) -> None:
    add.add_get(ACCESS_PATH, access_page)
    add.add_post(ACCESS_PATH, change_access)


async def _connector(request: web.Request, user: User) -> ConnectorToken | web.Response:
    """The live connector of the path when `user` owns it or is an admin; else the 404 page
    (the same as for a connector that does not exist: nothing tells the two apart)."""
    token_id = int(request.match_info["token_id"])
    for token in await request.app[SERVICES].store.connector_tokens():
        if token.id == token_id and token.revoked is None:
            if token.owner_id == user.id or user.admin:
                return token
            break
    return error_page(
        request, 404, "No such connector", "There is no connector of yours at this address."
    )


def _reads_groups(request: web.Request) -> bool:
    return GITLAB in request.app and request.app[GITLAB].read_groups


async def access_page(request: web.Request) -> web.Response:
    signed = await signed_in(request)
    if isinstance(signed, web.Response):
        return signed
    session, user = signed
    token = await _connector(request, user)
    if isinstance(token, web.Response):
        return token
    store = request.app[SERVICES].store
    rule = await store.access.rule(token.id)
    names = []
    for user_id in rule.users:
        found = await store.user(user_id)
        names.append(found.username if found is not None else str(user_id))
    return render(
        request,
        "connector_access.html",
        session=session,
        user=user,
        **await _context(request, token),
        rule=rule,
        groups_text=", ".join(rule.groups),
        users_text=", ".join(names),
        saved=request.query.get("saved") == "1",
    )


async def _context(request: web.Request, token: ConnectorToken) -> dict[str, Any]:
    services = request.app[SERVICES]
    store = services.store
    owner = await store.user(token.owner_id) if token.owner_id is not None else None
    links = [link for link in services.relay.links if link.token_id == token.id]
    blocked: list[str] = []
    for user_id in sorted({u for link in links for u in link.blocked_users}):
        numeric = user_id.isascii() and user_id.isdigit()
        found = await store.user(int(user_id)) if numeric else None
        blocked.append(found.username if found is not None else user_id)
    return {
        "connector": token,
        "owner": owner,
        "online": bool(links),
        "blocked": blocked,
        "reads_groups": _reads_groups(request),
        "modes": MODES,
    }


async def change_access(request: web.Request) -> web.Response:
    signed = await form_of(request)
    if isinstance(signed, web.Response):
        return signed
    _, user = signed
    token = await _connector(request, user)
    if isinstance(token, web.Response):
        return token
    form = await request.post()
    try:
        rule = await _rule(request, str(form.get("mode", "")), form)
    except (AccessError, StoreError) as exc:
        return error_page(request, 400, "This rule cannot be kept", f"{str(exc).capitalize()}.")
    services = request.app[SERVICES]
    await services.store.access.set_rule(token.id, rule)
    log.info("connector access changed", connector=token.name, by=user.username, mode=rule.mode)
    await services.changes.made(AccessChanged(token.id))
    raise web.HTTPFound(f"/connectors/{token.id}/access?saved=1")


async def _rule(request: web.Request, mode: str, form: Any) -> AccessRule:
    """The rule the form asks for (users by username or id)."""
    if mode == "groups":
        return AccessRule("groups", groups=clean_groups(str(form.get("groups", "")).split(",")))
    if mode == "users":
        store = request.app[SERVICES].store
        ids: dict[int, None] = {}
        for ident in str(form.get("users", "")).split(","):
            if ident.strip():
                ids.setdefault((await store.find_user(ident.strip())).id, None)
        return AccessRule("users", users=tuple(ids))
    return AccessRule(mode)  # type: ignore[arg-type]  # checked by AccessRule itself
