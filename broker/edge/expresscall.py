"""The client's side of one request on the express lane: its head, its body, its answer.

`ExpressCall` is the `broker.stream.call.Call` that `broker.edge.express` hands to
`broker.api.admission.serve`: the body as it arrives (read at most `BODY_AHEAD` ahead of the
request path), and the answer written as aiohttp writes one (`broker.edge.handover.ResponseHead`),
on the connection it came from (`Socket`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Final, Protocol

from broker.edge.handover import ResponseHead
from broker.edge.requesthead import Head
from broker.stream.call import request_id_of
from broker.stream.machine import bodiless
from shared.tracecontext import trace_fields

BODY_AHEAD: Final = 128 * 1024
"""Bytes of a body read before the request path asks for it (while the key is checked, say);
past this, reading pauses, as aiohttp's flow control does."""


class Socket(Protocol):
    """What a call needs of its connection (`broker.edge.express`)."""

    @property
    def heads(self) -> ResponseHead:
        """Writes the status line, Date and Server as aiohttp does."""

    def write(self, data: bytes) -> None:
        """Raises ConnectionError once the client has gone."""

    async def drained(self) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self) -> None: ...


class ExpressCall:
    """A `broker.stream.call.Call` on the express lane: the parsed head, the body, the answer."""

    __slots__ = (
        "_bodiless",
        "_body",
        "_chunked",
        "_connection",
        "_discarding",
        "_head",
        "_left",
        "_out",
        "_received",
        "_waiter",
        "_wanted",
        "answered",
        "began",
        "close",
        "finished",
        "ids",
        "request_id",
    )

    def __init__(self, connection: Socket, head: Head) -> None:
        self._connection = connection
        self._head = head
        self.request_id = request_id_of(head.headers)
        self.ids = {"request_id": self.request_id, **trace_fields(head.headers.get("traceparent"))}
        """The fields that name the request in its log lines (`broker.stream.call.Call.ids`)."""
        self._body = bytearray()
        self._received = 0
        self._discarding = False
        """The request was answered before its body came: the rest is read and dropped."""
        self._waiter: asyncio.Future[None] | None = None
        self._wanted = False
        """The request path asked for the body (`read`)."""
        self._out: list[bytes] = []
        """What is written but not yet handed to the socket (`flush`): a head waiting to leave
        with the first body bytes, say."""
        self._chunked = False
        self._bodiless = False
        self._left: int | None = None
        """Body bytes the answer's Content-Length still owes, when it has one."""
        self.close = head.close
        """Close the connection after the answer."""
        self.began = False
        """`broker.api.admission.serve` started on this request."""
        self.answered = False
        """Some of the answer was written (or is held to leave with the body)."""
        self.finished = False
        """The answer was written in full: the connection may carry the next request."""

    @property
    def complete(self) -> bool:
        return self._received == self._head.length

    def take(self, buffer: bytearray) -> None:
        """Move this request's body bytes out of the connection's buffer."""
        need = self._head.length - self._received
        if need and buffer:
            taken = buffer[:need]
            del buffer[:need]
            self._received += len(taken)
            if not self._discarding:
                self._body += taken
                if not self._wanted and len(self._body) >= BODY_AHEAD and not self.complete:
                    self._connection.pause_reading()
        if self._waiter is not None and self.complete and not self._waiter.done():
            self._waiter.set_result(None)

    def discard(self) -> None:
        """Keep none of the body from now on (the request has been answered)."""
        self._discarding = True
        self._body = bytearray()

    # -- what the request says --------------------------------------------------------

    @property
    def method(self) -> str:
        return "POST"

    @property
    def path(self) -> str:
        return self._head.path

    @property
    def target(self) -> str:
        return self._head.target

    @property
    def headers(self) -> Mapping[str, str]:
        return self._head.headers

    async def read(self, limit: int) -> bytes | None:
        if self._head.length > limit:
            return None
        self._wanted = True
        if not self.complete:
            self._connection.resume_reading()
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return bytes(self._body)

    # -- the answer ---------------------------------------------------------------------

    async def reply(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        # Not waiting for the client to read it, as aiohttp's handlers return theirs: the
        # connection reads no further request until the client does (`_Connection._after`).
        self.send_reply(status, headers, body)

    def body_now(self) -> bytes:
        """The body, once `complete`."""
        return bytes(self._body)

    def send_reply(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        """Write a complete response at once."""
        fields = [*headers.items(), ("X-Request-ID", self.request_id)]
        fields.append(("Content-Length", str(len(body))))
        self.answered = True
        self._connection.write(self._head_bytes(status, fields) + body)
        self.finished = True

    async def start(
        self, status: int, headers: list[tuple[str, str]], *, chunked: bool, buffered: bool
    ) -> None:
        self.start_now(status, headers, chunked=chunked)
        if not buffered:
            self.flush()
            await self._connection.drained()

    async def write(self, data: bytes) -> None:
        if self.write_now(data):
            self.flush()
            await self._connection.drained()

    async def end(self) -> None:
        self.end_now()
        await self._connection.drained()

    # The same answer without waiting (`broker.stream.callbacktrip`): what is written waits for
    # `flush`, so whatever one message of the relay carried leaves in one write.

    def start_now(self, status: int, headers: list[tuple[str, str]], *, chunked: bool) -> None:
        """Write the response head (held until `flush`)."""
        no_body = bodiless("POST", status)  # the lane serves POSTs only
        fields = headers
        if no_body:
            # As aiohttp: no body, so nothing that announces one.
            fields = [
                (name, value)
                for name, value in headers
                if name.lower() not in ("transfer-encoding", "content-length")
            ]
            self._bodiless = True
        elif chunked:
            fields = [*headers, ("Transfer-Encoding", "chunked")]
            self._chunked = True
        else:
            # broker.stream.trip relays one Content-Length, and only of plain digits.
            length = next(value for name, value in headers if name.lower() == "content-length")
            self._left = int(length)
        empty = no_body or self._left == 0
        if not empty and not any(name.lower() == "content-type" for name, _ in headers):
            fields = [*fields, ("Content-Type", "application/octet-stream")]  # as aiohttp
        self.answered = True
        self._out.append(self._head_bytes(status, fields))

    def write_now(self, data: bytes) -> bool:
        """Write body bytes (held until `flush`); False when there was nothing to write."""
        if not data or self._bodiless:
            return False  # an empty chunk would end a chunked body
        if self._chunked:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        elif self._left is not None:
            if len(data) > self._left:
                data = data[: self._left]  # no bytes past the length the head announced
            self._left -= len(data)
        self._out.append(data)
        return True

    def end_now(self) -> None:
        """End the answer and hand all of it to the socket."""
        if self._chunked:
            self._out.append(b"0\r\n\r\n")
        self.flush()
        if self._left:
            # Shorter than announced: the client must see the body is incomplete.
            self.close = True
        self.finished = True

    def flush(self) -> None:
        """Hand what is written to the socket (ConnectionError once the client has gone)."""
        out = self._out
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            self._connection.write(data)

    def cut(self) -> None:
        self.close = True
        self.finished = False
        self._connection.close()

    def _head_bytes(self, status: int, fields: list[tuple[str, str]]) -> bytes:
        heads = self._connection.heads
        lines = [heads.status_line(status)]
        lines.extend(f"{name}: {value}" for name, value in fields)
        lines.append(heads.stamp())
        if self.close:
            lines.append("Connection: close")
        lines.append("\r\n")
        return "\r\n".join(lines).encode()
