"""The stream's callback driver: runs one request's `StreamMachine` from the sockets' callbacks.

Most requests the express lane reads are the plain case, which admission
(`broker.api.admission.admit_now`) settles without waiting: the whole body came with the
head, the key is known, the limits admit it at once and a connector serving the model has
a free slot. `start` opens such a request's stream from the client socket's callback; the
link then hands each event of the answer straight to the `CallbackTrip` (`broker.relay.link.Sink`),
which feeds the machine and writes what it asks at once: whatever one relay message carried
leaves in one write. No task, coroutine or future is made for it.

A stream the machine wants retried (refused or lost before its head) goes on from a task
(`broker.stream.trip.Trip.resume`) with the same machine, as every other request does. The
rules are the machine's; the books are `broker.stream.books`'.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from broker.api.admission import admit_now
from broker.edge.expresscall import ExpressCall
from broker.relay.hub import Link
from broker.relay.link import Opened, Route, Unsendable
from broker.stream import books
from broker.stream.machine import (
    Action,
    Failure,
    Finish,
    LinkLost,
    Retry,
    Start,
    StreamEvent,
    StreamMachine,
)
from broker.stream.ticket import Ticket
from broker.stream.trip import Trip

if TYPE_CHECKING:
    from broker.services import Services

if TYPE_CHECKING:
    from broker.services import Services

log = structlog.get_logger("remotellm.broker.api")


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
    """Serve `call` from callbacks if admission settles it at once (see above); else None,
    with nothing changed, for the caller to serve it the usual way."""
    if not call.complete:
        return None
    admitted = admit_now(services, call, call.body_now())
    if admitted is None:
        return None
    ticket, link = admitted
    exchange = None
    try:
        exchange = link.open(call, ticket.body, ticket.principal.relayed)
    except (Unsendable, LinkLost):
        pass  # nothing is counted yet: the usual way meets the same refusal and answers it
    finally:
        if exchange is None:  # refused, or a bug (which the lane answers): nothing is held
            ticket.lease.release()
            services.hub.release(link, ticket.user)
    if exchange is None:
        return None
    return CallbackTrip(services, call, owner, ticket, link, exchange)


class CallbackTrip:
    """One request's stream, driven by the link's and the client socket's callbacks."""

    __slots__ = (
        "call",
        "exchange",
        "link",
        "machine",
        "over",
        "owner",
        "services",
        "task_began",
        "ticket",
        "timer",
        "undelivered",
    )

    def __init__(
        self,
        services: Services,
        call: ExpressCall,
        owner: Owner,
        ticket: Ticket,
        link: Route,
        exchange: Opened,
    ) -> None:
        self.call = call
        self.owner = owner
        self.ticket = ticket
        self.link = link
        self.services = services
        self.machine = StreamMachine(call.method, call.path, call.request_id, time.perf_counter())
        self.machine.routed(link.name, link.token_id)
        self.undelivered = 0
        """Body bytes written while the client was not reading: credit owed to the connector."""
        self.over = False
        """Answered and counted, or handed to a task (`_retry`): events are no longer ours."""
        self.task_began = True
        """False from `_retry` until its task takes its first step."""
        services.lifecycle.started()
        services.metrics.in_flight.inc()
        self.exchange = exchange
        exchange.sink = self
        loop = asyncio.get_running_loop()
        limit = services.settings.request_timeout
        self.timer = loop.call_later(limit, self._guarded, self._expired)

    # -- broker.relay.link.Sink ------------------------------------------------------------

    def event(self, event: StreamEvent) -> None:
        self._guarded(self._event, event)

    def flush(self) -> None:
        self._guarded(self._flush)

    def _flush(self) -> None:
        self.call.flush()
        self._delivered()

    # -- the client's side ------------------------------------------------------------------

    def resumed(self) -> None:
        """The client reads again: give the connector the credit its bytes had taken."""
        self._guarded(self._delivered)

    def client_gone(self) -> None:
        """The client closed its connection (or the broker is stopping): stop the stream."""
        self._guarded(self._client_left)

    # -- performing what the machine asks ---------------------------------------------------

    def _guarded(self, step: Callable[..., None], *args: Any) -> None:
        """Run one step from a callback: a client gone cancels the stream, and a bug answers
        500 (or cuts) rather than reaching the link, which serves other streams."""
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
        action = self.machine.feed(event)
        if type(action) is bytes:  # the event was body bytes
            self.call.write_now(action)
            self.undelivered += len(event.data)  # type: ignore[union-attr]
        else:
            self._perform(action)

    def _perform(self, action: Action) -> None:
        if type(action) is Start:
            return self._start(action)
        if self.machine.connector_done:
            self.exchange.close(cancel=False)  # the connector ended its side
        if type(action) is Finish:
            if action.tail:
                self.call.write_now(action.tail)
            self.call.end_now()
            return self._end()
        if type(action) is Retry:
            return self._retry(action)
        assert type(action) is Failure
        self._fail(action)

    def _start(self, start: Start) -> None:
        try:
            self.call.start_now(start.status, start.headers, chunked=start.chunked)
        except ValueError as exc:
            # As the task driver: part of the head may be out, so the connection is cut.
            books.unwritable(self.call, exc)
            self.machine.unwritable()
            self.call.cut()
            return self._end()
        books.first_byte(
            self.services, self.ticket.model, self.machine.head_written(time.perf_counter())
        )

    def _fail(self, failure: Failure) -> None:
        """The error response, or the error event that ends the stream (or a cut connection
        where the format has none), written at once; then the books."""
        books.failed(self.call, failure)
        call = self.call
        if failure.reply is not None:
            call.send_reply(failure.status, *failure.reply)
        elif failure.tail is not None:
            call.write_now(failure.tail)
            call.end_now()
        else:
            self._cut()
        self._end()

    def _expired(self) -> None:
        # Written at once, the error cannot wait for a client that stopped reading: its
        # connection closes after it.
        if self.owner.writing_paused:
            self.call.close = True
        self._fail(self.machine.timeout(self.services.settings.request_timeout))

    def _delivered(self) -> None:
        if self.undelivered and not self.owner.writing_paused:
            self.exchange.delivered(self.undelivered)
            self.undelivered = 0

    def _client_left(self) -> None:
        self.machine.client_gone()
        self._end()

    def _cut(self) -> None:
        """Close the client's connection after what is written so far (it sees the answer cut
        short, as the task driver leaves it)."""
        with contextlib.suppress(ConnectionError):
            self.call.flush()
        self.call.cut()

    def _bug(self, exc: Exception) -> None:
        log.error("request failed with an internal error", error=repr(exc), **self.call.ids)
        if self.over:
            return  # counted already (the bug came after, from what ran next): nothing to answer
        call = self.call
        call.close = True
        failure = self.machine.crashed()
        if failure.reply is not None and not call.answered:
            with contextlib.suppress(ConnectionError):  # a client gone is counted all the same
                call.send_reply(500, *failure.reply)
        else:
            self._cut()
        self._end()

    # -- the end --------------------------------------------------------------------------------

    def _end(self) -> None:
        """Give back the slot, count the request once, and let the connection go on."""
        if self.over:
            return
        self.over = True
        self._let_go()
        self.services.metrics.in_flight.dec()
        try:
            books.settle(self.services, self.call, self.ticket, self.machine)
        finally:
            self.services.lifecycle.ended()
            self.owner.trip_done(self.call)

    def _let_go(self) -> None:
        """Stop the timer, and hand the link back (the connector stops unless it ended)."""
        self.timer.cancel()
        self.exchange.close(cancel=not self.machine.connector_done)
        self.exchange.sink = None  # no cycle left for the collector: the trip goes by refcount
        self.services.hub.release(self.link, self.ticket.user)

    def _retry(self, retry: Retry) -> None:
        """Refused or lost before the head: on to another connector, from a task."""
        self.over = True  # the task's trip now owns the request
        self._let_go()
        books.retrying(self.call, retry, self.link.name)
        full = retry.why == "refused" and self.services.hub.found_full(self.link)
        self.task_began = False
        task = self.owner.go_async(self.call, self._resume([] if full else [self.link]))
        task.add_done_callback(self._never_ran)

    async def _resume(self, tried: list[Link]) -> None:
        self.task_began = True
        try:
            await Trip(self.services, self.call, self.ticket, self.machine).resume([*tried])
        finally:
            self.services.lifecycle.ended()

    def _never_ran(self, task: asyncio.Task[None]) -> None:
        # A task cancelled before its first step (the client left at once) never enters the
        # coroutine, so none of its books were kept: keep them here.
        if self.task_began:
            return
        self.machine.client_gone()
        self.services.metrics.in_flight.dec()
        try:
            books.settle(self.services, self.call, self.ticket, self.machine)
        finally:
            self.services.lifecycle.ended()
