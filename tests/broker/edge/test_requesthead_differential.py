"""The express lane's request heads against aiohttp's parsers, on generated heads.

Every head the express lane takes (`broker.edge.requesthead.parse` gives a Head) must be read
the same by aiohttp: method, target, path, version, headers (names, values, order),
body length, keep-alive, and a body neither chunked nor compressed nor an upgrade. Every
other head is left to aiohttp, whose answer is then the only one. Both of aiohttp's
parsers are asked: the C one (llhttp) the broker's server uses, and the pure-Python one
that replaces it where the C extension is missing.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
from aiohttp import http_parser
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_exceptions import HTTPException
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from broker.edge.requesthead import MAX_LINE, Head, parse
from shared.endpoints import MODEL_ENDPOINTS

MAX_BODY = 1024

PARSERS = {
    "python": http_parser.HttpRequestParserPy,
    # Without its C extension, aiohttp's server runs the Python parser: then that is asked twice.
    "server's": http_parser.HttpRequestParser,
}


@dataclass(frozen=True)
class Read:
    """A request as one parser read it."""

    method: str
    target: str
    path: str
    forwarded: str
    """The target as the aiohttp lane forwards it (`request.path_qs`)."""
    version: tuple[int, int]
    headers: list[tuple[str, str]]
    """Names lower-cased: aiohttp spells the names it knows its own way (`host` as `Host`)."""
    body: bytes
    complete: bool
    close: bool
    chunked: bool
    upgrade: bool
    compression: str | None


def aiohttp_reads(parser: str, data: bytes) -> Read | Exception:
    """What aiohttp makes of `data`, configured as the broker's server configures it."""
    loop = asyncio.new_event_loop()
    try:
        reader = PARSERS[parser](
            BaseProtocol(loop),
            loop,
            2**16,
            max_line_size=8190,
            max_field_size=8190,
            max_headers=128,
        )
        try:
            messages, _, _ = reader.feed_data(data)
        except (HttpProcessingError, HTTPException, ValueError) as exc:
            return exc
        assert len(messages) == 1
        message, payload = messages[0]
        url = message.url
        return Read(
            message.method,
            message.path,
            url.path,
            str(url.relative()) if url.absolute else str(url),
            (message.version.major, message.version.minor),
            [(name.lower(), value) for name, value in message.headers.items()],
            payload.read_nowait(-1),
            payload.is_eof(),
            message.should_close,
            message.chunked,
            message.upgrade,
            message.compression,
        )
    finally:
        loop.close()


def as_express_served(head: Head, body: bytes) -> Read:
    """What the express lane serves: the same fields, from its Head."""
    return Read(
        "POST",
        head.target,
        head.path,
        head.target,
        (1, 1),
        [(name.lower(), value) for name, value in head.headers.items()],
        body,
        True,
        head.close,
        False,
        False,
        None,
    )


# ---------------------------------------------------------------------------
# The grammar of request heads, odd corners included

