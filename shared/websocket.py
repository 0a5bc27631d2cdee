"""RFC 6455 WebSocket framing, sans-I/O, for the relay link only.

The relay needs a small part of WebSocket: binary messages, ping/pong, the close
handshake, no extensions (no compression) and no subprotocols. Both ends use
this module on a bare `asyncio.Protocol`, which keeps an idle connector's link a
few objects (memory per idle connector is a measured target) and a message a
few function calls (CPU per streamed event is another).

Frames we send are never fragmented. Frames we receive may be (a proxy may split
a message); continuation frames are joined, control frames may arrive between
them. Masking follows the RFC: a client masks every frame, a server never does,
and each side refuses a frame masked the wrong way. The opening handshake is
`shared.upgrade`.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

_c_apply_mask: Callable[[bytes | bytearray | memoryview, bytes], bytes] | None
try:
    from websockets.speedups import apply_mask as _c_apply_mask
except ImportError:  # pragma: no cover - websockets ships the C helper on every platform we use
    _c_apply_mask = None

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA
_DATA_OPS: Final = (OP_CONTINUATION, OP_TEXT, OP_BINARY)
_CONTROL_OPS: Final = (OP_CLOSE, OP_PING, OP_PONG)

CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_INVALID_DATA: Final = 1007
CLOSE_TOO_BIG: Final = 1009
CLOSE_NO_STATUS: Final = 1005
"""Reported (never sent) when a close frame carried no code."""

MAX_CONTROL_PAYLOAD: Final = 125
MAX_FRAGMENTS: Final = 4096
"""Frames one message may be split into (empty fragments would otherwise cost nothing)."""
_U16: Final = struct.Struct("!H")
_U64: Final = struct.Struct("!Q")


class WebSocketError(Exception):
    """The peer broke the framing rules; close the connection with `code`.

    `events` holds what the same `FrameReader.feed` call completed before the violation,
    in order: whole messages the peer sent before it broke the rules, to act on before
    the connection closes.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.events: list[Event] = []


@dataclass(frozen=True, slots=True)
class Message:
    """A whole data message. `text` tells a text message from a binary one."""

    data: bytes
    text: bool = False


@dataclass(frozen=True, slots=True)
class Ping:
    data: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    data: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """The peer's close frame; code 1005 when it carried none."""

    code: int
    reason: str


Event = Message | Ping | Pong | Close


