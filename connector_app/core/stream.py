"""One stream the broker opened: a request, its credit, and how its end is reported.

`Streams` (`connector_app.core.streams`) keeps the table and serves them; a `Stream`
knows what the broker and the machine's log hear about it: the app's request events
when it starts and ends, the `request served` log line, and the error a failure
becomes.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import structlog

from connector_app.core.activity import (
    RequestEvents,
    RequestFinished,
    RequestStarted,
    UsageProbe,
    model_of,
)
from connector_app.core.http1 import HTTPError
from connector_app.core.pool import Connection
from shared import protocol as p
from shared.flow import SendCredit
from shared.tracecontext import trace_fields, traceparent_of

log = structlog.get_logger("remotellm.connector")


@dataclass(eq=False)
class Stream:
    """One request the broker sent: what it asked, how far it got, and how it is reported."""

    head: p.RequestHead
    window: int
    body: bytearray = field(default_factory=bytearray)
    running: bool = False
    """The request is being served (by a task, or from the LLM socket's callbacks)."""
    task: asyncio.Task[None] | None = None
    connection: Connection | None = None
    """The LLM connection serving it from callbacks, with no task (`Streams._fast`)."""
    status: int | None = None
    slow: bool = False
    """The task is sending a chunk that had to wait for credit: later bytes queue behind it."""
    credit: SendCredit = field(init=False)
    credited: asyncio.Event = field(default_factory=asyncio.Event)
    usage: UsageProbe | None = None
    started: float = 0.0
    model: str = ""
    events: RequestEvents | None = None
    ended: bool = False
    """Its end was logged (and told to the app's request log)."""

    ids: dict[str, str] = field(init=False)
    """The fields that name the request in its log lines: its id, and its trace's."""

    def __post_init__(self) -> None:
        self.credit = SendCredit(self.window)
        head = self.head
        self.ids = {"request_id": head.request_id, **trace_fields(traceparent_of(head.headers))}

    def announce(self, events: RequestEvents) -> None:
        """The request starts now: tell the app's request log, if anyone is watching."""
        self.started = time.perf_counter()
        if events.active:
            self.events = events
            head = self.head
            self.model = model_of(self.body)
            events.publish(RequestStarted(head.request_id, self.model, head.path, time.time()))
            self.usage = UsageProbe()

    def failure(self, exc: BaseException) -> p.Error:
        """The error the broker hears for a request that failed here (called while handling it)."""
        sid = self.head.stream_id
        if isinstance(exc, HTTPError | OSError | TimeoutError):
            # Details (the local URL, the socket error) stay in this machine's log.
            error = str(exc) or type(exc).__name__
            log.warning("local LLM request failed", error=error, **self.ids)
            if self.status is None:
                return p.Error(sid, "llm_unreachable", "The local LLM server is unreachable.")
            return p.Error(sid, "llm_stream_failed", "The local LLM server failed mid-response.")
        # A bug here must not leave the broker's client waiting for the timeout.
        log.exception("request handling failed")
        return p.Error(sid, "connector_error", f"The connector failed: {type(exc).__name__}")

    def finished(self, outcome: str) -> None:
        """Log the request's end and tell the app's request log (once)."""
        if self.ended:
            return
        self.ended = True
        head = self.head
        duration = time.perf_counter() - self.started
        log.info(
            "request served",
            **self.ids,
            method=head.method,
            path=head.path,
            status=self.status,
            outcome=outcome,
            duration_ms=round(duration * 1000, 1),
        )
        events = self.events
        if events is not None and self.usage is not None:
            prompt, completion = self.usage.tokens()
            finished = RequestFinished(
                head.request_id,
                self.model,
                head.path,
                self.status,
                outcome,
                duration,
                prompt,
                completion,
                time.time(),
            )
            events.publish(finished)