_ODD_TARGETS = (
    "http://b/v1/chat/completions",
    "//v1/chat/completions",
    "/v1/chat/completion%73",
    "/v1//chat/completions",
    "/v1/./chat/completions",
    "/v1/chat/completions/",
    "/V1/chat/completions",
    "*",
    "/v1/chat/completions#frag",
    "/v1/chat/completions;p",
    "/v1/chat/completions%3Fa=1",
    "/v1/chat/completions%00",
    "/api/chat%2F",
)
_QUERY_PIECES = (
    *"abz09-._~!$&'()*+,;=:@/?",
    "%20",
    "%7e",
    "%7E",
    "%2F",
    "%2f",
    "%00",
    "%25",
    "%zz",
    "%",
    "%4",
    "%E2%98%83",
    "%ff",
    "%2B",
    "#",
    " ",
    "\t",
    "\x7f",
    "\x00",
    "é",
    "\\",
    "[",
    "]",
    "{",
    "|",
    "^",
    "`",
    '"',
    "<",
)
_NAMES = (
    "Host",
    "host",
    "Content-Length",
    "content-length",
    "Transfer-Encoding",
    "Connection",
    "Content-Encoding",
    "Expect",
    "Upgrade",
    "Authorization",
    "Keep-Alive",
    "TE",
    "Trailer",
    "Proxy-Connection",
    "X-A",
    "x-a",
    "Content-Length ",
    " Host",
    "Content_Length",
    "X\x00A",
    "Hóst",
    "",
    "X-A\x7f",
    "X A",
    "X:A",
)
_VALUES = (
    "0",
    "5",
    "05",
    "+5",
    "-1",
    " 5",
    "5 ",
    "5,5",
    "5, 5",
    "0x5",
    "1e3",
    "٣",
    "1" * 19,
    "2000",
    "chunked",
    "gzip",
    "GZIP",
    "identity",
    "deflate",
    "br",
    "zstd",
    "gzip, chunked",
    "close",
    "Close",
    "keep-alive",
    "Keep-Alive",
    "upgrade",
    "close, keep-alive",
    "keep-alive, upgrade",
    "100-continue",
    "websocket",
    "",
    "a\tb",
    "Bearer sk-\x01x",
    "é",
    "\x80\xff",
)
_ODD_CHARS = st.sampled_from(("a", " ", "\t", "\x00", "\x01", "\x7f", "\x80", "é", "\r", "\n", ":"))
_LINE_ENDS = st.sampled_from(("\r\n",) * 12 + ("\n", "\r", "\r\r\n", " \r\n"))


