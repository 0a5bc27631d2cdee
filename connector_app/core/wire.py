"""The connector's end of the relay link: a WebSocket client on a bare asyncio protocol.

Measured, websockets' send and receive machinery was about a quarter of the
connector's CPU per relayed request. The link needs little of it (binary messages,
ping/pong, the close handshake; `shared/websocket.py` has the framing and
`shared/upgrade.py` the opening handshake), so `Wire`
only pumps: received bytes through a `FrameReader` to a callback, and the
`Outbox`'s messages to the socket, one masked frame per `take()`, flushed at most
once per loop iteration and only while the transport takes more.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections import deque
from collections.abc import Callable
from typing import Final, cast

from connector_app.core.proxy import ProxyError, check_connect_answer, connect_request, proxy_for
from connector_app.core.target import Target, parse_ws_url
from connector_app.core.trust import client_context
from connector_app.core.wakeup import Wakeup
from shared import upgrade
from shared import websocket as ws
from shared.handshake import HANDSHAKE_TIMEOUT, MAX_MESSAGE
from shared.outbox import Outbox

USER_AGENT: Final = "remotellm-connector"
MAX_HEAD: Final = 64 * 1024
"""Largest HTTP head (a proxy's or the broker's answer) accepted."""

CLOSE_TIMEOUT: Final = 2.0
MAX_REFUSAL_BODY: Final = 8 * 1024
"""Largest body of a refused upgrade that is read for its message."""
REFUSAL_BODY_WAIT: Final = 2.0
_CONTENT_LENGTH: Final = re.compile(rb"(?im)^content-length:[ \t]*(\d+)[ \t]*\r?$")
"""Seconds to wait for the broker's answer to our close frame."""

_HEAD, _OPEN, _CLOSING, _CLOSED = range(4)


