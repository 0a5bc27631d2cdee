"""The connectors' relay link: pumps frames between a connector's socket and open streams.

One `ConnectorLink` per connected connector. It decodes the messages its
`RelaySocket` hands over and gives each stream frame to the `Exchange` waiting
for it; what it sends waits in its `Outbox` until the socket's next flush, which
batches whatever is ready into one message. `_Opening` is a connection before
that: the connector token, then the hello/welcome handshake.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web
from multidict import CIMultiDict

from broker import keyformat
from broker.auth import presented_key
from broker.errors import error_bytes
from broker.hub import Hub
from broker.keys import CONNECTOR_TOKENS, HUB, LINKS, METRICS, SETTINGS, STORE
from broker.websocket import RelaySocket
from shared import protocol as p
from shared import upgrade
from shared import websocket as ws
from shared.flow import ReceiveCredit
from shared.handshake import HANDSHAKE_TIMEOUT, Refused, accept_hello, check_sender
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
        "_relay",
        "_socket",
        "_streams",
        "draining",
        "max_concurrency",
        "models",
        "name",
        "since",
        "token_id",
        "window",
    )

    def __init__(
        self, relay: Relay, socket: RelaySocket, hello: p.Hello, window: int, token_id: int | None
    ) -> None:
        self._relay = relay
        self._socket = socket
        self.name = hello.name
        self.token_id = token_id  # the store's connector token, if it used one
        self.since = time.time()
        self.models: frozenset[str] = frozenset(hello.models)
        self.max_concurrency = hello.max_concurrency
        self.draining = False
        self.window = window
        self._outbox = Outbox()
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
        self._socket.want_write()
        return exchange

    def send(self, frame: p.Frame) -> None:
        if not self._closed:
            self._outbox.put(frame)
            self._socket.want_write()

    def forget(self, stream_id: int, *, cancel: bool) -> None:
        if self._streams.pop(stream_id, None) is not None and cancel:
            self._outbox.discard(stream_id)
            self.send(p.Cancel(stream_id))

    # -- pumping (called by the socket) -------------------------------------------

    def outgoing(self) -> bytes:
        return self._outbox.take() if self._outbox and not self._closed else b""

    def message(self, message: ws.Message) -> None:
        try:
            if message.text:
                raise p.ProtocolError("only binary messages are allowed")
            changed = self.receive(p.decode(message.data))
        except p.ProtocolError as exc:
            log.warning("connector protocol error", connector=self.name, error=str(exc))
            reason = p.close_reason(str(exc))
            self._socket.close(p.CLOSE_PROTOCOL_ERROR, reason, f"protocol error: {exc}")
            return
        if changed:
            self._relay.hub.models_changed(self)

    def closed(self, why: str) -> None:
        self.lost()
        self._relay.detach(self)
        log.info("connector disconnected", connector=self.name, reason=why)
        if self.token_id is not None:
            self._relay.spawn(self._relay.seen(self.token_id))

    async def flushed(self) -> None:
        """Return once everything queued so far has been handed to the socket."""
        while self._outbox and not self._closed:
            await self._socket.drained()

    async def stopped(self) -> None:
        """Kept for callers of the writer-task era: a link has no task to wait for."""

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
                self._socket.close(p.CLOSE_GOING_AWAY, p.close_reason(reason), reason)
                await self._socket.wait_closed()
        except TimeoutError:
            log.warning("connector did not take the going-away; dropping it", connector=self.name)
            self.abort()

    def abort(self) -> None:
        """Drop the connection at once, without a closing handshake."""
        self.lost()
        self._socket.abort()


async def go_away_all(links: Iterable[ConnectorLink], reason: str) -> None:
    """Send every connector away at once (each bounded by GOAWAY_TIMEOUT)."""
    await asyncio.gather(*(link.go_away(reason, 1.0) for link in links))


class Relay:
    """What every relay connection of one broker shares; the front hands connections to it."""

    __slots__ = ("_opening", "_tasks", "app", "hub", "stopping")

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.hub: Hub = app[HUB]
        self._opening: set[_Opening] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.stopping = False
        """The broker is stopping: new relay connections are dropped, not admitted."""

    def connection(self, transport: asyncio.Transport, received: bytes) -> RelaySocket:
        """Serve a connection whose next bytes (`received` so far) are a `GET /relay`."""
        opening = _Opening(self)
        socket = RelaySocket(transport, opening, self.app[SETTINGS].heartbeat, opening.upgrade)
        opening.socket = socket
        self._opening.add(opening)
        transport.set_protocol(socket)
        if self.stopping:
            socket.abort("broker stopping")
            return socket
        socket.data_received(received)
        return socket

    async def take_over(self, request: web.Request) -> web.StreamResponse:
        """An upgrade on a connection aiohttp already served (a proxy reusing a pooled one).

        The connection leaves aiohttp for the same lean link as a first request gets: the
        upgrade head is rebuilt from the request and the socket's protocol swapped. The
        handler then only waits for the link to end, and hands the end to aiohttp's own
        protocol, which no longer sees the socket, so it forgets the connection too.
        """
        transport = request.transport
        if transport is None or transport.is_closing():
            return web.Response(status=499)
        head = b"".join(
            (
                f"{request.method} {request.raw_path} HTTP/1.1\r\n".encode("latin-1"),
                *(name + b": " + value + b"\r\n" for name, value in request.raw_headers),
                b"\r\n",
            )
        )
        # Bytes a client sent right behind the upgrade (its hello, say) are still in aiohttp's
        # parser; without them the handshake would wait for a hello that already came.
        tail = getattr(request.protocol, "_message_tail", b"")
        socket = self.connection(transport, head + bytes(tail or b""))
        try:
            await socket.wait_closed()
        except asyncio.CancelledError:
            socket.abort("broker stopping")
            raise
        # What aiohttp writes now goes nowhere: the socket is closed and no longer its own.
        request.protocol.connection_lost(None)
        return web.Response(status=101)

    def attach(self, link: ConnectorLink) -> None:
        app = self.app
        app[LINKS].add(link)
        self.hub.register(link)
        app[METRICS].connectors.set(len(self.hub.links))

    def detach(self, link: ConnectorLink) -> None:
        app = self.app
        self.hub.unregister(link)
        app[LINKS].discard(link)
        app[METRICS].connectors.set(len(self.hub.links))

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a short background step, held until it ends (and awaited by settle())."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def seen(self, token_id: int) -> None:
        """Note when a connector token was last used; a store failure is logged, never fatal."""
        try:
            await self.app[STORE].connector_seen(token_id, time.time())
        except Exception as exc:  # the store may be busy or down; the link must not care
            log.warning("cannot note the connector's last-seen time", error=str(exc))

    def close_opening(self) -> None:
        """Drop every connection still in its handshake, and any that comes later."""
        self.stopping = True
        for opening in list(self._opening):
            opening.socket.abort("broker stopping")

    async def settle(self) -> None:
        """Wait for the background steps (store updates) still running."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class _Opening:
    """A relay connection from its upgrade request to the connector's hello."""

    __slots__ = ("_admitting", "_relay", "_timer", "_token_id", "socket")

    socket: RelaySocket

    def __init__(self, relay: Relay) -> None:
        self._relay = relay
        self._token_id: int | None = None
        self._admitting: asyncio.Task[None] | None = None
        # The head, the token check and the hello each get HANDSHAKE_TIMEOUT.
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(HANDSHAKE_TIMEOUT, self._expired)

    def upgrade(self, head: upgrade.RequestHead) -> None:
        presented = presented_key(CIMultiDict(head.headers))
        self._admitting = asyncio.get_running_loop().create_task(self._admit(presented))

    async def _admit(self, presented: str | None) -> None:
        socket = self.socket
        try:
            token = await _connector_token(self._relay.app, presented)
        except Exception as exc:  # the store is down: the connector retries later
            log.error("cannot check a connector token", error=str(exc))
            message = "The broker cannot check the connector token right now; try again later."
            socket.refuse(error_bytes(503, "store_unavailable", message), "store unavailable")
            return
        if token is None:
            message = "The connector token is missing or invalid."
            socket.refuse(error_bytes(401, "invalid_connector_token", message), "refused")
            return
        self._token_id = token.id
        self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(HANDSHAKE_TIMEOUT, self._expired)
        socket.accept()

    def _expired(self) -> None:
        if self.socket.open:
            self.socket.close(p.CLOSE_HANDSHAKE_TIMEOUT, "no hello within 10 s", "no hello")
        else:
            self.socket.abort("no upgrade request in time")

    def message(self, message: ws.Message) -> None:
        try:
            hello = accept_hello(
                message.data.decode(errors="replace") if message.text else message.data
            )
        except Refused as refusal:
            log.warning("connector refused", reason=refusal.reason)
            self.socket.close(refusal.code, refusal.reason, refusal.reason)
            return
        relay, socket = self._relay, self.socket
        self._done()
        link = ConnectorLink(relay, socket, hello, p.DEFAULT_WINDOW, self._token_id)
        socket.handler = link
        socket.send(p.encode(p.Welcome(p.PROTOCOL_VERSION, link.window)))
        relay.attach(link)
        if link.token_id is not None:
            relay.spawn(relay.seen(link.token_id))
        log.info(
            "connector connected",
            connector=link.name,
            peer=socket.peer,
            models=sorted(link.models),
            max_concurrency=link.max_concurrency,
        )

    def outgoing(self) -> bytes:
        return b""

    def closed(self, why: str) -> None:
        self._done()
        if self._admitting is not None:
            self._admitting.cancel()

    def _done(self) -> None:
        self._timer.cancel()
        self._relay._opening.discard(self)


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
