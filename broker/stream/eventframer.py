"""Holding back a half-written event, so a failed stream still ends in a parseable error.

If the LLM server dies in the middle of an SSE event or an NDJSON line, writing an
error event after those bytes would glue the two into one broken event and the
client would fail with a parse error instead of the API error. So the broker
writes streams up to the last complete event and keeps only the unfinished tail.
No complete event is ever delayed: a client cannot use half an event anyway.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

MAX_HELD: Final = 1024 * 1024
"""A tail longer than this is passed on regardless (a stream that never ends an event)."""

_SSE_ENDS: Final = (b"\n\n", b"\r\n\r\n", b"\r\r")


def _sse_cut(data: bytes) -> int:
    # The usual case first, without a generator: an event ending in a blank line.
    if data.endswith(b"\n\n") and b"\r" not in data:
        return len(data)
    return max((i + len(end) for end in _SSE_ENDS if (i := data.rfind(end)) >= 0), default=0)


def _ndjson_cut(data: bytes) -> int:
    return data.rfind(b"\n") + 1


class EventFramer:
    """Splits a response stream into what can be written now and the unfinished tail."""

    def __init__(self, content_type: str) -> None:
        self._cut: Callable[[bytes], int]
        if content_type.startswith("text/event-stream"):
            self._cut = _sse_cut
        elif content_type.startswith("application/x-ndjson"):
            self._cut = _ndjson_cut
        else:
            self._cut = len  # not an event stream: everything is written as it comes
        self._tail = b""

    def feed(self, data: bytes) -> bytes:
        """Bytes to write now: everything up to the last complete event."""
        data = self._tail + data if self._tail else data
        cut = self._cut(data)
        if len(data) - cut > MAX_HELD:
            cut = len(data)
        self._tail = data[cut:]
        return data[:cut]

    def flush(self) -> bytes:
        """The stream ended normally: the tail goes out as it is."""
        tail, self._tail = self._tail, b""
        return tail

    def discard(self) -> None:
        """The stream failed: the unfinished event is dropped."""
        self._tail = b""
