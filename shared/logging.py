"""Structured logging for both processes (structlog), JSON or console.

A request's correlation id is bound with `structlog.contextvars`, so every line
logged while handling it carries `request_id`. Values under secret-looking keys
are masked by a processor, so a token passed to a log call by mistake never
reaches the output.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal, TextIO

import structlog

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
    for field in list(event):
        if _is_secret(field) and event[field] not in (None, ""):
            event[field] = "***"
    return event


def configure_logging(
    level: str = "info", fmt: LogFormat = "json", stream: TextIO | None = None
) -> None:
    """Set up structlog (and the stdlib loggers of our libraries) for one process."""
    numeric = logging.getLevelNamesMapping()[level.upper()]
    out = stream or sys.stderr
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    # aiohttp and websockets log through the stdlib; keep their warnings, drop the chatter.
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.WARNING))
