"""One API request's trip: through a connector and back to its client.

`broker.api.endpoints` authenticates and admits a request, then hands it to a `Trip`: pick a
connector for the model (another one if the first refuses or disconnects before
answering), send the request over its link, and write the connector's response
to the client as it arrives, unbuffered. A failure before the response head
becomes an error response; after it, an error event at the end of the stream (or
a cut connection where the format has no error event). Whatever happens, the trip
is counted once: the books (`broker.stream.books`) and the lease given back.
The client's side is a `broker.edge.call.Call`, so the same trip runs whichever server
read the request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING

import structlog

from broker.accounts.limits import Lease
from broker.accounts.principals import Principal
from broker.api.errors import dialect_for, error_parts, stream_error
from broker.edge.call import Call, bodiless
from broker.relay.hub import Link, NoConnector
from broker.relay.link import ConnectorLink, Exchange, LinkLost, StreamEvent, Unsendable
from broker.stream.books import close_books
from broker.stream.deadline import within
from broker.stream.eventframer import EventFramer
from broker.stream.headers import BadHead, relayable
from broker.stream.tally import TokenTally
from shared import protocol as p

if TYPE_CHECKING:
    from broker.services import Services

log = structlog.get_logger("remotellm.broker.api")

STREAMING_TYPES = ("text/event-stream", "application/x-ndjson")


class Refused(Exception):
    """The connector declined the stream before answering (at capacity or shutting down)."""


class ClientGone(Exception):
    """The client closed its connection."""


class Cut(Exception):
    """The answer could not be finished, so the client's connection was closed."""


FAIL_WRITE_TIMEOUT = 2.0
"""Seconds the error that ends a timed-out stream may take to write before the connection is cut
(a client that stopped reading must not hold the request past its timeout)."""


