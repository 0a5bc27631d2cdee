"""HTTP/1.1 for a lean client, sans I/O: the connector's hop to its local LLM server, and a
broker's internal hop to another broker of its cluster.

`request_bytes` writes one request; `ResponseParser` turns the bytes that come back
into the status, the headers and the body bytes (length-framed, chunked, or until
close), passed on unchanged. `connector_app.core.pool` and `broker.cluster.hopclient` pump
sockets through them.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import quote

Headers = tuple[tuple[str, str], ...]

MAX_HEAD: Final = 64 * 1024
"""Largest response head (status line and headers) accepted."""

MAX_CHUNK_LINE: Final = 4096
"""Longest chunk-size line (with extensions) accepted in a chunked body."""

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
