"""The broker's relay connections: admitting connectors, and the links they become.

The front hands every `GET /relay` connection to `Relay.connection`. `_Opening` is
such a connection before it is a link: the upgrade request and its connector
token, then the hello/welcome handshake. After the hello it becomes a
`ConnectorLink` (`broker.relay.link`), registered with the hub until it closes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web
from multidict import CIMultiDict

from broker.accounts import keyformat
from broker.accounts.credentials import Credentials, bearer_token
from broker.accounts.store import Store
from broker.api.errors import error_bytes
from broker.edge import handover
from broker.metrics import Metrics
from broker.relay import gates
from broker.relay.hub import Hub
from broker.relay.link import ConnectorLink
from broker.relay.socket import RelaySocket
from shared import protocol as p
from shared import upgrade
from shared import websocket as ws
from shared.handshake import HANDSHAKE_TIMEOUT, TOKEN_REVOKED, Refused, accept_hello

log = structlog.get_logger("remotellm.broker.relay")

WELCOME_FEATURES = (p.FEATURE_BLOCKED,)
"""What the broker's welcome says it takes beyond version 1's frames."""

LOGGED_MODELS = 50
"""Models named in a connector's "connected" line; up to MAX_MODELS would make it huge."""
REVOKED_MESSAGE = (
    "This connector's token was revoked by its owner or the broker's admin; pair the connector"
    " again to serve through this broker."
)


