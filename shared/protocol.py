"""The relay wire protocol between broker and connector, sans-I/O.

Every WebSocket message is a binary message holding one or more frames back to
back. A frame is a 9-byte header followed by its payload::

    +--------+----------------+----------------+-------------------+
    | type   | stream id      | payload length | payload           |
    | uint8  | uint32 (BE)    | uint32 (BE)    | `length` bytes    |
    +--------+----------------+----------------+-------------------+

Bodies travel as raw payload bytes; only control frames (hello, heads, errors,
going-away) carry a small JSON object. This module imports no I/O library: it
turns frames into bytes and bytes into frames, and nothing else. The full
specification is in docs/protocol.md.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final

from shared import jsoncodec
from shared.frames import (
    CLOSE_GOING_AWAY,
    CLOSE_HANDSHAKE_TIMEOUT,
    CLOSE_POLICY_VIOLATION,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_UNSUPPORTED_VERSION,
    DEFAULT_WINDOW,
    FEATURE_BLOCKED,
    HEADER,
    MAX_BODY_CHUNK,
    MAX_CONTROL_PAYLOAD,
    MAX_RECONNECT_AFTER,
    MAX_REQUEST_BODY,
    PROTOCOL_VERSION,
    Blocked,
    Cancel,
    End,
    Error,
    Frame,
    FrameType,
    GoAway,
    Headers,
    Hello,
    ModelsUpdate,
    ProtocolError,
    RequestBody,
    RequestHead,
    ResponseBody,
    ResponseHead,
    Welcome,
    WindowUpdate,
)

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_HANDSHAKE_TIMEOUT",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_UNSUPPORTED_VERSION",
    "DEFAULT_WINDOW",
    "FEATURE_BLOCKED",
    "HEADER",
    "MAX_BODY_CHUNK",
    "MAX_CONTROL_PAYLOAD",
    "MAX_RECONNECT_AFTER",
    "MAX_REQUEST_BODY",
    "PROTOCOL_VERSION",
    "Blocked",
    "Cancel",
    "End",
    "Error",
    "Frame",
    "FrameType",
    "GoAway",
    "Headers",
    "Hello",
    "ModelsUpdate",
    "ProtocolError",
    "RequestBody",
    "RequestHead",
    "ResponseBody",
    "ResponseHead",
    "Welcome",
    "WindowUpdate",
    "close_reason",
    "decode",
    "encode",
    "encode_many",
    "encode_parts",
    "iter_frames",
    "split_body",
]

_CREDIT: Final = struct.Struct(">I")


# ---------------------------------------------------------------------------
# Encoding


_RAW_TYPES = frozenset({FrameType.REQUEST_BODY, FrameType.RESPONSE_BODY})


def close_reason(text: str) -> str:
    """`text` cut to fit a WebSocket close frame (123 bytes of UTF-8), characters kept whole."""
    return text.encode()[:123].decode(errors="ignore")


# Built once: json.dumps and json.loads with options build a new coder on every call.
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _json(obj: Mapping[str, Any]) -> bytes:
    return jsoncodec.dumps(obj, _json_slow)


_ASCII_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _json_slow(obj: Mapping[str, Any]) -> bytes:
    text = _ENCODER.encode(obj)
    try:
        return text.encode()
    except UnicodeEncodeError:
        # A lone surrogate: a header byte that is not UTF-8, as both ends' HTTP parsers
        # decode it (surrogateescape). It travels as a \udcXX escape, which JSON allows and
        # the decoder reads back, so the receiver writes the very byte the client sent.
        return _ASCII_ENCODER.encode(obj).encode()


def _pack(kind: FrameType, stream_id: int, payload: bytes) -> bytes:
    if len(payload) > MAX_CONTROL_PAYLOAD and kind not in _RAW_TYPES:
        raise ValueError(
            f"{kind.name} payload of {len(payload)} bytes exceeds {MAX_CONTROL_PAYLOAD}"
        )
    return HEADER.pack(kind, stream_id, len(payload)) + payload


def encode(frame: Frame) -> bytes:
    """Return the bytes of one frame."""
    match frame:
        case RequestBody() | ResponseBody():
            return b"".join(_body_parts(frame))
        case End(stream_id):
            return _pack(FrameType.END, stream_id, b"")
        case Cancel(stream_id):
            return _pack(FrameType.CANCEL, stream_id, b"")
        case WindowUpdate(stream_id, increment):
            return _pack(FrameType.WINDOW_UPDATE, stream_id, _CREDIT.pack(increment))
        case ResponseHead(stream_id, status, headers):
            # Tuples encode as JSON arrays, so the header pairs go in as they are.
            payload = _json({"status": status, "headers": headers})
            return _pack(FrameType.RESPONSE_HEAD, stream_id, payload)
        case RequestHead(stream_id, method, path, headers, request_id, user_id, user_name):
            head: dict[str, object] = {
                "method": method,
                "path": path,
                "headers": headers,
                "request_id": request_id,
            }
            # Optional keys (no version bump): written only when the broker knows the user.
            if user_id:
                head["user_id"] = user_id
            if user_name:
                head["user_name"] = user_name
            return _pack(FrameType.REQUEST_HEAD, stream_id, _json(head))
        case Error(stream_id, code, message):
            return _pack(FrameType.ERROR, stream_id, _json({"code": code, "message": message}))
        case Hello(version, name, models, max_concurrency, blocked_users):
            hello: dict[str, object] = {
                "version": version,
                "name": name,
                "models": list(models),
                "max_concurrency": max_concurrency,
            }
            if blocked_users:  # optional (no version bump): written only when there are some
                hello["blocked_users"] = list(blocked_users)
            return _pack(FrameType.HELLO, 0, _json(hello))
        case Welcome(version, window, features):
            welcome: dict[str, object] = {"version": version, "window": window}
            if features:
                welcome["features"] = list(features)
            return _pack(FrameType.WELCOME, 0, _json(welcome))
        case ModelsUpdate(models):
            return _pack(FrameType.MODELS, 0, _json({"models": list(models)}))
        case Blocked(users):
            return _pack(FrameType.BLOCKED, 0, _json({"users": list(users)}))
        case GoAway(reason, reconnect_after):
            # The one float of the protocol: the standard library refuses NaN, orjson would not.
            payload = _json_slow({"reason": reason, "reconnect_after": reconnect_after})
            return _pack(FrameType.GOAWAY, 0, payload)
    raise TypeError(f"not a frame: {frame!r}")  # pragma: no cover - exhaustive match


def encode_parts(frame: Frame) -> tuple[bytes, ...]:
    """The bytes of one frame in pieces whose concatenation is `encode(frame)`.

    A body frame comes back as (header, body) so its payload is not copied just to
    prepend nine bytes; whoever builds the message joins everything once.
    """
    if isinstance(frame, RequestBody | ResponseBody):
        return _body_parts(frame)
    return (encode(frame),)


def _body_parts(frame: RequestBody | ResponseBody) -> tuple[bytes, bytes]:
    """(header, payload) of a body frame; the payload is the frame's own bytes object."""
    data = frame.data
    if len(data) > MAX_BODY_CHUNK:
        raise ValueError(f"body frame of {len(data)} bytes exceeds {MAX_BODY_CHUNK}")
    kind = FrameType.REQUEST_BODY if isinstance(frame, RequestBody) else FrameType.RESPONSE_BODY
    return HEADER.pack(kind, frame.stream_id, len(data)), data


