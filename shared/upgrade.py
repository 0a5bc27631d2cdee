"""The WebSocket opening handshake (RFC 6455 section 4), sans-I/O, for the relay link.

The client's upgrade request and the check of the server's answer; the server's
reading of a request head, the key's check and the 101 answer. The frames that
follow are `shared.websocket`.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from typing import Final

_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class HandshakeError(Exception):
    """The opening handshake failed. `status` is the HTTP status the server answered, if any."""

    def __init__(self, reason: str, status: int | None = None, body: bytes = b"") -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.body = body


def new_key() -> str:
    """A fresh Sec-WebSocket-Key."""
    return base64.b64encode(os.urandom(16)).decode()


def accept_value(key: str) -> str:
    """The Sec-WebSocket-Accept answering `key`."""
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


def valid_key(key: str) -> bool:
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        return False


def client_request(host: str, target: str, key: str, headers: dict[str, str]) -> bytes:
    """The client's upgrade request (`host` as the Host header, `target` the path and query)."""
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def server_accept(key: str) -> bytes:
    """The server's 101 answer to an upgrade request carrying `key`."""
    return (
        "HTTP/1.1 101 Switching Protocols\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_value(key)}\r\n\r\n"
    ).encode("latin-1")


@dataclass(frozen=True, slots=True)
class RequestHead:
    """An HTTP/1.1 request head: method, target, version and lower-cased headers."""

    method: str
    target: str
    version: str
    headers: dict[str, str]

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]


def split_head(buffer: bytes | bytearray, limit: int) -> tuple[bytes, int] | None:
    """The head (without the blank line) and its length with it, once it is all there.

    Raises HandshakeError when no head ended within `limit` bytes.
    """
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > limit:
            raise HandshakeError("request head too large", 431)
        return None
    if end > limit:
        raise HandshakeError("request head too large", 431)
    return bytes(buffer[:end]), end + 4


def _header_lines(lines: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise HandshakeError("malformed header line", 400)
        lowered = name.lower()
        value = value.strip()
        # Repeated headers are joined, as HTTP allows for list-valued ones.
        headers[lowered] = f"{headers[lowered]}, {value}" if lowered in headers else value
    return headers


def parse_request_head(head: bytes) -> RequestHead:
    """Parse a request head; HandshakeError(…, 400) when it is not HTTP/1.1."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HandshakeError("malformed request line", 400)
    method, target, version = parts
    return RequestHead(method, target, version, _header_lines(lines[1:]))


def _tokens(value: str) -> set[str]:
    return {token.strip().lower() for token in value.split(",")}


def upgrade_key(head: RequestHead) -> str:
    """The request's Sec-WebSocket-Key if it is a valid upgrade; HandshakeError otherwise."""
    headers = head.headers
    if head.method != "GET" or head.version != "HTTP/1.1":
        raise HandshakeError("a WebSocket upgrade is a GET over HTTP/1.1", 400)
    if "websocket" not in _tokens(headers.get("upgrade", "")):
        raise HandshakeError("not a WebSocket upgrade request", 426)
    if "upgrade" not in _tokens(headers.get("connection", "")):
        raise HandshakeError("missing 'Connection: Upgrade'", 400)
    if headers.get("sec-websocket-version") != "13":
        raise HandshakeError("unsupported WebSocket version (13 is required)", 426)
    key = headers.get("sec-websocket-key", "")
    if not valid_key(key):
        raise HandshakeError("invalid Sec-WebSocket-Key", 400)
    return key


def check_response(head: bytes, key: str) -> None:
    """Check the server's answer to our upgrade request; HandshakeError when it refused."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise HandshakeError("the server did not answer in HTTP/1.1")
    status = int(parts[1])
    if status != 101:
        raise HandshakeError(f"the server answered HTTP {status}", status)
    headers = _header_lines(lines[1:])
    if "websocket" not in _tokens(headers.get("upgrade", "")):
        raise HandshakeError("the server did not upgrade to WebSocket", status)
    if headers.get("sec-websocket-accept") != accept_value(key):
        raise HandshakeError("the server's Sec-WebSocket-Accept is wrong", status)
    if headers.get("sec-websocket-extensions"):
        raise HandshakeError("the server chose an extension we did not offer", status)
