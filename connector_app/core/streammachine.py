"""The rules of one stream the connector serves, sans I/O: events in, what to do out.

A `StreamMachine` is fed the broker's frames for its stream (the request's head, body
and end; a cancel; window updates) and what the local LLM answers (the response head,
body bytes, its end, a failure), and returns the frames to send the broker. No asyncio,
socket or clock is inside: `connector_app.core.streams` drives it, from a task or from
the LLM connection's callbacks, and does what it says. Everything that decides what the
broker hears about a stream is here, once:

- a request is received whole (head, body within `MAX_REQUEST_BODY`, end) before it is
  served; a frame out of that order is the broker's `ProtocolError`;
- at its end it is refused `user_blocked` when its user (the head's `user_id`) is one
  the owner blocked, else `over_capacity` while the connector drains, is paused or is at
  its concurrency limit, else `forbidden` outside the model endpoints, else served (the
  first two let the broker try another connector);
- the answer goes back as one `ResponseHead` (without hop-by-hop headers), body frames
  within the stream's credit (bytes beyond it are `held` until window updates cover them),
  and one `End` or `Error`; nothing follows a cancel;
- a request sent on a kept-alive connection that failed before any byte came back may go
  out once more, on a fresh connection (`RETRYING`);
- a failure becomes `llm_unreachable` before the head, `llm_stream_failed` after it, and
  `connector_error` when it is a bug on this side;
- `outcome` says how the stream ended, for the log: ok, failed, cancelled or refused.

Feeding an LLM event the phase does not allow (a body before its head, a second end)
is the driver's bug: `StreamStateError`.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Final

from shared import protocol as p
from shared.endpoints import is_relayable
from shared.flow import SendCredit
from shared.http1 import HTTPError

RECEIVING: Final = 0
"""The request's head came; its body and end may follow."""
CALLING: Final = 1
"""The request went to the local LLM; no answer yet."""
RETRYING: Final = 2
"""As CALLING, sent a second time (on a fresh connection): no further retry."""
RELAYING: Final = 3
"""The response head was relayed; body bytes, then its end or a failure, follow."""
OVER: Final = 4
"""The stream ended (`outcome` says how); LLM events still arriving are dropped."""

OK: Final = "ok"
FAILED: Final = "failed"
CANCELLED: Final = "cancelled"
REFUSED: Final = "refused"

HOP_BY_HOP: Final = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}
)
"""Headers of the local hop that are not relayed (the broker frames the client's answer)."""

USER_BLOCKED_MESSAGE: Final = "The owner of this connector does not serve you."
"""What a blocked user is told (through the broker: 403 `user_blocked`)."""

_NO_FRAMES: Final[tuple[p.ResponseBody, ...]] = ()


class StreamStateError(Exception):
    """The driver fed an event the stream's phase does not allow: a bug on this side."""


def already_open(stream_id: int) -> p.ProtocolError:
    """The error for a RequestHead naming a stream that is open."""
    return p.ProtocolError(f"stream {stream_id} is already open")


def on_closed_stream(frame: p.Frame) -> None:
    """A frame for a stream that is not open (never opened, or over and forgotten).

    A request's body or end there breaks the protocol; a cancel or a window update may
    cross the stream's end on the wire, and is ignored.
    """
    if isinstance(frame, p.RequestBody):
        raise p.ProtocolError(f"request body on stream {frame.stream_id} that is not open")
    if isinstance(frame, p.End):
        raise p.ProtocolError(f"end of stream {frame.stream_id} that is not open")


def is_llm_failure(exc: BaseException) -> bool:
    """The local LLM or its connection failed (not a bug of the connector's)."""
    return isinstance(exc, HTTPError | OSError | TimeoutError)


