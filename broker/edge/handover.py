"""Where a connection passes between the broker's own protocols and aiohttp's server.

Every coupling the broker has to aiohttp's server beyond its public `aiohttp.web` API is here:

- `to_aiohttp` gives a connection to aiohttp's protocol with the bytes read from it so far (the
  front does, for anything that is neither a relay upgrade nor an express-lane post; the express
  lane does, at the first request it does not take). Only asyncio's public protocol calls.
- `from_aiohttp` takes a connection from an aiohttp request for the relay (a proxy's upgrade on
  a pooled connection): the upgrade head rebuilt from the request, plus the bytes aiohttp's
  parser already holds behind it. Those bytes sit in `RequestHandler._message_tail`, the one
  private name the broker reads: pyproject.toml caps aiohttp below the next minor version, and
  tests/broker/edge/test_handover.py fails, saying so, when the attribute moves or changes type.
  `back_to_aiohttp` then ends aiohttp's side of it.
- `ResponseHead` writes a response's status line, Date and Server as aiohttp writes them, from
  the standard library (`http.HTTPStatus`, `time.gmtime`) rather than aiohttp's helpers.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Final, NamedTuple

import aiohttp
from aiohttp import web

SERVER: Final = f"Python/{sys.version_info[0]}.{sys.version_info[1]} aiohttp/{aiohttp.__version__}"
"""The Server header aiohttp writes on its answers."""

_STATUS_LINES: Final = {
    status.value: f"HTTP/1.1 {status.value} {status.phrase}" for status in HTTPStatus
}
_WEEKDAYS: Final = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS: Final = (
    *("", "Jan", "Feb", "Mar", "Apr", "May", "Jun"),
    *("Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
)

_TAIL: Final = "_message_tail"
"""aiohttp's `RequestHandler` keeps the bytes behind an upgrade head here until a payload
parser takes them (`web_protocol.py`); nothing public hands them out."""


class AiohttpMoved(RuntimeError):
    """aiohttp no longer keeps something where this module reads it (a newer aiohttp)."""


def to_aiohttp(
    transport: asyncio.Transport, http: Callable[[], asyncio.Protocol], received: bytes
) -> None:
    """Give a connection to a new aiohttp protocol for good, with the bytes read so far."""
    protocol = http()
    transport.set_protocol(protocol)
    # In a context of its own: this may run in a request's, whose id must not stick to
    # the requests aiohttp serves on the connection from now on.
    context = contextvars.Context()
    context.run(protocol.connection_made, transport)
    context.run(protocol.data_received, received)


class Taken(NamedTuple):
    """A connection taken from aiohttp, and the bytes of its request and after (`from_aiohttp`)."""

    transport: asyncio.Transport
    received: bytes


def from_aiohttp(request: web.BaseRequest) -> Taken | None:
    """Take an upgrade's connection from aiohttp, or None when the client has already gone.

    `received` is the request's head rebuilt (as the client sent it, bar the spaces around
    header values) and the bytes the client sent right behind it (its hello, say), which
    aiohttp's parser holds: without them the relay's handshake would wait for a hello that
    already came. The caller swaps the transport's protocol, and calls `back_to_aiohttp` once
    the connection ends.
    """
    transport = request.transport
    if transport is None or transport.is_closing():
        return None
    head = b"".join(
        (
            f"{request.method} {request.raw_path} HTTP/1.1\r\n".encode("latin-1"),
            *(name + b": " + value + b"\r\n" for name, value in request.raw_headers),
            b"\r\n",
        )
    )
    return Taken(transport, head + parser_tail(request.protocol))


def parser_tail(protocol: web.RequestHandler) -> bytes:
    """The bytes aiohttp's protocol holds behind an upgrade head; AiohttpMoved if it no longer
    keeps them where this reads them (loudly: silence would stall every such handshake)."""
    tail = getattr(protocol, _TAIL, None)
    if not isinstance(tail, (bytes, bytearray)):
        raise AiohttpMoved(
            f"aiohttp {aiohttp.__version__} no longer keeps the bytes behind an upgrade in "
            f"RequestHandler.{_TAIL}; broker/edge/handover.py must learn where they went "
            "before the cap on aiohttp in pyproject.toml is raised."
        )
    return bytes(tail)


def back_to_aiohttp(request: web.BaseRequest) -> None:
    """End aiohttp's side of a connection taken with `from_aiohttp`, so it forgets it.

    The socket is no longer aiohttp's protocol's, so this is the end of the connection as far
    as aiohttp can tell; what its handler writes from now on goes nowhere.
    """
    request.protocol.connection_lost(None)


class ResponseHead:
    """Response heads as aiohttp writes them: its reason phrases, Date and Server headers.

    The Date is formatted once a second, as aiohttp does, from the clock passed in.
    """

    __slots__ = ("_clock", "_second", "_stamp")

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._second = -1
        self._stamp = ""

    @staticmethod
    def status_line(status: int) -> str:
        """`HTTP/1.1 200 OK`; an unknown status has an empty reason, as in aiohttp."""
        line = _STATUS_LINES.get(status)
        return line if line is not None else f"HTTP/1.1 {status} "

    def stamp(self) -> str:
        """The Date and Server header lines (no line end after the last)."""
        second = int(self._clock())
        if second != self._second:
            self._second = second
            self._stamp = f"Date: {http_date(second)}\r\nServer: {SERVER}"
        return self._stamp


def http_date(second: int) -> str:
    """An HTTP date (RFC 9110's IMF-fixdate), as aiohttp's `rfc822_formatted_time` writes it."""
    year, month, day, hh, mm, ss, weekday, *_ = time.gmtime(second)
    time_of_day = f"{hh:02d}:{mm:02d}:{ss:02d}"
    return f"{_WEEKDAYS[weekday]}, {day:02d} {_MONTHS[month]} {year:4d} {time_of_day} GMT"