def apply_mask(data: bytes | bytearray | memoryview, key: bytes) -> bytes:
    """XOR `data` with the 4-byte masking `key` (the same call masks and unmasks)."""
    if _c_apply_mask is not None:
        return bytes(_c_apply_mask(data, key))
    n = len(data)  # pragma: no cover - fallback without websockets' C helper
    stream = (key * (n // 4 + 1))[:n]  # pragma: no cover
    value = int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")  # pragma: no cover
    return value.to_bytes(n, "big")  # pragma: no cover


def encode_frame(opcode: int, payload: bytes = b"", *, mask: bool) -> bytes:
    """One final (unfragmented) frame; masked with a fresh random key when `mask`."""
    n = len(payload)
    first = 0x80 | opcode
    bit = 0x80 if mask else 0
    if n < 126:
        head = bytes((first, bit | n))
    elif n < 65536:
        head = bytes((first, bit | 126)) + _U16.pack(n)
    else:
        head = bytes((first, bit | 127)) + _U64.pack(n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + apply_mask(payload, key)


def encode_close(code: int, reason: str = "", *, mask: bool) -> bytes:
    """A close frame; the reason is cut to fit a control frame (whole UTF-8 characters)."""
    raw = reason.encode()[: MAX_CONTROL_PAYLOAD - 2].decode(errors="ignore").encode()
    return encode_frame(OP_CLOSE, _U16.pack(code) + raw, mask=mask)


def _valid_close_code(code: int) -> bool:
    # RFC 6455 7.4: codes a peer may send; 1005, 1006 and 1015 are never sent.
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011) or (3000 <= code <= 4999)


class FrameReader:
    """Turns received bytes into whole messages and control frames.

    `masked` is what the peer must do: True when this side is the server.
    `max_message` bounds a message's payload (joined fragments included).
    """

    __slots__ = ("_buffer", "_fragment_text", "_fragments", "_fragments_size", "_masked", "_max")

    def __init__(self, *, masked: bool, max_message: int) -> None:
        self._masked = masked
        self._max = max_message
        self._buffer = bytearray()
        self._fragments: list[bytes] | None = None
        self._fragments_size = 0
        self._fragment_text = False

    def feed(self, data: bytes) -> list[Event]:
        """Add received bytes; return every event they complete, in order.

        Raises WebSocketError on a framing violation, carrying the events completed before
        it; the reader is then unusable.
        """
        events: list[Event] = []
        try:
            self._read(data, events)
        except WebSocketError as exc:
            exc.events = events
            raise
        return events

    def _read(self, data: bytes, events: list[Event]) -> None:
        buffer = self._buffer
        buffer += data
        pos = 0
        end = len(buffer)
        while end - pos >= 2:
            b0 = buffer[pos]
            b1 = buffer[pos + 1]
            fin = b0 & 0x80
            opcode = b0 & 0x0F
            if b0 & 0x70:
                raise WebSocketError(CLOSE_PROTOCOL_ERROR, "reserved bits set (no extension)")
            if bool(b1 & 0x80) is not self._masked:
                why = (
                    "unmasked frame from a client" if self._masked else "masked frame from a server"
                )
                raise WebSocketError(CLOSE_PROTOCOL_ERROR, why)
            length = b1 & 0x7F
            at = pos + 2
            if length == 126:
                if end - at < 2:
                    break
                length = _U16.unpack_from(buffer, at)[0]
                at += 2
            elif length == 127:
                if end - at < 8:
                    break
                length = _U64.unpack_from(buffer, at)[0]
                at += 8
            if opcode in _CONTROL_OPS:
                if length > MAX_CONTROL_PAYLOAD or not fin:
                    raise WebSocketError(CLOSE_PROTOCOL_ERROR, "invalid control frame")
            elif opcode not in _DATA_OPS:
                raise WebSocketError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode}")
            elif length + self._fragments_size > self._max:
                raise WebSocketError(CLOSE_TOO_BIG, f"message larger than {self._max} bytes")
            key_end = at + 4 if self._masked else at
            if end - key_end < length:
                break
            payload_view = memoryview(buffer)[key_end : key_end + length]
            if self._masked:
                payload = apply_mask(payload_view, bytes(buffer[at:key_end]))
            else:
                payload = bytes(payload_view)
            payload_view.release()
            pos = key_end + length
            event = self._frame(fin, opcode, payload)
            if event is not None:
                events.append(event)
        if pos:
            del buffer[:pos]

    def _frame(self, fin: int, opcode: int, payload: bytes) -> Event | None:
        if opcode in (OP_BINARY, OP_TEXT):
            if self._fragments is not None:
                raise WebSocketError(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one")
            if fin:
                return Message(payload, opcode == OP_TEXT)
            self._fragments = [payload]
            self._fragments_size = len(payload)
            self._fragment_text = opcode == OP_TEXT
            return None
        if opcode == OP_CONTINUATION:
            if self._fragments is None:
                raise WebSocketError(CLOSE_PROTOCOL_ERROR, "continuation without a message")
            if len(self._fragments) >= MAX_FRAGMENTS:
                raise WebSocketError(CLOSE_TOO_BIG, f"message in more than {MAX_FRAGMENTS} frames")
            self._fragments.append(payload)
            self._fragments_size += len(payload)
            if not fin:
                return None
            data = b"".join(self._fragments)
            self._fragments = None
            self._fragments_size = 0
            return Message(data, self._fragment_text)
        if opcode == OP_PING:
            return Ping(payload)
        if opcode == OP_PONG:
            return Pong(payload)
        return _close_event(payload)


def _close_event(payload: bytes) -> Close:
    if not payload:
        return Close(CLOSE_NO_STATUS, "")
    if len(payload) == 1:
        raise WebSocketError(CLOSE_PROTOCOL_ERROR, "close frame with a one-byte payload")
    code = _U16.unpack_from(payload)[0]
    if not _valid_close_code(code):
        raise WebSocketError(CLOSE_PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = payload[2:].decode()
    except UnicodeDecodeError:
        raise WebSocketError(CLOSE_INVALID_DATA, "close reason is not UTF-8") from None
    return Close(code, reason)
