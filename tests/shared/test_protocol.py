"""The wire codec: exact bytes out, typed frames in, and ProtocolError on anything else."""

from __future__ import annotations

import json
import struct

import pytest

from shared.protocol import (
    MAX_BODY_CHUNK,
    MAX_CONTROL_PAYLOAD,
    Blocked,
    Cancel,
    End,
    Error,
    Frame,
    GoAway,
    Hello,
    ModelsUpdate,
    ProtocolError,
    RequestBody,
    RequestHead,
    ResponseBody,
    ResponseHead,
    Welcome,
    WindowUpdate,
    decode,
    encode,
    encode_many,
    encode_parts,
    iter_frames,
    split_body,
)


def raw(kind: int, stream_id: int, payload: bytes) -> bytes:
    """A frame built by hand from the documented layout, independent of the codec."""
    return struct.pack(">BII", kind, stream_id, len(payload)) + payload


# ---------------------------------------------------------------------------
# Exact bytes

EXACT: list[tuple[Frame, bytes]] = [
    (
        Hello(1, "box", ("a", "b"), 4),
        b"\x01\x00\x00\x00\x00\x00\x00\x00\x41"
        b'{"version":1,"name":"box","models":["a","b"],"max_concurrency":4}',
    ),
    (
        Welcome(1, 1048576),
        b'\x02\x00\x00\x00\x00\x00\x00\x00\x1e{"version":1,"window":1048576}',
    ),
    (
        # The optional keys: written only when there is something in them.
        Hello(1, "box", ("a",), 4, ("42", "configured")),
        b"\x01\x00\x00\x00\x00\x00\x00\x00\x61"
        b'{"version":1,"name":"box","models":["a"],"max_concurrency":4,'
        b'"blocked_users":["42","configured"]}',
    ),
    (
        Welcome(1, 262144, ("blocked",)),
        b'\x02\x00\x00\x00\x00\x00\x00\x00\x34{"version":1,"window":262144,"features":["blocked"]}',
    ),
    (
        Blocked(("7", "42")),
        b'\x05\x00\x00\x00\x00\x00\x00\x00\x14{"users":["7","42"]}',
    ),
    (
        Blocked(()),
        b'\x05\x00\x00\x00\x00\x00\x00\x00\x0c{"users":[]}',
    ),
    (
        # Non-ASCII names travel as raw UTF-8, and the length counts bytes, not characters.
        ModelsUpdate(("llama", "modèle")),
        b'\x03\x00\x00\x00\x00\x00\x00\x00\x1e{"models":["llama","mod\xc3\xa8le"]}',
    ),
    (
        GoAway("restart", 2.5),
        b'\x04\x00\x00\x00\x00\x00\x00\x00\x2a{"reason":"restart","reconnect_after":2.5}',
    ),
    (
        RequestHead(
            7, "POST", "/v1/chat/completions", (("content-type", "application/json"),), "req-1"
        ),
        b"\x10\x00\x00\x00\x07\x00\x00\x00\x74"
        b'{"method":"POST","path":"/v1/chat/completions",'
        b'"headers":[["content-type","application/json"]],"request_id":"req-1"}',
    ),
    (
        RequestBody(7, b"hello"),
        b"\x11\x00\x00\x00\x07\x00\x00\x00\x05hello",
    ),
    (
        ResponseHead(0x01020304, 200, (("content-type", "text/event-stream"), ("x-a", "1"))),
        b"\x20\x01\x02\x03\x04\x00\x00\x00\x4b"
        b'{"status":200,"headers":[["content-type","text/event-stream"],["x-a","1"]]}',
    ),
    (
        ResponseBody(9, b"\x00\xff data: {}\n\n"),
        b"\x21\x00\x00\x00\x09\x00\x00\x00\x0d\x00\xff data: {}\n\n",
    ),
    (
        ResponseBody(9, b""),
        b"\x21\x00\x00\x00\x09\x00\x00\x00\x00",
    ),
    (
        End(0xFFFFFFFF),
        b"\x30\xff\xff\xff\xff\x00\x00\x00\x00",
    ),
    (
        Error(3, "upstream", "connection refused"),
        b'\x31\x00\x00\x00\x03\x00\x00\x00\x32{"code":"upstream","message":"connection refused"}',
    ),
    (
        Cancel(3),
        b"\x32\x00\x00\x00\x03\x00\x00\x00\x00",
    ),
    (
        WindowUpdate(3, 0x00010000),
        b"\x33\x00\x00\x00\x03\x00\x00\x00\x04\x00\x01\x00\x00",
    ),
]