@st.composite
def targets(draw: st.DrawFn) -> str:
    """An endpoint, an endpoint with a query, or an odd form."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from(_ODD_TARGETS))
    path = draw(st.sampled_from(MODEL_ENDPOINTS))
    if draw(st.booleans()):
        return path
    return path + "?" + "".join(draw(st.lists(st.sampled_from(_QUERY_PIECES), max_size=8)))


_CLEAN_NAMES = (
    "Host",
    "Content-Length",
    "Connection",
    "Content-Encoding",
    "Authorization",
    "Accept",
    "X-A",
    "x-a",
)
_CLEAN_VALUES = ("0", "05", "7", "close", "Keep-Alive", "gzip", "Bearer sk-1", "a\tb", "")


@st.composite
def clean_field_lines(draw: st.DrawFn) -> str:
    """A field line the express lane may well take."""
    name = draw(st.sampled_from(_CLEAN_NAMES))
    value = draw(st.sampled_from(_CLEAN_VALUES) | st.from_regex(r"[\t -~]{0,12}", fullmatch=True))
    separator = draw(st.sampled_from((":", ": ", ":\t")))
    return name + separator + value + draw(st.sampled_from(("", " ")))


@st.composite
def field_lines(draw: st.DrawFn) -> str:
    """A field line, an obsolete folded line or a line of odd characters."""
    kind = draw(st.integers(0, 19))
    if kind == 0:
        return draw(st.sampled_from((" ", "\t"))) + draw(st.sampled_from(_VALUES))
    if kind == 1:
        return "".join(draw(st.lists(_ODD_CHARS, max_size=10)))
    name = draw(
        st.sampled_from(_NAMES)
        | st.from_regex(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,12}", fullmatch=True)
    )
    separator = draw(st.sampled_from((":", ": ", ":  ", ":\t", "::", ": \t ")))
    value = draw(st.sampled_from(_VALUES) | st.text(_ODD_CHARS, max_size=12))
    return name + separator + value + draw(st.sampled_from(("", "", "", " ", "\t")))


@st.composite
def request_heads(draw: st.DrawFn) -> bytes:
    """A request head up to its blank line, mostly close to what the express lane takes."""
    if draw(st.booleans()):  # half the heads: a clean request line, clean fields, one odd one
        method, separator, version = "POST", " ", "HTTP/1.1"
        fields = draw(st.lists(clean_field_lines(), max_size=5))
        if draw(st.booleans()):
            fields.insert(draw(st.integers(0, len(fields))), draw(field_lines()))
        line_ends = st.just("\r\n")
    else:
        method = draw(st.sampled_from(("POST",) * 8 + ("GET", "post", "PUT", "POS", "POST\t")))
        separator = draw(st.sampled_from((" ",) * 10 + ("  ", "\t")))
        version = draw(
            st.sampled_from(("HTTP/1.1",) * 8 + ("HTTP/1.0", "HTTP/1.2", "http/1.1", "HTTP/2"))
        )
        fields = draw(st.lists(field_lines(), max_size=6))
        line_ends = _LINE_ENDS
    lines = [method + separator + draw(targets()) + separator + version]
    if draw(st.integers(0, 4)):
        fields.insert(draw(st.integers(0, len(fields))), "Host: broker")
    if draw(st.integers(0, 4)):
        length = draw(st.integers(0, 40) | st.just(MAX_BODY) | st.just(MAX_BODY + 1))
        fields.insert(draw(st.integers(0, len(fields))), f"Content-Length: {length}")
    text = lines[0]
    for line in fields:
        text += draw(line_ends) + line
    return text.encode("utf-8", "surrogatepass") + b"\r\n\r\n"


def express_takes(data: bytes) -> Head | None:
    """What the express lane does with these bytes: the head it serves, or None."""
    end = data.find(b"\r\n\r\n")
    return parse(data[:end], MAX_BODY)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request_heads())
def test_every_head_the_express_lane_takes_aiohttp_reads_the_same(data: bytes) -> None:
    head = express_takes(data)
    event("taken" if head is not None else "left to aiohttp")
    if head is None:
        return
    body = (bytes(range(256)) * (head.length // 256 + 1))[: head.length]
    request = data[: data.find(b"\r\n\r\n") + 4] + body
    for parser in PARSERS:
        assert aiohttp_reads(parser, request) == as_express_served(head, body), parser


# ---------------------------------------------------------------------------
# What the search found, kept as plain cases


@pytest.mark.parametrize("parser", PARSERS)
@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd", "GZip"])
def test_a_compressed_body_is_left_to_aiohttp_which_decodes_or_refuses_it(
    parser: str, encoding: str
) -> None:
    data = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: b\r\nContent-Encoding: %b\r\n"
        % (encoding.encode())
        + b"Content-Length: 2\r\n\r\n"
    )
    assert express_takes(data) is None
    read = aiohttp_reads(parser, data)
    assert isinstance(read, Exception) or read.compression == encoding.lower()


@pytest.mark.parametrize("parser", PARSERS)
def test_an_empty_query_is_left_to_aiohttp_which_forwards_the_target_without_it(
    parser: str,
) -> None:
    data = b"POST /v1/chat/completions? HTTP/1.1\r\nHost: b\r\nContent-Length: 0\r\n\r\n"
    assert express_takes(data) is None
    read = aiohttp_reads(parser, data)
    assert isinstance(read, Read) and read.forwarded == "/v1/chat/completions"


@pytest.mark.parametrize("parser", PARSERS)
@pytest.mark.parametrize("where", ["request line", "field line"])
def test_lines_at_the_express_lanes_limit_are_read_the_same(parser: str, where: str) -> None:
    line = "POST /v1/chat/completions?q= HTTP/1.1"
    field = "X-Big: "
    if where == "request line":
        line = line.replace("q=", "q=" + "a" * (MAX_LINE - len(line)))
    else:
        field += "b" * (MAX_LINE - len(field))
    data = f"{line}\r\nHost: b\r\n{field}\r\nContent-Length: 0\r\n\r\n".encode()
    head = express_takes(data)
    assert head is not None
    assert aiohttp_reads(parser, data) == as_express_served(head, b"")
