"""Connectors attached to other brokers of the cluster, as links of this broker's hub.

A `PeerLink` stands for one connector another broker holds (from that broker's record in
the registry, `broker.cluster.registry`): the hub routes to it exactly as to a local link
(least loaded, the holds, the gates), and the task driver (`broker.stream.trip`) opens a
stream on it as on any link. Its stream, a `PeerExchange`, is one HTTP/1.1 request to the
other broker's internal URL (`POST /internal/hop`, pooled keep-alive connections of
`broker.cluster.hopclient`), signed
with the cluster secret (`broker.cluster.hopauth`); the other broker serves it from its own
connectors only (`broker.api.hop`) and streams the answer back, which becomes the same
events a connector's stream gives: a head, body bytes, the end, an error, or the link lost.
Closing the exchange early closes the hop's connection, which the other broker takes as its
client leaving: it cancels the generation on its connector.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

import structlog

from broker.cluster import hopauth
from broker.cluster.hopclient import HopConnection, HopPool
from broker.relay.gates import Gate
from broker.relay.link import Inbox, Sink
from broker.stream.headers import request_headers
from broker.stream.machine import HOP_ERROR, USER_BLOCKED, LinkLost, StreamEvent
from shared import protocol as p
from shared.http1 import Headers, request_bytes

if TYPE_CHECKING:
    from broker.stream.call import Call

log = structlog.get_logger("remotellm.broker.cluster")

HOP_PATH: Final = "/internal/hop"
WINDOW: Final = 256 * 1024
"""Body bytes a hop reads ahead of what reached the client before it stops reading (then
TCP's own flow control holds the other broker, and so its connector)."""
_HOP_ERROR: Final = HOP_ERROR.lower()
REFUSED_SIGNATURE: Final = frozenset({"missing_cluster_signature", "invalid_cluster_signature"})
"""The other broker's codes for a hop it does not trust."""
RETRYABLE: Final = {"no_connector_available": "over_capacity", USER_BLOCKED: USER_BLOCKED}
"""Error codes of the other broker that mean "try another connector", and the connector
error each stands for in the stream machine."""


class Forwarder:
    """The internal hop's client side: its signature, and its pool of keep-alive connections."""

    def __init__(self, secret: str, idle_timeout: float = 30.0) -> None:
        self._secret = secret.encode()
        # Idle connections are kept well under the other brokers' own --idle-timeout (the same
        # setting), so a request rarely meets one they just closed.
        self.pool = HopPool(keepalive=idle_timeout / 2)

    def signed(
        self, call: Call, user: tuple[str, str], node: str, body: bytes
    ) -> list[tuple[str, str]]:
        """The hop's own headers for `call` with `body`, made for `user` (id and display
        name), good only at the broker `node`."""
        encoded = hopauth.encode_user(user)
        target = call.target
        secret, request_id = self._secret, call.request_id
        return [
            (
                hopauth.HOP,
                hopauth.sign(secret, node, target, request_id, encoded, body, time.time()),
            ),
            (hopauth.PRINCIPAL, encoded),
            (hopauth.TARGET, target),
        ]

    @property
    def secret(self) -> bytes:
        return self._secret

    async def close(self) -> None:
        self.pool.close()


class PeerLink:
    """A connector attached to another broker: what the hub needs, and a way to reach it."""

    __slots__ = (
        "draining",
        "elsewhere",
        "forwarder",
        "gate",
        "key",
        "max_concurrency",
        "models",
        "name",
        "node",
        "token_id",
        "url",
    )

    def __init__(self, forwarder: Forwarder, node: str, url: str, key: str) -> None:
        self.forwarder = forwarder
        self.node = node
        """The id of the broker holding it."""
        self.url = url
        """That broker's internal URL."""
        self.key = key
        """Its id within that broker's record."""
        self.name = ""
        self.token_id: int | None = None
        self.models: frozenset[str] = frozenset()
        self.max_concurrency = 1
        self.draining = False
        self.gate: Gate | None = None
        self.elsewhere = 0
        """Slots in use on it besides the ones this broker's hub handed out."""

    remote = True
    """Reached over the internal hop (`broker.relay.hub.Link.remote`)."""

    def __repr__(self) -> str:
        return f"<PeerLink {self.name!r} on {self.node}>"

    @property
    def gone(self) -> bool:
        """Never known closed here: a broker that went away fails the hop (a lost link)."""
        return False

    def open(self, call: Call, body: bytes, user: tuple[str, str] = ("", "")) -> PeerExchange:
        """Forward the request to the broker holding the connector; its answer comes as events."""
        headers = (
            *request_headers(call.headers, call.request_id),
            *self.forwarder.signed(call, user, self.node, body),
        )
        payload = request_bytes("POST", HOP_PATH, urlsplit(self.url).netloc, headers, body)
        exchange = PeerExchange(self, payload)
        exchange.start()
        return exchange


class PeerExchange:
    """One forwarded request: its answer as stream events, from the connection's callbacks."""

    __slots__ = (
        "_connection",
        "_done",
        "_link",
        "_owed",
        "_paused",
        "_payload",
        "_pending",
        "_reused",
        "_skip",
        "_task",
        "events",
        "sink",
    )

    def __init__(self, link: PeerLink, payload: bytes) -> None:
        self.events = Inbox()
        self.sink: Sink | None = None
        """Takes the events as they come (`broker.stream.callbacktrip`); else they wait in
        `events` for a task (`broker.stream.trip`)."""
        self._owed = False
        self._link = link
        self._payload = payload
        self._connection: HopConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._pending = 0
        """Body bytes handed on that have not reached the client yet."""
        self._paused = False
        self._done = False
        self._reused = False
        """The connection was an idle one from the pool (`on_lost`)."""
        self._skip = False
        """The other broker answered a retryable error: its body is not the client's."""

    def start(self) -> None:
        connection = self._link.forwarder.pool.idle(self._link.url)
        if connection is not None:
            self._reused = True
            self._send(connection)
        else:
            self._task = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        link = self._link
        try:
            connection = await link.forwarder.pool.connect(link.url)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            log.warning(
                "cannot reach the broker holding a connector", node=link.node, error=str(exc)
            )
            self._lost()
            return
        self._send(connection)

    def _send(self, connection: HopConnection) -> None:
        self._connection = connection
        connection.send(self, self._payload)

    # -- the connection's callbacks -------------------------------------------------------

    def on_head(self, status: int, headers: Headers) -> None:
        code = next((v for k, v in headers if k.lower() == _HOP_ERROR), None)
        if code in REFUSED_SIGNATURE:
            # Never the client's answer: the cluster is misconfigured (secrets or clocks
            # differ). Said loudly, and the request is tried elsewhere as after a lost link.
            log.error(
                "a broker of the cluster refused this broker's signature; check that every"
                " broker has the same --cluster-secret and a synchronised clock",
                node=self._link.node,
                code=code,
            )
            self._skip = True
            self._lost()
            return
        if code in RETRYABLE:
            self._skip = True
            self._put(p.Error(0, RETRYABLE[code], ""))
            return
        if code is not None:
            headers = tuple((k, v) for k, v in headers if k.lower() != _HOP_ERROR)
        self._put(p.ResponseHead(0, status, headers))

    def on_body(self, data: bytes) -> None:
        if self._skip:
            return
        self._put(p.ResponseBody(0, data))
        self._pending += len(data)
        if self._pending > WINDOW and not self._paused and self._connection is not None:
            self._paused = True
            self._connection.pause()

    def on_end(self) -> None:
        self._done = True
        self._connection = None
        if not self._skip:
            self._put(p.End(0))

    def on_lost(self, answered: bool) -> None:
        self._connection = None
        if not answered and self._reused:
            # A kept-alive connection the other broker closed as the request left (idle past
            # its --idle-timeout): once more, on a new one. Never after a new connection that
            # closed: the other broker may have started the generation, so the request could
            # run twice.
            self._reused = False
            self._task = asyncio.get_running_loop().create_task(self._connect())
            return
        self._lost()

    def _lost(self) -> None:
        self._done = True
        self._put(LinkLost(self._link.name))
        self.on_flush()

    def _put(self, event: StreamEvent) -> None:
        sink = self.sink
        if sink is None:
            self.events.put_nowait(event)
        else:
            sink.event(event)
            self._owed = True

    def on_flush(self) -> None:
        sink = self.sink
        if self._owed and sink is not None:
            self._owed = False
            sink.flush()

    # -- the task driver's side -------------------------------------------------------------

    def delivered(self, n: int) -> None:
        self._pending -= n
        if self._paused and self._pending <= WINDOW and self._connection is not None:
            self._paused = False
            self._connection.resume()

    def close(self, *, cancel: bool) -> None:
        """The stream is over for this broker: a hop still open is closed, which the other
        broker takes as its client leaving (it cancels the generation)."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()
        connection, self._connection = self._connection, None
        if connection is not None and not self._done:
            connection.release()