class Trip:
    """One API request's trip through a connector and back."""

    def __init__(
        self,
        services: Services,
        call: Call,
        body: bytes,
        model: str,
        principal: Principal,
        lease: Lease,
    ) -> None:
        self.services = services
        self.call = call
        self.body = body
        self.model = model
        self.principal = principal
        self.lease = lease
        self.ttfb: float | None = None
        self.tally: TokenTally | None = None
        self.settings = services.settings
        self.metrics = services.metrics
        self.request_id = call.request_id
        self.ids = call.ids
        """The fields that name the request in its log lines: its id, and its trace's."""
        self.started = time.perf_counter()
        self.response_started = False
        """The response head was handed to the client's side (errors now go in-band)."""
        self.status = 0
        self.connector = ""
        self.failed = False
        self.no_body = False
        self.sized = False
        """The response head announced a Content-Length: its body cannot carry an error."""
        self.content_type = ""
        self.framer = EventFramer("")

    async def run(self) -> None:
        self.metrics.in_flight.inc()
        await self._run([])

    async def _run(self, tried: list[Link]) -> None:
        """The attempts, within what is left of the request timeout, then the books."""
        metrics = self.metrics
        outcome = "error"
        try:
            left = self.settings.request_timeout - (time.perf_counter() - self.started)
            await within(left, self._attempts(tried))
            outcome = self._outcome()
        except TimeoutError:
            outcome = "timeout"
            try:
                async with asyncio.timeout(FAIL_WRITE_TIMEOUT):
                    await self._fail(504, "timeout", self._timeout_message())
            except TimeoutError:
                self.call.cut()
            except ClientGone:
                outcome = "cancelled"
                self.status = 499
        except Cut:
            outcome = "error"
        except ClientGone:
            outcome = "cancelled"
            self.status = 499  # nginx's "client closed request"
        except asyncio.CancelledError:
            outcome = "cancelled"
            self.status = 499
            raise
        except Exception:
            if not self.response_started:
                self.status = 500  # what the client is answered for a bug (the server's 500)
            raise
        finally:
            metrics.in_flight.dec()
            self._account(outcome)

    def _outcome(self) -> str:
        """How a trip that ran its course ended, for the books."""
        return "ok" if self.status < 400 and not self.failed else "error"

    def _timeout_message(self) -> str:
        return f"The model did not finish within {self.settings.request_timeout:g} seconds."

    def _account(self, outcome: str) -> None:
        """The books (`broker.stream.books`), with the tokens counted; the lease is given back."""
        known = self.connector or self.services.hub.knows(self.model)
        elapsed = time.perf_counter() - self.started
        prompt = completion = None
        charged = 0
        try:
            if self.tally is not None:
                prompt, completion = self.tally.result()
                charged = (prompt or 0) + (
                    completion if completion is not None else self.tally.events
                )
        finally:
            # Whatever happened above, the request's slot is given back.
            self.lease.release(charged)
        close_books(
            self.services,
            self.call,
            self.principal,
            self.status,
            outcome,
            elapsed,
            model=self.model,
            label=self.model if known else "unknown",
            connector=self.connector,
            prompt_tokens=prompt,
            completion_tokens=completion,
            ttfb=self.ttfb,
        )

    async def _attempts(self, tried: list[Link]) -> None:
        hub = self.services.hub
        while True:
            try:
                link = await hub.acquire(
                    self.model,
                    exclude=tried,
                    wait_offline=self.settings.connector_wait,
                    wait_busy=self.settings.queue_timeout,
                )
            except NoConnector as exc:
                return await self._no_connector(exc)
            assert isinstance(link, ConnectorLink)
            self.connector = link.name
            try:
                exchange = link.open(self.call, self.body)
                await self._exchange(exchange)
            except Unsendable as unsendable:  # not `exc`: compiled, a name keeps its first type
                return await self._unsendable(unsendable)
            except (LinkLost, Refused) as failure:
                if self.response_started:
                    raise
                self._retrying(failure, link)
                tried.append(link)
            else:
                return
            finally:
                hub.release(link)

    async def _unsendable(self, exc: Unsendable) -> None:
        log.warning("cannot relay the request", error=str(exc), **self.ids)
        message = "The request's headers cannot be relayed (more than the relay carries)."
        await self._fail(400, "invalid_request", message)

    def _retrying(self, failure: Exception, link: ConnectorLink) -> None:
        # Nothing reached the client yet: the request can go to another connector.
        why = "refused" if isinstance(failure, Refused) else "lost"
        log.warning(
            f"connector {why} the request; retrying",
            connector=link.name,
            **self.ids,
        )

    async def _exchange(self, exchange: Exchange) -> None:
        try:
            await self._pump(exchange)
        except LinkLost as lost:
            if not self.response_started:
                raise
            await self._fail(502, "connector_disconnected", lost.message)
        finally:
            exchange.close(cancel=True)

    async def _pump(self, exchange: Exchange) -> None:
        events = exchange.events
        pending: StreamEvent | None = None
        while True:
            event, pending = pending or await events.get(), None
            match event:
                case LinkLost():
                    raise event
                case p.ResponseHead() if self.response_started:
                    return await self._fail(
                        502, "connector_protocol_error", "The connector sent a second head."
                    )
                case p.ResponseHead(_, status, headers):
                    try:
                        # When the body is already here, the head waits to leave with it.
                        await self._start(status, headers, buffered=not events.empty())
                    except BadHead as exc:
                        return await self._fail(502, "connector_protocol_error", str(exc))
                case p.ResponseBody(_, data) if not self.response_started:
                    return await self._fail(
                        502, "connector_protocol_error", "The connector sent a body before a head."
                    )
                case p.ResponseBody(_, data):
                    # Bodies that arrived together leave in one write.
                    pieces = [data]
                    while not events.empty():
                        pending = events.get_nowait()
                        if not isinstance(pending, p.ResponseBody):
                            break
                        pieces.append(pending.data)
                        pending = None
                    data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
                    await self._write(data)
                    exchange.delivered(len(data))
                case p.End():
                    exchange.close(cancel=False)
                    return await self._finish()
                case p.Error(_, code, message):
                    exchange.close(cancel=False)
                    if code == "over_capacity" and not self.response_started:
                        raise Refused(message)
                    return await self._fail(502, code, message)

    async def _start(self, status: int, headers: p.Headers, *, buffered: bool = False) -> None:
        relayed, chunked = self._head(status, headers)
        try:
            await self._guard(self.call.start(status, relayed, chunked=chunked, buffered=buffered))
        except ValueError as exc:
            self._unwritable(exc)
            raise Cut() from exc
        self._first_byte()

    def _head(self, status: int, headers: p.Headers) -> tuple[list[tuple[str, str]], bool]:
        """The response head to write (BadHead if there is none) and whether it is chunked;
        from here on, errors go in-band."""
        relayed, length, content_type = relayable(headers)
        relayed.append(("X-Request-ID", self.request_id))
        if content_type.startswith(STREAMING_TYPES):
            relayed.append(("Cache-Control", "no-cache"))
            relayed.append(("X-Accel-Buffering", "no"))
        # A bodiless status must not carry bytes onto the client's keep-alive connection.
        self.no_body = bodiless(self.call.method, status)
        self.sized = length is not None
        self.content_type = content_type
        self.framer = EventFramer(content_type)
        self.tally = TokenTally(content_type)
        self.status = status
        self.response_started = True
        return relayed, length is None

    def _unwritable(self, exc: ValueError) -> None:
        # The headers passed the checks, yet the server refused them: part of the head may be
        # written, so no error response can follow on this connection.
        log.error("cannot write the response head", error=str(exc), **self.ids)
        self.status = 502
        self.call.cut()

    def _first_byte(self) -> None:
        self.ttfb = time.perf_counter() - self.started
        self.metrics.first_byte(self.model, self.ttfb)

    async def _write(self, data: bytes) -> None:
        ready = self._ready(data)
        if ready:
            await self._guard(self.call.write(ready))

    def _ready(self, data: bytes) -> bytes:
        """Of the body bytes that came, what to write now (the rest of an event waits)."""
        if self.no_body:
            return b""
        if self.tally is not None:
            self.tally.feed(data)
        return self.framer.feed(data)

    async def _finish(self) -> None:
        tail = self.framer.flush()
        if tail and not self.no_body:
            await self._guard(self.call.write(tail))
        await self._guard(self.call.end())

    async def _guard(self, op: Awaitable[None]) -> None:
        try:
            await op
        except (ConnectionError, RuntimeError) as exc:
            raise ClientGone() from exc

    async def _no_connector(self, exc: NoConnector) -> None:
        if exc.reason == "unknown":
            return await self._fail(
                404,
                "model_not_found",
                f"The model '{self.model}' is not served here. GET /v1/models lists the models"
                " available now.",
            )
        if exc.reason == "busy":
            return await self._fail(
                503,
                "no_connector_available",
                f"Every connector serving '{self.model}' is at capacity; retry shortly.",
                retry_after=2,
            )
        return await self._fail(
            503,
            "no_connector_available",
            f"No connector serving '{self.model}' is online right now; retry shortly.",
            retry_after=5,
        )

    async def _fail(
        self, status: int, code: str, message: str, retry_after: int | None = None
    ) -> None:
        """Report an error: as a response if none started, else at the end of the stream."""
        call = self.call
        if not self.response_started:
            headers, body = self._refusal(status, code, message, retry_after)
            await self._guard(call.reply(status, headers, body))
            return
        tail = self._failure(code, message)
        if tail is not None:
            await self._guard(call.write(tail))
            await self._guard(call.end())
        else:
            # No in-band way to signal the failure: cut the connection so the client
            # sees an incomplete body rather than a silently truncated one.
            call.cut()

    def _refusal(
        self, status: int, code: str, message: str, retry_after: int | None
    ) -> tuple[dict[str, str], bytes]:
        """The error response for a failure before the response head."""
        log.warning("request failed", code=code, error_message=message, **self.ids)
        self.status = status
        return error_parts(self.call.path, status, code, message, retry_after=retry_after)

    def _failure(self, code: str, message: str) -> bytes | None:
        """The error event that ends a started stream (None where the body cannot carry one)."""
        log.warning("request failed", code=code, error_message=message, **self.ids)
        self.failed = True
        if self.sized:
            # The client reads exactly Content-Length bytes: an error event would be cut to
            # fit and the body would look complete. Only a closed connection says it is not.
            return None
        tail = stream_error(self.content_type, dialect_for(self.call.path), code, message)
        if tail is not None:
            self.framer.discard()
        return tail
