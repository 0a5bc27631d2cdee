"""The express lane's request heads: what it takes, and everything it leaves to aiohttp."""

from __future__ import annotations

import pytest

from broker.edge.requesthead import MAX_FIELDS, MAX_LINE, parse
from shared.endpoints import MODEL_ENDPOINTS

LIMIT = 1024

SDK_HEAD = (
    b"POST /v1/chat/completions HTTP/1.1\r\n"
    b"Host: broker.example:8080\r\n"
    b"Accept: application/json\r\n"
    b"Accept-Encoding: gzip, deflate\r\n"
    b"Connection: keep-alive\r\n"
    b"User-Agent: AsyncOpenAI/Python 1.40.0\r\n"
    b"X-Stainless-Lang: python\r\n"
    b"Authorization: Bearer sk-abc\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: 96"
)


def head(*fields: str, line: str = "POST /v1/chat/completions HTTP/1.1") -> bytes:
    return "\r\n".join((line, *fields)).encode("latin-1")


def test_an_sdk_request_is_taken_with_its_headers_in_order_and_spelling() -> None:
    parsed = parse(SDK_HEAD, LIMIT)
    assert parsed is not None
    assert (parsed.target, parsed.path, parsed.length, parsed.close) == (
        "/v1/chat/completions",
        "/v1/chat/completions",
        96,
        False,
    )
    assert list(parsed.headers.items())[:2] == [
        ("Host", "broker.example:8080"),
        ("Accept", "application/json"),
    ]
    assert parsed.headers["authorization"] == "Bearer sk-abc"
    assert len(parsed.headers) == 9


@pytest.mark.parametrize("path", MODEL_ENDPOINTS)
def test_every_model_endpoint_is_taken(path: str) -> None:
    parsed = parse(head("Host: b", "Content-Length: 2", line=f"POST {path} HTTP/1.1"), LIMIT)
    assert parsed is not None and parsed.path == path


def test_the_query_travels_in_the_target_and_not_in_the_path() -> None:
    line = "POST /api/chat?x=1&y=%20 HTTP/1.1"
    parsed = parse(head("Host: b", "Content-Length: 2", line=line), LIMIT)
    assert parsed is not None
    assert (parsed.target, parsed.path) == ("/api/chat?x=1&y=%20", "/api/chat")


def test_values_lose_surrounding_blanks_and_keep_inner_ones() -> None:
    parsed = parse(head("Host: b", "Content-Length:\t7 ", "X-Note:  a  b \t"), LIMIT)
    assert parsed is not None
    assert parsed.length == 7
    assert parsed.headers["x-note"] == "a  b"


def test_repeated_headers_are_all_kept() -> None:
    parsed = parse(head("Host: b", "Content-Length: 0", "X-A: 1", "x-a: 2"), LIMIT)
    assert parsed is not None
    assert parsed.headers.getall("X-A") == ["1", "2"]


@pytest.mark.parametrize(("value", "close"), [("close", True), ("Keep-Alive", False)])
def test_connection_close_is_noted(value: str, close: bool) -> None:
    parsed = parse(head("Host: b", "Content-Length: 0", f"Connection: {value}"), LIMIT)
    assert parsed is not None and parsed.close is close


def test_a_field_line_of_exactly_aiohttps_limit_is_taken() -> None:
    parsed = parse(head("Host: b", "Content-Length: 2", "X-Big: " + "x" * (MAX_LINE - 7)), LIMIT)
    assert parsed is not None and len(parsed.headers["x-big"]) == MAX_LINE - 7


def test_a_body_of_exactly_the_limit_is_taken() -> None:
    parsed = parse(head("Host: b", f"Content-Length: {LIMIT}"), LIMIT)
    assert parsed is not None and parsed.length == LIMIT


