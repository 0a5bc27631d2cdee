"""The heads of the requests the express lane serves, sans-I/O: bytes in, a head or None out.

The express lane (`broker.edge.express`) serves only the plainest API request: a
`POST` over HTTP/1.1 to one of the model endpoints, with one valid
`Content-Length` within the body limit, printable ASCII throughout, and no
`Transfer-Encoding`, `Content-Encoding`, `Expect`, `Upgrade`, `Origin` or unusual
`Connection`. Anything else, or anything in doubt, is None: that request, and the rest of its
connection, go to aiohttp, whose tested parser and limits answer it. So this parser only has
to be right about what it accepts; it never has to reject well. `stray_line_end` tells, before
a head is complete, that it will be None (a lone CR or LF), so aiohttp gets it at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from multidict import CIMultiDict

from shared.endpoints import MODEL_ENDPOINTS

MAX_HEAD: Final = 16 * 1024
"""Bytes of a head the express lane looks at; a longer one is aiohttp's to judge."""


def stray_line_end(buffer: bytearray) -> bool:
    """Whether an incomplete head holds a CR or an LF that is not part of a CRLF: no head the
    express lane takes, so aiohttp answers it at once rather than after the head timeout."""
    pairs = buffer.count(b"\r\n")
    carriage_returns = buffer.count(b"\r") - buffer.endswith(b"\r")  # the last may await its LF
    return buffer.count(b"\n") != pairs or carriage_returns != pairs


MAX_FIELDS: Final = 100

MAX_LINE: Final = 8190
"""Bytes of the request line or one field line (aiohttp refuses longer ones with a 400)."""

_ENDPOINTS: Final = frozenset(MODEL_ENDPOINTS)
_TOKEN: Final = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# Every line a field: a token, a colon, then tabs and printable ASCII only. So no control
# character, and no CR or LF that does not end a line, can pass.
_FIELDS: Final = re.compile(rf"(?:{_TOKEN}:[\t -~]*\r\n)*")
# RFC 3986's path and query characters, percent-escapes well formed: nothing that aiohttp's
# URL parsing would refuse, repair or read differently.
_TARGET: Final = re.compile(r"/(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?]|%[0-9A-Fa-f]{2})*")
_LEFT_TO_AIOHTTP: Final = ("transfer-encoding", "content-encoding", "expect", "upgrade", "origin")
"""Headers that send a request to aiohttp: its tested handling (it decompresses a body it has a
`Content-Encoding` for, which this lane does not), and for `Origin` (a browser's, rare) the CORS
answer (`broker.api.cors`), which only aiohttp's responses carry."""


@dataclass(frozen=True, slots=True)
class Head:
    """A request head the express lane serves."""

    target: str
    """The path and query exactly as sent."""
    path: str
    headers: CIMultiDict[str]
    """In order, with the client's spelling of each name."""
    length: int
    """The body's length (`Content-Length`)."""
    close: bool
    """The client asked to close the connection after the answer."""


def parse(head: bytes, max_body: int) -> Head | None:
    """The head (without its blank line) of a request the express lane serves, else None."""
    if not head.isascii():
        return None
    text = head.decode("ascii")
    line, _, block = text.partition("\r\n")
    parts = line.split(" ")
    if len(parts) != 3 or parts[0] != "POST" or parts[2] != "HTTP/1.1":
        return None
    target = parts[1]
    path, mark, query = target.partition("?")
    if path not in _ENDPOINTS or not _TARGET.fullmatch(target) or "#" in target:
        return None
    if mark and not query:
        return None  # aiohttp forwards "/p?" as "/p": one lane, one target
    if not block or not _FIELDS.fullmatch(block + "\r\n"):
        return None
    lines = block.split("\r\n")
    if len(lines) > MAX_FIELDS or len(line) > MAX_LINE or max(map(len, lines)) > MAX_LINE:
        return None
    fields = [(name, value.strip(" \t")) for name, _, value in (f.partition(":") for f in lines)]
    headers: CIMultiDict[str] = CIMultiDict(fields)
    if any(name in headers for name in _LEFT_TO_AIOHTTP):
        return None
    if len(headers.getall("host", ())) != 1:
        return None
    lengths = headers.getall("content-length", ())
    if len(lengths) != 1:
        return None
    length = lengths[0]
    if not (length.isdigit() and len(length) <= 18) or int(length) > max_body:
        return None
    close = False
    connection = headers.getall("connection", ())
    if connection:
        if len(connection) != 1 or connection[0].lower() not in ("keep-alive", "close"):
            return None
        close = connection[0].lower() == "close"
    return Head(target, path, headers, int(length), close)
