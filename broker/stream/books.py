"""The books of a finished request: its metrics, its `request finished` line, its usage row.

Every API request is counted once, whichever way it ends, by `close_books`: a trip
(`broker.stream.trip.Trip`, which also gives the lease back) and a request answered before
routing (`broker.api.endpoints.count_rejected`: refused, or its client gone before it was admitted)
alike. So the log line has one shape for every request, and a row the ledger writes holds
only what the store takes: the model was checked at the edge (`broker.api.endpoints.model_of`), the
connector's name by the relay's hello (`shared.handshake.accept_hello`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final

import structlog

from broker.accounts.principals import Principal
from broker.accounts.records import UsageRow
from broker.edge.call import Call

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
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    ttfb: float | None = None,
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
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            ttfb_ms=round(ttfb * 1000, 3) if ttfb is not None else None,
            cancelled=outcome == "cancelled",
        )
    )
