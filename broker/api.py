"""The public HTTP API: OpenAI-, Anthropic- and Ollama-compatible endpoints.

Requests are forwarded unchanged to a connector serving their `model`; the
upstream's status, headers and body come back unchanged and unbuffered. Only
routing and auth headers change. This module authenticates, admits (body size,
model, limits) and lists models; the trip itself (routing, relaying, streaming
back) is `broker.trip`.
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
from broker.errors import error_response
from broker.keys import ACCOUNTS, HUB, LEDGER, LIFECYCLE, LIMITER, METRICS, REQUEST_ID, SETTINGS
from broker.limits import Lease, Rejection
from broker.records import UsageRow
from broker.trip import MAX_LOGGED_MODEL, Trip

log = structlog.get_logger("remotellm.broker.api")


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
        return await Trip(request, body, model, principal, lease).run()


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
