"""The broker's listening protocol: relay upgrades to the lean link, API posts to the
express lane, everything else to aiohttp.

Each connection starts as a `_Sniffer` that keeps the bytes until the first
request line. `GET /relay` makes it a relay connection (`Relay.connection`); a
first request that starts `POST /` goes to the express lane (`broker.edge.express`),
which serves the plain API requests itself and hands the connection to aiohttp at
the first request it does not take; anything else goes to aiohttp's own protocol
for good, with the bytes read so far (`broker.edge.handover`), as soon as the bytes cannot
become either (so a TLS hello sent to a plain port still gets aiohttp's 400 at once), and costs
nothing more per request after that.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final, cast

from broker.edge import handover

FIRST_LINE_TIMEOUT: Final = 30.0
"""Seconds a new connection gets to send its first request line (the broker passes its
--head-timeout; the lane the line chooses bounds the rest of the head)."""

MAX_FIRST_LINE: Final = 8 * 1024
"""Bytes a first request line may take (aiohttp's own limit is about the same)."""

_RELAY_START: Final = b"GET /relay"
_EXPRESS_START: Final = b"POST /"

Entry = Callable[[asyncio.Transport, bytes], object]
"""Takes a connection over, with the bytes read from it so far."""


def is_relay_request(line: bytes) -> bool:
    """True for the request line of a GET of /relay (a query is allowed)."""
    parts = line.split(b" ")
    return len(parts) == 3 and parts[0] == b"GET" and parts[1].partition(b"?")[0] == b"/relay"


class Front:
    """The protocol factory the broker listens with."""

    def __init__(
        self,
        http: Callable[[], asyncio.Protocol],
        relay: Entry,
        *,
        express: Entry | None = None,
        first_line_timeout: float = FIRST_LINE_TIMEOUT,
        max_first_line: int = MAX_FIRST_LINE,
    ) -> None:
        self.http = http
        self.relay = relay
        self.express = express
        self.first_line_timeout = first_line_timeout
        self.max_first_line = max_first_line
        self.waiting: set[_Sniffer] = set()

    def __call__(self) -> _Sniffer:
        return _Sniffer(self)

    def close_waiting(self) -> None:
        """Drop the connections that have not sent a request line yet."""
        for sniffer in list(self.waiting):
            sniffer.drop()


class _Sniffer(asyncio.Protocol):
    __slots__ = ("_buffer", "_front", "_timer", "_transport")

    def __init__(self, front: Front) -> None:
        self._front = front
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self._transport = cast(asyncio.Transport, transport)
        front = self._front
        front.waiting.add(self)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(front.first_line_timeout, self.drop)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = bytes(buffer[: len(_RELAY_START)])
        if not _RELAY_START.startswith(start):
            if self._front.express is not None and start.startswith(_EXPRESS_START):
                self._to(self._front.express)
            elif self._front.express is None or not _EXPRESS_START.startswith(start):
                self._to_http()  # not ours (maybe not even HTTP): aiohttp answers it at once
            return
        end = buffer.find(b"\r\n")
        if end >= 0:
            if is_relay_request(bytes(buffer[:end])):
                self._to_relay()
            else:
                self._to_http()
        elif len(buffer) > self._front.max_first_line:
            self.drop()

    def _to_relay(self) -> None:
        self._to(self._front.relay)

    def _to(self, entry: Entry) -> None:
        assert self._transport is not None
        self._settle()
        entry(self._transport, bytes(self._buffer))

    def _to_http(self) -> None:
        transport = self._transport
        assert transport is not None
        self._settle()
        handover.to_aiohttp(transport, self._front.http, bytes(self._buffer))

    def eof_received(self) -> bool:
        self.drop()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._settle()

    def drop(self) -> None:
        """Close the connection: no request line came (in time, or within the bound)."""
        self._settle()
        if self._transport is not None:
            self._transport.close()

    def _settle(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._front.waiting.discard(self)