LEFT_TO_AIOHTTP = {
    "another method": head("Host: b", "Content-Length: 2", line="PUT /api/chat HTTP/1.1"),
    "a lower-case method": head("Host: b", "Content-Length: 2", line="post /api/chat HTTP/1.1"),
    "HTTP/1.0": head("Host: b", "Content-Length: 2", line="POST /api/chat HTTP/1.0"),
    "HTTP/2 text": head("Host: b", "Content-Length: 2", line="POST /api/chat HTTP/2.0"),
    "a path not relayed": head("Host: b", "Content-Length: 2", line="POST /api/pull HTTP/1.1"),
    "a path with a prefix": head("Host: b", "Content-Length: 2", line="POST /x/api/chat HTTP/1.1"),
    "a percent-encoded path": head(
        "Host: b", "Content-Length: 2", line="POST /api/ch%61t HTTP/1.1"
    ),
    "a trailing slash": head("Host: b", "Content-Length: 2", line="POST /api/chat/ HTTP/1.1"),
    "an absolute target": head(
        "Host: b", "Content-Length: 2", line="POST http://b/api/chat HTTP/1.1"
    ),
    **{
        f"a query with {query}": head(
            "Host: b", "Content-Length: 2", line=f"POST /api/chat{query} HTTP/1.1"
        )
        for query in ('?q="x"', "?q={x}", "?q=|", "?q=\\", "?q=^", "?q=`", "?q=<>", "?q=[]")
    },
    "a broken percent-escape": head(
        "Host: b", "Content-Length: 2", line="POST /api/chat?a=%zz HTTP/1.1"
    ),
    "a fragment": head("Host: b", "Content-Length: 2", line="POST /api/chat?a#b HTTP/1.1"),
    "two spaces in the request line": head(
        "Host: b", "Content-Length: 2", line="POST  /api/chat HTTP/1.1"
    ),
    "no Content-Length": head("Host: b"),
    "two Content-Lengths": head("Host: b", "Content-Length: 2", "Content-Length: 2"),
    "a list as Content-Length": head("Host: b", "Content-Length: 2, 2"),
    "a signed Content-Length": head("Host: b", "Content-Length: +2"),
    "a hex Content-Length": head("Host: b", "Content-Length: 0x2"),
    "an empty Content-Length": head("Host: b", "Content-Length:"),
    "a huge Content-Length": head("Host: b", "Content-Length: 99999999999999999999999"),
    "a body over the limit": head("Host: b", f"Content-Length: {LIMIT + 1}"),
    "chunked": head("Host: b", "Transfer-Encoding: chunked"),
    "chunked and a length": head("Host: b", "Content-Length: 2", "Transfer-Encoding: chunked"),
    "Expect": head("Host: b", "Content-Length: 2", "Expect: 100-continue"),
    "a browser's Origin (CORS)": head(
        "Host: b", "Content-Length: 2", "Origin: https://app.example.com"
    ),
    "Upgrade": head("Host: b", "Content-Length: 2", "Upgrade: h2c", "Connection: Upgrade"),
    "another Connection token": head("Host: b", "Content-Length: 2", "Connection: Upgrade"),
    "a Connection list": head("Host: b", "Content-Length: 2", "Connection: keep-alive, x"),
    "two Connection fields": head(
        "Host: b", "Content-Length: 2", "Connection: close", "Connection: close"
    ),
    "no Host": head("Content-Length: 2"),
    "two Hosts": head("Host: a", "Host: b", "Content-Length: 2"),
    "a folded line": head("Host: b", "Content-Length: 2", "X-A: 1", " 2"),
    "a blank before the colon": head("Host: b", "Content-Length : 2"),
    "a blank before the name": head("Host: b", " Content-Length: 2"),
    "no colon": head("Host: b", "Content-Length: 2", "X-A"),
    "an empty name": head("Host: b", "Content-Length: 2", ": x"),
    "a name that is no token": head("Host: b", "Content-Length: 2", "X(A): 1"),
    "a NUL in a value": head("Host: b", "Content-Length: 2", "X-A: a\x00b"),
    "a control character in a value": head("Host: b", "Content-Length: 2", "X-A: a\x01b"),
    "DEL in a value": head("Host: b", "Content-Length: 2", "X-A: a\x7fb"),
    "a bare CR": head("Host: b", "Content-Length: 2", "X-A: a\rb"),
    "a bare LF": head("Host: b", "Content-Length: 2", "X-A: a\nX-B: b"),
    "a byte past ASCII": head("Host: b", "Content-Length: 2", "X-A: caf\xe9"),
    "a field line over aiohttp's limit": head(
        "Host: b", "Content-Length: 2", "X-Big: " + "x" * (MAX_LINE - 6)
    ),
    "a request line over aiohttp's limit": head(
        "Host: b", "Content-Length: 2", line=f"POST /api/chat?{'x' * MAX_LINE} HTTP/1.1"
    ),
    "too many fields": head(
        "Host: b", "Content-Length: 2", *(f"X-{i}: {i}" for i in range(MAX_FIELDS))
    ),
}


@pytest.mark.parametrize("raw", LEFT_TO_AIOHTTP.values(), ids=LEFT_TO_AIOHTTP.keys())
def test_anything_unusual_is_left_to_aiohttp(raw: bytes) -> None:
    assert parse(raw, LIMIT) is None


def test_a_line_feed_alone_ends_no_line() -> None:
    raw = SDK_HEAD.replace(b"\r\nAccept:", b"\nAccept:")
    assert parse(raw, LIMIT) is None
