"""The connector's side of pairing, after RFC 8628: `POST /pair/start` and `POST /pair/poll`.

A connector starts a pairing with its name and gets a user code for a person and a device
code for itself; it polls with the device code until the person approves or denies the
pairing on the portal's consent page (`broker.portal.pairing`), or it expires. The one
approved poll gets a new connector token, owned by the person who approved. Poll errors
are RFC 8628's (`{"error": "authorization_pending"}` with 400); refusals of the broker's
own (pairing off, rate limits) use the broker's error shape.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import structlog
from aiohttp import web

from broker.accounts.pairing import Pairing, PollAnswer, next_interval
from broker.accounts.pairingcode import code_hash, new_device_code, new_user_code
from broker.accounts.records import ConnectorToken
from broker.accounts.store import Store
from broker.api.iplimit import IpWindow, network_of
from broker.api.responses import error_response
from broker.services import SERVICES
from shared.text import is_clean

log = structlog.get_logger("remotellm.broker.pairing")

STARTS_PER_WINDOW: Final = 10
"""Pairings one client network (an IPv4 address, an IPv6 /64) may start within RATE_WINDOW."""
CODE_ENTRIES_PER_WINDOW: Final = 30
"""Codes one signed-in user may try within RATE_WINDOW: each consent page opened with a code
and each decision posted counts one (a pairing takes two)."""
RATE_WINDOW: Final = 900.0
MAX_PENDING: Final = 1000
"""Pairings waiting for a person at once, on the whole broker; past it, starts get 503."""
PENDING_RETRY: Final = 60
MAX_CONNECTOR_NAME: Final = 64

_DESCRIPTIONS: Final[dict[str, str]] = {
    "authorization_pending": "Waiting for someone to approve this connector in the browser.",
    "slow_down": "Polled too soon; wait the interval (now longer) between polls.",
    "expired_token": "This pairing has expired or was already used; start a new one.",
    "access_denied": "The person who signed in denied this pairing.",
    "invalid_grant": "No pairing has this device code; start a new one.",
    "invalid_request": 'Send JSON {"device_code": "..."} as /pair/start gave it.',
}


class PairingDesk:
    """The pairing endpoints' clock and rate limits (one per app; tests pass their own clock)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.starts = IpWindow(STARTS_PER_WINDOW, RATE_WINDOW, self.now, "start")
        self.code_entries = IpWindow(CODE_ENTRIES_PER_WINDOW, RATE_WINDOW, self.now, "code")
        """Keyed by user (`code_entry_key`): behind a proxy, every address is the proxy's."""
        self.max_pending = MAX_PENDING

    def now(self) -> float:
        return self.clock()


PAIRING = web.AppKey("pairing", PairingDesk)


def setup_pairing(app: web.Application) -> None:
    """Route the pairing endpoints and give the app its `PairingDesk`."""
    app[PAIRING] = PairingDesk()
    if app[SERVICES].settings.cluster:
        app.cleanup_ctx.append(_shared_limits)
    app.router.add_post("/pair/start", start_endpoint)
    app.router.add_post("/pair/poll", poll_endpoint)


def base_url(request: web.Request) -> str:
    """The broker's public base URL (--public-url, else the address this request came to)."""
    configured = request.app[SERVICES].settings.public_url
    return configured.rstrip("/") if configured else f"{request.scheme}://{request.host}"


def relay_url(request: web.Request) -> str:
    """Where a connector links to: the public URL with ws(s) and /relay."""
    base = base_url(request)
    return "ws" + base.removeprefix("http") + "/relay"


def client_ip(request: web.Request) -> str:
    """The address the request came from: a reverse proxy's own when there is one (the broker
    reads no X-Forwarded-For)."""
    return request.remote or "unknown"


def code_entry_key(user_id: int) -> str:
    """What the code-entry limit counts under: the signed-in user, not the address."""
    return f"user:{user_id}"


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _refusal(request: web.Request) -> web.Response | None:
    """Why this broker does not pair connectors now, or None when it does."""
    settings = request.app[SERVICES].settings
    if settings.pairing == "off":
        return error_response(
            request,
            403,
            "pairing_off",
            "This broker does not pair connectors by sign-in; ask its admin for a connector token.",
        )
    if not settings.portal:
        return error_response(
            request,
            403,
            "pairing_unavailable",
            "This broker has no GitLab sign-in to approve a pairing; ask its admin for a"
            " connector token.",
        )
    return None


