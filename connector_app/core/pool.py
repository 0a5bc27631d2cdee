"""A lean HTTP/1.1 client for the hop from the connector to its local LLM server.

Measured, aiohttp's client machinery was the largest single cost of the connector
per request (issue 3's profile, in `git log -p docs/performance.md`). This client
does only what that hop needs: one request at a time per connection, a keep-alive
pool, bodies streamed as they arrive, and status, headers and body bytes passed on
unchanged.

`Connection` is the asyncio protocol that pumps a socket through the sans-I/O
`ResponseParser` (`shared.http1`); `Pool` keeps connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Final, Protocol, cast
from urllib.parse import urlsplit

from connector_app.core.trust import client_context
from connector_app.core.wakeup import Wakeup
from shared.http1 import Headers, HTTPError, ResponseParser, request_bytes

HIGH_WATER: Final = 256 * 1024
"""Body bytes buffered per connection before the socket stops being read."""


class Listener(Protocol):
    """Hears one exchange from the socket's callbacks, instead of a task awaiting it.

    Body bytes go to the connection's `sink` as with `Response.on_data`; bytes the
    sink refuses wait for `read()`, and from then on the reader owns the exchange
    (it detaches the listener).
    """

    def on_head(self, status: int, headers: Headers) -> None:
        """The response head arrived (set the sink here to get the body that came with it)."""

    def on_complete(self) -> None:
        """The whole response arrived and the sink took all of it."""

    def on_failure(self, exc: BaseException) -> None:
        """The exchange failed (the connection is closed); `received` says if any byte came."""


class Connection(asyncio.Protocol):
    """One connection to the server, carrying one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = ResponseParser()
        self.closed = False
        self.received = False
        self.sink: Callable[[bytes], bool] | None = None
        """Takes body bytes straight from data_received while it returns True (see on_data)."""
        self.listener: Listener | None = None
        """Hears the head, the end and a failure from the callbacks (see Pool.start_nowait)."""
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._error: BaseException | None = None
        self._wakeup = Wakeup()

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but are one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.received = True
        had_head = self.parser.head is not None
        try:
            body = self.parser.feed(data)
        except HTTPError as exc:
            listener = self.listener
            if listener is not None and not had_head and self.parser.head is not None:
                listener.on_head(*self.parser.head)  # the head came, then broken bytes
            self._fail(exc)
            return
        listener = self.listener
        if listener is not None and not had_head and self.parser.head is not None:
            listener.on_head(*self.parser.head)
        sink = self.sink
        delivered = bool(body) and sink is not None and not self._chunks and sink(body)
        if body and not delivered:
            self._chunks.append(body)
            self._buffered += len(body)
            if self._buffered > HIGH_WATER and not self._paused and self.transport is not None:
                self._paused = True
                self.transport.pause_reading()
        if not delivered or self.parser.complete:
            # The reader only needs waking for what it has to handle itself.
            self._wakeup.wake()
            listener = self.listener
            if listener is not None and self.parser.complete and not self._chunks:
                self.listener = None
                listener.on_complete()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost does the rest

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._error is None:
            try:
                self.parser.eof()
            except HTTPError as cut:
                self._error = exc or cut
        self._wakeup.wake()
        listener, self.listener = self.listener, None
        if listener is None:
            return
        if self.parser.complete and self._error is None:
            if not self._chunks:
                listener.on_complete()  # a body read until close: its end is the close
            return
        listener.on_failure(self._error or HTTPError(self._why_cut()))

    def _why_cut(self) -> str:
        if self.parser.head is None:
            return "the server closed the connection without a response"
        return "the server closed the connection before the response ended"

    # -- used by Pool and Response --

    def start(self, payload: bytes, no_body: bool) -> None:
        self.parser = ResponseParser(no_body=no_body)
        self.received = False
        self.sink = None
        self.listener = None
        self._chunks.clear()
        self._buffered = 0
        self._error = None
        assert self.transport is not None
        self.transport.write(payload)

    async def wait_head(self) -> tuple[int, Headers]:
        while self.parser.head is None:
            if self._error is not None:
                raise self._error
            if self.closed:
                raise HTTPError(self._why_cut())
            await self._wakeup.wait()
        return self.parser.head

    async def read(self) -> bytes:
        """Body bytes that arrived since the last call; b"" once the body has ended."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self.parser.complete:
                return b""
            if self.closed:
                raise HTTPError(self._why_cut())
            await self._wakeup.wait()
        chunks = self._chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    @property
    def reusable(self) -> bool:
        parser = self.parser
        return (
            not self.closed
            and self._error is None
            and parser.complete
            and parser.keep_alive
            and not self._chunks
        )

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _fail(self, exc: BaseException) -> None:
        self._error = exc
        self._wakeup.wake()
        self.close()
        listener, self.listener = self.listener, None
        if listener is not None:
            listener.on_failure(exc)


class Response:
    """The status, headers and streamed body of one response."""

    __slots__ = ("_connection", "headers", "status")

    def __init__(self, connection: Connection, status: int, headers: Headers) -> None:
        self._connection = connection
        self.status = status
        self.headers = headers

    async def read(self) -> bytes:
        """The body bytes that arrived since the last call (waiting for some); b"" at the end."""
        return await self._connection.read()

    def on_data(self, sink: Callable[[bytes], bool]) -> None:
        """Offer body bytes to `sink` as they arrive, from the socket's callback.

        Bytes `sink` takes (it returns True) never reach `read()`; bytes it refuses,
        and everything after them until `read()` has returned them, wait for `read()`,
        so the order of the body is kept. `read()` still says when the body ended.
        This spares a task wake-up per event when the consumer can take it at once.
        """
        self._connection.sink = sink

    async def body(self) -> bytes:
        """The whole remaining body."""
        parts: list[bytes] = []
        while chunk := await self.read():
            parts.append(chunk)
        return b"".join(parts)


class _Slots:
    """At most `limit` exchanges at a time: taken at once when one is free, else in turn."""

    def __init__(self, limit: int) -> None:
        self.free = limit
        self._waiters: deque[asyncio.Future[None]] = deque()

    def try_take(self) -> bool:
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return True
        return False

    async def take(self) -> None:
        if self.try_take():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give()  # handed a slot just as it was cancelled: pass it on
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def give(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes straight to the next in line
                return
        self.free += 1


class Pool:
    """Keep-alive connections to one server, at most `limit` open at a time."""

    def __init__(self, base_url: str, *, limit: int = 100, connect_timeout: float = 10.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http:// or https:// URL: {base_url!r}")
        self._host = parts.hostname
        secure = parts.scheme == "https"
        # One context per pool: the server's certificate is checked against the system's store.
        self._tls: ssl.SSLContext | None = client_context() if secure else None
        self._port = parts.port or (443 if secure else 80)
        default_port = self._port == (443 if secure else 80)
        host = f"[{self._host}]" if ":" in self._host else self._host
        self.host_header = host if default_port else f"{host}:{self._port}"
        self._prefix = parts.path.rstrip("/")
        self._connect_timeout = connect_timeout
        self._idle: list[Connection] = []
        self._slots = _Slots(limit)
        self._closed = False

    @asynccontextmanager
    async def request(
        self, method: str, path: str, headers: Headers, body: bytes
    ) -> AsyncIterator[Response]:
        """Send one request; the response is readable inside the block.

        Leaving the block early (an error, a cancel) closes the connection, so the
        server sees the client go at once; a fully read response returns it to the pool.
        """
        payload = request_bytes(method, self._prefix + path, self.host_header, headers, body)
        await self._slots.take()
        try:
            connection = await self._exchange(payload, method == "HEAD")
        except BaseException:
            self._slots.give()
            raise
        try:
            status, response_headers = await connection.wait_head()
            yield Response(connection, status, response_headers)
        finally:
            self.finish(connection)

    def start_nowait(
        self, method: str, path: str, headers: Headers, body: bytes, listener: Listener
    ) -> Connection | None:
        """Send one request at once on a kept-alive connection, told to `listener`.

        None when that cannot be done without waiting (no idle connection, no free
        slot): use `request` then. The caller hands the connection back with
        `finish` when the exchange is over (or `read()`s the rest itself).
        """
        if not self._idle or self._closed:
            return None
        payload = request_bytes(method, self._prefix + path, self.host_header, headers, body)
        connection = self._idle_connection()
        if connection is None:
            return None
        if not self._slots.try_take():
            self._idle.append(connection)
            return None
        try:
            connection.start(payload, method == "HEAD")
        except BaseException:
            connection.close()
            self._slots.give()
            raise
        connection.listener = listener
        return connection

    def _idle_connection(self) -> Connection | None:
        """The newest kept-alive connection still worth trying, or None."""
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed and connection.parser.keep_alive:
                return connection
            # Closed by the server, or it sent bytes while idle: not to be trusted.
            connection.close()
        return None

    def finish(self, connection: Connection) -> None:
        """The exchange on `connection` is over: keep it if it can carry another, free its slot."""
        connection.sink = None
        connection.listener = None
        if connection.reusable and not self._closed:
            self._idle.append(connection)
        else:
            connection.close()
        self._slots.give()

    async def _exchange(self, payload: bytes, no_body: bool) -> Connection:
        """A connection on which the request has been sent."""
        while (connection := self._idle_connection()) is not None:
            connection.start(payload, no_body)
            # A kept-alive socket the server closed while idle fails before any reply;
            # that request never reached the server, so it goes out on a fresh one.
            try:
                await connection.wait_head()
            except (HTTPError, OSError):
                connection.close()
                if connection.received:
                    raise
                continue
            except BaseException:
                connection.close()
                raise
            return connection
        connection = await self._connect()
        connection.start(payload, no_body)
        return connection

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._connect_timeout):
            _, connection = await loop.create_connection(
                Connection, self._host, self._port, ssl=self._tls
            )
        return connection

    async def close(self) -> None:
        """Close the idle connections; connections in use close when their request ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
