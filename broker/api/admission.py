"""Admission: whether a request may go to a connector, and which one.

One module decides it for every request, whichever server read it: the API key
(`broker.accounts.principals`), the body and its `model` (clean text, allowed for the key),
the key's limits (`broker.accounts.limits`, which hand out a `Lease`), and the connector
(`broker.relay.hub`). `admit_now` is the path that never waits: it settles a request whose
whole body is here, whose key is known and whose limits and connector answer at once, or
returns None having changed nothing. `serve` is the path that awaits only what must be
awaited (the body, the store, a connector to come back or free up) and answers each refusal
in the client's dialect. An admitted request goes to the stream's drivers
(`broker.stream.callbacktrip` from `admit_now`, `broker.stream.trip` from `serve`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, cast

import structlog

from broker.accounts.credentials import presented_key
from broker.accounts.limits import Lease, Rejection
from broker.accounts.principals import Denied, Principal
from broker.api.errors import error_parts
from broker.relay.link import Route
from broker.services import Services
from broker.stream.books import MAX_LOGGED_MODEL, close_books
from broker.stream.call import Call
from broker.stream.machine import StreamMachine
from broker.stream.ticket import Ticket, user_of
from broker.stream.trip import Trip
from shared import jsoncodec
from shared.text import MAX_NAME_LENGTH, is_clean

log = structlog.get_logger("remotellm.broker.api")


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


def permitted(principal: Principal, model: str) -> bool:
    """Whether the key may use `model` (its allow-list, when it has one)."""
    allowed = principal.limits.models
    return allowed is None or model in allowed


def admit_now(services: Services, call: Call, body: bytes) -> tuple[Ticket, Route] | None:
    """Admit `call`, whose whole `body` is here, and pick its connector without waiting; or
    None with nothing changed (then `serve` takes it, and says why it is refused if it is)."""
    if services.lifecycle.draining:
        return None
    principal = services.accounts.authenticate_now(presented_key(call.headers))
    if not isinstance(principal, Principal):
        return None  # refused, or only the store knows: `serve` says which
    model = model_of(body, call.path)
    if model is None or not permitted(principal, model):
        return None
    hub = services.hub
    user = user_of(principal)
    link = hub.acquire_now(model, user)
    if link is None:
        return None
    route = cast(Route, link)  # every link the hub holds is one
    lease = services.limiter.admit_now(principal) if not route.gone else None
    if not isinstance(lease, Lease):
        hub.release(link, user)
        return None
    return Ticket(principal, body, model, lease), route


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
        machine = StreamMachine(call.method, call.path, call.request_id, time.perf_counter())
        await Trip(services, call, admitted, machine).run()


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
) -> Ticket | None:
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
    if not permitted(principal, model):
        message = (
            f"This key may not use the model '{model[:MAX_LOGGED_MODEL]}'."
            " GET /v1/models lists the models it may use."
        )
        await _reject(
            services, call, started, principal, 403, "model_not_allowed", message, param="model"
        )
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
    return Ticket(principal, body, model, lease)
