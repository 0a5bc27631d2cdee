"""Per-request events and the bounded activity log the tray app shows.

The relay client publishes a `RequestStarted` when it begins serving a stream and a
`RequestFinished` when the stream ends. Publishing costs nothing while nobody listens
(the headless connector), and listening never touches the bytes that are relayed.
"""

from __future__ import annotations

import json
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from connector_app.core.status import LinkState, Status

MODEL_SCAN: Final = 256 * 1024
"""Bodies up to this size are parsed as JSON to find `model`; larger ones are scanned."""

USAGE_WINDOW: Final = 8 * 1024
"""Bytes kept from the start and from the end of a response to find its token usage."""

_MODEL_RE = re.compile(rb'"model"\s*:\s*"([^"\\]{1,200})"')
_COUNTS: Final = {
    "prompt": (b"prompt_tokens", b"input_tokens", b"prompt_eval_count"),
    "completion": (b"completion_tokens", b"output_tokens", b"eval_count"),
}
_COUNT_RE = {
    name: re.compile(rb'"(?:' + b"|".join(keys) + rb')"\s*:\s*(\d+)')
    for name, keys in _COUNTS.items()
}


@dataclass(frozen=True, slots=True)
class RequestStarted:
    """A request the connector began serving."""

    request_id: str
    model: str
    path: str
    at: float
    """Wall-clock time (seconds since the epoch)."""
    user_id: str = ""
    """Who sent it, as the broker names them ("" when the broker did not say)."""
    user_name: str = ""
    """Their display name."""


@dataclass(frozen=True, slots=True)
class RequestFinished:
    """A request that ended, however it ended."""

    request_id: str
    model: str
    path: str
    status: int | None
    """The local server's HTTP status; None when it never answered."""
    outcome: str
    """`ok`, `failed`, `cancelled` or `refused`."""
    duration: float
    prompt_tokens: int | None
    completion_tokens: int | None
    at: float
    user_id: str = ""
    user_name: str = ""


RequestEvent = RequestStarted | RequestFinished
RequestListener = Callable[[RequestEvent], None]


class RequestEvents:
    """A tiny publish/subscribe bus for request events."""

    def __init__(self) -> None:
        self._listeners: list[RequestListener] = []

    @property
    def active(self) -> bool:
        """True when someone listens; the client skips all bookkeeping otherwise."""
        return bool(self._listeners)

    def subscribe(self, listener: RequestListener) -> Callable[[], None]:
        """Call `listener` with every event; returns a function that unsubscribes."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def publish(self, event: RequestEvent) -> None:
        for listener in list(self._listeners):
            listener(event)


def model_of(body: bytes | bytearray) -> str:
    """The `model` a request body asks for, or `?` when it names none."""
    if len(body) <= MODEL_SCAN:
        try:
            document = json.loads(body)
        except ValueError:
            document = None
        if isinstance(document, dict) and isinstance(document.get("model"), str):
            return str(document["model"])
        return "?"
    match = _MODEL_RE.search(body, 0, MODEL_SCAN)
    return match.group(1).decode("utf-8", "replace") if match else "?"


class UsageProbe:
    """Finds token counts in a response from its first and last few KiB, without a copy of it.

    OpenAI puts `usage` at the end of a JSON body or in the last stream event, Anthropic
    splits it between the first event and the last, Ollama ends with `eval_count`.
    """

    __slots__ = ("_head", "_tail")

    def __init__(self) -> None:
        self._head = bytearray()
        self._tail = bytearray()

    def feed(self, chunk: bytes) -> None:
        if len(self._head) < USAGE_WINDOW:
            self._head += chunk[: USAGE_WINDOW - len(self._head)]
        self._tail += chunk[-USAGE_WINDOW:]
        if len(self._tail) > 2 * USAGE_WINDOW:
            del self._tail[:-USAGE_WINDOW]

    def tokens(self) -> tuple[int | None, int | None]:
        """(prompt tokens, completion tokens) as the response reported them, else None."""
        out: list[int | None] = []
        for name in ("prompt", "completion"):
            found = None
            for part in (self._head, self._tail):
                matches = _COUNT_RE[name].findall(part)
                if matches:
                    found = int(matches[-1])
            out.append(found)
        return out[0], out[1]


@dataclass(frozen=True, slots=True)
class LinkEvent:
    at: float
    text: str


def describe_change(old: Status, new: Status) -> list[str]:
    """What an operator wants to read about a status change, one line per fact."""
    lines: list[str] = []
    if new.state is not old.state or new.retry_in != old.retry_in:
        if new.state is LinkState.CONNECTED:
            lines.append("connected to the broker")
        elif new.state is LinkState.CONNECTING:
            lines.append("connecting to the broker")
        elif new.state is LinkState.RECONNECTING and new.retry_in is not None:
            why = f": {new.last_error}" if new.last_error else ""
            lines.append(f"link dropped; reconnecting in {new.retry_in:g} s{why}")
        elif new.state is LinkState.RECONNECTING:
            lines.append("reconnecting to the broker")
        elif new.state is LinkState.DISCONNECTED:
            lines.append("disconnected")
    if new.models != old.models:
        lines.append("models changed: " + (", ".join(new.models) or "none"))
    return lines


@dataclass
class Activity:
    """Recent requests, requests in flight and connection events, each bounded."""

    limit: int = 500
    events_limit: int = 200
    clock: Callable[[], float] = time.time
    recent: deque[RequestFinished] = field(init=False)
    in_flight: dict[str, RequestStarted] = field(default_factory=dict)
    link_events: deque[LinkEvent] = field(init=False)

    def __post_init__(self) -> None:
        self.recent = deque(maxlen=self.limit)
        self.link_events = deque(maxlen=self.events_limit)

    def on_request(self, event: RequestEvent) -> None:
        if isinstance(event, RequestStarted):
            self.in_flight[event.request_id] = event
        else:
            self.in_flight.pop(event.request_id, None)
            self.recent.append(event)

    def on_status(self, old: Status, new: Status) -> list[LinkEvent]:
        """Record and return the connection events this change means."""
        added = [LinkEvent(self.clock(), text) for text in describe_change(old, new)]
        self.link_events.extend(added)
        return added
