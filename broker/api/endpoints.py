"""The public HTTP API: OpenAI-, Anthropic- and Ollama-compatible endpoints.

Requests are forwarded unchanged to a connector serving their `model`; the
upstream's status, headers and body come back unchanged and unbuffered. Only
routing and auth headers change. This module authenticates, admits (body size,
model, limits) and lists models; the trip itself (routing, relaying, streaming
back) is `broker.stream.trip`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from typing import Any, Final

import structlog
from aiohttp import web

from broker.accounts.credentials import presented_key
from broker.accounts.limits import Lease, Rejection
from broker.accounts.principals import Denied, Principal
from broker.api.errors import error_parts, error_response
from broker.edge.call import AiohttpCall, Call
from broker.services import SERVICES, Services
from broker.stream.books import MAX_LOGGED_MODEL, close_books
from broker.stream.trip import Trip
from shared import jsoncodec
from shared.endpoints import is_relayable
from shared.text import MAX_NAME_LENGTH, is_clean, shown

log = structlog.get_logger("remotellm.broker.api")


async def _authenticate(request: web.Request, services: Services) -> Principal | web.Response:
    """The caller behind the request's API key, or the error response to send."""
    found = await services.accounts.authenticate(presented_key(request.headers))
    if isinstance(found, Denied):
        return error_response(request, found.status, found.code, found.message)
    return found


def _visible(principal: Principal, models: dict[str, float]) -> dict[str, float]:
    allowed = principal.limits.models
    if allowed is None:
        return models
    return {model: seen for model, seen in models.items() if model in allowed}


def _model_field(body: bytes, path: str = "") -> object:
    """The `model` field of a JSON object body, whatever its type; None when there is none.

    On /api/show an older client's `name` counts too, as Ollama reads it there.
    """
    try:
        parsed: Any = jsoncodec.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(parsed, dict):
        return None
    model = parsed.get("model")
    if model is None and path == "/api/show":
        model = parsed.get("name")
    return model


def model_of(body: bytes, path: str = "") -> str | None:
    """The request's `model` when it is clean text (`shared.text.is_clean`), else None.

    Every lane reads the model here, so a name that could not be logged, counted or stored
    (a lone surrogate, a control character, an endless string) never gets past the edge.
    """
    model = _model_field(body, path)
    return model if isinstance(model, str) and is_clean(model) else None


def model_refusal(body: bytes, path: str = "") -> str:
    """Why `model_of(body, path)` is None, in one sentence for the client."""
    if isinstance(_model_field(body, path), str):
        return (
            f"The 'model' field must be 1 to {MAX_NAME_LENGTH} printable characters"
            " (no control characters or unpaired surrogates)."
        )
    return "The request body must be a JSON object with a string 'model' field."


OLLAMA_VERSION: Final = "0.12.6"
"""The Ollama version whose API the broker's /api/* endpoints follow (the version in Ollama's own
API reference for GET /api/version), for clients that check it before they connect."""


def _model_object(model: str, first_seen: float) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": int(first_seen), "owned_by": "remotellm"}


async def models_endpoint(request: web.Request) -> web.Response:
    """GET /v1/models: every model a connected connector serves right now (that the key may use)."""
    services = request.app[SERVICES]
    principal = await _authenticate(request, services)
    if isinstance(principal, web.Response):
        return principal
    data = [
        _model_object(model, first_seen)
        for model, first_seen in _visible(principal, services.hub.models()).items()
    ]
    return web.json_response({"object": "list", "data": data})


async def model_endpoint(request: web.Request) -> web.Response:
    """GET /v1/models/{id}: one model of the list, or 404 `model_not_found`."""
    services = request.app[SERVICES]
    principal = await _authenticate(request, services)
    if isinstance(principal, web.Response):
        return principal
    model = request.match_info["model"]
    allowed = principal.limits.models
    first_seen = services.hub.first_seen(model)
    if first_seen is None or (allowed is not None and model not in allowed):
        message = (
            f"The model '{model[:MAX_LOGGED_MODEL]}' is not served here right now."
            " GET /v1/models lists the models available now."
        )
        return error_response(request, 404, "model_not_found", message, param="model")
    return web.json_response(_model_object(model, first_seen))


async def ollama_version_endpoint(_request: web.Request) -> web.Response:
    """GET /api/version: the Ollama API version the /api/* endpoints follow (no key, as Ollama)."""
    return web.json_response({"version": OLLAMA_VERSION})


async def ollama_tags_endpoint(request: web.Request) -> web.Response:
    """GET /api/tags: the same models in Ollama's shape, for Ollama clients."""
    services = request.app[SERVICES]
    principal = await _authenticate(request, services)
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
        for model, first_seen in _visible(principal, services.hub.models()).items()
    ]
    return web.json_response({"models": models})


