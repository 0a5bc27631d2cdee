"""The relay's WebSocket framing and handshake, checked byte by byte and against websockets."""

from __future__ import annotations

import os
import struct

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from shared import upgrade
from shared import websocket as ws


def _frame_from_websockets(data: bytes, *, mask: bool) -> Frame:
    reader = StreamReader()
    reader.feed_data(data)
    parser = Frame.parse(reader.read_exact, mask=mask, max_size=None)
    try:
        while True:
            next(parser)
    except StopIteration as done:
        frame: Frame = done.value
    assert reader.buffer == b""  # nothing left over
    return frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 300_000])
@pytest.mark.parametrize("mask", [True, False])
def test_frames_we_encode_are_what_websockets_reads(size: int, mask: bool) -> None:
    payload = os.urandom(size)
    frame = _frame_from_websockets(ws.encode_frame(ws.OP_BINARY, payload, mask=mask), mask=mask)
    assert frame.opcode is Opcode.BINARY and frame.fin and frame.data == payload


@pytest.mark.parametrize("size", [0, 5, 126, 70_000])
@pytest.mark.parametrize("masked", [True, False])
def test_frames_websockets_encodes_are_what_we_read(size: int, masked: bool) -> None:
    payload = os.urandom(size)
    data = Frame(Opcode.BINARY, payload).serialize(mask=masked, extensions=[])
    reader = ws.FrameReader(masked=masked, max_message=1 << 20)
    assert reader.feed(data) == [ws.Message(payload)]


def test_events_arrive_whole_whatever_the_pieces() -> None:
    payload = b"x" * 1000
    wire = (
        ws.encode_frame(ws.OP_BINARY, payload, mask=True)
        + ws.encode_frame(ws.OP_PING, b"hi", mask=True)
        + ws.encode_close(1001, "bye", mask=True)
    )
    reader = ws.FrameReader(masked=True, max_message=4096)
    events: list[ws.Event] = []
    for i in range(len(wire)):
        events += reader.feed(wire[i : i + 1])
    assert events == [ws.Message(payload), ws.Ping(b"hi"), ws.Close(1001, "bye")]


def test_fragments_are_joined_and_control_frames_may_come_between() -> None:
    parts = [
        Frame(Opcode.BINARY, b"ab", fin=False),
        Frame(Opcode.PING, b"p"),
        Frame(Opcode.CONT, b"cd", fin=False),
        Frame(Opcode.CONT, b"ef", fin=True),
    ]
    data = b"".join(f.serialize(mask=False, extensions=[]) for f in parts)
    reader = ws.FrameReader(masked=False, max_message=100)
    assert reader.feed(data) == [ws.Ping(b"p"), ws.Message(b"abcdef")]


def test_text_messages_are_marked() -> None:
    reader = ws.FrameReader(masked=False, max_message=100)
    assert reader.feed(ws.encode_frame(ws.OP_TEXT, b"hi", mask=False)) == [ws.Message(b"hi", True)]


@pytest.mark.parametrize(
    ("data", "masked", "code"),
    [
        (ws.encode_frame(ws.OP_BINARY, b"x", mask=False), True, 1002),  # client did not mask
        (ws.encode_frame(ws.OP_BINARY, b"x", mask=True), False, 1002),  # server masked
        (bytes((0x80 | 0x40 | 2, 0)), False, 1002),  # reserved bit (compression) set
        (bytes((0x80 | 3, 0)), False, 1002),  # unknown opcode
        (bytes((0x80 | 9, 126)) + struct.pack("!H", 200) + b"x" * 200, False, 1002),  # long ping
        (bytes((0x09, 0)), False, 1002),  # fragmented ping
        (bytes((0x80, 1, 0x41)), False, 1002),  # continuation without a message
        (bytes((0x88, 1, 0x03)), False, 1002),  # close with one byte
        (ws.encode_frame(ws.OP_CLOSE, struct.pack("!H", 1005), mask=False), False, 1002),
        (ws.encode_frame(ws.OP_CLOSE, struct.pack("!H", 1000) + b"\xff", mask=False), False, 1007),
        (ws.encode_frame(ws.OP_BINARY, b"x" * 101, mask=False), False, 1009),
    ],
    # Named, not shown: a masked frame's bytes differ each run (a fresh random key), and a
    # test's name must not.
    ids=[
        "unmasked-from-client",
        "masked-from-server",
        "reserved-bit",
        "unknown-opcode",
        "long-ping",
        "fragmented-ping",
        "stray-continuation",
        "one-byte-close",
        "close-1005",
        "close-bad-utf8",
        "too-big",
    ],
)
def test_broken_frames_name_the_close_code(data: bytes, masked: bool, code: int) -> None:
    reader = ws.FrameReader(masked=masked, max_message=100)
    with pytest.raises(ws.WebSocketError) as caught:
        reader.feed(data)
    assert caught.value.code == code


def test_too_big_is_refused_from_the_header_before_the_payload_arrives() -> None:
    reader = ws.FrameReader(masked=False, max_message=1000)
    with pytest.raises(ws.WebSocketError):
        reader.feed(bytes((0x82, 127)) + struct.pack("!Q", 1 << 40))


