"""One connected connector as the broker sees it: its streams, and the frames between them.

One `ConnectorLink` per connected connector. It decodes the messages its
`RelaySocket` hands over and gives each stream frame to the `Exchange` waiting
for it; what it sends waits in its `Outbox` until the socket's next flush, which
batches whatever is ready into one message. The links are made and kept by
`broker.relay.admission.Relay`.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from broker.relay.gates import Gate, gate_for
from broker.relay.hub import Link
from broker.relay.socket import RelaySocket
from broker.stream.headers import request_headers
from broker.stream.machine import LinkLost, StreamEvent
from shared import protocol as p
from shared import websocket as ws
from shared.flow import ReceiveCredit
from shared.handshake import Refused, check_blocked, check_models, check_sender, servable
from shared.outbox import Outbox
from shared.text import shown

if TYPE_CHECKING:
    from broker.relay.hub import Hub
    from broker.stream.call import Call

log = structlog.get_logger("remotellm.broker.relay")

GOAWAY_TIMEOUT = 2.0


class Keeper(Protocol):
    """What keeps the links (`broker.relay.admission.Relay`), told when one changes or ends."""

    @property
    def hub(self) -> Hub: ...

    def detach(self, link: ConnectorLink) -> None:
        """The link has closed: it serves nothing from now on."""

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a short background step (a store update)."""

    async def seen(self, token_id: int) -> None:
        """Note when a connector token was last used."""


class Unsendable(Exception):
    """The request cannot be put on the relay (its head is more than a frame may carry)."""


class Inbox:
    """One stream's events in arrival order, for the one task that reads them.

    What `asyncio.Queue` would do here, without its locks and events: one reader, no bound
    (the connector's stream credit bounds what can arrive).
    """

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: collections.deque[StreamEvent] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, event: StreamEvent) -> None:
        self._items.append(event)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    def get_nowait(self) -> StreamEvent:
        """The oldest event (IndexError when there is none)."""
        return self._items.popleft()

    async def get(self) -> StreamEvent:
        """The oldest event, once there is one."""
        while not self._items:
            waiter = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                if self._waiter is waiter:
                    self._waiter = None  # cancelled while waiting
        return self._items.popleft()


class Sink(Protocol):
    """Who takes a stream's events as they come, instead of its inbox
    (`broker.stream.callbacktrip`)."""

    def event(self, event: StreamEvent) -> None: ...

    def flush(self) -> None:
        """The relay message that carried the last events is done: write what they gave."""


class Opened(Protocol):
    """One stream as its drivers read it (`Exchange`, or a forwarded request's:
    `broker.cluster.forwarding`): from `events` (a task), or through `sink` (callbacks)."""

    sink: Sink | None

    @property
    def events(self) -> Inbox: ...

    def delivered(self, n: int) -> None:
        """`n` body bytes reached the client: the sender may send more."""

    def close(self, *, cancel: bool) -> None:
        """The stream is over for the broker (`cancel`: the far side must stop it)."""


class Route(Link, Protocol):
    """Where the hub may send a request: a connector attached here (`ConnectorLink`) or one
    attached to another broker of the cluster (`broker.cluster.forwarding.PeerLink`)."""

    @property
    def token_id(self) -> int | None: ...

    @property
    def gone(self) -> bool:
        """Closed already (the hub may still list it for a moment)."""

    def open(self, call: Call, body: bytes, user: tuple[str, str] = ("", "")) -> Opened:
        """Send the request (raises `Unsendable`, or `LinkLost` when the link just went)."""


