"""One API request's trip: through a connector and back to its client.

`proxy_endpoint` (in `broker.api`) authenticates and admits a request, then hands
it to a `Trip`: pick a connector for the model (another one if the first refuses
or disconnects before answering), send the request over its link, and write the
connector's response to the client as it arrives, unbuffered. A failure before the
response head becomes an error response; after it, an error event at the end of
the stream (or a cut connection where the format has no error event). Whatever
happens, the trip is counted once: metrics, the log line, the usage row and the
lease given back.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from aiohttp import web

from broker.accounts import Principal
from broker.errors import dialect_for, error_response, stream_error
from broker.framing import EventFramer
from broker.headers import request_headers, response_headers
from broker.hub import Link, NoConnector
from broker.keys import HUB, LEDGER, METRICS, REQUEST_ID, SETTINGS
from broker.limits import Lease
from broker.link import ConnectorLink, Exchange, LinkLost, StreamEvent
from broker.records import UsageRow
from broker.tally import TokenTally
from shared import protocol as p

log = structlog.get_logger("remotellm.broker.api")

STREAMING_TYPES = ("text/event-stream", "application/x-ndjson")
MAX_LOGGED_MODEL = 100
"""Characters of a client-chosen model name that reach a log line or an error message."""


class BadHead(Exception):
    """The connector's response head cannot be turned into an HTTP response."""


class Refused(Exception):
    """The connector declined the stream before answering (at capacity or shutting down)."""


class ClientGone(Exception):
    """The client closed its connection."""


