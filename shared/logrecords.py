"""The standard library's log records (aiohttp's, asyncio's, warnings) as our own log lines.

aiohttp logs a request it cannot parse with the exception, whose message quotes the raw
request line or header line it refused (a valid API key included), and asyncio's loop
reports what escapes a callback with a multi-line traceback. `shared.logging` sends every
such record through the same renderer as our own lines: one JSON object per line in the
JSON format, credentials scrubbed (`shared.credentials.scrub`) in both formats.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Callable, MutableMapping
from types import TracebackType
from typing import Any, Final

from shared.credentials import scrub

Render = Callable[[Any, str, MutableMapping[str, Any]], str]
"""A structlog processor that turns an event dict into the line to write (`JsonLine`)."""


def _is_parse_error(exc: BaseException) -> bool:
    # aiohttp's HttpProcessingError, named rather than imported: shared/ does not need aiohttp.
    return any(cls.__name__ == "HttpProcessingError" for cls in type(exc).__mro__)


_WORDS: Final = re.compile(r"[A-Za-z][A-Za-z ]{0,60}")


def _reason(exc: BaseException) -> str:
    """What a parse error says, without any of the request it quotes (`Invalid header value
    char`); its messages put the client's bytes after the words, or are only those bytes."""
    words = _WORDS.match(str(getattr(exc, "message", "") or ""))
    reason = words.group().strip() if words else ""
    return reason if " " in reason else "the request is malformed"


class JsonRecords(logging.Formatter):
    """Renders a stdlib log record as one line through `render`, like any structlog event."""

    def __init__(self, render: Render) -> None:
        super().__init__()
        self._render = render

    def format(self, record: logging.LogRecord) -> str:
        level = record.levelname.lower()
        event: dict[str, Any] = {"event": scrub(record.getMessage()), "logger": record.name}
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and _is_parse_error(exc):
            # A client's malformed request, answered 400: not the broker's fault, and its
            # traceback is only aiohttp's parser. The reason is enough, never the bytes.
            event["error"] = f"{type(exc).__name__}: {_reason(exc)}"
            if level in ("error", "critical"):
                level = "warning"
        elif record.exc_info:
            event["exception"] = scrub(self.formatException(record.exc_info))
        if record.stack_info:
            event["stack"] = scrub(self.formatStack(record.stack_info))
        return self._render(None, level, event)


class ConsoleRecords(logging.Formatter):
    """The console format's stdlib lines (tracebacks kept, for people), credentials scrubbed."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def log_uncaught() -> None:
    """Send an exception nothing caught (in the main thread or another) to the log as a record,
    instead of the traceback Python prints to stderr by itself."""
    logger = logging.getLogger("remotellm")

    def main_thread(
        kind: type[BaseException], exc: BaseException, tb: TracebackType | None
    ) -> None:
        logger.critical("uncaught exception", exc_info=(kind, exc, tb))

    def other_thread(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None and not isinstance(args.exc_value, SystemExit):
            thread = args.thread.name if args.thread else "?"
            exc_info = (args.exc_type, args.exc_value, args.exc_traceback)
            logger.critical("uncaught exception in thread %s", thread, exc_info=exc_info)

    sys.excepthook = main_thread
    threading.excepthook = other_thread