class LinkClosed(Exception):
    """The link ended: `code` and `reason` are from the broker's close frame (None: none came)."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"{code} {reason}".rstrip() if code is not None else reason)
        self.code = code
        self.reason = reason

    @property
    def clean(self) -> bool:
        """The broker closed normally (1000) or because it is going away (1001)."""
        return self.code in (ws.CLOSE_NORMAL, ws.CLOSE_GOING_AWAY)


async def open_wire(
    url: str,
    *,
    token: str,
    user_agent: str = USER_AGENT,
    ssl_context: ssl.SSLContext | None = None,
    heartbeat: float | None = None,
    outbox: Outbox | None = None,
    timeout: float = HANDSHAKE_TIMEOUT,
) -> Wire:
    """Connect (through the environment's proxy, if any), upgrade, and return the open link.

    A `wss://` link without `ssl_context` trusts the system's store (`core.trust`).
    Everything up to the broker's 101 happens within `timeout` (TimeoutError). A refused
    upgrade raises `HandshakeError` with the HTTP status; TLS failures `ssl.SSLError`;
    an unusable proxy `ProxyError`; an unreachable broker `OSError`.
    """
    target = parse_ws_url(url)
    if ssl_context is None and target.secure:
        ssl_context = client_context()
    wire = Wire(outbox if outbox is not None else Outbox(), heartbeat)
    headers = {"Authorization": f"Bearer {token}", "User-Agent": user_agent}
    try:
        async with asyncio.timeout(timeout):
            await wire._open(target, headers, ssl_context if target.secure else None)
    except BaseException:
        wire.abort()
        raise
    return wire


class Wire(asyncio.Protocol):
    """One client WebSocket connection to the broker."""

    def __init__(self, outbox: Outbox, heartbeat: float | None) -> None:
        self.outbox = outbox
        self._loop = asyncio.get_running_loop()
        self._heartbeat = heartbeat
        self._transport: asyncio.Transport | None = None
        self._state = _HEAD
        self._buffer = bytearray()
        """Bytes of the HTTP heads, before the WebSocket is open."""
        self._reader = ws.FrameReader(masked=False, max_message=MAX_MESSAGE)
        self._on_message: Callable[[bytes], None] | None = None
        self._pending: deque[bytes] = deque()
        """Messages that arrived before `deliver()` named a callback."""
        self._wakeup = Wakeup()
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._error: BaseException | None = None
        self._paused = False
        self._flush_scheduled = False
        self._heard = False
        self._pinged = False
        self._timer: asyncio.TimerHandle | None = None

    # -- opening -------------------------------------------------------------

    async def _open(
        self, target: Target, headers: dict[str, str], context: ssl.SSLContext | None
    ) -> None:
        loop = self._loop
        hostname = target.host if context is not None else None
        proxy = proxy_for(target.host, target.port, secure=target.secure)
        if proxy is None:
            await loop.create_connection(
                lambda: self, target.host, target.port, ssl=context, server_hostname=hostname
            )
        else:
            try:
                await loop.create_connection(lambda: self, proxy.host, proxy.port)
            except OSError as unreachable:
                reason = unreachable.strerror or str(unreachable) or type(unreachable).__name__
                raise ProxyError(
                    f"cannot reach the proxy at {proxy.address} ({reason})"
                ) from unreachable
            self._write(connect_request(proxy, target.host, target.port, headers["User-Agent"]))
            closed = ProxyError(f"the proxy at {proxy.address} closed the connection")
            check_connect_answer(proxy, await self._read_head(closed))
            if context is not None:
                transport = await loop.start_tls(
                    self._transport_now(), self, context, server_hostname=hostname
                )
                if transport is None:  # pragma: no cover - the transport closed meanwhile
                    raise ConnectionResetError("the connection closed during the TLS handshake")
                self._transport = transport
        key = upgrade.new_key()
        self._write(upgrade.client_request(target.host_header, target.resource, key, headers))
        eof = upgrade.HandshakeError(
            "the broker closed the connection before answering the upgrade"
        )
        head = await self._read_head(eof)
        try:
            upgrade.check_response(head, key)
        except upgrade.HandshakeError as exc:
            if exc.status is None or exc.status == 101:
                raise
            # The broker says why in a small JSON body; keep it for the operator's message.
            body = await self._refusal_body(head)
            raise upgrade.HandshakeError(exc.reason, exc.status, body) from None
        self._state = _OPEN
        early, self._buffer = bytes(self._buffer), bytearray()
        if self._heartbeat:
            self._timer = loop.call_later(self._heartbeat, self._beat)
        if early:
            self.data_received(early)

    def _transport_now(self) -> asyncio.Transport:
        if self._transport is None:  # pragma: no cover - only called once connected
            raise ConnectionResetError("not connected")
        return self._transport

    async def _refusal_body(self, head: bytes) -> bytes:
        """The body of a refusal, when it is small and arrives with it or soon after."""
        found = _CONTENT_LENGTH.search(head)
        size = int(found.group(1)) if found else 0
        if not 0 < size <= MAX_REFUSAL_BODY:
            return b""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(REFUSAL_BODY_WAIT):
                while len(self._buffer) < size and self._state != _CLOSED:
                    await self._wakeup.wait()
        return bytes(self._buffer[:size])

    async def _read_head(self, eof: Exception) -> bytes:
        while True:
            try:
                found = upgrade.split_head(self._buffer, MAX_HEAD)
            except upgrade.HandshakeError:
                raise upgrade.HandshakeError("the answer's HTTP head is too large") from None
            if found is not None:
                head, size = found
                del self._buffer[:size]
                return head
            if self._state == _CLOSED:
                raise eof
            await self._wakeup.wait()

    # -- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but are one.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._heard = True
        if self._state == _HEAD:
            self._buffer += data
            self._wakeup.wake()
            return
        try:
            events = self._reader.feed(data)
        except ws.WebSocketError as exc:
            # What the broker completed before breaking the rules still counts.
            self._events(exc.events)
            self.fail(exc, exc.code, exc.reason)
            return
        self._events(events)

    def _events(self, events: list[ws.Event]) -> None:
        for event in events:
            if type(event) is ws.Message:
                if self._state != _OPEN:
                    continue  # closing: what the broker sent meanwhile has nowhere to go
                if event.text:
                    error = ws.WebSocketError(
                        ws.CLOSE_PROTOCOL_ERROR, "only binary messages are allowed"
                    )
                    self.fail(error, error.code, error.reason)
                elif self._on_message is None:
                    self._pending.append(event.data)
                    self._wakeup.wake()
                else:
                    try:
                        self._on_message(event.data)
                    except Exception as exc:
                        self.fail(exc, 1011, "internal error")
            elif type(event) is ws.Ping:
                if self._state == _OPEN:
                    self._write(ws.encode_frame(ws.OP_PONG, event.data, mask=True))
            elif type(event) is ws.Close:
                self._closing_frame(event)

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost says why

    def connection_lost(self, exc: Exception | None) -> None:
        state, self._state = self._state, _CLOSED
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._error is None and state == _OPEN:
            lost = LinkClosed(None)
            lost.__cause__ = exc
            self._error = lost
        if not self._closed.done():
            self._closed.set_result(None)
        self._wakeup.wake()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self.flush_soon()

    # -- receiving -------------------------------------------------------------

    async def recv(self) -> bytes:
        """The next message, for before `deliver()`; raises why the link ended, if it did."""
        while not self._pending:
            if self._state != _OPEN:
                await self.wait_closed()
                raise LinkClosed(None, "the link was closed")
            await self._wakeup.wait()
        return self._pending.popleft()

    def deliver(self, callback: Callable[[bytes], None]) -> None:
        """Hand every message from now on (and any not yet taken) to `callback`.

        The callback runs in the socket's callback, one call per message; an exception
        from it closes the link (1011) and is what `wait_closed()` raises.
        """
        self._on_message = callback
        while self._pending and self._state == _OPEN:
            self._dispatch(callback, self._pending.popleft())

    def _dispatch(self, callback: Callable[[bytes], None], data: bytes) -> None:
        try:
            callback(data)
        except Exception as exc:
            self.fail(exc, 1011, "internal error")

    # -- sending ---------------------------------------------------------------

    @property
    def writing_paused(self) -> bool:
        """The transport's buffer is full: the outbox keeps what has not left yet."""
        return self._paused

    def flush_soon(self) -> None:
        """Send what the outbox holds, once, at the end of this loop iteration."""
        if not self._flush_scheduled and not self._paused and self._state == _OPEN:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self, force: bool = False) -> None:
        self._flush_scheduled = False
        outbox = self.outbox
        transport = self._transport
        # `write` calls pause_writing itself once the transport's buffer is full.
        while outbox and (force or not self._paused) and self._state == _OPEN:
            assert transport is not None
            transport.write(ws.encode_frame(ws.OP_BINARY, outbox.take(), mask=True))

    def send(self, message: bytes) -> None:
        """Send one binary message now, past the outbox."""
        if self._state == _OPEN:
            self._write(ws.encode_frame(ws.OP_BINARY, message, mask=True))

    def _write(self, data: bytes) -> None:
        if self._transport is not None and self._state != _CLOSED:
            self._transport.write(data)

    def _beat(self) -> None:
        """Ping; give up on a link that carried nothing since the previous ping."""
        if self._state != _OPEN or self._heartbeat is None:
            return
        if self._pinged and not self._heard:
            self._error = self._error or LinkClosed(
                None, f"no answer to a ping within {self._heartbeat:g} s"
            )
            self.abort()
            return
        self._heard = False
        self._pinged = True
        self._write(ws.encode_frame(ws.OP_PING, b"", mask=True))
        self._timer = self._loop.call_later(self._heartbeat, self._beat)

    # -- closing ---------------------------------------------------------------

    def _closing_frame(self, event: ws.Close) -> None:
        if self._state == _OPEN:
            # The broker closes: answer with its code, and let the connection end.
            self._error = self._error or LinkClosed(event.code, event.reason)
            self._state = _CLOSING
            if event.code == ws.CLOSE_NO_STATUS:
                self._write(ws.encode_frame(ws.OP_CLOSE, b"", mask=True))
            else:
                self._write(ws.encode_close(event.code, mask=True))
        if self._transport is not None:
            self._transport.close()
            # A broker that stopped reading would keep the close (and us) waiting forever.
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_later(CLOSE_TIMEOUT, self.abort)

    def fail(self, exc: BaseException, code: int, reason: str) -> None:
        """Close the link with `code` because of `exc`, which `wait_closed()` then raises."""
        if self._error is None:
            self._error = exc
        self._start_close(code, reason)

    async def close(self, code: int = ws.CLOSE_NORMAL, reason: str = "") -> None:
        """Send what is queued and a close frame; wait (at most 2 s) for the broker's answer."""
        self._start_close(code, reason)
        if self._transport is not None:
            await asyncio.shield(self._closed)

    def _start_close(self, code: int, reason: str) -> None:
        if self._state != _OPEN:
            if self._state == _HEAD:
                self.abort()
            return
        self._flush(force=True)  # an End or a GoAway already queued still leaves
        self._write(ws.encode_close(code, reason, mask=True))
        self._state = _CLOSING
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(CLOSE_TIMEOUT, self.abort)

    def abort(self) -> None:
        """Drop the connection at once."""
        state, self._state = self._state, _CLOSED
        if state == _OPEN and self._error is None:
            self._error = LinkClosed(None)
        # Nothing is written from now on: uvloop raises on a write to an aborted transport.
        if self._transport is not None and not self._closed.done():
            self._transport.abort()

    async def wait_closed(self) -> None:
        """Wait until the connection has ended; raise why, unless we closed it ourselves."""
        await asyncio.shield(self._closed)
        if self._error is not None:
            raise self._error