class Trip:
    """One API request's trip through a connector and back."""

    def __init__(
        self, request: web.Request, body: bytes, model: str, principal: Principal, lease: Lease
    ) -> None:
        self.request = request
        self.body = body
        self.model = model
        self.principal = principal
        self.lease = lease
        self.ttfb: float | None = None
        self.tally: TokenTally | None = None
        self.app = request.app
        self.settings = self.app[SETTINGS]
        self.metrics = self.app[METRICS]
        self.request_id: str = request[REQUEST_ID]
        self.started = time.perf_counter()
        self.response: web.StreamResponse | None = None
        self.status = 0
        self.connector = ""
        self.failed = False
        self.no_body = False
        self.framer = EventFramer("")

    async def run(self) -> web.StreamResponse:
        metrics = self.metrics
        metrics.in_flight.inc()
        outcome = "error"
        try:
            async with asyncio.timeout(self.settings.request_timeout):
                result = await self._attempts()
            outcome = "ok" if self.status < 400 and not self.failed else "error"
            return result
        except TimeoutError:
            outcome = "timeout"
            return await self._fail(
                504,
                "timeout",
                f"The model did not finish within {self.settings.request_timeout:g} seconds.",
            )
        except ClientGone:
            outcome = "cancelled"
            self.status = 499  # nginx's "client closed request"
            return self.response or web.Response(status=499)
        except asyncio.CancelledError:
            outcome = "cancelled"
            self.status = 499
            raise
        finally:
            metrics.in_flight.dec()
            self._account(outcome)

    def _account(self, outcome: str) -> None:
        known = self.connector or self.app[HUB].knows(self.model)
        label = self.model if known else "unknown"
        elapsed = time.perf_counter() - self.started
        self.metrics.finished(label, self.status, elapsed)
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
        principal = self.principal
        log.info(
            "request finished",
            method=self.request.method,
            path=self.request.path,
            model=self.model[:MAX_LOGGED_MODEL],
            status=self.status,
            outcome=outcome,
            connector=self.connector or None,
            user=principal.username,
            duration_ms=round(elapsed * 1000, 1),
        )
        self.app[LEDGER].record(
            UsageRow(
                time=time.time(),
                request_id=self.request_id,
                endpoint=self.request.path[:64],
                status=self.status,
                duration_ms=round(elapsed * 1000, 3),
                user_id=principal.user_id,
                key_id=principal.key_id,
                model=self.model[:255],
                connector=self.connector or None,
                prompt_tokens=prompt,
                completion_tokens=completion,
                ttfb_ms=round(self.ttfb * 1000, 3) if self.ttfb is not None else None,
                cancelled=outcome == "cancelled",
            )
        )

    async def _attempts(self) -> web.StreamResponse:
        hub = self.app[HUB]
        tried: list[Link] = []
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
                exchange = link.open(
                    self.request.method,
                    self.request.path_qs,
                    request_headers(self.request.headers, self.request_id),
                    self.request_id,
                    self.body,
                )
                response = await self._exchange(exchange)
            except (LinkLost, Refused) as exc:
                if self.response is not None:
                    raise
                # Nothing reached the client yet: the request can go to another connector.
                why = "refused" if isinstance(exc, Refused) else "lost"
                log.warning(f"connector {why} the request; retrying", connector=link.name)
                tried.append(link)
                continue
            finally:
                hub.release(link)
            return response

    async def _exchange(self, exchange: Exchange) -> web.StreamResponse:
        try:
            return await self._pump(exchange)
        except LinkLost:
            if self.response is None:
                raise
            return await self._fail(
                502, "connector_disconnected", "The connector serving this model disconnected."
            )
        finally:
            exchange.close(cancel=True)

    async def _pump(self, exchange: Exchange) -> web.StreamResponse:
        events = exchange.events
        pending: StreamEvent | None = None
        while True:
            event, pending = pending or await events.get(), None
            match event:
                case LinkLost():
                    raise event
                case p.ResponseHead() if self.response is not None:
                    return await self._fail(
                        502, "connector_protocol_error", "The connector sent a second head."
                    )
                case p.ResponseHead(_, status, headers):
                    try:
                        # When the body is already here, the head waits to leave with it.
                        await self._start(status, headers, buffered=not events.empty())
                    except BadHead as exc:
                        self.response = None
                        return await self._fail(502, "connector_protocol_error", str(exc))
                case p.ResponseBody(_, data) if self.response is None:
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
                    if code == "over_capacity" and self.response is None:
                        raise Refused(message)
                    return await self._fail(502, code, message)

    async def _start(self, status: int, headers: p.Headers, *, buffered: bool = False) -> None:
        # A web.Response sends its head with the first body write (one system call and
        # one wake-up of the client fewer); a StreamResponse sends it at once.
        response = web.Response(status=status) if buffered else web.StreamResponse(status=status)
        try:
            response.headers.extend(response_headers(headers))
        except ValueError:
            raise BadHead("The connector sent headers that cannot be relayed.") from None
        # A bodiless status must not carry bytes onto the client's keep-alive connection.
        self.no_body = status in (204, 304) or self.request.method == "HEAD"
        length = response.headers.get("Content-Length")
        response.headers["X-Request-ID"] = self.request_id
        content_type = response.headers.get("Content-Type", "")
        self.framer = EventFramer(content_type)
        self.tally = TokenTally(content_type)
        if content_type.startswith(STREAMING_TYPES):
            response.headers["Cache-Control"] = "no-cache"
            response.headers["X-Accel-Buffering"] = "no"
        if length is None:
            response.enable_chunked_encoding()
        self.status = status
        self.response = response
        await self._guard(response.prepare(self.request))
        self.ttfb = time.perf_counter() - self.started
        self.metrics.first_byte(self.model, self.ttfb)

    async def _write(self, data: bytes) -> None:
        assert self.response is not None
        if self.no_body:
            return
        if self.tally is not None:
            self.tally.feed(data)
        ready = self.framer.feed(data)
        if ready:
            await self._guard(self.response.write(ready))

    async def _finish(self) -> web.StreamResponse:
        assert self.response is not None
        tail = self.framer.flush()
        if tail and not self.no_body:
            await self._guard(self.response.write(tail))
        await self._guard(self.response.write_eof())
        return self.response

    async def _guard(self, op: Any) -> None:
        try:
            await op
        except (ConnectionError, RuntimeError) as exc:
            raise ClientGone() from exc

    async def _no_connector(self, exc: NoConnector) -> web.StreamResponse:
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
    ) -> web.StreamResponse:
        """Report an error: as a response if none started, else at the end of the stream."""
        log.warning("request failed", code=code, error_message=message)
        if self.response is None:
            self.status = status
            return error_response(self.request, status, code, message, retry_after=retry_after)
        self.failed = True
        content_type = self.response.headers.get("Content-Type", "")
        tail = stream_error(content_type, dialect_for(self.request.path), code, message)
        if tail is not None:
            self.framer.discard()
            await self._guard(self.response.write(tail))
            await self._guard(self.response.write_eof())
        else:
            # No in-band way to signal the failure: cut the connection so the client
            # sees an incomplete body rather than a silently truncated one.
            transport = self.request.transport
            if transport is not None:
                transport.close()
        return self.response
