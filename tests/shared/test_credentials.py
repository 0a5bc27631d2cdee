"""Credentials scrubbed from what the standard library logs: aiohttp's, asyncio's, warnings."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator

import pytest
import structlog
from aiohttp.http_exceptions import BadHttpMessage, InvalidHeader

from shared.credentials import CREDENTIAL_HEADERS, scrub
from shared.eventloop import loop_factory
from shared.logging import configure_logging

KEY = "sk-scrub-test-0123456789abcdef"


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    yield stream
    configure_logging("warning", "console", io.StringIO())


def json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    text = stream.getvalue()
    assert text, "nothing was logged, so nothing was tested"
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.parametrize("name", sorted(CREDENTIAL_HEADERS))
def test_every_credential_header_line_is_scrubbed(name: str) -> None:
    for spelling in (name, name.title(), name.upper()):
        quoted = repr(f"{spelling}: Bearer {KEY}\x01".encode())
        assert KEY not in scrub(f"Invalid header value char:\n\n  {quoted}\n    ^")
        assert KEY not in scrub(repr(f"{spelling}\x01: {KEY}".encode()))


def test_a_bearer_secret_is_scrubbed_wherever_it_is_and_other_text_is_kept() -> None:
    assert scrub(f"X-Forwarded: bearer {KEY} and more") == "X-Forwarded: bearer *** and more"
    assert scrub("KeyError: 'model'") == "KeyError: 'model'"
    assert scrub("X-Custom: kept") == "X-Custom: kept"


def test_aiohttps_parse_error_is_one_json_line_without_the_bytes_it_quotes(
    out: io.StringIO,
) -> None:
    raw = f"Authorization: Bearer {KEY}\x01".encode()
    for exc in (
        BadHttpMessage(f"Invalid header value char:\n\n  {raw!r}\n      ^"),
        InvalidHeader(raw),
    ):
        try:
            raise exc
        except BadHttpMessage:
            logging.getLogger("aiohttp.server").exception("Error handling request from %s", "x")
    lines = json_lines(out)
    assert len(lines) == 2
    assert KEY not in out.getvalue()
    assert lines[0]["error"] == "BadHttpMessage: Invalid header value char"
    assert lines[1]["error"] == "InvalidHeader: Invalid HTTP header"
    assert {line["level"] for line in lines} == {"warning"}  # a client's fault, not an error
    assert {line["logger"] for line in lines} == {"aiohttp.server"}


# asyncio's loop, and the one the processes run on (uvloop's, where it is installed).
@pytest.mark.parametrize(
    "make_loop", [asyncio.new_event_loop, loop_factory() or asyncio.new_event_loop]
)
def test_a_traceback_from_the_loop_is_one_json_line_scrubbed(
    out: io.StringIO, make_loop: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    loop = make_loop()
    try:
        exc = ValueError(f"cannot use header line 'x-api-key: {KEY}'")
        loop.call_exception_handler({"message": "Exception in callback", "exception": exc})
    finally:
        loop.close()
    [line] = json_lines(out)
    assert line["logger"] == "asyncio" and line["level"] == "error"
    assert "ValueError" in str(line["exception"])
    assert KEY not in out.getvalue()


def test_a_python_warning_is_a_json_line(out: io.StringIO) -> None:
    # pytest puts its own warning recorder in place around each test phase, over the hook the
    # fixture's configuration installed: start again from none, as a process does.
    logging.captureWarnings(False)
    configure_logging("info", "json", out)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn(f"Authorization: Bearer {KEY}", RuntimeWarning, stacklevel=1)
    [line] = json_lines(out)
    assert line["logger"] == "py.warnings" and line["level"] == "warning"
    assert KEY not in out.getvalue()


def test_a_structlog_exception_quoting_a_header_is_scrubbed(out: io.StringIO) -> None:
    try:
        raise ValueError(f"Cookie: session={KEY}")
    except ValueError:
        structlog.get_logger("t").exception("failed")
    [line] = json_lines(out)
    assert "ValueError" in str(line["exception"]) and KEY not in out.getvalue()


def test_the_console_format_scrubs_the_stdlib_lines_too() -> None:
    stream = io.StringIO()
    configure_logging("info", "console", stream)
    try:
        try:
            raise BadHttpMessage(f"bad: b'Api-Key: {KEY}\\x01'")
        except BadHttpMessage:
            logging.getLogger("aiohttp.server").exception("Error handling request")
    finally:
        configure_logging("warning", "console", io.StringIO())
    assert "Error handling request" in stream.getvalue()
    assert KEY not in stream.getvalue()


@pytest.mark.parametrize("where", ["main", "thread"])
def test_an_uncaught_exception_is_one_json_line_scrubbed(where: str) -> None:
    crash = f"raise ValueError('Authorization: Bearer {KEY}')"
    if where == "thread":
        crash = f"import threading\nt = threading.Thread(target=lambda: exec({crash!r}))\n"
        crash += "t.start()\nt.join()"
    code = f"from shared.logging import configure_logging\nconfigure_logging()\n{crash}\n"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.stdout == ""
    [line] = [json.loads(text) for text in done.stderr.splitlines()]
    assert line["level"] == "critical" and "ValueError" in line["exception"]
    assert KEY not in done.stderr
