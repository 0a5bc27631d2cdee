"""The internal hop's HTTP/1.1 client: pooled keep-alive connections, driven by callbacks.

aiohttp's client cost the forwarding broker more per request than the rest of the hop
(`bench.forwarding`), so the hop pumps its sockets through the sans-I/O parser the connector
uses for its own hop (`shared.http1`): one request at a time per connection, no task per
request when an idle connection is at hand, and the answer's head, body bytes and end handed
to the exchange from `data_received` as they arrive.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from typing import Final, Protocol, cast
from urllib.parse import urlsplit

from shared.http1 import Headers, HTTPError, ResponseParser

CONNECT_TIMEOUT: Final = 5.0


class Receiver(Protocol):
    """Hears one exchange from the connection's callbacks."""

    def on_head(self, status: int, headers: Headers) -> None: ...

    def on_body(self, data: bytes) -> None: ...

    def on_end(self) -> None: ...

    def on_lost(self, answered: bool) -> None:
        """The connection ended before the answer did (`answered`: some of it came)."""

    def on_flush(self) -> None:
        """The bytes one read brought are handed on: write what they gave."""


class HopConnection(asyncio.Protocol):
    """One connection to another broker, carrying one exchange at a time."""

    __slots__ = (
        "_pool",
        "answered",
        "closed",
        "idle_since",
        "key",
        "parser",
        "receiver",
        "transport",
    )

    def __init__(self, pool: HopPool, key: str) -> None:
        self._pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = ResponseParser()
        self.receiver: Receiver | None = None
        self.answered = False
        self.closed = False
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.closed:  # the pool closed while it connected
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        receiver = self.receiver
        if receiver is None:
            self.abort()  # bytes nobody asked for: never reuse this connection
            return
        self.answered = True
        parser = self.parser
        had_head = parser.head is not None
        try:
            body = parser.feed(data)
        except HTTPError:
            self.abort()
            return
        if not had_head and parser.head is not None:
            receiver.on_head(*parser.head)
        if body and self.receiver is receiver:
            receiver.on_body(body)
        if parser.complete and self.receiver is receiver:
            self.receiver = None
            reusable = parser.keep_alive and not self.closed
            receiver.on_end()
            if reusable:
                # The read that ended the answer may have paused reading too (its bytes took the
                # exchange past its read-ahead): an idle connection reads, to hear its close.
                self.resume()
                self._pool.put(self)
            else:
                self.abort()
        receiver.on_flush()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.forget(self)
        receiver, self.receiver = self.receiver, None
        if receiver is None:
            return
        try:
            self.parser.eof()
        except HTTPError:
            receiver.on_lost(self.answered)
        else:
            receiver.on_end()  # a body read until the close
        receiver.on_flush()

    def send(self, receiver: Receiver, payload: bytes) -> None:
        self.parser = ResponseParser()
        self.receiver = receiver
        self.answered = False
        assert self.transport is not None
        self.resume()  # never paused by an exchange before this one
        self.transport.write(payload)

    def release(self) -> None:
        """The exchange is abandoned: the connection goes (it may carry the rest of it)."""
        self.receiver = None
        self.abort()

    def pause(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class HopPool:
    """Idle connections to each other broker, by base URL."""

    def __init__(self, keepalive: float) -> None:
        self._keepalive = keepalive
        self._idle: dict[str, deque[HopConnection]] = {}
        self._context: ssl.SSLContext | None = None
        self._all: set[HopConnection] = set()
        self._closed = False

    def idle(self, url: str) -> HopConnection | None:
        """The most recently used idle connection to `url`, if one is fresh enough."""
        idle = self._idle.get(url)
        if not idle:
            return None
        oldest_kept = time.monotonic() - self._keepalive
        while idle:
            connection = idle.pop()
            if not connection.closed and connection.idle_since > oldest_kept:
                return connection
            connection.abort()
        return None

    async def connect(self, url: str) -> HopConnection:
        """A new connection to `url` (raises OSError, TimeoutError or ssl.SSLError; and
        ConnectionAbortedError when the pool closes meanwhile)."""
        parts = urlsplit(url)
        host = parts.hostname or "127.0.0.1"
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        context = None
        if tls:
            if self._context is None:
                # The system's CAs (SSL_CERT_FILE and SSL_CERT_DIR add a private one).
                self._context = ssl.create_default_context()
            context = self._context
        loop = asyncio.get_running_loop()
        made: list[HopConnection] = []

        def protocol() -> HopConnection:
            # Known to `close` from the start: a cancel as the connection completes loses it.
            connection = HopConnection(self, url)
            made.append(connection)
            if self._closed:
                connection.closed = True  # aborted as soon as it is made
            else:
                self._all.add(connection)
            return connection

        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await loop.create_connection(protocol, host, port, ssl=context)
        except BaseException:
            for connection in made:
                self._all.discard(connection)
                connection.abort()
            raise
        connection = made[0]
        if connection.closed:
            raise ConnectionAbortedError("the hop's connections were closed")
        return connection

    def put(self, connection: HopConnection) -> None:
        connection.idle_since = time.monotonic()
        self._idle.setdefault(connection.key, deque()).append(connection)

    def forget(self, connection: HopConnection) -> None:
        self._all.discard(connection)
        idle = self._idle.get(connection.key)
        if idle and connection in idle:
            idle.remove(connection)

    def close(self) -> None:
        self._closed = True
        for connection in list(self._all):
            connection.abort()
        self._all.clear()
        self._idle.clear()