def encode_many(frames: Iterable[Frame]) -> bytes:
    """Return one message's bytes holding `frames` in order."""
    return b"".join(encode(f) for f in frames)


def split_body(stream_id: int, data: bytes, *, response: bool) -> list[RequestBody | ResponseBody]:
    """Split a body into frames of at most MAX_BODY_CHUNK bytes (none for an empty body)."""
    cls = ResponseBody if response else RequestBody
    return [
        cls(stream_id, data[i : i + MAX_BODY_CHUNK]) for i in range(0, len(data), MAX_BODY_CHUNK)
    ]


# ---------------------------------------------------------------------------
# Decoding


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER: Final = json.JSONDecoder(parse_constant=_no_constants)


def _obj_slow(payload: bytes) -> Any:
    # What json.loads does with bytes, without building a decoder per call.
    return _DECODER.decode(payload.decode(json.detect_encoding(payload), "surrogatepass"))


def _obj(payload: bytes) -> dict[str, Any]:
    try:
        value = jsoncodec.loads(payload, _obj_slow)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"control payload is not valid JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError("control payload is nested too deeply") from None
    if not isinstance(value, dict):
        raise ProtocolError("control payload must be a JSON object")
    return value


def _get(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = obj.get(key)
    # bool is an int subclass; a boolean is never a valid number here.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ProtocolError(f"field {key!r} is missing or has the wrong type")
    return value


def _optional_str(obj: Mapping[str, Any], key: str) -> str:
    """A key newer peers add and older ones leave out: "" when absent, else a string."""
    if key not in obj:
        return ""
    return _get(obj, key, str)  # type: ignore[no-any-return]


def _str_list(obj: Mapping[str, Any], key: str, *, optional: bool = False) -> tuple[str, ...]:
    if optional and key not in obj:
        return ()
    items = _get(obj, key, list)
    if not all(isinstance(i, str) for i in items):
        raise ProtocolError(f"field {key!r} must be a list of strings")
    return tuple(items)


# RFC 9110 field names are tokens; values never carry CR, LF or NUL (no header injection).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FORBIDDEN_IN_VALUE = re.compile(r"[\r\n\x00]")


def _headers(obj: Mapping[str, Any]) -> Headers:
    items = _get(obj, "headers", list)
    out: list[tuple[str, str]] = []
    for item in items:
        if not isinstance(item, list) or len(item) != 2:
            raise ProtocolError("headers must be a list of [name, value] string pairs")
        name, value = item
        if not isinstance(name, str) or not isinstance(value, str):
            raise ProtocolError("headers must be a list of [name, value] string pairs")
        if not _TOKEN.fullmatch(name) or _FORBIDDEN_IN_VALUE.search(value):
            raise ProtocolError(f"header {name[:40]!r} is not a valid HTTP header")
        out.append((name, value))
    return tuple(out)


_FRAME_TYPES: Final = {int(t): t for t in FrameType}
_CONNECTION_LEVEL: Final = frozenset(
    {FrameType.HELLO, FrameType.WELCOME, FrameType.MODELS, FrameType.GOAWAY, FrameType.BLOCKED}
)


def _decode_one(kind: int, stream_id: int, payload: bytes) -> Frame:
    # Body frames first, without an enum lookup: they are most of the traffic.
    if kind == FrameType.RESPONSE_BODY or kind == FrameType.REQUEST_BODY:
        if stream_id == 0:
            raise ProtocolError(f"{FrameType(kind).name} frame needs a stream id other than 0")
        if len(payload) > MAX_BODY_CHUNK:
            raise ProtocolError(f"body frame of {len(payload)} bytes exceeds {MAX_BODY_CHUNK}")
        if kind == FrameType.RESPONSE_BODY:
            return ResponseBody(stream_id, payload)
        return RequestBody(stream_id, payload)
    ftype = _FRAME_TYPES.get(kind)
    if ftype is None:
        raise ProtocolError(f"unknown frame type 0x{kind:02x}")
    connection_level = ftype in _CONNECTION_LEVEL
    if connection_level and stream_id != 0:
        raise ProtocolError(f"{ftype.name} frame must use stream 0")
    if not connection_level and stream_id == 0:
        raise ProtocolError(f"{ftype.name} frame needs a stream id other than 0")
    if ftype in (FrameType.END, FrameType.CANCEL, FrameType.WINDOW_UPDATE):
        return _binary_frame(ftype, stream_id, payload)
    if len(payload) > MAX_CONTROL_PAYLOAD:
        raise ProtocolError(f"{ftype.name} payload exceeds {MAX_CONTROL_PAYLOAD} bytes")
    return _json_frame(ftype, stream_id, _obj(payload))


def _binary_frame(ftype: FrameType, stream_id: int, payload: bytes) -> Frame:
    """END and CANCEL (empty) or WINDOW_UPDATE (a 4-byte increment)."""
    if ftype is not FrameType.WINDOW_UPDATE:
        if payload:
            raise ProtocolError(f"{ftype.name} frame must have an empty payload")
        return End(stream_id) if ftype is FrameType.END else Cancel(stream_id)
    if len(payload) != _CREDIT.size:
        raise ProtocolError("WINDOW_UPDATE payload must be 4 bytes")
    (increment,) = _CREDIT.unpack(payload)
    if increment == 0:
        raise ProtocolError("WINDOW_UPDATE increment must be positive")
    return WindowUpdate(stream_id, increment)


def _json_frame(ftype: FrameType, stream_id: int, obj: Mapping[str, Any]) -> Frame:
    """A frame whose payload is a JSON object, from that object."""
    match ftype:
        case FrameType.HELLO:
            concurrency = _get(obj, "max_concurrency", int)
            if concurrency < 1:
                raise ProtocolError("max_concurrency must be at least 1")
            return Hello(
                _get(obj, "version", int),
                _get(obj, "name", str),
                _str_list(obj, "models"),
                concurrency,
                _str_list(obj, "blocked_users", optional=True),
            )
        case FrameType.WELCOME:
            window = _get(obj, "window", int)
            if window < MAX_BODY_CHUNK:
                raise ProtocolError(f"window must be at least {MAX_BODY_CHUNK}")
            return Welcome(
                _get(obj, "version", int), window, _str_list(obj, "features", optional=True)
            )
        case FrameType.MODELS:
            return ModelsUpdate(_str_list(obj, "models"))
        case FrameType.BLOCKED:
            return Blocked(_str_list(obj, "users"))
        case FrameType.GOAWAY:
            # Clamped before float(): an integer of hundreds of digits has no float.
            after = min(max(_get(obj, "reconnect_after", (int, float)), 0.0), MAX_RECONNECT_AFTER)
            return GoAway(_get(obj, "reason", str), float(after))
        case FrameType.REQUEST_HEAD:
            return RequestHead(
                stream_id,
                _get(obj, "method", str),
                _get(obj, "path", str),
                _headers(obj),
                _get(obj, "request_id", str),
                _optional_str(obj, "user_id"),
                _optional_str(obj, "user_name"),
            )
        case FrameType.RESPONSE_HEAD:
            status = _get(obj, "status", int)
            if not 200 <= status <= 599:
                raise ProtocolError(f"status {status} is not a final HTTP status code")
            return ResponseHead(stream_id, status, _headers(obj))
        case _:
            return Error(stream_id, _get(obj, "code", str), _get(obj, "message", str))


def iter_frames(message: bytes) -> Iterator[Frame]:
    """Yield the frames of one complete WebSocket message.

    Raises ProtocolError on anything malformed, including a message that ends in
    the middle of a frame.
    """
    view = memoryview(message)
    offset, size = 0, len(view)
    if size == 0:
        raise ProtocolError("empty message")
    while offset < size:
        if size - offset < HEADER.size:
            raise ProtocolError("message ends inside a frame header")
        kind, stream_id, length = HEADER.unpack_from(view, offset)
        offset += HEADER.size
        if size - offset < length:
            raise ProtocolError("message ends inside a frame payload")
        yield _decode_one(kind, stream_id, bytes(view[offset : offset + length]))
        offset += length


def decode(message: bytes) -> list[Frame]:
    """Return the frames of one complete WebSocket message (see iter_frames)."""
    return list(iter_frames(message))