def test_joined_fragments_count_toward_the_limit() -> None:
    first = Frame(Opcode.BINARY, b"x" * 60, fin=False).serialize(mask=False, extensions=[])
    second = Frame(Opcode.CONT, b"x" * 60).serialize(mask=False, extensions=[])
    reader = ws.FrameReader(masked=False, max_message=100)
    assert reader.feed(first) == []
    with pytest.raises(ws.WebSocketError):
        reader.feed(second)


def test_close_reason_is_cut_to_whole_characters() -> None:
    frame = ws.encode_close(1000, "é" * 200, mask=False)
    (event,) = ws.FrameReader(masked=False, max_message=10).feed(frame)
    assert isinstance(event, ws.Close) and len(event.reason.encode()) <= 123
    assert set(event.reason) == {"é"}


def test_empty_close_reports_1005() -> None:
    frame = ws.encode_frame(ws.OP_CLOSE, b"", mask=True)
    assert ws.FrameReader(masked=True, max_message=10).feed(frame) == [ws.Close(1005, "")]


def test_mask_round_trips() -> None:
    data, key = os.urandom(1000), os.urandom(4)
    masked = ws.apply_mask(data, key)
    assert masked != data and ws.apply_mask(masked, key) == data


def test_accept_value_matches_the_rfc_example() -> None:
    assert upgrade.accept_value("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_an_upgrade_request_is_parsed_and_answered() -> None:
    key = upgrade.new_key()
    request = upgrade.client_request("h:1", "/relay?x=1", key, {"Authorization": "Bearer t"})
    head, used = upgrade.split_head(request + b"extra", 8192) or (b"", 0)
    assert used == len(request)
    parsed = upgrade.parse_request_head(head)
    assert parsed.path == "/relay" and parsed.headers["authorization"] == "Bearer t"
    assert upgrade.upgrade_key(parsed) == key
    answer = upgrade.server_accept(key)
    upgrade.check_response(answer[:-4], key)


def test_a_refusal_carries_the_status() -> None:
    with pytest.raises(upgrade.HandshakeError) as caught:
        upgrade.check_response(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0", upgrade.new_key())
    assert caught.value.status == 401


def test_a_wrong_accept_is_refused() -> None:
    answer = upgrade.server_accept(upgrade.new_key())[:-4]
    with pytest.raises(upgrade.HandshakeError):
        upgrade.check_response(answer, upgrade.new_key())


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"upgrade": "h2c"}, 426),
        ({"connection": "keep-alive"}, 400),
        ({"sec-websocket-version": "8"}, 426),
        ({"sec-websocket-key": "short"}, 400),
    ],
)
def test_bad_upgrades_say_why(change: dict[str, str], status: int) -> None:
    headers = {
        "upgrade": "websocket",
        "connection": "keep-alive, Upgrade",
        "sec-websocket-version": "13",
        "sec-websocket-key": upgrade.new_key(),
    }
    head = upgrade.RequestHead("GET", "/relay", "HTTP/1.1", {**headers, **change})
    with pytest.raises(upgrade.HandshakeError) as caught:
        upgrade.upgrade_key(head)
    assert caught.value.status == status


def test_an_endless_head_is_refused() -> None:
    assert upgrade.split_head(b"GET / HTTP/1.1\r\n", 100) is None
    with pytest.raises(upgrade.HandshakeError):
        upgrade.split_head(b"x" * 200, 100)


def test_malformed_request_lines_are_refused() -> None:
    for head in (b"GARBAGE", b"GET /relay SPDY/3", b"GET /relay HTTP/1.1\r\nno-colon"):
        with pytest.raises(upgrade.HandshakeError):
            upgrade.parse_request_head(head)


def test_a_message_in_endless_empty_fragments_is_refused() -> None:
    reader = ws.FrameReader(masked=False, max_message=1 << 20)
    reader.feed(Frame(Opcode.BINARY, b"", fin=False).serialize(mask=False, extensions=[]))
    empty = Frame(Opcode.CONT, b"", fin=False).serialize(mask=False, extensions=[])
    with pytest.raises(ws.WebSocketError) as caught:
        reader.feed(empty * (ws.MAX_FRAGMENTS + 1))
    assert caught.value.code == ws.CLOSE_TOO_BIG


def test_a_framing_error_carries_the_events_completed_before_it() -> None:
    reader = ws.FrameReader(masked=False, max_message=100)
    data = (
        ws.encode_frame(ws.OP_BINARY, b"first", mask=False)
        + ws.encode_frame(ws.OP_PING, b"p", mask=False)
        + bytes((0x80 | 3, 0))  # unknown opcode
        + ws.encode_frame(ws.OP_BINARY, b"never", mask=False)
    )
    with pytest.raises(ws.WebSocketError) as caught:
        reader.feed(data)
    assert caught.value.code == ws.CLOSE_PROTOCOL_ERROR
    assert caught.value.events == [ws.Message(b"first", False), ws.Ping(b"p")]
