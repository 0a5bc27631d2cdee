"""The rules of one relayed stream, sans-I/O: what happens to a request on its way back.

`StreamMachine` is the broker's whole say on one API request after admission, in the
style of h11's and websockets' protocol objects: its drivers (`broker.stream.trip`, in
a task; `broker.stream.callbacktrip`, from the sockets' callbacks) feed it what
happened (the connector's events, the client leaving, the timeout, no connector to
route to) and perform what it answers. It holds no socket, task or clock: time is
passed in.

Its rules, written here once:

- The order of a stream: one response head, then body bytes, then the end, or an error
  in place of any of them. A second head, a body or an end before the head, is the
  connector's protocol error (502 `connector_protocol_error`).
- A retry on another connector is allowed only while nothing has reached the client:
  the connector refused the stream (`over_capacity`), refused its user (`user_blocked`:
  its owner blocked them) or its link was lost, before the head. Any other error before
  the head is the client's error response. When no connector that admits the user
  is left to serve the model after a block, the client hears the block (403
  `user_blocked`) at once; while one is connected but merely busy, the usual wait and
  503 apply. A model served only by connectors whose owners do not admit the user is 403
  `model_not_allowed`.
- A failure before the head is a complete error response in the endpoint's dialect
  (`broker.api.errors`). After it, it is an error event written into the stream (SSE
  or NDJSON, after the last complete event: `broker.stream.eventframer`), and where the
  format has none, or the head announced a Content-Length, a cut connection: only that
  tells the client its answer is incomplete.
- What is charged: the prompt and completion tokens the answer reports
  (`broker.stream.tally`), or the events streamed when it reports no completion count.
- The outcome: `ok`, `error`, `timeout` or `cancelled` (the client left: status 499).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from broker.api.errors import dialect_for, error_parts, stream_error
from broker.stream.eventframer import EventFramer
from broker.stream.headers import BadHead, relayable
from broker.stream.tally import TokenTally
from shared import protocol as p

BUG: Final = "The broker failed to handle this request; its operator can find why in its log."

USER_BLOCKED: Final = "user_blocked"
"""A connector's refusal of the request's user (its owner blocked them)."""

MODEL_NOT_ALLOWED: Final = "model_not_allowed"
"""The model is served only by connectors whose owners do not share them with the user."""

BLOCKED_MESSAGE: Final = "The owner of this connector does not serve you."
"""What a user a connector blocks is told when the broker knew it before asking (the
connector's own words for it)."""

HOP_ERROR: Final = "X-RemoteLLM-Hop-Error"
"""On an error response a broker made itself for a forwarded request: its code (the
forwarding broker retries another connector for `no_connector_available` and `user_blocked`)."""

STREAMING_TYPES: Final = ("text/event-stream", "application/x-ndjson")

WAITING: Final = 0
"""No response head yet: a failure is a complete error response; a retry is allowed."""
STREAMING: Final = 1
"""The head went to the client: a failure goes in-band (or cuts the connection)."""
DONE: Final = 2
"""The stream ended (answered, failed or abandoned): nothing more is written."""


class LinkLost(Exception):
    """The connector went away while the stream was open (a stream event, and raised)."""

    def __init__(self, connector: str, sent_away: str | None = None) -> None:
        super().__init__(connector)
        self.sent_away = sent_away
        """Why the broker sent the connector away, when it was the broker that closed the link
        (a shutdown past its grace, a revoked token)."""

    @property
    def message(self) -> str:
        """What the client of a stream cut short by it is told."""
        if self.sent_away is None:
            return "The connector serving this model disconnected."
        return f"The broker closed its link to the connector serving this model ({self.sent_away})."


StreamEvent = p.ResponseHead | p.ResponseBody | p.End | p.Error | LinkLost
"""What the relay hands a stream, in order."""


class MachineError(Exception):
    """A driver fed the machine something its state does not allow (a bug in the driver)."""


@dataclass(slots=True)
class Start:
    """Write the response head. `chunked`: its length is not known."""

    status: int
    headers: list[tuple[str, str]]
    chunked: bool


@dataclass(slots=True)
class Finish:
    """Write `tail` (when there is one), then end the response."""

    tail: bytes


@dataclass(slots=True)
class Failure:
    """End the request with an error: `reply` before the head (a complete response), else
    `tail` (the error event, then the end), else cut the client's connection."""

    status: int
    code: str
    message: str
    reply: tuple[dict[str, str], bytes] | None = None
    tail: bytes | None = None


@dataclass(slots=True)
class Retry:
    """Send the request to another connector: `why` this one did not answer."""

    why: str
    """`refused` (at capacity or stopping), `blocked` (its owner blocked the user) or `lost`
    (its link went away)."""


Action = bytes | Start | Finish | Failure | Retry
"""What `StreamMachine.feed` asks for. Bytes: body bytes to write now (maybe none)."""


@dataclass(slots=True)
class Outcome:
    """How the request ended, for the books (`broker.stream.books`)."""

    status: int
    outcome: str
    elapsed: float
    ttfb: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    charged: int


def bodiless(method: str, status: int) -> bool:
    """Whether an answer carries no body whatever its headers say (RFC 9112 6.3, as aiohttp)."""
    return status < 200 or status in (204, 304) or method == "HEAD"


class StreamMachine:
    """One request's stream from admission to its outcome."""

    __slots__ = (
        "_blocked",
        "_content_type",
        "_ending",
        "_framer",
        "_no_body",
        "_sized",
        "_tally",
        "connector",
        "connector_done",
        "connector_id",
        "failed",
        "hop",
        "method",
        "path",
        "request_id",
        "started",
        "state",
        "status",
        "ttfb",
    )

    def __init__(
        self, method: str, path: str, request_id: str, started: float, *, hop: bool = False
    ) -> None:
        self.method = method
        self.hop = hop
        """The client is another broker of the cluster (`broker.cluster.forwarding`): it adds
        the response headers of its own client itself, and reads a complete error response's
        code from `HOP_ERROR`."""
        self.path = path
        self.request_id = request_id
        self.started = started
        """When the request arrived (the drivers' clock, `time.perf_counter()`)."""
        self.state = WAITING
        self.status = 0
        """The status the client gets (or got), 0 until known."""
        self.connector = ""
        """The connector the stream was last sent to."""
        self.connector_id: int | None = None
        """Its connector token in the store (None for a token from the settings)."""
        self.connector_done = False
        """The connector ended its side (an end or an error): it needs no cancel."""
        self.failed = False
        self.ttfb: float | None = None
        self._ending = ""
        """How the request ended when not by its answer: `timeout`, `cancelled` or `error`."""
        self._no_body = False
        self._sized = False
        """The head announced a Content-Length: its body cannot carry an error event."""
        self._content_type = ""
        self._framer = EventFramer("")
        self._tally: TokenTally | None = None
        self._blocked: str | None = None
        """The message of a connector that refused the request's user, once one has."""

    # -- routing ------------------------------------------------------------------------

    def routed(self, connector: str, connector_id: int | None = None) -> None:
        """The stream goes to `connector`, whose token in the store is `connector_id` (a first
        time, or again after a `Retry`)."""
        if self.state != WAITING:
            raise MachineError("a stream is routed only before its response head")
        self.connector = connector
        self.connector_id = connector_id
        self.connector_done = False

    @property
    def blocked(self) -> bool:
        """A connector refused the request's user (`user_blocked`)."""
        return self._blocked is not None

    def no_connector(self, reason: str, model: str) -> Failure:
        """No connector took the stream: `unknown` (nobody serves the model), `busy` (every
        one is at capacity), `offline` (none is connected now), `refused` (the connectors
        serving it do not admit the user: their owners' rules) or `blocked` (a connector
        serving it blocks the user itself, and none that admits them is left: the block is
        the answer, in the connector's words when it sent them)."""
        if reason == "blocked":
            return self._fail(403, USER_BLOCKED, self._blocked or BLOCKED_MESSAGE)
        if reason == "refused":
            message = (
                f"The connectors serving '{model}' are not shared with you."
                " GET /v1/models lists the models you can use."
            )
            return self._fail(403, MODEL_NOT_ALLOWED, message)
        if reason == "unknown":
            message = (
                f"The model '{model}' is not served here. GET /v1/models lists the models"
                " available now."
            )
            return self._fail(404, "model_not_found", message)
        if reason == "busy":
            message = f"Every connector serving '{model}' is at capacity; retry shortly."
            return self._fail(503, "no_connector_available", message, retry_after=2)
        message = f"No connector serving '{model}' is online right now; retry shortly."
        return self._fail(503, "no_connector_available", message, retry_after=5)

    def unsendable(self) -> Failure:
        """The request's head is more than a relay frame carries."""
        message = "The request's headers cannot be relayed (more than the relay carries)."
        return self._fail(400, "invalid_request", message)

    # -- the connector's events -----------------------------------------------------------

    def feed(self, event: StreamEvent) -> Action:
        """The next event of the stream, and what to do about it."""
        state = self.state
        if type(event) is p.ResponseBody and state == STREAMING:
            # The common case first, inline: of the body bytes that came, what to write now
            # (the rest of an event waits).
            if self._no_body:
                return b""
            tally = self._tally
            if tally is not None:
                tally.feed(event.data)
            return self._framer.feed(event.data)
        if state == DONE:
            raise MachineError(f"{type(event).__name__} after the stream ended")
        if type(event) is p.ResponseBody:
            return self._protocol_error("The connector sent a body before a head.")
        if type(event) is p.ResponseHead:
            if state == STREAMING:
                return self._protocol_error("The connector sent a second head.")
            try:
                return self._head(event.status, event.headers)
            except BadHead as exc:
                return self._protocol_error(str(exc))
        if type(event) is p.End:
            self.connector_done = True
            if state == WAITING:
                return self._protocol_error("The connector ended the stream before its head.")
            self.state = DONE
            return Finish(b"" if self._no_body else self._framer.flush())
        if isinstance(event, LinkLost):
            if state == WAITING:
                return Retry("lost")
            return self._fail(502, "connector_disconnected", event.message)
        assert isinstance(event, p.Error)
        self.connector_done = True
        if state == WAITING:
            if event.code == "over_capacity":
                return Retry("refused")
            if event.code == USER_BLOCKED:
                self._blocked = event.message
                return Retry("blocked")
        return self._fail(502, event.code, event.message)

    def _head(self, status: int, headers: p.Headers) -> Start:
        relayed, length, content_type = relayable(headers)
        if not self.hop:
            relayed.append(("X-Request-ID", self.request_id))
            if content_type.startswith(STREAMING_TYPES):
                relayed.append(("Cache-Control", "no-cache"))
                relayed.append(("X-Accel-Buffering", "no"))
        # A bodiless status must not carry bytes onto the client's keep-alive connection.
        self._no_body = bodiless(self.method, status)
        self._sized = length is not None
        self._content_type = content_type
        self._framer = EventFramer(content_type)
        self._tally = TokenTally(content_type)
        self.status = status
        self.state = STREAMING
        return Start(status, relayed, length is None)

    def _protocol_error(self, message: str) -> Failure:
        return self._fail(502, "connector_protocol_error", message)

    # -- the client's side ------------------------------------------------------------------

    def head_written(self, now: float) -> float:
        """The head left for the client at `now`: the time to first byte."""
        ttfb = self.ttfb = now - self.started
        return ttfb

    def unwritable(self) -> None:
        """The server refused to write the head `Start` gave (the driver cuts the connection:
        part of it may be out, so no error response can follow)."""
        self.status = 502
        self.state = DONE
        self.failed = True
        self._ending = "error"

    def timeout(self, limit: float) -> Failure:
        """The request timeout (`limit` seconds) passed before the stream ended, or before the
        end the machine gave (a `Finish`, a `Failure`) was written: then only a cut is left."""
        message = f"The model did not finish within {limit:g} seconds."
        if self.state == DONE and not self._ending:
            self.failed = True
            failure = Failure(self.status, "timeout", message)
        else:
            failure = self._fail(504, "timeout", message)
        self._ending = "timeout"
        return failure

    def client_gone(self) -> None:
        """The client closed its connection: the stream ends, the connector is cancelled."""
        self.status = 499  # nginx's "client closed request"
        self.state = DONE
        self._ending = "cancelled"

    def crashed(self) -> Failure:
        """A bug in the broker ended the request (at any point): a 500 if no response head
        went out, else a cut."""
        head_sent = self._tally is not None
        self.state = DONE
        self.failed = True
        self._ending = "error"
        if head_sent:
            return Failure(self.status, "internal_error", BUG)
        self.status = 500  # what the client is answered for a bug (the server's 500)
        return Failure(
            500, "internal_error", BUG, error_parts(self.path, 500, "internal_error", BUG)
        )

    # -- the end -----------------------------------------------------------------------------

    def _fail(
        self, status: int, code: str, message: str, retry_after: int | None = None
    ) -> Failure:
        """An error: the complete response before the head, the stream's end after it."""
        if self.state == DONE:
            raise MachineError("a failure after the stream ended")
        started = self.state == STREAMING
        self.state = DONE
        if not started:
            self.status = status
            parts = error_parts(self.path, status, code, message, retry_after=retry_after)
            if self.hop:
                parts[0][HOP_ERROR] = code
            return Failure(status, code, message, reply=parts)
        self.failed = True
        if self._sized:
            # The client reads exactly Content-Length bytes: an error event would be cut to
            # fit and the body would look complete. Only a closed connection says it is not.
            return Failure(self.status, code, message)
        tail = stream_error(self._content_type, dialect_for(self.path), code, message)
        if tail is not None:
            self._framer.discard()
        return Failure(self.status, code, message, tail=tail)

    def outcome(self, now: float) -> Outcome:
        """How the request ended (call once it has), with the tokens to charge."""
        ended = self._ending or ("ok" if 0 < self.status < 400 and not self.failed else "error")
        prompt = completion = None
        charged = 0
        tally = self._tally
        if tally is not None:
            prompt, completion = tally.result()
            charged = (prompt or 0) + (completion if completion is not None else tally.events)
        return Outcome(
            self.status, ended, now - self.started, self.ttfb, prompt, completion, charged
        )
