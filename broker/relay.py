"""The connectors' WebSocket endpoint: pumps frames between the socket and open streams.

One `ConnectorLink` per connected connector. Its reader decodes messages and
hands each stream frame to the `Exchange` waiting for it; its writer drains the
link's `Outbox`, batching whatever is ready into one message.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import structlog
from aiohttp import WSMsgType, web

from broker import keyformat
from broker.auth import presented_key
from broker.errors import error_response
from broker.hub import Hub
from broker.keys import CONNECTOR_TOKENS, HUB, LINKS, METRICS, SETTINGS, STORE
from shared import protocol as p
from shared.flow import ReceiveCredit
from shared.handshake import HANDSHAKE_TIMEOUT, MAX_MESSAGE, Refused, accept_hello, check_sender
from shared.outbox import Outbox

log = structlog.get_logger("remotellm.broker.relay")

GOAWAY_TIMEOUT = 2.0


class LinkLost(Exception):
    """The connector went away while the stream was open."""


StreamEvent = p.ResponseHead | p.ResponseBody | p.End | p.Error | LinkLost


@dataclass(eq=False)
class Exchange:
    """The broker's end of one stream: events from the connector, in order."""

    stream_id: int
    link: ConnectorLink
    window: int
    events: asyncio.Queue[StreamEvent] = field(default_factory=asyncio.Queue)
    credit: ReceiveCredit = field(init=False)
    closed: bool = False

    def __post_init__(self) -> None:
        self.credit = ReceiveCredit(self.window)

    def delivered(self, n: int) -> None:
        """`n` body bytes reached the client: give the connector credit back."""
        increment = self.credit.consumed(n)
        if increment and not self.closed:
            self.link.send(p.WindowUpdate(self.stream_id, increment))

    def close(self, *, cancel: bool) -> None:
        """Forget the stream; tell the connector to abort it if it may still be running."""
        if self.closed:
            return
        self.closed = True
        self.link.forget(self.stream_id, cancel=cancel)


class ConnectorLink:
    """One connected connector, as the hub and the API handlers see it."""

    __slots__ = (
        "_closed",
        "_ids",
        "_outbox",
        "_streams",
        "_transport",
        "_writer",
        "_ws",
        "draining",
        "max_concurrency",
        "models",
        "name",
        "since",
        "token_id",
        "window",
    )

    def __init__(
        self,
        ws: web.WebSocketResponse,
        hello: p.Hello,
        window: int,
        transport: asyncio.Transport | None = None,
    ) -> None:
        self._ws = ws
        self._transport = transport
        self.name = hello.name
        self.token_id: int | None = None  # the store's connector token, if it used one
        self.since = time.time()
        self.models: frozenset[str] = frozenset(hello.models)
        self.max_concurrency = hello.max_concurrency
        self.draining = False
        self.window = window
        self._outbox = Outbox()
        self._writer: asyncio.Task[None] | None = None
        self._streams: dict[int, Exchange] = {}
        self._ids = itertools.count(1)
        self._closed = False

    def __repr__(self) -> str:
        return f"<ConnectorLink {self.name!r} models={sorted(self.models)}>"

    # -- used by API handlers -----------------------------------------------------

    def open(
        self, method: str, path: str, headers: p.Headers, request_id: str, body: bytes
    ) -> Exchange:
        """Start a stream carrying one request; the reply arrives on the Exchange."""
        if self._closed:
            raise LinkLost(self.name)
        stream_id = next(self._ids)
        exchange = Exchange(stream_id, self, self.window)
        self._streams[stream_id] = exchange
        self._outbox.put(p.RequestHead(stream_id, method, path, headers, request_id))
        for frame in p.split_body(stream_id, body, response=False):
            self._outbox.put(frame)
        self._outbox.put(p.End(stream_id))
        self._kick()
        return exchange

    def send(self, frame: p.Frame) -> None:
        if not self._closed:
            self._outbox.put(frame)
            self._kick()

    def forget(self, stream_id: int, *, cancel: bool) -> None:
        if self._streams.pop(stream_id, None) is not None and cancel:
            self._outbox.discard(stream_id)
            self.send(p.Cancel(stream_id))

    # -- pumping ------------------------------------------------------------------

    def _kick(self) -> None:
        """Make sure a writer is draining the outbox.

        The writer exists only while there is something to send, so an idle link
        costs no task (memory per idle connector is a measured target).
        """
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        try:
            # Whatever was queued while a message was being sent leaves in the next one.
            while self._outbox and not self._closed:
                await self._ws.send_bytes(self._outbox.take())
        except ConnectionError:
            # The reader notices the closed socket and fails the open streams.
            self._closed = True

    async def flushed(self) -> None:
        """Return once everything queued so far has been handed to the socket."""
        while self._writer is not None and not self._writer.done():
            await asyncio.wait({self._writer})

    async def stopped(self) -> None:
        """Wait for the writer to finish after lost()."""
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)

    def receive(self, frames: Iterable[p.Frame]) -> bool:
        """Apply decoded frames; return True when the hub's view of the link changed."""
        changed = False
        for frame in frames:
            check_sender(frame, "connector")
            match frame:
                case p.ResponseBody(stream_id, data):
                    exchange = self._streams.get(stream_id)
                    if exchange is not None:
                        exchange.credit.received(len(data))
                        exchange.events.put_nowait(frame)
                case p.ResponseHead(stream_id) | p.End(stream_id) | p.Error(stream_id):
                    exchange = self._streams.get(stream_id)
                    if exchange is not None:
                        exchange.events.put_nowait(frame)
                case p.ModelsUpdate(models):
                    self.models = frozenset(models)
                    changed = True
                case p.GoAway(reason):
                    log.info("connector going away", connector=self.name, reason=reason)
                    self.draining = True
                    changed = True
        return changed

    def lost(self) -> None:
        """The socket is gone: fail every open stream so its handler can retry or report."""
        self._closed = True
        if self._writer is not None:
            self._writer.cancel()
        for exchange in self._streams.values():
            exchange.closed = True
            exchange.events.put_nowait(LinkLost(self.name))
        self._streams.clear()

    async def go_away(self, reason: str, reconnect_after: float) -> None:
        """Tell the connector to reconnect later, flush briefly, and close the socket.

        Bounded in time: a connector that stopped reading cannot hold up a shutdown.
        """
        if self._closed:
            return
        self.send(p.GoAway(reason, reconnect_after))
        try:
            async with asyncio.timeout(GOAWAY_TIMEOUT):
                await self.flushed()
                await self._ws.close(
                    code=p.CLOSE_GOING_AWAY, message=p.close_reason(reason).encode()
                )
        except TimeoutError:
            log.warning("connector did not take the going-away; dropping it", connector=self.name)
            self.abort()

    def abort(self) -> None:
        """Drop the connection at once, without a closing handshake."""
        self.lost()
        transport = self._transport
        if transport is not None:
            transport.abort()


