"""The portal's "My connectors": the connectors a user owns, what they served, and revoking one.

`GET /connectors` lists the live connector tokens the signed-in user owns (the owner is who
approved its pairing, or whom the admin named with `connectors create --owner`): name, the
models it serves now, online or not, last seen, and the requests and tokens it served in the
last `USAGE_DAYS` days, per user. `GET /connectors/{id}` shows one, `GET
/connectors/{id}/revoke` asks to confirm, and the confirmed `POST` (with the session's CSRF
token) revokes the token and shuts the live link out at once (`ConnectorLink.shut_out`).

Only the owner, or an admin, sees or acts on a connector; for anyone else it does not exist
(404), so its id tells nothing.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import structlog
from aiohttp import web
from aiohttp_session import Session

from broker.accounts.access import EVERYONE, AccessRule
from broker.accounts.change import ConnectorRevoked
from broker.accounts.records import ConnectorToken, Served, User
from broker.portal.pages import error_page, form_of, render, signed_in, when
from broker.relay.link import ConnectorLink
from broker.services import SERVICES

log = structlog.get_logger("remotellm.broker.portal")

CONNECTOR_PATHS = ("/connectors",)
USAGE_DAYS = 7
"""The window of the served totals: the last week, to the second."""


def add_connector_routes(add: web.UrlDispatcher) -> None:
    add.add_get("/connectors", connectors_page)
    add.add_get("/connectors/{connector_id:\\d+}", connector_page)
    add.add_get("/connectors/{connector_id:\\d+}/revoke", confirm_revoke)
    add.add_post("/connectors/{connector_id:\\d+}/revoke", revoke)


@dataclass
class ConnectorView:
    """One connector as the pages show it."""

    token: ConnectorToken
    links: list[ConnectorLink]
    in_flight: int = 0
    served: list[Served] = field(default_factory=list)
    rule: AccessRule = EVERYONE

    @property
    def who(self) -> str:
        """Whom the owner's rule admits, in a few words."""
        if self.rule.mode == "groups":
            return "Groups: " + ", ".join(self.rule.groups)
        if self.rule.mode == "users":
            count = len(self.rule.users)
            return f"You and {count} user" + ("" if count == 1 else "s")
        return "Only you" if self.rule.mode == "owner" else "Everyone signed in"

    @property
    def online(self) -> bool:
        return bool(self.links)

    @property
    def models(self) -> list[str]:
        return sorted({model for link in self.links for model in link.models})

    @property
    def requests(self) -> int:
        return sum(s.requests for s in self.served)

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.served)

    @property
    def last_seen(self) -> str:
        return "online now" if self.links else when(self.token.last_seen)


async def _views(request: web.Request, tokens: list[ConnectorToken]) -> list[ConnectorView]:
    """The connectors' live links, load and served totals (one usage query for them all)."""
    services = request.app[SERVICES]
    hub = services.hub
    by_token: dict[int, list[ConnectorLink]] = defaultdict(list)
    for link in hub.links:
        if not isinstance(link, ConnectorLink):
            continue  # attached to another broker of the cluster
        if link.token_id is not None and not link.gone:
            by_token[link.token_id].append(link)
    served: dict[int, list[Served]] = defaultdict(list)
    since = time.time() - USAGE_DAYS * 86400
    for row in await services.store.usage.served([t.id for t in tokens], since):
        served[row.connector_id].append(row)
    rules = await services.store.access.rules([t.id for t in tokens])
    views = []
    for token in tokens:
        links = by_token.get(token.id, [])
        views.append(
            ConnectorView(
                token,
                links,
                in_flight=sum(hub.load(link) for link in links),
                served=served.get(token.id, []),
                rule=rules.get(token.id, EVERYONE),
            )
        )
    return views


async def _owned(
    request: web.Request,
) -> tuple[Session, User, ConnectorToken] | web.Response:
    """The signed-in user and the connector of the URL, if they own it (or are an admin)."""
    signed = await signed_in(request)
    if isinstance(signed, web.Response):
        return signed
    session, user = signed
    found = await _token_of(request, user)
    return found if isinstance(found, web.Response) else (session, user, found)


async def _token_of(request: web.Request, user: User) -> ConnectorToken | web.Response:
    token_id = int(request.match_info["connector_id"])
    token = await request.app[SERVICES].store.connector_token(token_id)
    if token is None or not (token.owner_id == user.id or user.admin):
        return error_page(
            request,
            404,
            "No such connector",
            "You own no connector with this number; My connectors lists the ones you do.",
        )
    return token


async def connectors_page(request: web.Request) -> web.Response:
    """Every live connector the signed-in user owns."""
    signed = await signed_in(request)
    if isinstance(signed, web.Response):
        return signed
    session, user = signed
    revoked = session.pop("revoked_connector", None)
    tokens = await request.app[SERVICES].store.connector_tokens(owner_id=user.id)
    views = await _views(request, [t for t in tokens if t.revoked is None])
    return render(
        request,
        "connectors.html",
        session=session,
        user=user,
        connectors=views,
        revoked=revoked if isinstance(revoked, str) else None,
        days=USAGE_DAYS,
        pairing=request.app[SERVICES].settings.pairing,
    )


async def connector_page(request: web.Request) -> web.Response:
    """One connector in detail."""
    return await _detail(request, confirm=False)


async def confirm_revoke(request: web.Request) -> web.Response:
    """The confirm step: what revoking does, and the button that does it."""
    return await _detail(request, confirm=True)


async def _detail(request: web.Request, *, confirm: bool) -> web.Response:
    owned = await _owned(request)
    if isinstance(owned, web.Response):
        return owned
    session, user, token = owned
    if confirm and token.revoked is not None:
        raise web.HTTPFound(f"/connectors/{token.id}")
    (view,) = await _views(request, [token])
    return render(
        request,
        "connector.html",
        session=session,
        user=user,
        c=view,
        days=USAGE_DAYS,
        fmt=when,
        confirm=confirm,
    )


async def revoke(request: web.Request) -> web.Response:
    """Revoke the connector's token and shut its live link out now."""
    signed = await form_of(request)
    if isinstance(signed, web.Response):
        return signed
    session, user = signed
    token = await _token_of(request, user)
    if isinstance(token, web.Response):
        return token
    services = request.app[SERVICES]
    if await services.store.revoke_connector_token(token.id):
        log.info("connector token revoked", by=user.username, connector=token.name, record=token.id)
        session["revoked_connector"] = token.name
    revoked = ConnectorRevoked(token.id)
    # Here with who revoked it (the connector logs the reason); other brokers say only that.
    await services.changes.apply(revoked, reason=f"connector token revoked by {user.username}")
    await services.changes.publisher.publish(revoked)
    raise web.HTTPFound("/connectors")
