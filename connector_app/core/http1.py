"""A lean HTTP/1.1 client for the hop from the connector to its local LLM server.

Measured, aiohttp's client machinery was the largest single cost of the connector
per request (docs/performance.md). This client does only what that hop needs:
one request at a time per connection, a keep-alive pool, bodies streamed as they
arrive, and status, headers and body bytes passed on unchanged.

`ResponseParser` is sans-I/O (bytes in, head and body bytes out); `_Connection`
is the asyncio protocol that pumps a socket through it; `Pool` keeps connections.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Final, cast
from urllib.parse import quote, urlsplit

from connector_app.core.wakeup import Wakeup

Headers = tuple[tuple[str, str], ...]

MAX_HEAD: Final = 64 * 1024
"""Largest response head (status line and headers) accepted."""

MAX_CHUNK_LINE: Final = 4096
"""Longest chunk-size line (with extensions) accepted in a chunked body."""

HIGH_WATER: Final = 256 * 1024
"""Body bytes buffered per connection before the socket stops being read."""

_NO_BODY_STATUSES: Final = frozenset({204, 304})
_OWN_HEADERS: Final = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "te", "upgrade"}
)
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-9][0-9][0-9])(?: ([^\r\n]*))?")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]+")
_UNSAFE_IN_TARGET = re.compile(r"[^!-~]")
_CODEC: Final = ("utf-8", "surrogateescape")
_TARGET_SAFE: Final = "".join(chr(c) for c in range(0x21, 0x7F))


class HTTPError(Exception):
    """The local server's response broke HTTP/1.1, or the connection ended mid-response."""


# ---------------------------------------------------------------------------
# Parsing (sans-I/O)

_HEAD, _LENGTH, _CHUNK_LINE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _UNTIL_CLOSE, _DONE = range(8)


class ResponseParser:
    """Turns the bytes of one HTTP/1.1 response into its head and its body bytes.

    `feed()` returns the body bytes that `data` completed (de-chunked); `head` is set
    once the status line and headers are in; `complete` once the body ended.
    """

    __slots__ = ("_buffer", "_remaining", "_state", "head", "keep_alive", "no_body")

    def __init__(self, *, no_body: bool = False) -> None:
        self.no_body = no_body
        """The request was HEAD: whatever the headers say, no body follows."""
        self.head: tuple[int, Headers] | None = None
        self.keep_alive = False
        self._state = _HEAD
        self._buffer = b""
        self._remaining = 0

    @property
    def complete(self) -> bool:
        return self._state == _DONE

    def feed(self, data: bytes) -> bytes:
        """Consume `data`; return the body bytes it carried (maybe empty)."""
        state = self._state
        if state == _LENGTH and not self._buffer:
            # The common case, a content-length body arriving: no copy.
            n = len(data)
            if n < self._remaining:
                self._remaining -= n
                return data
            if n == self._remaining:
                self._remaining = 0
                self._state = _DONE
                return data
        if state == _UNTIL_CLOSE:
            return data
        if state == _DONE:
            if data:
                # Bytes after the end of the response: never reuse this connection.
                self.keep_alive = False
            return b""
        self._buffer += data
        out: list[bytes] = []
        while self._step(out):
            pass
        return b"".join(out) if len(out) != 1 else out[0]

    def eof(self) -> None:
        """The server closed the connection; raise HTTPError if the response was cut short."""
        self.keep_alive = False
        if self._state == _UNTIL_CLOSE:
            self._state = _DONE
        elif self._state != _DONE:
            raise HTTPError("the server closed the connection before the response ended")

    def _step(self, out: list[bytes]) -> bool:
        """Advance by one element of the message; False when more bytes are needed."""
        buffer = self._buffer
        state = self._state
        if state == _HEAD:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD:
                    raise HTTPError("the response head is too large")
                return False
            self._buffer = buffer[end + 4 :]
            self._parse_head(buffer[:end])
            return True
        if state == _LENGTH:
            return self._take(buffer, out, _DONE)
        if state in (_CHUNK_LINE, _TRAILERS):
            end = buffer.find(b"\r\n")
            if end < 0:
                if len(buffer) > MAX_CHUNK_LINE:
                    raise HTTPError("a chunk-size or trailer line is too long")
                return False
            line = buffer[:end]
            self._buffer = buffer[end + 2 :]
            if state == _TRAILERS:
                if not line:
                    self._state = _DONE
                return True
            size = line.split(b";", 1)[0].strip(b" \t")
            if not _CHUNK_SIZE.fullmatch(size):
                raise HTTPError("a chunk-size line is not hexadecimal")
            self._remaining = int(size, 16)
            self._state = _CHUNK_DATA if self._remaining else _TRAILERS
            return True
        if state == _CHUNK_DATA:
            return self._take(buffer, out, _CHUNK_END)
        if state == _CHUNK_END:
            if len(buffer) < 2:
                return False
            if buffer[:2] != b"\r\n":
                raise HTTPError("a chunk does not end with CRLF")
            self._buffer = buffer[2:]
            self._state = _CHUNK_LINE
            return True
        if state == _UNTIL_CLOSE:
            out.append(buffer)
        elif state == _DONE and buffer:
            self.keep_alive = False
        self._buffer = b""
        return False

    def _take(self, buffer: bytes, out: list[bytes], then: int) -> bool:
        """Move up to the remaining body bytes to `out`; `then` is the state once all came."""
        n = min(len(buffer), self._remaining)
        if n == 0:
            return False
        out.append(buffer[:n])
        self._buffer = buffer[n:]
        self._remaining -= n
        if self._remaining == 0:
            self._state = then
        return True

    def _parse_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        match = _STATUS_LINE.fullmatch(lines[0])
        if match is None:
            raise HTTPError("the response does not start with an HTTP/1.x status line")
        status = int(match[2])
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip() or line[:1] in (b" ", b"\t"):
                raise HTTPError("the response has a malformed header line")
            # Decoded and later encoded the same way, so every byte survives the round trip.
            headers.append((name.decode(*_CODEC), value.strip(b" \t").decode(*_CODEC)))
        if 100 <= status < 200:
            # An interim response (100 Continue, 103 Early Hints): the real one follows.
            return
        self.head = (status, tuple(headers))
        self._frame_body(match[1] == b"1", status, headers)

    def _frame_body(self, http11: bool, status: int, headers: list[tuple[str, str]]) -> None:
        connection = ""
        chunked = False
        lengths: set[str] = set()
        for name, value in headers:
            lowered = name.lower()
            if lowered == "connection":
                connection += "," + value.lower()
            elif lowered == "transfer-encoding":
                chunked = value.lower().rsplit(",", 1)[-1].strip() == "chunked"
                if not chunked:
                    raise HTTPError("the response uses a transfer coding this client cannot read")
            elif lowered == "content-length":
                lengths.update(v.strip() for v in value.split(","))
        tokens = {t.strip() for t in connection.split(",")}
        self.keep_alive = (http11 and "close" not in tokens) or (
            not http11 and "keep-alive" in tokens
        )
        if self.no_body or status in _NO_BODY_STATUSES:
            self._state = _DONE
        elif chunked:
            self._state = _CHUNK_LINE
        elif lengths:
            if len(lengths) != 1 or not (length := lengths.pop()).isdigit():
                raise HTTPError("the response has an invalid Content-Length")
            self._remaining = int(length)
            self._state = _LENGTH if self._remaining else _DONE
        else:
            self._state = _UNTIL_CLOSE
            self.keep_alive = False