@dataclass(eq=False)
class Exchange:
    """The broker's end of one stream: events from the connector, in order."""

    stream_id: int
    link: ConnectorLink
    window: int
    events: Inbox = field(default_factory=Inbox)
    credit: ReceiveCredit = field(init=False)
    closed: bool = False
    sink: Sink | None = None
    """Takes the events as they come, when set; else they wait in `events`."""

    def __post_init__(self) -> None:
        self.credit = ReceiveCredit(self.window)

    def deliver(self, event: StreamEvent) -> Sink | None:
        """Hand an event on; returns the sink that took it, if one did."""
        sink = self.sink
        if sink is None:
            self.events.put_nowait(event)
        else:
            sink.event(event)
        return sink

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
        "_admitted",
        "_blocked",
        "_closed",
        "_ids",
        "_left_out",
        "_outbox",
        "_relay",
        "_sent_away",
        "_socket",
        "_streams",
        "draining",
        "gate",
        "max_concurrency",
        "models",
        "name",
        "since",
        "token_id",
        "window",
    )

    elsewhere = 0
    """Slots used on it that this broker's hub did not hand out: none (`broker.relay.hub.Link`)."""
    remote = False
    """Attached here, not to another broker of the cluster."""

    def __init__(
        self, relay: Keeper, socket: RelaySocket, hello: p.Hello, window: int, token_id: int | None
    ) -> None:
        self._relay = relay
        self._socket = socket
        self.name = hello.name
        self.token_id = token_id  # the store's connector token, if it used one
        self.since = time.time()
        self._left_out: frozenset[str] = frozenset()
        self.models: frozenset[str] = self._servable(hello.models)
        self.max_concurrency = hello.max_concurrency
        self.draining = False
        self.window = window
        self._outbox = Outbox()
        self._streams: dict[int, Exchange] = {}
        self._ids = itertools.count(1)
        self._closed = False
        self._sent_away: str | None = None
        self._admitted: frozenset[int] | None = None
        """The user ids its owner's rule admits (None: everyone), from `broker.relay.gates`."""
        self._blocked = hello.blocked_users
        """The user ids the connector refuses itself."""
        self.gate: Gate | None = gate_for(None, self._blocked)
        """Who the hub may send here (None: everyone)."""

    @property
    def blocked_users(self) -> tuple[str, ...]:
        """The user ids the connector said it refuses (its hello, then BLOCKED frames)."""
        return self._blocked

    def admit(self, admitted: frozenset[int] | None) -> bool:
        """Apply the user ids the owner's rule admits; True when the gate changed."""
        self._admitted = admitted
        return self._regate()

    def _regate(self) -> bool:
        gate = gate_for(self._admitted, self._blocked)
        if gate == self.gate:
            return False
        self.gate = gate
        return True

    def __repr__(self) -> str:
        return f"<ConnectorLink {self.name!r} models={sorted(self.models)}>"

    @property
    def open_streams(self) -> int:
        """Streams opened on the link and not yet over."""
        return len(self._streams)

    @property
    def gone(self) -> bool:
        """The socket has closed (the hub may list the link a moment longer)."""
        return self._closed

    # -- used by API handlers -----------------------------------------------------

    def open(self, call: Call, body: bytes, user: tuple[str, str] = ("", "")) -> Exchange:
        """Start a stream carrying one request (`call`'s head, its headers as they are passed
        on, `body`, and the `user` id and display name it comes from); the reply arrives on
        the Exchange.

        Raises LinkLost when the link has closed, and Unsendable (with nothing left behind)
        when the request cannot be encoded.
        """
        if self._closed:
            raise LinkLost(self.name)
        request_id = call.request_id
        headers = request_headers(call.headers, request_id)
        stream_id = next(self._ids)
        exchange = Exchange(stream_id, self, self.window)
        self._streams[stream_id] = exchange
        try:
            self._outbox.put(
                p.RequestHead(stream_id, call.method, call.target, headers, request_id, *user)
            )
            for frame in p.split_body(stream_id, body, response=False):
                self._outbox.put(frame)
            self._outbox.put(p.End(stream_id))
        except ValueError as exc:  # what the encoder raises for a frame too large; else a bug
            # Nothing of a stream that was never sent may stay: neither its entry, which
            # only a disconnect would free, nor the frames queued before the failure.
            del self._streams[stream_id]
            self._outbox.discard(stream_id)
            raise Unsendable(f"{type(exc).__name__}: {exc}") from exc
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
        except Refused as refusal:
            log.warning("connector refused", connector=self.name, reason=refusal.reason)
            self._socket.close(refusal.code, refusal.reason, refusal.reason)
            return
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
        sinks: dict[int, Sink] = {}
        try:
            for frame in frames:
                changed = self._apply(frame, sinks) or changed
        finally:
            for sink in sinks.values():
                sink.flush()
        return changed

    def _apply(self, frame: p.Frame, sinks: dict[int, Sink]) -> bool:
        check_sender(frame, "connector")
        changed = False
        match frame:
            case p.ResponseBody(stream_id, data):
                exchange = self._streams.get(stream_id)
                if exchange is not None:
                    exchange.credit.received(len(data))
                    sink = exchange.deliver(frame)
                    if sink is not None:
                        sinks[id(sink)] = sink
            case p.ResponseHead(stream_id) | p.End(stream_id) | p.Error(stream_id):
                exchange = self._streams.get(stream_id)
                if exchange is not None:
                    sink = exchange.deliver(frame)
                    if sink is not None:
                        sinks[id(sink)] = sink
            case p.ModelsUpdate(models):
                check_models(models)
                self.models = self._servable(models)
                changed = True
            case p.Blocked(users):
                check_blocked(users)
                self._blocked = users
                changed = self._regate() or changed
            case p.GoAway(reason):
                log.info("connector going away", connector=self.name, reason=reason)
                self.draining = True
                changed = True
        return changed

    def _servable(self, announced: tuple[str, ...]) -> frozenset[str]:
        """The announced models the broker serves; names that are not clean text are left out.

        Such a name could not be encoded in a JSON answer, a metric label or a log line. It is
        logged once (until the connector announces another set of such names).
        """
        kept, unclean = servable(announced)
        left_out = frozenset(unclean)
        if left_out and left_out != self._left_out:
            log.warning(
                "connector announced model names that are not clean text; left them out",
                connector=self.name,
                count=len(left_out),
                models=sorted(shown(model) for model in left_out)[:10],
            )
        self._left_out = left_out
        return frozenset(kept)

    def lost(self) -> None:
        """The socket is gone: fail every open stream so its handler can retry or report."""
        self._closed = True
        exchanges = list(self._streams.values())
        self._streams.clear()
        for exchange in exchanges:
            exchange.closed = True
            sink = exchange.deliver(LinkLost(self.name, self._sent_away))
            if sink is not None:
                sink.flush()

    async def go_away(self, reason: str, reconnect_after: float) -> None:
        """Tell the connector to reconnect later, flush briefly, and close the socket.

        Bounded in time: a connector that stopped reading cannot hold up a shutdown.
        """
        if self._closed:
            return
        self._sent_away = reason
        self.send(p.GoAway(reason, reconnect_after))
        try:
            async with asyncio.timeout(GOAWAY_TIMEOUT):
                await self.flushed()
                self._socket.close(p.CLOSE_GOING_AWAY, p.close_reason(reason), reason)
                await self._socket.wait_closed()
        except TimeoutError:
            log.warning("connector did not take the going-away; dropping it", connector=self.name)
            self.abort()

    def shut_out(self, reason: str) -> None:
        """Close the link now with 1008 (policy violation) and `reason`, for a connector that may
        serve no more (its token was revoked): out of routing at once, its open streams fail as
        on a lost link (to be retried elsewhere), and the connector logs `reason`. A dial with
        the same token is then refused as revoked, and the connector stops dialing.
        """
        if self._closed:
            return
        self._sent_away = reason
        self.lost()
        self._relay.detach(self)
        log.warning("connector shut out", connector=self.name, reason=reason)
        self._socket.close(p.CLOSE_POLICY_VIOLATION, p.close_reason(reason), reason)

    def abort(self) -> None:
        """Drop the connection at once, without a closing handshake."""
        self.lost()
        self._socket.abort()


async def go_away_all(links: Iterable[ConnectorLink], reason: str) -> None:
    """Send every connector away at once (each bounded by GOAWAY_TIMEOUT)."""
    await asyncio.gather(*(link.go_away(reason, 1.0) for link in links))