async def go_away_all(links: Iterable[ConnectorLink], reason: str) -> None:
    """Send every connector away at once (each bounded by GOAWAY_TIMEOUT)."""
    await asyncio.gather(*(link.go_away(reason, 1.0) for link in links))


async def _handshake(ws: web.WebSocketResponse) -> p.Hello | None:
    """Read and check the connector's hello; on failure close as the rules say, return None."""
    try:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            msg = await ws.receive()
    except TimeoutError:
        await ws.close(code=p.CLOSE_HANDSHAKE_TIMEOUT, message=b"no hello within 10 s")
        return None
    data = msg.data if msg.type in (WSMsgType.BINARY, WSMsgType.TEXT) else ""
    try:
        return accept_hello(data)
    except Refused as refusal:
        log.warning("connector refused", reason=refusal.reason)
        await ws.close(code=refusal.code, message=refusal.reason.encode())
        return None


async def relay_endpoint(request: web.Request) -> web.StreamResponse:
    """GET /relay: authenticate the connector, then pump its socket until it closes."""
    app = request.app
    token = await _connector_token(app, presented_key(request.headers))
    if token is None:
        return error_response(
            request, 401, "invalid_connector_token", "The connector token is missing or invalid."
        )
    ws = web.WebSocketResponse(
        heartbeat=app[SETTINGS].heartbeat, max_msg_size=MAX_MESSAGE, compress=False
    )
    await ws.prepare(request)
    hello = await _handshake(ws)
    if hello is None:
        return ws
    link = ConnectorLink(ws, hello, p.DEFAULT_WINDOW, request.transport)
    await ws.send_bytes(p.encode(p.Welcome(p.PROTOCOL_VERSION, link.window)))
    link.token_id = token.id
    reason = "connection lost"
    try:
        _attach(app, link)
        if token.id is not None:
            await _seen(app, token.id)
        log.info(
            "connector connected",
            connector=link.name,
            peer=request.remote,
            models=sorted(link.models),
            max_concurrency=link.max_concurrency,
        )
        reason = await _pump(ws, link, app[HUB])
    finally:
        # Bookkeeping first: the handler may be cancelled again while it awaits below.
        link.lost()
        _detach(app, link)
        log.info("connector disconnected", connector=link.name, reason=reason)
        await link.stopped()
        if token.id is not None:
            await _seen(app, token.id)
    return ws


async def _seen(app: web.Application, token_id: int) -> None:
    """Note when a connector token was last used; a store failure is logged, never fatal."""
    try:
        await asyncio.shield(app[STORE].connector_seen(token_id, time.time()))
    except Exception as exc:  # the store may be busy or down; the link must not care
        log.warning("cannot note the connector's last-seen time", error=str(exc))


@dataclass(frozen=True)
class _Admitted:
    id: int | None  # None: a token from the settings, not the store


async def _connector_token(app: web.Application, presented: str | None) -> _Admitted | None:
    if not presented:
        return None
    if app[CONNECTOR_TOKENS].accepts(presented):
        return _Admitted(None)
    if not keyformat.well_formed(presented, keyformat.CONNECTOR_TOKEN_PREFIX):
        return None
    found = await app[STORE].connector_for(keyformat.fingerprint(presented))
    return _Admitted(found.id) if found is not None else None


async def _pump(ws: web.WebSocketResponse, link: ConnectorLink, hub: Hub) -> str:
    """Feed the connector's messages to its link until the socket closes; say why it ended."""
    try:
        async for msg in ws:
            if msg.type is WSMsgType.ERROR:
                return f"connection error: {ws.exception()}"
            if msg.type is not WSMsgType.BINARY:
                raise p.ProtocolError("only binary messages are allowed")
            if link.receive(p.decode(msg.data)):
                hub.models_changed(link)
    except p.ProtocolError as exc:
        log.warning("connector protocol error", connector=link.name, error=str(exc))
        await ws.close(code=p.CLOSE_PROTOCOL_ERROR, message=p.close_reason(str(exc)).encode())
        return f"protocol error: {exc}"
    return "closed"


def _attach(app: web.Application, link: ConnectorLink) -> None:
    app[LINKS].add(link)
    app[HUB].register(link)
    app[METRICS].connectors.set(len(app[HUB].links))


def _detach(app: web.Application, link: ConnectorLink) -> None:
    app[HUB].unregister(link)
    app[LINKS].discard(link)
    app[METRICS].connectors.set(len(app[HUB].links))