async def _shared_limits(app: web.Application) -> AsyncIterator[None]:
    """Cluster mode: pairing's rate limits count for every broker of the cluster together."""
    from broker.cluster.windows import RedisWindows

    shared = RedisWindows(app[SERVICES].redis)
    desk = app[PAIRING]
    desk.starts.shared = desk.code_entries.shared = shared
    yield


async def start_endpoint(request: web.Request) -> web.Response:
    """`POST /pair/start` with `{"name": ...}`: a new pairing's codes, RFC 8628 section 3.2."""
    refused = _refusal(request)
    if refused is not None:
        return refused
    desk = request.app[PAIRING]
    wait = await desk.starts.count(network_of(client_ip(request)))
    if wait is not None:
        return error_response(
            request,
            429,
            "rate_limited",
            f"Too many pairings started from this address; try again in {wait} seconds.",
            retry_after=wait,
        )
    store = request.app[SERVICES].store
    if await store.pairings.pending(desk.now()) >= desk.max_pending:
        log.warning("too many pairings waiting; refusing new ones", limit=desk.max_pending)
        return error_response(
            request,
            503,
            "pairing_busy",
            "Too many pairings are waiting for approval on this broker; try again in a minute.",
            retry_after=PENDING_RETRY,
        )
    name = (await _json_body(request)).get("name")
    if (
        not isinstance(name, str)
        or not name.strip()
        or not is_clean(name, MAX_CONNECTOR_NAME)
        or name.strip().isdigit()
    ):
        return error_response(
            request,
            400,
            "invalid_name",
            f'Send JSON {{"name": ...}}: the connector\'s name, 1 to {MAX_CONNECTOR_NAME}'
            " printable characters, not only digits (admin commands take those for ids).",
            param="name",
        )
    device, user = new_device_code(), new_user_code()
    pairing = await store.pairings.start(
        code_hash(device),
        code_hash(user.replace("-", "")),
        name.strip(),
        client_ip(request),
        desk.now(),
    )
    log.info("pairing started", connector=pairing.name, ip=pairing.ip, record=pairing.id)
    page = base_url(request) + "/pair"
    return web.json_response(
        {
            "device_code": device,
            "user_code": user,
            "verification_uri": page,
            "verification_uri_complete": f"{page}?code={user}",
            "interval": pairing.interval,
            "expires_in": round(pairing.expires - pairing.created),
        },
        headers={"Cache-Control": "no-store"},
    )


def poll_error(error: str, interval: int | None = None) -> web.Response:
    """An RFC 8628 section 3.5 error: 400 with `{"error": ..., "error_description": ...}`."""
    body: dict[str, Any] = {"error": error, "error_description": _DESCRIPTIONS[error]}
    if interval is not None:
        body["interval"] = interval
    return web.json_response(body, status=400, headers={"Cache-Control": "no-store"})


async def poll_endpoint(request: web.Request) -> web.Response:
    """`POST /pair/poll` with `{"device_code": ...}`: wait, refuse, or the connector's token."""
    device = (await _json_body(request)).get("device_code")
    if not isinstance(device, str) or not device:
        return poll_error("invalid_request")
    store = request.app[SERVICES].store
    polled = await store.pairings.poll(code_hash(device), request.app[PAIRING].now())
    if polled is None:
        return poll_error("invalid_grant")
    answer, pairing = polled
    if answer != "approved":
        return poll_error(answer, _interval_after(pairing, answer))
    raw, token = await mint_token(store, pairing)
    log.info("connector paired", connector=token.name, owner_id=token.owner_id, record=token.id)
    return web.json_response(
        {
            "connector_token": raw,
            "token_type": "connector",
            "name": token.name,
            "relay_url": relay_url(request),
        },
        headers={"Cache-Control": "no-store"},
    )


def _interval_after(pairing: Pairing, answer: PollAnswer) -> int | None:
    return next_interval(pairing, answer) if answer == "slow_down" else None


async def mint_token(store: Store, pairing: Pairing) -> tuple[str, ConnectorToken]:
    """The connector token of a collected pairing, owned by whoever approved it; its name is
    the pairing's, or with `-2`, `-3`, … when a live connector already has that name."""
    taken = {t.name for t in await store.connector_tokens() if t.revoked is None}
    name, number = pairing.name, 1
    while name in taken:
        number += 1
        name = f"{pairing.name}-{number}"
    raw, token = await store.create_connector_token(name, owner_id=pairing.user_id)
    await store.pairings.collected(pairing.id, token.id)
    return raw, token
