"""The public HTTP API: OpenAI-, Anthropic- and Ollama-compatible endpoints.

Requests are forwarded unchanged to a connector serving their `model`; the
upstream's status, headers and body come back unchanged and unbuffered. Only
routing and auth headers change.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any

import structlog
from aiohttp import web

from broker.accounts import Denied, Principal
from broker.auth import presented_key
from broker.errors import dialect_for, error_response, stream_error
from broker.framing import EventFramer
from broker.headers import request_headers, response_headers
from broker.hub import Link, NoConnector
from broker.keys import ACCOUNTS, HUB, LEDGER, LIFECYCLE, LIMITER, METRICS, REQUEST_ID, SETTINGS
from broker.limits import Lease, Rejection
from broker.relay import ConnectorLink, Exchange, LinkLost, StreamEvent
from broker.store import UsageRow
from broker.tally import TokenTally
from shared import protocol as p

log = structlog.get_logger("remotellm.broker.api")


STREAMING_TYPES = ("text/event-stream", "application/x-ndjson")
MAX_LOGGED_MODEL = 100


class BadHead(Exception):
    """The connector's response head cannot be turned into an HTTP response."""


class Refused(Exception):
    """The connector declined the stream before answering (at capacity or shutting down)."""


class ClientGone(Exception):
    """The client closed its connection."""


async def _authenticate(request: web.Request) -> Principal | web.Response:
    """The caller behind the request's API key, or the error response to send."""
    found = await request.app[ACCOUNTS].authenticate(presented_key(request.headers))
    if isinstance(found, Denied):
        return error_response(request, found.status, found.code, found.message)
    return found


def _visible(principal: Principal, models: dict[str, float]) -> dict[str, float]:
    allowed = principal.limits.models
    if allowed is None:
        return models
    return {model: seen for model, seen in models.items() if model in allowed}


async def _read_body(request: web.Request, limit: int) -> bytes | None:
    """The whole request body, or None when it is larger than `limit`."""
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def model_of(body: bytes) -> str | None:
    """The request's `model`: a non-empty string field of a JSON object body, else None."""
    try:
        parsed: Any = json.loads(body)
    except (ValueError, RecursionError):
        return None
    model = parsed.get("model") if isinstance(parsed, dict) else None
    return model if isinstance(model, str) and model else None


async def models_endpoint(request: web.Request) -> web.Response:
    """GET /v1/models: every model a connected connector serves right now (that the key may use)."""
    principal = await _authenticate(request)
    if isinstance(principal, web.Response):
        return principal
    data = [
        {"id": model, "object": "model", "created": int(first_seen), "owned_by": "remotellm"}
        for model, first_seen in _visible(principal, request.app[HUB].models()).items()
    ]
    return web.json_response({"object": "list", "data": data})


async def ollama_tags_endpoint(request: web.Request) -> web.Response:
    """GET /api/tags: the same models in Ollama's shape, for Ollama clients."""
    principal = await _authenticate(request)
    if isinstance(principal, web.Response):
        return principal
    models = [
        {
            "name": model,
            "model": model,
            "modified_at": datetime.fromtimestamp(first_seen, UTC).isoformat(),
            "size": 0,
            "digest": "",
            "details": {},
        }
        for model, first_seen in _visible(principal, request.app[HUB].models()).items()
    ]
    return web.json_response({"models": models})


async def proxy_endpoint(request: web.Request) -> web.StreamResponse:
    """POST to a model endpoint: route by model, relay, stream the answer back."""
    lifecycle = request.app[LIFECYCLE]
    started = time.perf_counter()
    if lifecycle.draining:
        response = error_response(
            request, 503, "shutting_down", "The broker is restarting; retry shortly.", retry_after=5
        )
        count_rejected(request, response.status, started)
        return response
    # Counted from the first byte, so a drain waits for an upload that is still arriving.
    with lifecycle.request():
        principal: Principal | None = None
        try:
            found = await _authenticate(request)
            if isinstance(found, web.Response):
                count_rejected(request, found.status, started)
                return found
            principal = found
            admitted = await _admit(request, principal)
        except (ConnectionError, asyncio.CancelledError):
            # The client went away while its request was still arriving.
            count_rejected(request, 499, started, principal, cancelled=True)
            raise
        except Exception as exc:
            # The store failed to answer a key look-up (or today's tokens): say so, in the
            # client's dialect, without the exception text (it may quote the key's hash).
            log.error("cannot check the API key", error=type(exc).__name__)
            response = error_response(
                request,
                503,
                "store_unavailable",
                "The broker cannot check API keys right now; retry shortly.",
                retry_after=5,
            )
            count_rejected(request, 503, started, principal)
            return response
        if isinstance(admitted, web.Response):
            count_rejected(request, admitted.status, started, principal)
            return admitted
        body, model, lease = admitted
        return await Relay(request, body, model, principal, lease).run()


def count_rejected(
    request: web.Request,
    status: int,
    started: float,
    principal: Principal | None = None,
    *,
    cancelled: bool = False,
) -> None:
    """Account a request answered before routing (no model label: it was not read or checked)."""
    request.app[METRICS].finished("unknown", status)
    elapsed = time.perf_counter() - started
    log.info(
        "request finished",
        method=request.method,
        path=request.path,
        status=status,
        user=principal.username if principal else None,
    )
    request.app[LEDGER].record(
        UsageRow(
            time=time.time(),
            request_id=request[REQUEST_ID],
            endpoint=request.path[:64],
            status=status,
            duration_ms=round(elapsed * 1000, 3),
            user_id=principal.user_id if principal else None,
            key_id=principal.key_id if principal else None,
            cancelled=cancelled,
        )
    )


async def _admit(
    request: web.Request, principal: Principal
) -> web.Response | tuple[bytes, str, Lease]:
    """Read and check the request; an error response, or the body, its model and a lease."""
    settings = request.app[SETTINGS]
    body = await _read_body(request, settings.max_body_size)
    if body is None:
        return error_response(
            request,
            413,
            "request_too_large",
            f"The request body is larger than this broker's limit of {settings.max_body_size}"
            " bytes.",
        )
    model = model_of(body)
    if model is None:
        return error_response(
            request,
            400,
            "invalid_request",
            "The request body must be a JSON object with a string 'model' field.",
            param="model",
        )
    allowed = principal.limits.models
    if allowed is not None and model not in allowed:
        return error_response(
            request,
            403,
            "model_not_allowed",
            f"This key may not use the model '{model[:MAX_LOGGED_MODEL]}'."
            " GET /v1/models lists the models it may use.",
            param="model",
        )
    lease = await request.app[LIMITER].admit(principal)
    if isinstance(lease, Rejection):
        denied = lease.denied
        response = error_response(
            request, denied.status, denied.code, denied.message, retry_after=lease.retry_after
        )
        if denied.code == "daily_token_limit_exceeded":
            # Hours away: an SDK's automatic retries (which cap the wait at a minute) cannot help.
            response.headers["x-should-retry"] = "false"
        return response
    return body, model, lease


class Relay:
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
