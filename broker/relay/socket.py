"""The server side of a relay WebSocket on a bare `asyncio.Protocol`.

It only pumps: the upgrade head in and the 101 out (`shared.upgrade`), frames
through `shared.websocket`, pings, the heartbeat and the close handshake. What the
messages mean is the `Handler`'s business (the opening handshake, then the `ConnectorLink`).

An idle connection is this object, its reader, its transport and one heartbeat
timer: no task, no coroutine frame, no aiohttp request (memory per idle connector
is a measured target). Writes happen in one callback per loop iteration, and stop
while the transport is paused, so a connector that stops reading gets backpressure
instead of a broker buffering for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final, Protocol

from broker.api.errors import error_bytes
from shared import upgrade
from shared import websocket as ws
from shared.handshake import MAX_MESSAGE

MAX_HEAD: Final = 16 * 1024
"""Largest upgrade request head accepted (431 beyond)."""

CLOSE_TIMEOUT: Final = 2.0
"""Seconds the peer gets to answer our close frame before the connection is dropped."""

_HEAD: Final = 0  # reading the upgrade request
_ADMITTING: Final = 1  # the handler is deciding (reading paused)
_OPEN: Final = 2
_CLOSING: Final = 3  # our close frame is out; waiting for the peer's
_CLOSED: Final = 4

UPGRADE_HINT: Final = "This endpoint takes a WebSocket upgrade from a RemoteLLM connector"
_CODES: Final = {400: "invalid_upgrade", 426: "upgrade_required", 431: "request_head_too_large"}


class Handler(Protocol):
    """What a RelaySocket reports to, and asks for its next outgoing message."""

    def message(self, message: ws.Message) -> None:
        """A whole data message arrived."""

    def outgoing(self) -> bytes:
        """The next message to send, or b"" when nothing is queued."""

    def closed(self, why: str) -> None:
        """The connection is gone; `why` says how it ended."""


class RelaySocket(asyncio.Protocol):
    """One relay connection after the front saw `GET /relay`."""

    __slots__ = (
        "_buffer",
        "_close_timer",
        "_closed_waiter",
        "_drain_waiter",
        "_flush_pending",
        "_heard",
        "_heartbeat",
        "_key",
        "_on_upgrade",
        "_paused",
        "_pending_pong",
        "_ping_timer",
        "_pinged",
        "_reader",
        "_state",
        "_transport",
        "_why",
        "handler",
    )

    def __init__(
        self,
        transport: asyncio.Transport,
        handler: Handler,
        heartbeat: float,
        on_upgrade: Callable[[upgrade.RequestHead], None],
    ) -> None:
        """`on_upgrade` gets a valid upgrade request and calls accept() or refuse()."""
        self._transport = transport
        self.handler = handler
        self._on_upgrade: Callable[[upgrade.RequestHead], None] | None = on_upgrade
        self._heartbeat = heartbeat
        self._state = _HEAD
        self._buffer: bytearray | None = bytearray()
        self._key = ""
        self._reader: ws.FrameReader | None = None
        self._paused = False
        self._pending_pong: bytes | None = None
        """While paused, the payload of the latest ping: answered on resume (RFC 6455 5.5.3)."""
        self._flush_pending = False
        self._heard = False
        self._pinged = False
        self._ping_timer: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._closed_waiter: asyncio.Future[None] | None = None
        self._why = "connection lost"

    @property
    def peer(self) -> str | None:
        peername = self._transport.get_extra_info("peername")
        return str(peername[0]) if peername else None

    @property
    def open(self) -> bool:
        return self._state == _OPEN

    # -- asyncio.Protocol ---------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._heard = True
        state = self._state
        if state in (_OPEN, _CLOSING):
            self._frames(data)
        elif self._buffer is not None:
            # While admitting, a TLS transport may still hand over what it had decrypted.
            self._buffer += data
            if state == _HEAD:
                self._head()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = _CLOSED
        for timer in (self._ping_timer, self._close_timer):
            if timer is not None:
                timer.cancel()
        self._ping_timer = self._close_timer = None
        for waiter in (self._drain_waiter, self._closed_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        self.handler.closed(self._why)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        pong, self._pending_pong = self._pending_pong, None
        if pong is not None and self._state == _OPEN:
            self._transport.write(ws.encode_frame(ws.OP_PONG, pong, mask=False))
        self.want_write()

    # -- opening --------------------------------------------------------------------

    def _head(self) -> None:
        buffer = self._buffer
        assert buffer is not None
        try:
            found = upgrade.split_head(buffer, MAX_HEAD)
            if found is None:
                return
            head_bytes, size = found
            head = upgrade.parse_request_head(head_bytes)
            self._key = upgrade.upgrade_key(head)
        except upgrade.HandshakeError as exc:
            status = exc.status or 400
            extra = ("Upgrade: websocket", "Sec-WebSocket-Version: 13") if status == 426 else ()
            message = f"{UPGRADE_HINT} ({exc.reason})."
            self.refuse(error_bytes(status, _CODES.get(status, "invalid_upgrade"), message, extra))
            return
        del buffer[:size]
        self._state = _ADMITTING
        # Nothing is read while the handler decides (it may ask the store).
        self._transport.pause_reading()
        assert self._on_upgrade is not None
        self._on_upgrade(head)

    def accept(self) -> None:
        """Answer 101 and start reading frames (and whatever came after the head)."""
        if self._state != _ADMITTING:
            return
        self._transport.write(upgrade.server_accept(self._key))
        self._key = ""
        self._on_upgrade = None
        self._state = _OPEN
        self._reader = ws.FrameReader(masked=True, max_message=MAX_MESSAGE)
        rest, self._buffer = self._buffer, None
        loop = asyncio.get_running_loop()
        self._ping_timer = loop.call_later(self._heartbeat, self._tick)
        self._transport.resume_reading()
        if rest:
            self._frames(bytes(rest))

    def refuse(self, response: bytes, why: str = "refused") -> None:
        """Answer the upgrade request with a complete HTTP response and hang up."""
        if self._state >= _OPEN:
            return
        self._why = why
        self._state = _CLOSING
        self._buffer = None
        self._transport.write(response)
        self._transport.close()

    # -- frames ---------------------------------------------------------------------

    def _frames(self, data: bytes) -> None:
        reader = self._reader
        assert reader is not None
        try:
            events = reader.feed(data)
        except ws.WebSocketError as exc:
            # What the peer completed before breaking the rules still counts (a response's
            # last frames); then the reader is unusable: send the close frame and hang up.
            self._events(exc.events)
            if self._state == _OPEN:  # not already closing because of one of those events
                self._why = f"protocol error: {exc.reason}"
                self._transport.write(ws.encode_close(exc.code, exc.reason, mask=False))
            self._state = _CLOSING
            self._transport.close()
            return
        self._events(events)

    def _events(self, events: list[ws.Event]) -> None:
        for event in events:
            if self._state == _OPEN:
                if isinstance(event, ws.Message):
                    self.handler.message(event)
                elif isinstance(event, ws.Ping):
                    if self._paused:
                        # A peer that pings but does not read must not grow our buffer.
                        self._pending_pong = event.data
                    else:
                        self._transport.write(ws.encode_frame(ws.OP_PONG, event.data, mask=False))
                elif isinstance(event, ws.Close):
                    self._closed_by_peer(event)
            elif self._state == _CLOSING and isinstance(event, ws.Close):
                self._transport.close()
            # Pongs need nothing: any byte from the peer counts for the heartbeat.

    def _closed_by_peer(self, event: ws.Close) -> None:
        self._why = "closed"
        self._state = _CLOSING
        if event.code == ws.CLOSE_NO_STATUS:
            answer = ws.encode_frame(ws.OP_CLOSE, b"", mask=False)
        else:
            answer = ws.encode_close(event.code, mask=False)
        self._transport.write(answer)
        self._transport.close()

    def send(self, message: bytes) -> None:
        """Write one binary message now, ahead of anything the handler has queued."""
        if self._state == _OPEN:
            self._transport.write(ws.encode_frame(ws.OP_BINARY, message, mask=False))

    def want_write(self) -> None:
        """The handler queued something: flush once this loop iteration is done."""
        if not self._flush_pending and not self._paused and self._state == _OPEN:
            self._flush_pending = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        transport, outgoing = self._transport, self.handler.outgoing
        # Whatever was queued meanwhile leaves in one message; a paused transport
        # (the peer is not reading) stops us until resume_writing().
        while self._state == _OPEN and not self._paused:
            message = outgoing()
            if not message:
                break
            transport.write(ws.encode_frame(ws.OP_BINARY, message, mask=False))
        else:
            return
        waiter = self._drain_waiter
        if waiter is not None:
            self._drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def drained(self) -> None:
        """Wait until the handler's queue has been handed to the transport (or the end)."""
        if self._state == _CLOSED:
            return
        if self._drain_waiter is None:
            self._drain_waiter = asyncio.get_running_loop().create_future()
        self.want_write()
        await asyncio.shield(self._drain_waiter)

    # -- closing --------------------------------------------------------------------

    def close(self, code: int, reason: str, why: str | None = None) -> None:
        """Start the closing handshake; the peer gets CLOSE_TIMEOUT s to answer."""
        if why is not None:
            self._why = why
        if self._state != _OPEN:
            if self._state < _OPEN:
                self.abort(why)
            return
        self._state = _CLOSING
        self._transport.write(ws.encode_close(code, reason, mask=False))
        loop = asyncio.get_running_loop()
        self._close_timer = loop.call_later(CLOSE_TIMEOUT, self._transport.abort)

    def abort(self, why: str | None = None) -> None:
        """Drop the connection at once, without a closing handshake."""
        if why is not None:
            self._why = why
        if self._state != _CLOSED:
            self._state = _CLOSING
        self._transport.abort()

    async def wait_closed(self) -> None:
        """Return once the connection is gone."""
        if self._state == _CLOSED:
            return
        if self._closed_waiter is None:
            self._closed_waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._closed_waiter)

    def _tick(self) -> None:
        """Heartbeat: ping, and drop a peer that sent nothing for a whole interval since."""
        if self._pinged and not self._heard:
            self.abort(f"no answer to a ping within {self._heartbeat:g} s")
            return
        self._pinged = True
        self._heard = False
        if self._state == _OPEN:
            self._transport.write(ws.encode_frame(ws.OP_PING, b"", mask=False))
        self._ping_timer = asyncio.get_running_loop().call_later(self._heartbeat, self._tick)