def request_bytes(method: str, target: str, host: str, headers: Headers, body: bytes) -> bytes:
    """The bytes of one request: head and body, ready for a single write."""
    if _UNSAFE_IN_TARGET.search(target):
        target = quote(target, safe=_TARGET_SAFE)
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines.extend(f"{k}: {v}" for k, v in headers if k.lower() not in _OWN_HEADERS)
    if body or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
        lines.append(f"Content-Length: {len(body)}")
    head = "\r\n".join(lines).encode(*_CODEC) + b"\r\n\r\n"
    return head + body if body else head


# ---------------------------------------------------------------------------
# I/O


class _Connection(asyncio.Protocol):
    """One connection to the server, carrying one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = ResponseParser()
        self.closed = False
        self.received = False
        self.sink: Callable[[bytes], bool] | None = None
        """Takes body bytes straight from data_received while it returns True (see on_data)."""
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
        try:
            body = self.parser.feed(data)
        except HTTPError as exc:
            self._fail(exc)
            return
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

    # -- used by Pool and Response --

    def start(self, payload: bytes, no_body: bool) -> None:
        self.parser = ResponseParser(no_body=no_body)
        self.received = False
        self.sink = None
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
                raise HTTPError("the server closed the connection without a response")
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
                raise HTTPError("the server closed the connection before the response ended")
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


class Response:
    """The status, headers and streamed body of one response."""

    __slots__ = ("_connection", "headers", "status")

    def __init__(self, connection: _Connection, status: int, headers: Headers) -> None:
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


class Pool:
    """Keep-alive connections to one server, at most `limit` open at a time."""

    def __init__(self, base_url: str, *, limit: int = 100, connect_timeout: float = 10.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http:// or https:// URL: {base_url!r}")
        self._host = parts.hostname
        self._tls = parts.scheme == "https"
        self._port = parts.port or (443 if self._tls else 80)
        default_port = self._port == (443 if self._tls else 80)
        host = f"[{self._host}]" if ":" in self._host else self._host
        self.host_header = host if default_port else f"{host}:{self._port}"
        self._prefix = parts.path.rstrip("/")
        self._connect_timeout = connect_timeout
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(limit)
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
        async with self._slots:
            connection = await self._exchange(payload, method == "HEAD")
            try:
                status, response_headers = await connection.wait_head()
                yield Response(connection, status, response_headers)
            finally:
                connection.sink = None
                if connection.reusable and not self._closed:
                    self._idle.append(connection)
                else:
                    connection.close()

    async def _exchange(self, payload: bytes, no_body: bool) -> _Connection:
        """A connection on which the request has been sent."""
        while self._idle:
            connection = self._idle.pop()
            if connection.closed or not connection.parser.keep_alive:
                # Closed by the server, or it sent bytes while idle: not to be trusted.
                connection.close()
                continue
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

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        tls: ssl.SSLContext | None = ssl.create_default_context() if self._tls else None
        async with asyncio.timeout(self._connect_timeout):
            _, connection = await loop.create_connection(
                _Connection, self._host, self._port, ssl=tls
            )
        return connection

    async def close(self) -> None:
        """Close the idle connections; connections in use close when their request ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