@pytest.mark.parametrize(("frame", "expected"), EXACT, ids=[type(f).__name__ for f, _ in EXACT])
def test_encode_gives_exact_bytes(frame: Frame, expected: bytes) -> None:
    assert encode(frame) == expected


@pytest.mark.parametrize(("frame", "data"), EXACT, ids=[type(f).__name__ for f, _ in EXACT])
def test_decode_of_exact_bytes_gives_the_frame(frame: Frame, data: bytes) -> None:
    assert decode(data) == [frame]


def test_encode_many_concatenates_frames_in_order() -> None:
    message = encode_many([Cancel(3), RequestBody(7, b"hello"), End(7)])
    assert message == (
        b"\x32\x00\x00\x00\x03\x00\x00\x00\x00"
        b"\x11\x00\x00\x00\x07\x00\x00\x00\x05hello"
        b"\x30\x00\x00\x00\x07\x00\x00\x00\x00"
    )


def test_encode_many_of_nothing_is_empty() -> None:
    assert encode_many([]) == b""


# ---------------------------------------------------------------------------
# Round trips

ROUND_TRIP: list[Frame] = [
    Hello(1, "", (), 1),
    Hello(2, "gpu-box ☃", ("llama3:8b", "qwen2.5"), 64),
    Welcome(1, MAX_BODY_CHUNK),
    Welcome(7, 16 * 1024 * 1024),
    ModelsUpdate(()),
    ModelsUpdate(("a", "b", "c")),
    Hello(1, "n", (), 1, ("1", "2")),
    Welcome(1, MAX_BODY_CHUNK, ("blocked", "later")),
    Blocked(("configured",)),
    GoAway("", 0.0),
    GoAway("maintenance", 12.25),
    RequestHead(1, "GET", "/v1/models", (), ""),
    RequestHead(
        2**32 - 1,
        "POST",
        "/v1/chat/completions?x=1",
        (("authorization", "Bearer x"), ("x-dup", "1"), ("x-dup", "2"), ("x-empty", "")),
        "0123456789abcdef",
    ),
    RequestHead(3, "POST", "/v1/embeddings", (), "r", "42", "Ada Lovelace ☃"),
    RequestHead(4, "POST", "/v1/embeddings", (), "r", "configured"),
    RequestBody(1, b""),
    RequestBody(1, bytes(range(256))),
    RequestBody(1, b"\xaa" * MAX_BODY_CHUNK),
    ResponseHead(1, 200, ()),
    ResponseHead(1, 599, (("content-type", "application/json"),)),
    ResponseBody(5, b"data: [DONE]\n\n"),
    ResponseBody(5, b"\x55" * MAX_BODY_CHUNK),
    End(1),
    Error(1, "timeout", 'the model took too long; "quotes" and ünïcode survive'),
    Cancel(2**32 - 1),
    WindowUpdate(1, 1),
    WindowUpdate(1, 2**32 - 1),
]


@pytest.mark.parametrize("frame", ROUND_TRIP, ids=lambda f: type(f).__name__)
def test_round_trip_of_one_frame(frame: Frame) -> None:
    assert decode(encode(frame)) == [frame]


def test_round_trip_of_every_frame_in_one_message() -> None:
    assert decode(encode_many(ROUND_TRIP)) == ROUND_TRIP


