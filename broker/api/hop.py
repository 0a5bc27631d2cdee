"""The internal hop's receiving end: a request another broker of the cluster forwarded here.

`POST /internal/hop` (cluster mode only) carries a request another broker admitted (its key,
limits and usage row are that broker's) for a model served by a connector attached here.
Signed with the cluster secret (`broker.cluster.hopauth`): without a signature 401, with a
wrong or stale one 403, and nothing reaches a connector. It is served from this broker's own
connectors only (never forwarded again, so no loops), by the same task driver and stream
machine as any request (`broker.stream.trip`), with the same retries and errors but no hold:
when its connectors are busy or gone it answers at once, with the code in `HOP_ERROR`, and
the forwarding broker tries another connector or holds the request itself
(`broker.cluster.forwarding`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Final

from aiohttp import web
from multidict import CIMultiDict

from broker.accounts.limits import Lease
from broker.accounts.principals import CONFIGURED_USER, Limits, Principal
from broker.api.admission import model_of
from broker.api.responses import error_response
from broker.cluster import hopauth
from broker.edge.aiohttpcall import AiohttpCall
from broker.services import SERVICES
from broker.stream.machine import HOP_ERROR, StreamMachine
from broker.stream.ticket import Ticket
from broker.stream.trip import Trip

_HOP_HEADERS: Final = (hopauth.HOP, hopauth.PRINCIPAL, hopauth.TARGET)
UNLIMITED: Final = Limits()


class HopCall(AiohttpCall):
    """A forwarded request as the request path sees it: the client's own path and headers."""

    __slots__ = ("_target",)

    def __init__(
        self, request: web.Request, body_timeout: float, stall_timeout: float, target: str
    ) -> None:
        super().__init__(request, body_timeout, stall_timeout)
        self._target = target
        kept = CIMultiDict(self._headers)
        for name in _HOP_HEADERS:
            kept.popall(name, None)
        self._headers = kept

    @property
    def path(self) -> str:
        return self._target.partition("?")[0]

    @property
    def target(self) -> str:
        return self._target

    @property
    def headers(self) -> Mapping[str, str]:
        return self._headers


def _principal(user: tuple[str, str]) -> Principal:
    user_id, name = user
    known = user_id.isascii() and user_id.isdigit() and user_id != CONFIGURED_USER
    return Principal(
        bucket="hop",
        limits=UNLIMITED,
        user_id=int(user_id) if known else None,
        display_name=name or None,
    )


def _local_port(request: web.Request) -> int | None:
    transport = request.transport
    name = transport.get_extra_info("sockname") if transport is not None else None
    return int(name[1]) if isinstance(name, tuple) and len(name) >= 2 else None


def _refused(request: web.Request, status: int) -> web.Response:
    """A hop without a good signature: said in `HOP_ERROR` too, so a broker of the cluster
    that sent it answers its client 502 (and logs why) instead of passing this on."""
    message = (
        "This is the cluster's internal route; it needs the cluster secret's signature."
        if status == 401
        else "The cluster signature is wrong, stale or already used; check that every broker"
        " has the same cluster secret and a synchronised clock."
    )
    code = "missing_cluster_signature" if status == 401 else "invalid_cluster_signature"
    response = error_response(request, status, code, message)
    response.headers[HOP_ERROR] = code
    return response


async def hop_endpoint(request: web.Request) -> web.StreamResponse:
    """POST /internal/hop: serve a forwarded request from this broker's own connectors."""
    services = request.app[SERVICES]
    member = services.cluster
    call_id = request.headers.get("X-Request-ID", "")
    if member is None:  # pragma: no cover - the route exists in cluster mode only
        raise web.HTTPNotFound()
    if member.private_port is not None and _local_port(request) != member.private_port:
        raise web.HTTPNotFound()  # answered as for any unknown path (broker.app)
    if not hopauth.signature_given(request.headers):
        return _refused(request, 401)
    settings = services.settings
    target = request.headers.get(hopauth.TARGET, "")
    call = HopCall(request, settings.body_timeout, settings.stall_timeout, target)
    started = time.perf_counter()
    machine = StreamMachine(call.method, call.path, call.request_id, started, hop=True)
    body = await call.read(settings.max_body_size)
    found = hopauth.verify(
        member.forwarder.secret,
        member.node.id,
        request.headers,
        call_id,
        body or b"",
        member.replays,
    )
    if isinstance(found, int):
        return _refused(request, found)
    model = model_of(body, call.path) if body is not None else None
    if body is None or model is None:
        message = "The forwarded request has no readable body or model."
        return error_response(request, 400, "invalid_request", message)
    principal = _principal(found)
    ticket = Ticket(principal, body, model, Lease(None), forwarded=True)
    peers = frozenset(member.peers)
    lifecycle = services.lifecycle
    if lifecycle.draining or not services.hub.serves(model, exclude=peers, user=ticket.user):
        # No connector here takes it now (it left, this broker stops, or the registry was
        # behind): the other broker tries another one, or holds it as it would its own.
        failure = machine.no_connector("offline", model)
        assert failure.reply is not None
        await call.reply(failure.status, *failure.reply)
        return call.response or web.Response(status=499)
    with lifecycle.request():
        trip = Trip(services, call, ticket, machine)
        services.metrics.in_flight.inc()
        await trip.resume(list(peers))
    return call.response or web.Response(status=499)
