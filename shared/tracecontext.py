"""W3C Trace Context (https://www.w3.org/TR/trace-context/): the trace a request belongs to.

The broker and the connector pass a client's `traceparent` and `tracestate` headers on to
the LLM server unchanged (they are not theirs to rewrite: neither makes spans), and put
the trace id of a valid `traceparent` in every log line about the request, as `trace_id`,
so a request can be followed from a client that uses OpenTelemetry through both machines.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

_TRACEPARENT: Final = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE: Final = "0" * 32
_ZERO_PARENT: Final = "0" * 16
MAX_TRACEPARENT: Final = 512
"""Characters of a `traceparent` looked at (version 00 has 55; later versions may add fields)."""


def trace_id(traceparent: str | None) -> str | None:
    """The trace id of a valid `traceparent` header value, else None.

    Valid as the specification's parsing rules say: a known layout for version 00 (nothing
    after the flags), any version but `ff` (later versions may append fields after a `-`),
    and neither id all zeros.
    """
    if traceparent is None or len(traceparent) > MAX_TRACEPARENT:
        return None
    found = _TRACEPARENT.fullmatch(traceparent.strip(" \t"))
    if found is None:
        return None
    version, trace, parent, _flags, rest = found.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace == _ZERO_TRACE or parent == _ZERO_PARENT:
        return None
    return trace


def trace_fields(traceparent: str | None) -> dict[str, str]:
    """The log fields of a request's trace: `{"trace_id": ...}`, or none for no valid one."""
    found = trace_id(traceparent)
    return {"trace_id": found} if found is not None else {}


def traceparent_of(headers: Iterable[tuple[str, str]]) -> str | None:
    """The first `traceparent` of a list of header pairs (the relay's request head), if any."""
    for name, value in headers:
        # Most names are not 11 long: one comparison each, no lower-casing per request.
        if len(name) == 11 and name.lower() == "traceparent":
            return value
    return None