def test_iter_frames_yields_the_same_frames_as_decode() -> None:
    assert list(iter_frames(encode_many(ROUND_TRIP))) == ROUND_TRIP


def test_goaway_reconnect_after_as_integer_decodes_as_float() -> None:
    (frame,) = decode(raw(0x04, 0, b'{"reason":"r","reconnect_after":3}'))
    assert frame == GoAway("r", 3.0)
    assert isinstance(frame, GoAway)
    assert type(frame.reconnect_after) is float


def test_goaway_negative_reconnect_after_is_clamped_to_zero() -> None:
    assert decode(raw(0x04, 0, b'{"reason":"r","reconnect_after":-5}')) == [GoAway("r", 0.0)]


def test_unknown_json_fields_are_ignored() -> None:
    payload = b'{"code":"c","message":"m","extra":[1,2,{"x":null}]}'
    assert decode(raw(0x31, 4, payload)) == [Error(4, "c", "m")]


# ---------------------------------------------------------------------------
# split_body


def test_split_body_cuts_at_max_body_chunk() -> None:
    data = bytes(i % 251 for i in range(2 * MAX_BODY_CHUNK + 1))
    frames = split_body(5, data, response=True)
    assert [len(f.data) for f in frames] == [MAX_BODY_CHUNK, MAX_BODY_CHUNK, 1]
    assert all(type(f) is ResponseBody and f.stream_id == 5 for f in frames)
    assert b"".join(f.data for f in frames) == data


def test_split_body_for_requests_gives_request_bodies() -> None:
    frames = split_body(3, b"x" * (MAX_BODY_CHUNK + 10), response=False)
    assert frames == [RequestBody(3, b"x" * MAX_BODY_CHUNK), RequestBody(3, b"x" * 10)]


def test_split_body_of_exactly_one_chunk_is_one_frame() -> None:
    assert split_body(1, b"y" * MAX_BODY_CHUNK, response=True) == [
        ResponseBody(1, b"y" * MAX_BODY_CHUNK)
    ]


@pytest.mark.parametrize("response", [True, False])
def test_split_body_of_empty_body_is_no_frames(response: bool) -> None:
    assert split_body(1, b"", response=response) == []


