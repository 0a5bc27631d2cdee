"""The relay client: one outbound WebSocket to the broker, kept up with backoff.

It connects, says hello, and pumps frames between the socket and the streams it
serves (`connector_app.core.streams`): each request the broker sends goes to the
local LLM, and its answer streams back within the stream's flow-control window.
A lost link is dialled again after a backoff with jitter, at most
`backoff.RECONNECT_WINDOW` seconds apart unless retrying cannot help; a broker's
going-away says when.
"""

from __future__ import annotations

import asyncio
import ssl

import structlog

from connector_app.core.activity import RequestEvents
from connector_app.core.backoff import Backoff
from connector_app.core.failures import describe_failure, is_fatal, is_revoked
from connector_app.core.llm import LocalLLM
from connector_app.core.status import LinkState, StatusBoard
from connector_app.core.streams import Streams
from connector_app.core.wire import LinkClosed, Wire, open_wire
from shared import protocol as p
from shared.handshake import HANDSHAKE_TIMEOUT, Refused, accept_welcome, check_sender
from shared.outbox import Outbox

log = structlog.get_logger("remotellm.connector")

STABLE_AFTER = 10.0
"""A connection that lived this long resets the backoff."""


class RelayClient:
    """Keeps one connection to the broker and serves the requests that arrive on it."""

    def __init__(
        self,
        *,
        url: str,
        token: str,
        name: str,
        max_concurrency: int,
        llm: LocalLLM,
        board: StatusBoard,
        backoff: Backoff | None = None,
        heartbeat: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
        events: RequestEvents | None = None,
    ) -> None:
        self._url = url
        self._token = token
        self._name = name
        self._max_concurrency = max_concurrency
        self._board = board
        self._backoff = backoff or Backoff()
        self._heartbeat = heartbeat
        self._ssl = ssl_context
        self._stopping = asyncio.Event()
        self._wire: Wire | None = None
        self._outbox = Outbox()
        self._streams = Streams(
            llm=llm,
            board=board,
            events=events or RequestEvents(),
            max_concurrency=max_concurrency,
            send=self._send,
            discard=lambda stream_id: self._outbox.discard(stream_id),
        )
        self._goaway_after: float | None = None
        self._features: tuple[str, ...] = ()
        """What the connected broker's welcome said it takes beyond version 1's frames."""

    # -- public ---------------------------------------------------------------

    @property
    def models(self) -> tuple[str, ...]:
        return self._board.status.models

    @property
    def paused(self) -> bool:
        return self._streams.paused

    def set_paused(self, paused: bool) -> None:
        """Pause sharing or resume it. Paused, the connector announces no models, so the
        broker routes new requests elsewhere (or answers as for any model nobody serves);
        running ones finish. A request already on its way is refused as over capacity."""
        if paused == self._streams.paused:
            return
        log.info("sharing paused" if paused else "sharing resumed")
        self._streams.paused = paused
        if self._wire is not None:
            self._send(p.ModelsUpdate(self._announced()))

    def _announced(self) -> tuple[str, ...]:
        """The models the broker is told about: none while paused."""
        return () if self._streams.paused else self.models

    def set_blocked(self, users: frozenset[str]) -> None:
        """The user ids whose new requests are refused (`user_blocked`), from now on; a
        connected broker that takes BLOCKED frames is told, and routes around them."""
        if users == self._streams.blocked:
            return
        self._streams.blocked = users
        if self._wire is not None and p.FEATURE_BLOCKED in self._features:
            self._send(p.Blocked(tuple(sorted(users))))

    def set_models(self, models: tuple[str, ...]) -> None:
        """Change the served models; a connected broker is told at once."""
        if models == self.models:
            return
        log.info("models changed", models=list(models))
        self._board.update(models=models)
        if self._wire is not None and not self._streams.paused:
            self._send(p.ModelsUpdate(models))

    async def run(self) -> None:
        """Connect, serve, reconnect with backoff; returns after `stop()`, or when the broker
        refuses the token as revoked (the status then stays DISCONNECTED, fatal, with why)."""
        loop = asyncio.get_running_loop()
        first = True
        while not self._stopping.is_set():
            self._board.update(
                state=LinkState.CONNECTING if first else LinkState.RECONNECTING, retry_in=None
            )
            first = False
            started = loop.time()
            error: str | None = None
            fatal = revoked = False
            try:
                await self._connection()
            except Exception as exc:
                error = describe_failure(exc)
                fatal = is_fatal(exc)
                revoked = is_revoked(exc)
            except BaseException:  # cancelled
                await self._streams.abort()
                raise
            await self._streams.abort()
            if self._stopping.is_set():
                break
            if revoked:
                # No dial with this token can succeed: stop, and say so until a person acts.
                self._board.update(
                    state=LinkState.DISCONNECTED, last_error=error, fatal=True, retry_in=None
                )
                log.error("relay link refused for good; not dialing again", error=error)
                return
            if loop.time() - started >= STABLE_AFTER:
                self._backoff.reset()
            if self._goaway_after is not None:
                delay = self._goaway_after + self._backoff.next() / 4
                self._goaway_after = None
                error = error or "the broker asked us to reconnect"
            else:
                # A refused token or TLS failure waits for a person (the slow ceiling); a
                # lost link waits for the broker, which may be back any second.
                delay = self._backoff.next(fatal)
                error = error or "the broker closed the connection"
            self._board.update(
                state=LinkState.RECONNECTING,
                last_error=error,
                fatal=fatal,
                retry_in=round(delay, 2),
            )
            log.warning("relay link down", error=error, retry_in_s=round(delay, 2))
            try:
                async with asyncio.timeout(delay):
                    await self._stopping.wait()
            except TimeoutError:
                pass
        self._board.update(state=LinkState.DISCONNECTED, retry_in=None)

    async def stop(self, grace: float) -> None:
        """Take no new requests, let in-flight ones finish (bounded), then disconnect."""
        self._streams.draining = True
        if self._wire is not None and len(self._streams):
            self._send(p.GoAway("connector shutting down", 0.0))
            log.info("draining", in_flight=len(self._streams), grace_s=grace)
            try:
                async with asyncio.timeout(grace):
                    await self._streams.idle.wait()
            except TimeoutError:
                log.warning("grace period over; abandoning requests", in_flight=len(self._streams))
        self._stopping.set()
        wire = self._wire
        if wire is not None:
            await wire.close(p.CLOSE_GOING_AWAY, "connector shutting down")

    # -- one connection --------------------------------------------------------

    async def _connection(self) -> None:
        outbox = Outbox()
        wire = await open_wire(
            self._url,
            token=self._token,
            ssl_context=self._ssl,
            heartbeat=self._heartbeat,
            outbox=outbox,
        )
        try:
            blocked = self._streams.blocked
            hello = p.Hello(
                p.PROTOCOL_VERSION,
                self._name,
                self._announced(),
                self._max_concurrency,
                tuple(sorted(blocked)),
            )
            wire.send(p.encode(hello))
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                reply = await wire.recv()
            try:
                welcome = accept_welcome(reply)
            except Refused as refusal:
                await wire.close(refusal.code, refusal.reason)
                raise
            self._streams.window = welcome.window
            self._features = welcome.features
            self._outbox = outbox
            self._wire = wire
            self._board.update(
                state=LinkState.CONNECTED, last_error=None, fatal=False, retry_in=None
            )
            if self._announced() != hello.models:
                # The models changed, or sharing was paused, while the handshake was in flight.
                self._send(p.ModelsUpdate(self._announced()))
            if self._streams.blocked != blocked and p.FEATURE_BLOCKED in self._features:
                self._send(p.Blocked(tuple(sorted(self._streams.blocked))))
            log.info("connected to broker", url=self._url, models=list(self.models))
            if self._stopping.is_set() or self._streams.draining:
                await wire.close()
                return
            wire.deliver(self._on_message)
            try:
                await wire.wait_closed()
            except LinkClosed as closed:
                if not closed.clean:
                    raise
        finally:
            self._wire = None
            wire.abort()

    def _on_message(self, message: bytes) -> None:
        """Handle one message from the broker, in the socket's callback."""
        try:
            for frame in p.decode(message):
                check_sender(frame, "broker")
                if isinstance(frame, p.GoAway):
                    log.info(
                        "broker going away",
                        reason=frame.reason,
                        reconnect_after_s=frame.reconnect_after,
                    )
                    self._goaway_after = frame.reconnect_after
                else:
                    self._streams.on_frame(frame)
        except p.ProtocolError as exc:
            wire = self._wire
            if wire is not None:
                wire.fail(exc, p.CLOSE_PROTOCOL_ERROR, p.close_reason(str(exc)))

    def _send(self, frame: p.Frame) -> None:
        self._outbox.put(frame)
        wire = self._wire
        if wire is not None:
            wire.flush_soon()
