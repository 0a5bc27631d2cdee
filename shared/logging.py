"""Structured logging for both processes (structlog), JSON or console.

A request's correlation id is bound with `structlog.contextvars`, so every line
logged while handling it carries `request_id`. Values under secret-looking keys
are masked by a processor, so a token passed to a log call by mistake never
reaches the output.

JSON lines are built by one processor (`JsonLine`): the context, the level, the
timestamp, the masking, any traceback and the rendering (orjson) in a single
step. A log line is written on every request, and structlog's chain of separate
processors around `json.dumps` cost more than the relay's own work for it.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any, Literal, TextIO

import orjson
import structlog
from structlog.contextvars import merge_contextvars

from shared.credentials import scrub
from shared.logrecords import ConsoleRecords, JsonRecords, log_uncaught

LogFormat = Literal["json", "console"]

_SECRET_HINTS = ("token", "key", "secret", "password", "authorization", "cookie")


@functools.lru_cache(maxsize=1024)
def _is_secret(name: str) -> bool:
    # Cached: the same few field names come by on every log line.
    lowered = name.lower()
    return any(h in lowered for h in _SECRET_HINTS) and lowered != "request_id"


def redact_secrets(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Mask the value of any field whose name looks like it holds a secret."""
    for field in [name for name in event if _is_secret(name)]:
        if event[field] not in (None, ""):
            event[field] = "***"
    return event


class UtcClock:
    """ISO 8601 UTC timestamps with microseconds (`2026-12-01T21:50:38.123456Z`).

    The date and time of day are formatted once per second; only the fraction per call.
    """

    def __init__(self) -> None:
        self._second: tuple[int, str] = (-1, "")
        """The last second formatted, and its text (one tuple: a thread sees both or neither)."""

    def __call__(self) -> str:
        second, nanoseconds = divmod(time.time_ns(), 1_000_000_000)
        known, prefix = self._second
        if second != known:
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, prefix)
        return f"{prefix}.{nanoseconds // 1000:06d}Z"


def _fallback(value: Any) -> Any:
    """What a value orjson cannot write becomes: its `__structlog__()` if any, else its repr."""
    structlog_repr = getattr(value, "__structlog__", None)
    return structlog_repr() if callable(structlog_repr) else repr(value)


_OPTIONS = (
    orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
)
"""Dataclasses and datetimes go to `_fallback` as before (a repr=False field stays unseen)."""


class JsonLine:
    """The whole JSON chain as one structlog processor: event dict in, one line out."""

    def __init__(self) -> None:
        self._clock = UtcClock()

    def __call__(self, logger: Any, name: str, event: MutableMapping[str, Any]) -> str:
        event = merge_contextvars(logger, name, event)
        event["level"] = "warning" if name == "warn" else name
        event["timestamp"] = self._clock()
        redact_secrets(logger, name, event)
        if "exc_info" in event or "exception" in event:
            event = structlog.processors.format_exc_info(logger, name, event)
            # An exception's message may quote what a client sent (a header line with its key).
            exception = event.get("exception")
            if isinstance(exception, str):
                event["exception"] = scrub(exception)
        try:
            line = orjson.dumps(event, default=_fallback, option=_OPTIONS).decode()
        except TypeError:
            line = ""  # a lone surrogate (from a client's header), or an int beyond 64 bits
        if line.isascii() and line:
            return line
        # Lines stay ASCII, whatever the encoding of the stream they go to: the standard
        # library escapes what is not (a client's model name in UTF-8, a lone surrogate).
        return json.dumps(event, default=_fallback, separators=(",", ":"))


def configure_logging(
    level: str = "info", fmt: LogFormat = "json", stream: TextIO | None = None
) -> None:
    """Set up structlog (and the stdlib loggers of our libraries) for one process."""
    numeric = logging.getLevelNamesMapping()[level.upper()]
    # Neither exists under pythonw or in a windowed build.
    out: TextIO | None = stream or sys.stderr or sys.stdout
    processors: list[Any]
    records: logging.Formatter
    if fmt == "json":
        json_line = JsonLine()
        processors = [json_line]
        records = JsonRecords(json_line)
        log_uncaught()  # a crash, too, is one JSON line rather than a bare traceback
    else:
        records = ConsoleRecords()
        processors = [
            merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            structlog.processors.format_exc_info,
            structlog.dev.ConsoleRenderer(colors=out is not None and out.isatty()),
        ]
    # One write and one flush per line: print() (structlog's PrintLogger) writes the line and
    # its newline apart, two system calls for every request's log line when stderr is
    # unbuffered (PYTHONUNBUFFERED=1, as container images often set). With no stream at all,
    # the lines go nowhere, as print() sent them.
    printer = structlog.WriteLogger(out) if out is not None else structlog.ReturnLogger()
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # One printer for every logger: structlog's factory would build one per log call.
        logger_factory=lambda *_args: printer,
        cache_logger_on_first_use=False,
    )
    # aiohttp, asyncio's loop and websockets log through the stdlib; keep their warnings, drop
    # the chatter. Their lines go through the same renderer as ours (shared.logrecords), as
    # do Python's warnings, which would otherwise be printed to stderr as they are.
    handler: logging.Handler = logging.NullHandler()
    if out is not None:
        handler = logging.StreamHandler(out)
        handler.setFormatter(records)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.WARNING))
    logging.captureWarnings(True)
