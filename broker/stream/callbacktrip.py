"""The express lane's common request, served from the sockets' callbacks with no task.

Most requests the express lane reads are the plain case: the whole body came with the
head, the key is one from the settings or a cached one, the limits admit it at once and a
connector serving the model has a free slot. `start` admits such a request and opens its
stream from the client socket's callback; the link then hands each frame of the answer
straight to the trip (`broker.relay.link.Sink`), which writes whatever one relay message carried
to the client in one write. No task, coroutine or future is made for it.

Everything else goes the way of every other request (`broker.api.endpoints.serve`, in a task):
`start` returns None before it has changed anything. A stream the connector refuses or
loses before its response head goes on as a task too (`Trip._run`), which retries it on
another connector as any trip does. Answers, errors, timeouts and the books (metrics, the
`request finished` line, the usage row: `broker.stream.books`; the lease) are
`broker.stream.trip.Trip`'s own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from broker.accounts.credentials import presented_key
from broker.accounts.limits import Lease
from broker.accounts.principals import Principal
from broker.api.endpoints import model_of
from broker.api.errors import error_parts
from broker.edge.expresscall import ExpressCall
from broker.relay.hub import Link
from broker.relay.link import ConnectorLink, Exchange, LinkLost, StreamEvent, Unsendable
from broker.stream.headers import BadHead
from broker.stream.trip import Refused, Trip
from shared import protocol as p

if TYPE_CHECKING:
    from broker.services import Services

log = structlog.get_logger("remotellm.broker.api")

_BUG = "The broker failed to handle this request; its operator can find why in its log."


class Owner(Protocol):
    """The express lane's connection a callback trip answers on (`broker.edge.express`)."""

    @property
    def writing_paused(self) -> bool:
        """The client is not reading: credit goes back to the connector once it does."""

    def trip_done(self, call: ExpressCall) -> None:
        """The trip is over and counted: the connection may go on to its next request."""

    def go_async(self, call: ExpressCall, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run the rest of the request as a task, as the lane runs the requests it cannot
        serve from callbacks."""


def start(services: Services, call: ExpressCall, owner: Owner) -> CallbackTrip | None:
    """Serve `call` from callbacks if it is the plain case (see above); else None, with
    nothing changed, for the caller to serve it the usual way."""
    if services.lifecycle.draining or not call.complete:
        return None
    principal = services.accounts.authenticate_now(presented_key(call.headers))
    if not isinstance(principal, Principal):
        return None  # refused, or only the store knows: the usual way says which
    body = call.body_now()
    model = model_of(body, call.path)
    allowed = principal.limits.models
    if model is None or (allowed is not None and model not in allowed):
        return None
    hub = services.hub
    link = hub.acquire_now(model)
    if link is None:
        return None
    assert isinstance(link, ConnectorLink)
    lease = services.limiter.admit_now(principal) if not link.gone else None
    if not isinstance(lease, Lease):
        hub.release(link)
        return None
    exchange = None
    try:
        exchange = link.open(call, body)
    except Unsendable:
        pass  # nothing is counted yet: the usual way meets the same refusal and answers it
    finally:
        if exchange is None:  # refused, or a bug (which the lane answers): nothing is held
            lease.release()
            hub.release(link)
    if exchange is None:
        return None
    return CallbackTrip(services, call, owner, body, model, principal, lease, link, exchange)


class CallbackTrip(Trip):
    """A `Trip` driven by the link's and the client socket's callbacks."""

    def __init__(
        self,
        services: Services,
        call: ExpressCall,
        owner: Owner,
        body: bytes,
        model: str,
        principal: Principal,
        lease: Lease,
        link: ConnectorLink,
        exchange: Exchange,
    ) -> None:
        super().__init__(services, call, body, model, principal, lease)
        self.express = call
        self.owner = owner
        self.link = link
        self.connector = link.name
        self.undelivered = 0
        """Body bytes written while the client was not reading: credit owed to the connector."""
        self.over = False
        """Answered and counted, or handed to a task (`_retry`): events are no longer ours."""
        self.task_began = True
        """False from `_retry` until its task takes its first step."""
        services.lifecycle.started()
        self.metrics.in_flight.inc()
        self.exchange = exchange
        exchange.sink = self
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.settings.request_timeout, self._guarded, self._expired)

    # -- broker.relay.link.Sink ----------------------------------------------------------------

    def event(self, event: StreamEvent) -> None:
        self._guarded(self._event, event)

    def flush(self) -> None:
        self._guarded(self._flush)

    def _flush(self) -> None:
        self.express.flush()
        self._delivered()

    # -- the client's side ----------------------------------------------------------------

    def resumed(self) -> None:
        """The client reads again: give the connector the credit its bytes had taken."""
        self._guarded(self._delivered)

    def client_gone(self) -> None:
        """The client closed its connection (or the broker is stopping): stop the stream."""
        self._guarded(self._client_left)

    # -- the answer -------------------------------------------------------------------------

    def _guarded(self, step: Callable[..., None], *args: Any) -> None:
        """Run one step of the answer from a callback: a client gone cancels the stream, and a
        bug answers 500 (or cuts) rather than reaching the link, which serves other streams."""
        if self.over:
            return
        try:
            step(*args)
        except ConnectionError:  # the express lane's writes say so when the client has gone
            if not self.over:
                self._client_left()
        except Exception as exc:
            self._bug(exc)

    def _event(self, event: StreamEvent) -> None:
        call = self.express
        match event:
            case LinkLost() if not self.response_started:
                self._retry(event)
            case LinkLost():
                self._fail_now(502, "connector_disconnected", event.message)
            case p.ResponseHead() if self.response_started:
                self._fail_now(502, "connector_protocol_error", "The connector sent a second head.")
            case p.ResponseHead(_, status, headers):
                try:
                    relayed, chunked = self._head(status, headers)
                except BadHead as exc:
                    return self._fail_now(502, "connector_protocol_error", str(exc))
                try:
                    call.start_now(status, relayed, chunked=chunked)
                except ValueError as exc:
                    self._unwritable(exc)
                    return self._end("error")
                self._first_byte()
            case p.ResponseBody() if not self.response_started:
                self._fail_now(
                    502, "connector_protocol_error", "The connector sent a body before a head."
                )
            case p.ResponseBody(_, data):
                call.write_now(self._ready(data))
                self.undelivered += len(data)
            case p.End():
                self.exchange.close(cancel=False)
                tail = self.framer.flush()
                if tail and not self.no_body:
                    call.write_now(tail)
                call.end_now()
                self._end(self._outcome())
            case p.Error(_, code, message):
                self.exchange.close(cancel=False)
                if code == "over_capacity" and not self.response_started:
                    return self._retry(Refused(message))
                self._fail_now(502, code, message)

    def _fail_now(self, status: int, code: str, message: str, outcome: str = "error") -> None:
        """`Trip._fail`, written at once: the error response, or the error event that ends the
        stream (or a cut connection where the format has none); then the books."""
        call = self.express
        if not self.response_started:
            headers, body = self._refusal(status, code, message, None)
            call.send_reply(status, headers, body)
        else:
            tail = self._failure(code, message)
            if tail is None:
                self._cut()
            else:
                call.write_now(tail)
                call.end_now()
        self._end(outcome)

    def _expired(self) -> None:
        # As Trip: 504 before the head, the error event after it. Written at once, the error
        # cannot wait for a client that stopped reading: its connection closes after it.
        if self.owner.writing_paused:
            self.express.close = True
        self._fail_now(504, "timeout", self._timeout_message(), "timeout")

    def _delivered(self) -> None:
        if self.undelivered and not self.owner.writing_paused:
            self.exchange.delivered(self.undelivered)
            self.undelivered = 0

    def _client_left(self) -> None:
        self.status = 499  # nginx's "client closed request"
        self._end("cancelled")

    def _cut(self) -> None:
        """Close the client's connection after what is written so far (it sees the answer cut
        short, as the task's trip leaves it)."""
        with contextlib.suppress(ConnectionError):
            self.express.flush()
        self.express.cut()

    def _bug(self, exc: Exception) -> None:
        log.error("request failed with an internal error", error=repr(exc), **self.ids)
        if self.over:
            return  # counted already (the bug came after, from what ran next): nothing to answer
        call = self.express
        call.close = True
        if not call.answered:
            self.status = 500
            with contextlib.suppress(ConnectionError):  # a client gone is counted all the same
                call.send_reply(500, *error_parts(call.path, 500, "internal_error", _BUG))
        else:
            self._cut()
        self._end("error")

    def _end(self, outcome: str) -> None:
        """Give back the slot, count the request once, and let the connection go on."""
        if self.over:
            return
        self.over = True
        self.timer.cancel()
        self.exchange.close(cancel=True)  # when not closed yet: the connector stops its work
        self.exchange.sink = None  # no cycle left for the collector: the trip goes by refcount
        self.services.hub.release(self.link)
        self.metrics.in_flight.dec()
        try:
            self._account(outcome)
        finally:
            self.services.lifecycle.ended()
            self.owner.trip_done(self.express)

    def _retry(self, failure: Exception) -> None:
        """Refused or lost before the head: on to another connector, as a task."""
        self.over = True  # the task's trip now owns the request
        self.timer.cancel()
        self.exchange.sink = None
        self.exchange.close(cancel=True)
        self.services.hub.release(self.link)
        self._retrying(failure, self.link)
        self.task_began = False
        task = self.owner.go_async(self.express, self._resume([self.link]))
        task.add_done_callback(self._never_ran)

    async def _resume(self, tried: list[Link]) -> None:
        self.task_began = True
        try:
            await self._run(tried)
        finally:
            self.services.lifecycle.ended()

    def _never_ran(self, task: asyncio.Task[None]) -> None:
        # A task cancelled before its first step (the client left at once) never enters the
        # coroutine, so none of its books were kept: keep them here.
        if self.task_began:
            return
        self.status = 499
        self.metrics.in_flight.dec()
        try:
            self._account("cancelled")
        finally:
            self.services.lifecycle.ended()