async def proxy_endpoint(request: web.Request) -> web.StreamResponse:
    """POST to a model endpoint that aiohttp read (the express lane serves the others)."""
    target = request.path_qs
    if not is_relayable(request.method, target):
        # aiohttp routes on the decoded path (`/v1/chat/completion%73` is `.../completions`
        # to it), but the target goes on as sent and the connector judges that: only a path
        # that is an endpoint as sent is routed, so both ends agree on every request.
        path = shown(target.partition("?")[0], 100)
        return error_response(request, 404, "not_found", f"There is no endpoint at {path}.")
    services = request.app[SERVICES]
    settings = services.settings
    call = AiohttpCall(request, settings.body_timeout, settings.stall_timeout)
    await serve(services, call)
    return call.response or web.Response(status=499)


async def serve(services: Services, call: Call) -> None:
    """Answer one API call: authenticate, admit, route by model, relay, stream the answer."""
    lifecycle = services.lifecycle
    started = time.perf_counter()
    if lifecycle.draining:
        message = "The broker is restarting; retry shortly."
        await _reject(services, call, started, None, 503, "shutting_down", message, 5)
        return
    # Counted from the first byte, so a drain waits for an upload that is still arriving.
    with lifecycle.request():
        principal: Principal | None = None
        try:
            found = await services.accounts.authenticate(presented_key(call.headers))
            if isinstance(found, Denied):
                await _reject(
                    services, call, started, None, found.status, found.code, found.message
                )
                return
            principal = found
            admitted = await _admit(services, call, principal, started)
        except (ConnectionError, asyncio.CancelledError):
            # The client went away while its request was still arriving.
            count_rejected(services, call, 499, started, principal, cancelled=True)
            raise
        except Exception as exc:
            # The store failed to answer a key look-up (or today's tokens): say so, in the
            # client's dialect, without the exception text (it may quote the key's hash).
            log.error("cannot check the API key", error=type(exc).__name__)
            message = "The broker cannot check API keys right now; retry shortly."
            await _reject(services, call, started, principal, 503, "store_unavailable", message, 5)
            return
        if admitted is None:
            return
        body, model, lease = admitted
        await Trip(services, call, body, model, principal, lease).run()


async def _reject(
    services: Services,
    call: Call,
    started: float,
    principal: Principal | None,
    status: int,
    code: str,
    message: str,
    retry_after: int | None = None,
    *,
    param: str | None = None,
    final: bool = False,
) -> None:
    """Answer an error before routing, and account it. `final`: retrying cannot help."""
    headers, body = error_parts(
        call.path, status, code, message, retry_after=retry_after, param=param
    )
    if final:
        # Hours away: an SDK's automatic retries (which cap the wait at a minute) cannot help.
        headers["x-should-retry"] = "false"
    count_rejected(services, call, status, started, principal)
    with contextlib.suppress(ConnectionError):  # a client gone is counted all the same
        await call.reply(status, headers, body)


def count_rejected(
    services: Services,
    call: Call,
    status: int,
    started: float,
    principal: Principal | None = None,
    *,
    cancelled: bool = False,
) -> None:
    """Account a request answered before routing (no model label: it was not read or checked)."""
    outcome = "cancelled" if cancelled else "error"
    close_books(services, call, principal, status, outcome, time.perf_counter() - started)


async def _admit(
    services: Services, call: Call, principal: Principal, started: float
) -> tuple[bytes, str, Lease] | None:
    """Read and check the request: the body, its model and a lease, or None once refused."""
    limit = services.settings.max_body_size
    body = await call.read(limit)
    if body is None:
        message = f"The request body is larger than this broker's limit of {limit} bytes."
        await _reject(services, call, started, principal, 413, "request_too_large", message)
        return None
    model = model_of(body, call.path)
    if model is None:
        message = model_refusal(body, call.path)
        await _reject(
            services, call, started, principal, 400, "invalid_request", message, param="model"
        )
        return None
    allowed = principal.limits.models
    if allowed is not None and model not in allowed:
        message = (
            f"This key may not use the model '{model[:MAX_LOGGED_MODEL]}'."
            " GET /v1/models lists the models it may use."
        )
        code = "model_not_allowed"
        await _reject(services, call, started, principal, 403, code, message, param="model")
        return None
    lease = await services.limiter.admit(principal)
    if isinstance(lease, Rejection):
        denied = lease.denied
        final = denied.code == "daily_token_limit_exceeded"
        await _reject(
            services,
            call,
            started,
            principal,
            denied.status,
            denied.code,
            denied.message,
            lease.retry_after,
            final=final,
        )
        return None
    return body, model, lease
