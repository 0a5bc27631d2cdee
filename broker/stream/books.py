"""The books of a request: its metrics, its log lines, its usage row, its key's slot.

Every API request is counted once, whichever way it ends, by `close_books`: a stream that
ended (`settle`, from either of its drivers, which also gives the key's slot back with the
tokens to charge) and a request answered before routing (`broker.api.admission`: refused,
or its client gone before it was admitted) alike. So the log line has one shape for every
request, and a row the ledger writes holds only what the store takes: the model was checked
at the edge (`broker.api.admission.model_of`), the connector's name by the relay's hello
(`shared.handshake.accept_hello`). Along the way, `first_byte` and `failed` keep the time
to first byte and the `request failed` line, the same for both drivers.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final

import structlog

from broker.accounts.principals import Principal
from broker.accounts.records import UsageRow
from broker.stream.call import Call
from broker.stream.machine import Failure, Retry, StreamMachine
from broker.stream.ticket import Ticket

if TYPE_CHECKING:
    from broker.services import Services

log = structlog.get_logger("remotellm.broker.api")

MAX_LOGGED_MODEL: Final = 100
"""Characters of a client-chosen model name that reach a log line or an error message."""


def close_books(
    services: Services,
    call: Call,
    principal: Principal | None,
    status: int,
    outcome: str,
    elapsed: float,
    *,
    model: str | None = None,
    label: str = "unknown",
    connector: str = "",
    connector_id: int | None = None,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    ttfb: float | None = None,
    usage: bool = True,
) -> None:
    """Count a finished request: in the metrics (under `label`), the log and the ledger.

    `model` is None for a request answered before routing: its model was not read or not
    checked, and its duration (mostly its client's upload) stays out of the histogram.
    `outcome` is `ok`, `error`, `timeout` or `cancelled` (the usage row's `cancelled`).
    """
    services.metrics.finished(label, status, elapsed if model is not None else None)
    log.info(
        "request finished",
        **call.ids,  # also when no context carries them (broker.stream.callbacktrip)
        method=call.method,
        path=call.path,
        model=model[:MAX_LOGGED_MODEL] if model is not None else None,
        status=status,
        outcome=outcome,
        connector=connector or None,
        user=principal.username if principal is not None else None,
        duration_ms=round(elapsed * 1000, 1),
    )
    if not usage:
        return  # the broker that forwarded it writes its row
    services.ledger.record(
        UsageRow(
            time=time.time(),
            request_id=call.request_id,
            endpoint=call.path[:64],
            status=status,
            duration_ms=round(elapsed * 1000, 3),
            user_id=principal.user_id if principal is not None else None,
            key_id=principal.key_id if principal is not None else None,
            model=model[:255] if model is not None else None,
            connector=connector or None,
            connector_id=connector_id,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            ttfb_ms=round(ttfb * 1000, 3) if ttfb is not None else None,
            cancelled=outcome == "cancelled",
        )
    )


def first_byte(services: Services, model: str, ttfb: float) -> None:
    """The response head left for the client, `ttfb` seconds after the request arrived."""
    services.metrics.first_byte(model, ttfb)


def failed(call: Call, failure: Failure) -> None:
    """Log why a request failed (the client's answer says it too)."""
    log.warning("request failed", code=failure.code, error_message=failure.message, **call.ids)


def unwritable(call: Call, exc: ValueError) -> None:
    """Log that the server refused to write a response head the checks had passed."""
    log.error("cannot write the response head", error=str(exc), **call.ids)


def retrying(call: Call, retry: Retry, connector: str) -> None:
    """Log that `connector` did not answer and the stream goes to another one."""
    log.warning(f"connector {retry.why} the request; retrying", connector=connector, **call.ids)


def settle(services: Services, call: Call, ticket: Ticket, machine: StreamMachine) -> None:
    """Count a stream that ended, and give its key's slot back with the tokens it charges.

    Its metrics go under its model's label when a connector took it or the hub knows the model,
    else under `unknown` (a client must not grow the label set with names nobody serves).
    """
    charged = 0
    try:
        outcome = machine.outcome(time.perf_counter())
        charged = outcome.charged
    finally:
        # Whatever happened above, the request's slot is given back.
        ticket.lease.release(charged)
    model = ticket.model
    close_books(
        services,
        call,
        ticket.principal,
        outcome.status,
        outcome.outcome,
        outcome.elapsed,
        model=model,
        label=model if machine.connector or services.hub.knows(model) else "unknown",
        connector=machine.connector,
        connector_id=machine.connector_id,
        prompt_tokens=outcome.prompt_tokens,
        completion_tokens=outcome.completion_tokens,
        ttfb=outcome.ttfb,
        usage=not ticket.forwarded,
    )
