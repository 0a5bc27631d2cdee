"""The hot path's JSON: orjson's speed, the standard library's answers."""

from __future__ import annotations

import json

import pytest

from shared import jsoncodec

SAME_AS_JSON = [
    b'{"model": "m", "n": 1, "f": 1.5, "ok": true, "none": null, "list": [1, "x"]}',
    b'{"text": "caf\\u00e9 \xe2\x98\x95"}',
    "\ufeff".encode() + b'{"bom": 1}',  # a UTF-8 byte-order mark: orjson refuses it
    '{"utf16": 1}'.encode("utf-16"),
    '{"utf32": 1}'.encode("utf-32-le"),
    b'{"nan": NaN, "inf": Infinity}',
    b'{"surrogate": "\\ud800"}',
    b'{"huge": 1e400}',
    b'{"a": 1, "a": 2}',
]


@pytest.mark.parametrize("data", SAME_AS_JSON)
def test_loads_answers_what_the_standard_library_answers(data: bytes) -> None:
    assert repr(jsoncodec.loads(data)) == repr(json.loads(data))


@pytest.mark.parametrize("data", [b"", b"{", b'{"a": 1} x', b"\xff\xfe\xfd", b"[" * 100_000])
def test_loads_refuses_what_the_standard_library_refuses(data: bytes) -> None:
    with pytest.raises((ValueError, RecursionError)):
        json.loads(data)
    with pytest.raises((ValueError, RecursionError)):
        jsoncodec.loads(data)


def test_an_integer_beyond_64_bits_comes_back_as_a_float() -> None:
    # The one answer that differs: orjson reads it as a float rather than refusing it.
    assert jsoncodec.loads(b'{"big": 123456789012345678901234567890}') == {
        "big": 1.2345678901234568e29
    }


def test_loads_hands_what_orjson_refuses_to_the_fallback() -> None:
    seen: list[bytes] = []

    def fallback(data: bytes) -> object:
        seen.append(data)
        return "fallback"

    assert jsoncodec.loads(b'{"a": 1}', fallback) == {"a": 1}
    assert jsoncodec.loads(b'{"a": NaN}', fallback) == "fallback"
    assert seen == [b'{"a": NaN}']


def test_dumps_writes_compact_utf8_and_hands_the_rest_to_the_fallback() -> None:
    def fallback(obj: object) -> bytes:
        return b"fallback"

    assert (
        jsoncodec.dumps({"h": [["a", "é"]], "n": 1}, fallback) == '{"h":[["a","é"]],"n":1}'.encode()
    )
    assert jsoncodec.dumps({"s": "\udc80"}, fallback) == b"fallback"  # a lone surrogate
    assert jsoncodec.dumps({"big": 2**70}, fallback) == b"fallback"
