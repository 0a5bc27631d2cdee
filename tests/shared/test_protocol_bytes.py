"""Header bytes that are not UTF-8 cross the relay unchanged (docs/protocol.md, section 3)."""

from __future__ import annotations

import pytest

from shared import protocol as p


def test_a_header_byte_that_is_not_utf8_travels_as_an_escape_and_comes_back_the_same() -> None:
    raw = b"caf\xe9 \xff"
    value = raw.decode("utf-8", "surrogateescape")  # as aiohttp's parser and the connector's
    head = p.RequestHead(1, "POST", "/v1/chat/completions", (("X-Odd", value),), "req-1")
    data = p.encode(head)
    assert data.isascii() and b"\\udce9" in data  # valid UTF-8 JSON, an escape per byte
    (decoded,) = p.decode(data)
    assert decoded == head
    assert isinstance(decoded, p.RequestHead)
    assert decoded.headers[0][1].encode("utf-8", "surrogateescape") == raw


def test_text_that_is_utf8_is_still_written_as_utf8() -> None:
    head = p.ResponseHead(1, 200, (("X-Name", "café ☕"),))
    assert "café ☕".encode() in p.encode(head)
    assert p.decode(p.encode(head)) == [head]


def test_a_request_head_carries_its_user_as_two_optional_keys() -> None:
    head = p.RequestHead(1, "POST", "/v1/models", (), "r1", "42", "Ada")
    assert p.encode(head) == (
        b"\x10\x00\x00\x00\x01\x00\x00\x00\x65"
        b'{"method":"POST","path":"/v1/models","headers":[],"request_id":"r1",'
        b'"user_id":"42","user_name":"Ada"}'
    )


def test_a_head_from_an_older_broker_without_a_user_decodes_with_none_known() -> None:
    payload = b'{"method":"POST","path":"/v1/models","headers":[],"request_id":"r1"}'
    frame = bytes([0x10, 0, 0, 0, 1, 0, 0, 0, len(payload)]) + payload
    assert p.decode(frame) == [p.RequestHead(1, "POST", "/v1/models", (), "r1", "", "")]


def test_a_user_id_that_is_not_a_string_is_a_protocol_error() -> None:
    payload = b'{"method":"POST","path":"/","headers":[],"request_id":"r","user_id":42}'
    frame = bytes([0x10, 0, 0, 0, 1, 0, 0, 0, len(payload)]) + payload
    with pytest.raises(p.ProtocolError, match="user_id"):
        p.decode(frame)
