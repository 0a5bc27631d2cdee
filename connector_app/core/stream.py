"""One stream being served: its machine, what serves it, and how its end is reported.

`Streams` (`connector_app.core.streams`) keeps the table and drives each stream's
`StreamMachine` (`connector_app.core.streammachine`, the rules); a `Stream` holds what
the driver needs beside it (the task or the LLM connection serving it, the event a
task waits on for credit) and reports it: the app's request events when it starts and
ends, and the `request served` log line.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from connector_app.core.activity import (
    RequestEvents,
    RequestFinished,
    RequestStarted,
    UsageProbe,
    model_of,
)
from connector_app.core.pool import Connection
from connector_app.core.streammachine import CANCELLED, StreamMachine
from shared import protocol as p
from shared.tracecontext import trace_fields, traceparent_of

log = structlog.get_logger("remotellm.connector")


class Stream:
    """One request the broker sent: its rules, what serves it, and how it is reported."""

    __slots__ = (
        "connection",
        "credited",
        "ended",
        "events",
        "ids",
        "model",
        "rules",
        "started",
        "task",
        "usage",
    )

    def __init__(self, head: p.RequestHead, window: int) -> None:
        self.rules = StreamMachine(head, window)
        self.task: asyncio.Task[None] | None = None
        self.connection: Connection | None = None
        """The LLM connection serving it from callbacks, with no task (`Streams._fast`)."""
        self.credited: asyncio.Event | None = None
        """Set when held bytes have gone out; made when a task first waits for credit."""
        self.usage: UsageProbe | None = None
        self.started = 0.0
        self.model = ""
        self.events: RequestEvents | None = None
        self.ended = False
        """Its end was logged (and told to the app's request log)."""
        self.ids = {"request_id": head.request_id, **trace_fields(traceparent_of(head.headers))}
        """The fields that name the request in its log lines: its id, and its trace's."""

    def announce(self, events: RequestEvents) -> None:
        """The request starts now: tell the app's request log, if anyone is watching."""
        self.started = time.perf_counter()
        if events.active:
            self.events = events
            head = self.rules.head
            self.model = model_of(self.rules.body)
            started = RequestStarted(
                head.request_id, self.model, head.path, time.time(), head.user_id, head.user_name
            )
            events.publish(started)
            self.usage = UsageProbe()

    def finished(self) -> None:
        """Log the request's end and tell the app's request log (once)."""
        if self.ended:
            return
        self.ended = True
        rules = self.rules
        head = rules.head
        outcome = rules.outcome or CANCELLED  # a stream stopped before it ended
        duration = time.perf_counter() - self.started
        log.info(
            "request served",
            **self.ids,
            method=head.method,
            path=head.path,
            status=rules.status,
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
                rules.status,
                outcome,
                duration,
                prompt,
                completion,
                time.time(),
                head.user_id,
                head.user_name,
            )
            events.publish(finished)