def test_split_body_frames_survive_the_wire() -> None:
    data = b"0123456789" * (MAX_BODY_CHUNK // 4)
    frames = split_body(8, data, response=False)
    decoded = decode(encode_many(frames))
    assert decoded == frames
    assert b"".join(f.data for f in decoded if isinstance(f, RequestBody)) == data


# ---------------------------------------------------------------------------
# encode() refuses what decode() would refuse for size


@pytest.mark.parametrize("cls", [RequestBody, ResponseBody])
def test_encode_refuses_body_over_max_chunk(cls: type[RequestBody | ResponseBody]) -> None:
    with pytest.raises(ValueError, match="exceeds"):
        encode(cls(1, b"z" * (MAX_BODY_CHUNK + 1)))


# ---------------------------------------------------------------------------
# Malformed input

_HELLO = b'{"version":1,"name":"n","models":[],"max_concurrency":1}'
_OVERSIZED_CONTROL = b'{"models":[]}' + b" " * MAX_CONTROL_PAYLOAD

MALFORMED: list[tuple[str, bytes, str]] = [
    ("empty message", b"", "empty message"),
    (
        "header cut short",
        b"\x21\x00\x00\x00\x01\x00\x00",
        "inside a frame header",
    ),
    ("one byte", b"\x30", "inside a frame header"),
    (
        "header cut short after a frame",
        raw(0x30, 1, b"") + b"\x30\x00\x00\x00\x01\x00\x00\x00",
        "inside a frame header",
    ),
    (
        "payload cut short",
        b"\x21\x00\x00\x00\x01\x00\x00\x00\x05abc",
        "inside a frame payload",
    ),
    (
        "payload missing",
        b"\x21\x00\x00\x00\x01\x00\x00\x00\x01",
        "inside a frame payload",
    ),
    (
        "payload cut short after a frame",
        raw(0x30, 1, b"") + b"\x11\x00\x00\x00\x01\xff\xff\xff\xff",
        "inside a frame payload",
    ),
    (
        "bad frame after a good one",
        raw(0x30, 1, b"") + raw(0x30, 0, b""),
        "END frame needs a stream id",
    ),
    ("unknown type 0x00", raw(0x00, 1, b""), "unknown frame type 0x00"),
    ("unknown type 0x06", raw(0x06, 0, b"{}"), "unknown frame type 0x06"),
    ("blocked on a stream", raw(0x05, 1, b'{"users":[]}'), "BLOCKED frame must use stream 0"),
    ("blocked without users", raw(0x05, 0, b"{}"), "field 'users' is missing"),
    ("blocked with a number", raw(0x05, 0, b'{"users":[42]}'), "'users' must be a list of str"),
    (
        "hello blocking a number",
        raw(
            0x01, 0, b'{"version":1,"name":"n","models":[],"max_concurrency":1,"blocked_users":[7]}'
        ),
        "'blocked_users' must be a list of strings",
    ),
    (
        "welcome with features not a list",
        raw(0x02, 0, b'{"version":1,"window":65536,"features":"blocked"}'),
        "field 'features' is missing or has the wrong type",
    ),
    ("unknown type 0x34", raw(0x34, 1, b""), "unknown frame type 0x34"),
    ("unknown type 0xff", raw(0xFF, 1, b""), "unknown frame type 0xff"),
    ("hello on a stream", raw(0x01, 1, _HELLO), "HELLO frame must use stream 0"),
    (
        "welcome on a stream",
        raw(0x02, 1, b'{"version":1,"window":1048576}'),
        "WELCOME frame must use stream 0",
    ),
    (
        "models on a stream",
        raw(0x03, 2, b'{"models":[]}'),
        "MODELS frame must use stream 0",
    ),
    (
        "goaway on a stream",
        raw(0x04, 3, b'{"reason":"r","reconnect_after":1}'),
        "GOAWAY frame must use stream 0",
    ),
    (
        "request head on stream 0",
        raw(0x10, 0, b'{"method":"GET","path":"/","headers":[],"request_id":""}'),
        "REQUEST_HEAD frame needs a stream id",
    ),
    (
        "request body on stream 0",
        raw(0x11, 0, b"x"),
        "REQUEST_BODY frame needs a stream id",
    ),
    (
        "response head on stream 0",
        raw(0x20, 0, b'{"status":200,"headers":[]}'),
        "RESPONSE_HEAD frame needs a stream id",
    ),
    (
        "response body on stream 0",
        raw(0x21, 0, b"x"),
        "RESPONSE_BODY frame needs a stream id",
    ),
    (
        "end on stream 0",
        raw(0x30, 0, b""),
        "END frame needs a stream id",
    ),
    (
        "error on stream 0",
        raw(0x31, 0, b'{"code":"c","message":"m"}'),
        "ERROR frame needs a stream id",
    ),
    (
        "cancel on stream 0",
        raw(0x32, 0, b""),
        "CANCEL frame needs a stream id",
    ),
    (
        "window update on stream 0",
        raw(0x33, 0, b"\x00\x00\x00\x01"),
        "WINDOW_UPDATE frame needs a stream id",
    ),
    (
        "request body over 64 KiB",
        raw(0x11, 1, b"x" * (MAX_BODY_CHUNK + 1)),
        "body frame of 65537 bytes exceeds 65536",
    ),
    (
        "response body over 64 KiB",
        raw(0x21, 1, b"x" * (MAX_BODY_CHUNK + 1)),
        "body frame of 65537 bytes exceeds 65536",
    ),
    ("end with payload", raw(0x30, 1, b"\x00"), "END frame must have an empty payload"),
    (
        "cancel with payload",
        raw(0x32, 1, b"x"),
        "CANCEL frame must have an empty payload",
    ),
    ("window update empty", raw(0x33, 1, b""), "WINDOW_UPDATE payload must be 4 bytes"),
    (
        "window update 3 bytes",
        raw(0x33, 1, b"\x00\x00\x01"),
        "WINDOW_UPDATE payload must be 4 bytes",
    ),
    (
        "window update 5 bytes",
        raw(0x33, 1, b"\x00\x00\x00\x00\x01"),
        "WINDOW_UPDATE payload must be 4 bytes",
    ),
    (
        "window update of zero",
        raw(0x33, 1, b"\x00\x00\x00\x00"),
        "WINDOW_UPDATE increment must be positive",
    ),
    (
        "control payload too large",
        raw(0x03, 0, _OVERSIZED_CONTROL),
        "MODELS payload exceeds 1048576 bytes",
    ),
    ("empty JSON", raw(0x31, 1, b""), "not valid JSON"),
    ("truncated JSON", raw(0x31, 1, b'{"code":"c"'), "not valid JSON"),
    ("not UTF-8", raw(0x31, 1, b'{"code":"\xff","message":"m"}'), "not valid JSON"),
    ("JSON array", raw(0x03, 0, b"[]"), "must be a JSON object"),
    ("JSON string", raw(0x03, 0, b'"models"'), "must be a JSON object"),
    ("JSON number", raw(0x02, 0, b"1"), "must be a JSON object"),
    ("JSON null", raw(0x31, 1, b"null"), "must be a JSON object"),
    (
        "hello without name",
        raw(0x01, 0, b'{"version":1,"models":[],"max_concurrency":1}'),
        "field 'name'",
    ),
    (
        "hello without version",
        raw(0x01, 0, b'{"name":"n","models":[],"max_concurrency":1}'),
        "field 'version'",
    ),
    (
        "hello without models",
        raw(0x01, 0, b'{"version":1,"name":"n","max_concurrency":1}'),
        "field 'models'",
    ),
    (
        "hello without max_concurrency",
        raw(0x01, 0, b'{"version":1,"name":"n","models":[]}'),
        "field 'max_concurrency'",
    ),
    (
        "hello name is a number",
        raw(0x01, 0, b'{"version":1,"name":1,"models":[],"max_concurrency":1}'),
        "field 'name'",
    ),
    (
        "hello name is null",
        raw(0x01, 0, b'{"version":1,"name":null,"models":[],"max_concurrency":1}'),
        "field 'name'",
    ),
    (
        "hello version is a string",
        raw(0x01, 0, b'{"version":"1","name":"n","models":[],"max_concurrency":1}'),
        "field 'version'",
    ),
    (
        "hello version is a float",
        raw(0x01, 0, b'{"version":1.0,"name":"n","models":[],"max_concurrency":1}'),
        "field 'version'",
    ),
    (
        "hello version is a bool",
        raw(0x01, 0, b'{"version":true,"name":"n","models":[],"max_concurrency":1}'),
        "field 'version'",
    ),
    (
        "hello max_concurrency is a bool",
        raw(0x01, 0, b'{"version":1,"name":"n","models":[],"max_concurrency":true}'),
        "field 'max_concurrency'",
    ),
    (
        "hello max_concurrency is 0",
        raw(0x01, 0, b'{"version":1,"name":"n","models":[],"max_concurrency":0}'),
        "max_concurrency must be at least 1",
    ),
    (
        "hello max_concurrency is negative",
        raw(0x01, 0, b'{"version":1,"name":"n","models":[],"max_concurrency":-3}'),
        "max_concurrency must be at least 1",
    ),
    (
        "hello models is a string",
        raw(0x01, 0, b'{"version":1,"name":"n","models":"a","max_concurrency":1}'),
        "field 'models'",
    ),
    (
        "hello models holds a number",
        raw(0x01, 0, b'{"version":1,"name":"n","models":["a",1],"max_concurrency":1}'),
        "field 'models'",
    ),
    ("welcome window is a bool", raw(0x02, 0, b'{"version":1,"window":true}'), "field 'window'"),
    (
        "welcome window is a float",
        raw(0x02, 0, b'{"version":1,"window":1048576.0}'),
        "field 'window'",
    ),
    (
        "welcome window below 64 KiB",
        raw(0x02, 0, b'{"version":1,"window":65535}'),
        "window must be at least 65536",
    ),
    (
        "welcome window is 0",
        raw(0x02, 0, b'{"version":1,"window":0}'),
        "window must be at least 65536",
    ),
    ("welcome without version", raw(0x02, 0, b'{"window":1048576}'), "field 'version'"),
    ("models holds null", raw(0x03, 0, b'{"models":[null]}'), "field 'models'"),
    ("models is an object", raw(0x03, 0, b'{"models":{"a":1}}'), "field 'models'"),
    (
        "goaway reconnect_after is a bool",
        raw(0x04, 0, b'{"reason":"r","reconnect_after":false}'),
        "field 'reconnect_after'",
    ),
    (
        "goaway reconnect_after is a string",
        raw(0x04, 0, b'{"reason":"r","reconnect_after":"1"}'),
        "field 'reconnect_after'",
    ),
    ("goaway without reason", raw(0x04, 0, b'{"reconnect_after":1}'), "field 'reason'"),
    (
        "request head without path",
        raw(0x10, 1, b'{"method":"GET","headers":[],"request_id":""}'),
        "field 'path'",
    ),
    (
        "request head method is null",
        raw(0x10, 1, b'{"method":null,"path":"/","headers":[],"request_id":""}'),
        "field 'method'",
    ),
    (
        "request head without request_id",
        raw(0x10, 1, b'{"method":"GET","path":"/","headers":[]}'),
        "field 'request_id'",
    ),
    (
        "request head headers missing",
        raw(0x10, 1, b'{"method":"GET","path":"/","request_id":""}'),
        "field 'headers'",
    ),
    (
        "headers is an object",
        raw(0x20, 1, b'{"status":200,"headers":{"a":"b"}}'),
        "field 'headers'",
    ),
    (
        "header is a string",
        raw(0x20, 1, b'{"status":200,"headers":["a: b"]}'),
        "string pairs",
    ),
    (
        "header with one part",
        raw(0x20, 1, b'{"status":200,"headers":[["a"]]}'),
        "string pairs",
    ),
    (
        "header with three parts",
        raw(0x20, 1, b'{"status":200,"headers":[["a","b","c"]]}'),
        "string pairs",
    ),
    (
        "header value is a number",
        raw(0x20, 1, b'{"status":200,"headers":[["a",1]]}'),
        "string pairs",
    ),
    (
        "header is an object",
        raw(0x20, 1, b'{"status":200,"headers":[{"a":"b"}]}'),
        "string pairs",
    ),
    (
        "status 101",
        raw(0x20, 1, b'{"status":101,"headers":[]}'),
        "status 101 is not a final HTTP status code",
    ),
    (
        "status 600",
        raw(0x20, 1, b'{"status":600,"headers":[]}'),
        "status 600 is not a final HTTP status code",
    ),
    (
        "status negative",
        raw(0x20, 1, b'{"status":-200,"headers":[]}'),
        "status -200 is not a final HTTP status code",
    ),
    ("status is a bool", raw(0x20, 1, b'{"status":true,"headers":[]}'), "field 'status'"),
    ("status is a float", raw(0x20, 1, b'{"status":200.0,"headers":[]}'), "field 'status'"),
    ("status is a string", raw(0x20, 1, b'{"status":"200","headers":[]}'), "field 'status'"),
    ("error without code", raw(0x31, 1, b'{"message":"m"}'), "field 'code'"),
    ("error message is a list", raw(0x31, 1, b'{"code":"c","message":["m"]}'), "field 'message'"),
]


@pytest.mark.parametrize(
    ("data", "reason"), [(d, r) for _, d, r in MALFORMED], ids=[n for n, _, _ in MALFORMED]
)
def test_malformed_input_raises_protocol_error(data: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        decode(data)


# The limits themselves are allowed: each case above sits just past one of these.
AT_THE_LIMIT: list[tuple[bytes, Frame]] = [
    (raw(0x11, 1, b"x" * MAX_BODY_CHUNK), RequestBody(1, b"x" * MAX_BODY_CHUNK)),
    (raw(0x02, 0, b'{"version":1,"window":65536}'), Welcome(1, MAX_BODY_CHUNK)),
    (raw(0x01, 0, _HELLO), Hello(1, "n", (), 1)),
    (raw(0x20, 1, b'{"status":200,"headers":[]}'), ResponseHead(1, 200, ())),
    (raw(0x20, 1, b'{"status":599,"headers":[]}'), ResponseHead(1, 599, ())),
    (raw(0x33, 1, b"\x00\x00\x00\x01"), WindowUpdate(1, 1)),
    (
        raw(0x03, 0, b'{"models":[]}' + b" " * (MAX_CONTROL_PAYLOAD - 13)),
        ModelsUpdate(()),
    ),
]


@pytest.mark.parametrize(
    ("data", "frame"), AT_THE_LIMIT, ids=[type(f).__name__ for _, f in AT_THE_LIMIT]
)
def test_values_at_the_limit_are_accepted(data: bytes, frame: Frame) -> None:
    assert decode(data) == [frame]


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_json_number_constants_are_refused(constant: bytes) -> None:
    payload = b'{"reason":"x","reconnect_after":' + constant + b"}"
    message = struct.pack(">BII", 0x04, 0, len(payload)) + payload
    with pytest.raises(ProtocolError, match="not valid JSON"):
        decode(message)


def test_a_payload_nested_too_deeply_is_a_protocol_error() -> None:
    payload = b'{"reason":"x","reconnect_after":1,"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    message = struct.pack(">BII", 0x04, 0, len(payload)) + payload
    with pytest.raises(ProtocolError, match="nested too deeply"):
        decode(message)


def test_reconnect_hint_is_capped_at_an_hour() -> None:
    payload = b'{"reason":"x","reconnect_after":1e9}'
    message = struct.pack(">BII", 0x04, 0, len(payload)) + payload
    assert decode(message) == [GoAway("x", 3600.0)]


@pytest.mark.parametrize(("digits", "after"), [(b"9" * 400, 3600.0), (b"-" + b"9" * 400, 0.0)])
def test_a_reconnect_hint_beyond_any_float_is_clamped_too(digits: bytes, after: float) -> None:
    # Found by bench.fuzz: float() of a 400-digit integer raised OverflowError.
    payload = b'{"reason":"x","reconnect_after":' + digits + b"}"
    assert decode(raw(0x04, 0, payload)) == [GoAway("x", after)]


def test_encoding_a_non_finite_hint_fails_loudly() -> None:
    with pytest.raises(ValueError):
        encode(GoAway("x", float("nan")))


@pytest.mark.parametrize(
    "pair",
    [["X-Evil", "a\r\nSet-Cookie: x=1"], ["X-Nul", "a\u0000b"], ["Bad Name", "v"], ["", "v"]],
)
def test_header_injection_is_a_protocol_error(pair: list[str]) -> None:
    payload = json.dumps({"status": 200, "headers": [pair]}).encode()
    with pytest.raises(ProtocolError, match="not a valid HTTP header"):
        decode(struct.pack(">BII", 0x20, 1, len(payload)) + payload)


@pytest.mark.parametrize("frame", ROUND_TRIP)
def test_encode_parts_join_to_the_encoded_frame(frame: Frame) -> None:
    parts = encode_parts(frame)
    assert b"".join(parts) == encode(frame)
    if isinstance(frame, RequestBody | ResponseBody):
        assert parts[1] is frame.data  # the body is not copied
