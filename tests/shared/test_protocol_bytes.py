"""Header bytes that are not UTF-8 cross the relay unchanged (docs/protocol.md, section 3)."""

from __future__ import annotations

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
