"""Connectors attached to other brokers of the cluster, as links of this broker's hub.

A `PeerLink` stands for one connector another broker holds (from that broker's record in
the registry, `broker.cluster.registry`): the hub routes to it exactly as to a local link
(least loaded, the holds, the gates), and the task driver (`broker.stream.trip`) opens a
stream on it as on any link. Its stream, a `PeerExchange`, is one HTTP/1.1 request to the
other broker's internal URL (`POST /internal/hop`, pooled keep-alive connections), signed
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

import aiohttp
import structlog
from multidict import CIMultiDict

from broker.cluster import hopauth
from broker.relay.gates import Gate
from broker.relay.link import Inbox
from broker.stream.headers import request_headers
from broker.stream.machine import HOP_ERROR, USER_BLOCKED, LinkLost
from shared import protocol as p

if TYPE_CHECKING:
    from broker.stream.call import Call

log = structlog.get_logger("remotellm.broker.cluster")

HOP_PATH: Final = "/internal/hop"
WINDOW: Final = 256 * 1024
"""Body bytes a hop reads ahead of what reached the client before it stops reading (then
TCP's own flow control holds the other broker, and so its connector)."""
CONNECT_TIMEOUT: Final = 5.0
RETRYABLE: Final = {"no_connector_available": "over_capacity", USER_BLOCKED: USER_BLOCKED}
"""Error codes of the other broker that mean "try another connector", and the connector
error each stands for in the stream machine."""


class Forwarder:
    """The HTTP client of the internal hop: one pool of keep-alive connections per broker."""

    def __init__(self, secret: str, idle_timeout: float = 30.0) -> None:
        self._secret = secret.encode()
        self._keepalive = idle_timeout / 2
        """Seconds an idle pooled connection is kept: well under the other brokers' own
        --idle-timeout (the same setting), so a request rarely meets one they just closed."""
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None:
            # An https internal URL is verified against the system's CAs (SSL_CERT_FILE and
            # SSL_CERT_DIR add a private one, as OpenSSL reads them).
            context = ssl.create_default_context()
            connector = aiohttp.TCPConnector(
                limit=0, ssl=context, keepalive_timeout=self._keepalive
            )
            session = self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,  # bytes pass as the connector sent them
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT),
            )
        return session

    def signed(self, call: Call, user: tuple[str, str]) -> dict[str, str]:
        """The hop's own headers for `call`, made for `user` (id and display name)."""
        encoded = hopauth.encode_user(user)
        target = call.target
        return {
            hopauth.HOP: hopauth.sign(self._secret, target, call.request_id, encoded, time.time()),
            hopauth.PRINCIPAL: encoded,
            hopauth.TARGET: target,
        }

    @property
    def secret(self) -> bytes:
        return self._secret

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


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

    def open(self, call: Call, body: bytes, user: tuple[str, str] = ("", "")) -> PeerExchange:
        """Forward the request to the broker holding the connector; its answer comes as events."""
        headers = CIMultiDict(request_headers(call.headers, call.request_id))
        headers.update(self.forwarder.signed(call, user))
        exchange = PeerExchange()
        exchange.start(self, headers, body)
        return exchange


class PeerExchange:
    """One forwarded request: its answer as stream events, read by a task."""

    __slots__ = ("_credit", "_pending", "_task", "events")

    def __init__(self) -> None:
        self.events = Inbox()
        self._pending = 0
        """Body bytes read from the hop that have not reached the client yet."""
        self._credit = asyncio.Event()
        self._credit.set()
        self._task: asyncio.Task[None] | None = None

    def start(self, link: PeerLink, headers: CIMultiDict[str], body: bytes) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(link, headers, body))

    async def _run(self, link: PeerLink, headers: CIMultiDict[str], body: bytes) -> None:
        events = self.events
        session = link.forwarder.session
        url = link.url + HOP_PATH
        try:
            try:
                response = await session.post(url, data=body, headers=headers)
            except aiohttp.ServerDisconnectedError:
                # A pooled connection the other broker closed while it was idle, as the request
                # left (its --idle-timeout is shorter than ours): once more, on a new one.
                response = await session.post(url, data=body, headers=headers)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning(
                "cannot reach the broker holding a connector", node=link.node, error=str(exc)
            )
            events.put_nowait(LinkLost(link.name))
            return
        try:
            code = response.headers.get(HOP_ERROR)
            if code in RETRYABLE:
                events.put_nowait(p.Error(0, RETRYABLE[code], ""))
                return
            head = tuple(
                (name.decode("latin-1"), value.decode("latin-1"))
                for name, value in response.raw_headers
                if name.lower() != b"x-remotellm-hop-error"
            )
            events.put_nowait(p.ResponseHead(0, response.status, head))
            content = response.content
            while True:
                chunk = await content.readany()
                if not chunk:
                    break
                events.put_nowait(p.ResponseBody(0, chunk))
                self._pending += len(chunk)
                if self._pending > WINDOW:
                    self._credit.clear()
                    await self._credit.wait()
            events.put_nowait(p.End(0))
        except (aiohttp.ClientError, OSError, TimeoutError):
            events.put_nowait(LinkLost(link.name))
            response.close()
        except BaseException:
            response.close()  # cancelled: the far broker sees its client leave
            raise
        else:
            response.release()

    def delivered(self, n: int) -> None:
        self._pending -= n
        if self._pending <= WINDOW:
            self._credit.set()

    def close(self, *, cancel: bool) -> None:
        task = self._task
        if task is not None and not task.done():
            task.cancel()
