"""The stream's task driver: runs one request's `StreamMachine` from a task.

Admission (`broker.api.admission`) hands a request to a `Trip` when it has to wait for
something (a connector, the client's socket, the store) or when the callback driver
(`broker.stream.callbacktrip`) hands over a stream to retry. The trip picks a connector
for the model, sends the request over its link, and feeds the machine each event of the
answer as it arrives, performing what the machine asks: the head, the body bytes, the
end, an error, a retry on another connector. Everything else (the order, the errors, what
is charged) is the machine's; the books are `broker.stream.books`'.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, cast

import structlog

from broker.relay.hub import Link, NoConnector
from broker.relay.link import Opened, Route, Unsendable
from broker.stream import books
from broker.stream.call import Call
from broker.stream.deadline import within
from broker.stream.machine import (
    DONE,
    Action,
    Failure,
    Finish,
    LinkLost,
    Retry,
    Start,
    StreamMachine,
)
from broker.stream.ticket import Ticket
from shared import protocol as p

if TYPE_CHECKING:
    from broker.services import Services

log = structlog.get_logger("remotellm.broker.api")


class ClientGone(Exception):
    """The client closed its connection."""


FAIL_WRITE_TIMEOUT = 2.0
"""Seconds the error that ends a timed-out stream may take to write before the connection is cut
(a client that stopped reading must not hold the request past its timeout)."""


class Trip:
    """One request's stream, driven from a task."""

    def __init__(
        self, services: Services, call: Call, ticket: Ticket, machine: StreamMachine
    ) -> None:
        self.services = services
        self.call = call
        self.ticket = ticket
        self.machine = machine
        self.settings = services.settings
        self.metrics = services.metrics
        self.hub = services.hub

    async def run(self) -> None:
        """Serve the stream to its end, and count it."""
        self.metrics.in_flight.inc()
        await self.resume([])

    async def resume(self, tried: list[Link]) -> None:
        """Serve a stream already counted in flight (a retry: `tried` connectors failed it)."""
        machine = self.machine
        try:
            left = self.settings.request_timeout - (time.perf_counter() - machine.started)
            await within(left, self._attempts(tried))
        except TimeoutError:
            await self._time_out()
        except ClientGone:
            machine.client_gone()
        except asyncio.CancelledError:
            machine.client_gone()
            raise
        except Exception:
            machine.crashed()  # the server answers the bug itself (a 500, or a cut)
            raise
        finally:
            self.metrics.in_flight.dec()
            books.settle(self.services, self.call, self.ticket, machine)

    async def _time_out(self) -> None:
        failure = self.machine.timeout(self.settings.request_timeout)
        try:
            async with asyncio.timeout(FAIL_WRITE_TIMEOUT):
                await self._fail(failure)
        except TimeoutError:
            self.call.cut()
        except ClientGone:
            self.machine.client_gone()

    async def _attempts(self, tried: list[Link]) -> None:
        """A connector for the model, then the exchange; again on another one for a retry."""
        hub, settings, model = self.hub, self.settings, self.ticket.model
        user = self.ticket.user
        # A request another broker forwarded here takes this broker's own connectors only, and
        # never waits for one: that broker holds it, and may find another connector meanwhile.
        local_only = self.ticket.forwarded
        wait_offline = 0.0 if local_only else settings.connector_wait
        wait_busy = 0.0 if local_only else settings.queue_timeout
        while True:
            blocked = self.machine.blocked
            if blocked and not hub.serves(model, exclude=tried, user=user, local_only=local_only):
                # A connector refused the user and none left that admits them serves the
                # model: waiting would not help (the express lane's retry comes here too).
                return await self._fail(self.machine.no_connector("blocked", model))
            try:
                link = await hub.acquire(
                    model,
                    user=user,
                    exclude=tried,
                    local_only=local_only,
                    wait_offline=wait_offline,
                    wait_busy=wait_busy,
                )
            except NoConnector as exc:
                return await self._fail(self.machine.no_connector(exc.reason, model))
            try:
                route = cast(Route, link)  # every link the hub holds is one
                self.machine.routed(route.name, route.token_id)
                retry = await self._exchange(route)
            finally:
                hub.release(link, user)
            if retry is None:
                return
            books.retrying(self.call, retry, link.name)
            if not (retry.why == "refused" and hub.found_full(link)):
                tried.append(link)  # another broker's full connector is waited for instead

    async def _exchange(self, link: Route) -> Retry | None:
        try:
            exchange = link.open(self.call, self.ticket.body, self.ticket.principal.relayed)
        except Unsendable as unsendable:
            log.warning("cannot relay the request", error=str(unsendable), **self.call.ids)
            await self._fail(self.machine.unsendable())
            return None
        except LinkLost as lost:  # the hub still listed a link that had just closed
            retry = self.machine.feed(lost)
            assert type(retry) is Retry  # nothing reached the client yet
            return retry
        try:
            return await self._pump(exchange)
        finally:
            exchange.close(cancel=not self.machine.connector_done)

    async def _pump(self, exchange: Opened) -> Retry | None:
        """Feed the machine the stream's events and perform what it asks, until it is done."""
        machine, events = self.machine, exchange.events
        while True:
            event = await events.get()
            action: Action | None = machine.feed(event)
            if type(action) is bytes:
                assert isinstance(event, p.ResponseBody)
                action = await self._write(exchange, action, len(event.data))
            if action is None:
                continue
            if type(action) is Start:
                await self._start(action, buffered=not events.empty())
                if machine.state == DONE:
                    return None  # the head could not be written: the connection is cut
                continue
            if machine.connector_done:
                exchange.close(cancel=False)  # the connector ended its side
            if type(action) is Finish:
                await self._finish(action)
                return None
            if type(action) is Retry:
                return action
            assert type(action) is Failure
            await self._fail(action)
            return None

    async def _write(self, exchange: Opened, data: bytes, received: int) -> Action | None:
        """Write body bytes, with those of the bodies already waiting (in one write): the
        action of the first other event that was waiting, if one was."""
        events, machine = exchange.events, self.machine
        pieces: list[bytes] | None = None
        after: Action | None = None
        while not events.empty():
            event = events.get_nowait()
            action = machine.feed(event)
            if type(action) is not bytes:
                after = action
                break
            assert isinstance(event, p.ResponseBody)
            received += len(event.data)
            if pieces is None:
                pieces = [data]
            pieces.append(action)
        if pieces is not None:
            data = b"".join(pieces)
        if data:
            await self._guard(self.call.write(data))
        exchange.delivered(received)
        return after

    async def _start(self, start: Start, *, buffered: bool) -> None:
        """Write the head; `buffered`: more is here, so it may leave with the first bytes."""
        call = self.call
        try:
            write = call.start(
                start.status, start.headers, chunked=start.chunked, buffered=buffered
            )
            await self._guard(write)
        except ValueError as exc:
            # The headers passed the checks, yet the server refused them: part of the head
            # may be written, so no error response can follow on this connection.
            books.unwritable(call, exc)
            self.machine.unwritable()
            call.cut()
            return
        ttfb = self.machine.head_written(time.perf_counter())
        books.first_byte(self.services, self.ticket.model, ttfb)

    async def _finish(self, finish: Finish) -> None:
        if finish.tail:
            await self._guard(self.call.write(finish.tail))
        await self._guard(self.call.end())

    async def _fail(self, failure: Failure) -> None:
        """Perform a failure: the error response, or the error event that ends the stream,
        or a cut connection where the format has none."""
        call = self.call
        books.failed(call, failure)
        if failure.reply is not None:
            await self._guard(call.reply(failure.status, *failure.reply))
        elif failure.tail is not None:
            await self._guard(call.write(failure.tail))
            await self._guard(call.end())
        else:
            call.cut()

    async def _guard(self, op: Awaitable[None]) -> None:
        try:
            await op
        except (ConnectionError, RuntimeError) as exc:
            raise ClientGone() from exc