class StreamMachine:
    """One stream the broker opened: its request, its credit, and its phase."""

    __slots__ = (
        "_credit",
        "admitted",
        "body",
        "head",
        "held",
        "outcome",
        "phase",
        "status",
        "stream_id",
    )

    def __init__(self, head: p.RequestHead, window: int) -> None:
        self.head = head
        self.stream_id = head.stream_id
        self.body = bytearray()
        """The request body received so far."""
        self.phase = RECEIVING
        self.admitted = False
        """It counts against the concurrency limit and is reported (not refused as over
        capacity)."""
        self.status: int | None = None
        """The local LLM's status, once its head came."""
        self.held = b""
        """Response body bytes that wait for credit (the driver reads no more meanwhile)."""
        self.outcome: str | None = None
        """How the stream ended: OK, FAILED, CANCELLED or REFUSED; None while it runs."""
        self._credit = SendCredit(window)

    @property
    def over(self) -> bool:
        return self.phase == OVER

    # -- from the broker -------------------------------------------------------

    def request_body(self, data: bytes) -> None:
        """A piece of the request body; a body after the end or over the limit is refused."""
        if self.phase != RECEIVING:
            raise p.ProtocolError(f"request body on stream {self.stream_id} that is not open")
        if len(self.body) + len(data) > p.MAX_REQUEST_BODY:
            raise p.ProtocolError(f"request body on stream {self.stream_id} is too large")
        self.body += data

    def request_end(
        self,
        busy: int,
        limit: int,
        draining: bool,
        blocked: Collection[str] = (),
        paused: bool = False,
    ) -> p.Error | None:
        """The request is whole: None to serve it, else the refusal to send.

        `busy` streams are being served and `limit` may be; `blocked` holds the user ids
        the owner refuses; `paused`: the owner stopped sharing for now. A stream refused
        for its user or over capacity is not `admitted` (neither counted nor reported:
        the broker may take it elsewhere), one outside the model endpoints is.
        """
        if self.phase != RECEIVING:
            raise p.ProtocolError(f"end of stream {self.stream_id} that is not open")
        sid = self.stream_id
        if self.head.user_id and self.head.user_id in blocked:
            self._end(REFUSED)
            return p.Error(sid, "user_blocked", USER_BLOCKED_MESSAGE)
        if draining or paused or busy >= limit:
            self._end(REFUSED)
            reason = (
                "shutting down"
                if draining
                else "paused by its owner"
                if paused
                else "at its concurrency limit"
            )
            return p.Error(sid, "over_capacity", f"The connector is {reason}.")
        self.admitted = True
        head = self.head
        if not is_relayable(head.method, head.path):
            self._end(REFUSED)
            return p.Error(sid, "forbidden", "The connector serves model endpoints only.")
        self.phase = CALLING
        return None

    def cancel(self) -> None:
        """The broker cancelled the stream (or the link is gone): nothing more is sent."""
        if self.phase != OVER:
            self._end(CANCELLED)

    def window_update(self, increment: int) -> tuple[p.ResponseBody, ...]:
        """More credit: the held body bytes it now covers, as frames to send."""
        self._credit.add(increment)
        if not self.held or self.phase != RELAYING:
            return _NO_FRAMES
        held, self.held = self.held, b""
        return self._frames(held, self._credit.take(len(held)))

    # -- from the local LLM ----------------------------------------------------

    def response_head(self, status: int, headers: p.Headers) -> p.ResponseHead | None:
        """The answer's head, to relay without the local hop's own headers."""
        if self.phase != CALLING and self.phase != RETRYING:
            self._late("a response head")
            return None
        self.phase = RELAYING
        self.status = status
        relayed = tuple((k, v) for k, v in headers if k.lower() not in HOP_BY_HOP)
        return p.ResponseHead(self.stream_id, status, relayed)

    def response_body(self, data: bytes) -> tuple[p.ResponseBody, ...]:
        """Body bytes: the frames the credit covers now; the rest is `held`, behind any
        bytes held already."""
        if self.phase != RELAYING:
            self._late("response body bytes")
            return _NO_FRAMES
        if self.held:
            self.held += data
            return _NO_FRAMES
        total = len(data)
        n = self._credit.take(total)
        if n == total:
            # The common case (a chunk that fits) goes as it is, without a copy.
            return (p.ResponseBody(self.stream_id, data),) if n else _NO_FRAMES
        return self._frames(data, n)

    def complete(self) -> p.End | None:
        """The answer ended: the End to send (the driver waits until nothing is held)."""
        if self.phase != RELAYING:
            self._late("the end of the response")
            return None
        if self.held:
            raise StreamStateError("the response ended while bytes wait for credit")
        self._end(OK)
        return p.End(self.stream_id)

    def failed(
        self, exc: BaseException, *, kept_alive: bool = False, received: bool = True
    ) -> p.Error | None:
        """Serving failed with `exc`: the Error to send, or None (over, or `RETRYING`).

        `kept_alive`: the request went out on a connection that had carried an earlier
        exchange; `received`: some byte came back on it. A kept-alive connection the
        server had closed fails before any byte: that request never reached the server,
        so it may go out once more (the phase becomes RETRYING; the driver sends it again
        on a fresh connection).
        """
        phase = self.phase
        if phase == OVER:
            return None
        if phase == RECEIVING:
            raise StreamStateError("a failure before the request was served")
        sid = self.stream_id
        if is_llm_failure(exc):
            if phase == CALLING and kept_alive and not received:
                self.phase = RETRYING
                return None
            self._end(FAILED)
            # Details (the local URL, the socket error) stay in this machine's log.
            if phase == RELAYING:
                message = "The local LLM server failed mid-response."
                return p.Error(sid, "llm_stream_failed", message)
            return p.Error(sid, "llm_unreachable", "The local LLM server is unreachable.")
        # A bug here must not leave the broker's client waiting for its timeout.
        self._end(FAILED)
        return p.Error(sid, "connector_error", f"The connector failed: {type(exc).__name__}")

    # -- helpers ---------------------------------------------------------------

    def _frames(self, data: bytes, n: int) -> tuple[p.ResponseBody, ...]:
        """Frames for as much of `data` as the credit covers, `n` bytes of it taken already;
        the rest becomes `held`."""
        credit = self._credit
        total = len(data)
        frames: list[p.ResponseBody] = []
        offset = 0
        while n:
            frames.append(p.ResponseBody(self.stream_id, data[offset : offset + n]))
            offset += n
            n = credit.take(total - offset)
        self.held = data[offset:]
        return tuple(frames)

    def _late(self, what: str) -> None:
        """An LLM event after the stream ended is dropped; one before its time is a bug."""
        if self.phase != OVER:
            raise StreamStateError(f"{what} in phase {self.phase}")

    def _end(self, outcome: str) -> None:
        self.phase = OVER
        self.outcome = outcome
        self.held = b""