class Relay:
    """What every relay connection of one broker shares; the front hands connections to it."""

    __slots__ = (
        "_opening",
        "_read_groups",
        "_refreshing",
        "_store",
        "_tasks",
        "heartbeat",
        "hub",
        "links",
        "metrics",
        "stopping",
        "tokens",
    )

    def __init__(
        self,
        hub: Hub,
        metrics: Metrics,
        tokens: Credentials,
        store: Callable[[], Store],
        heartbeat: float,
        *,
        read_groups: bool = False,
    ) -> None:
        self.hub = hub
        self.metrics = metrics
        self.tokens = tokens
        """The connector tokens given in the settings (the store holds the others)."""
        self._store = store
        """The broker's store, which opens at start-up: asked for when a token needs it."""
        self.heartbeat = heartbeat
        self._read_groups = read_groups
        """Users' GitLab groups are read at sign-in: without it, group rules admit the owner only
        (memberships recorded before are not used)."""
        self.links: set[ConnectorLink] = set()
        """The connectors attached now."""
        self._opening: set[_Opening] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._refreshing = asyncio.Lock()
        self.stopping = False
        """The broker is stopping: new relay connections are dropped, not admitted."""

    def connection(self, transport: asyncio.Transport, received: bytes) -> RelaySocket:
        """Serve a connection whose next bytes (`received` so far) are a `GET /relay`."""
        opening = _Opening(self)
        socket = RelaySocket(transport, opening, self.heartbeat, opening.upgrade)
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

        The connection leaves aiohttp for the same lean link as a first request gets
        (`broker.edge.handover` rebuilds the upgrade head and takes the bytes behind it),
        and the socket's protocol is swapped. The handler then only waits for the link to
        end, and hands the end back to aiohttp's protocol, so it forgets the connection too.
        """
        taken = handover.from_aiohttp(request)
        if taken is None:
            return web.Response(status=499)
        socket = self.connection(taken.transport, taken.received)
        try:
            await socket.wait_closed()
        except asyncio.CancelledError:
            socket.abort("broker stopping")
            raise
        handover.back_to_aiohttp(request)
        return web.Response(status=101)

    def attach(self, link: ConnectorLink) -> None:
        self.links.add(link)
        self.hub.register(link)
        self.metrics.connectors.set(len(self.links))
        if link.token_id is not None:
            # Its rule was read at the token check, up to a handshake ago: read it again, so
            # a change saved meanwhile applies now, not at the next periodic refresh.
            self.spawn(self._refresh_after_attach())

    def detach(self, link: ConnectorLink) -> None:
        self.hub.unregister(link)
        self.links.discard(link)
        self.metrics.connectors.set(len(self.links))

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a short background step, held until it ends (and awaited by settle())."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def seen(self, token_id: int) -> None:
        """Note when a connector token was last used; a store failure is logged, never fatal."""
        try:
            await self._store().connector_seen(token_id, time.time())
        except Exception as exc:  # the store may be busy or down; the link must not care
            log.warning("cannot note the connector's last-seen time", error=str(exc))

    async def _refresh_after_attach(self) -> None:
        try:
            await self.refresh_gates()
        except Exception as exc:  # the periodic refresh tries again
            log.warning("cannot read the connectors' access rules", error=str(exc))

    async def refresh_gates(self) -> None:
        """Read the owners' rules of the connected connectors again, and route by them.

        One refresh at a time: the one started last reads last and so applies last, and an
        older read (the periodic one) cannot undo a rule the portal has just saved."""
        async with self._refreshing:
            links = {link: link.token_id for link in self.links if link.token_id is not None}
            found = await gates.admitted(
                self._store(),
                {t for t in links.values() if t is not None},
                groups=self._read_groups,
            )
            for link, token_id in links.items():
                if token_id in found and link.admit(found[token_id]):
                    self.hub.models_changed(link)

    async def connector_token(self, presented: str | None) -> _Admitted | None:
        """The connector token `presented`, when it admits a connector; None when it does not."""
        if not presented:
            return None
        if self.tokens.accepts(presented):
            return _Admitted(None)
        if not keyformat.well_formed(presented, keyformat.CONNECTOR_TOKEN_PREFIX):
            return None
        store = self._store()
        found = await store.connector_for(keyformat.fingerprint(presented), revoked=True)
        if found is None:
            return None
        if found.revoked is not None:
            return _Admitted(found.id, None, revoked=True)
        rule = await gates.admitted(store, [found.id], groups=self._read_groups)
        return _Admitted(found.id, rule[found.id])

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

    __slots__ = ("_admitted", "_admitting", "_relay", "_timer", "_token_id", "socket")

    socket: RelaySocket

    def __init__(self, relay: Relay) -> None:
        self._relay = relay
        self._token_id: int | None = None
        self._admitted: frozenset[int] | None = None
        self._admitting: asyncio.Task[None] | None = None
        # The head, the token check and the hello each get HANDSHAKE_TIMEOUT.
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(HANDSHAKE_TIMEOUT, self._expired)

    def upgrade(self, head: upgrade.RequestHead) -> None:
        presented = bearer_token(CIMultiDict(head.headers))
        self._admitting = asyncio.get_running_loop().create_task(self._admit(presented))

    async def _admit(self, presented: str | None) -> None:
        socket = self.socket
        try:
            token = await self._relay.connector_token(presented)
        except Exception as exc:  # the store is down: the connector retries later
            log.error("cannot check a connector token", error=str(exc))
            message = "The broker cannot check the connector token right now; try again later."
            socket.refuse(error_bytes(503, "store_unavailable", message), "store unavailable")
            return
        if token is None:
            message = "The connector token is missing or invalid."
            socket.refuse(error_bytes(401, "invalid_connector_token", message), "refused")
            return
        if token.revoked:
            # Said apart from an unknown token: the connector stops dialing for good.
            socket.refuse(error_bytes(401, TOKEN_REVOKED, REVOKED_MESSAGE), "token revoked")
            return
        self._token_id = token.id
        self._admitted = token.admitted
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
        link.admit(self._admitted)  # before the hub knows it: no request slips past its rule
        socket.handler = link
        socket.send(p.encode(p.Welcome(p.PROTOCOL_VERSION, link.window, WELCOME_FEATURES)))
        relay.attach(link)
        if link.token_id is not None:
            relay.spawn(relay.seen(link.token_id))
        log.info(
            "connector connected",
            connector=link.name,
            peer=socket.peer,
            models=sorted(link.models)[:LOGGED_MODELS],
            model_count=len(link.models),
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
    admitted: frozenset[int] | None = None
    """The user ids its owner's rule admits (None: everyone)."""
    revoked: bool = False
