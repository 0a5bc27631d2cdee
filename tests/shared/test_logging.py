"""JSON log lines: one object per line, the context bound, secrets masked, nothing lost."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator

import pytest
import structlog

from shared.logging import UtcClock, configure_logging


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    yield stream
    structlog.contextvars.clear_contextvars()
    configure_logging("warning", "console", io.StringIO())


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_carries_the_event_its_fields_the_context_level_and_time(
    out: io.StringIO,
) -> None:
    structlog.contextvars.bind_contextvars(request_id="req-1")
    structlog.get_logger("t").info("request finished", status=200, duration_ms=1.5)
    [line] = lines(out)
    assert line.pop("timestamp") is not None
    assert line == {
        "event": "request finished",
        "status": 200,
        "duration_ms": 1.5,
        "request_id": "req-1",
        "level": "info",
    }


def test_secret_looking_fields_are_masked_and_the_request_id_is_not(out: io.StringIO) -> None:
    structlog.get_logger("t").warning(
        "oops", api_key="sk-123", Authorization="Bearer x", token="", request_id="r", user="u"
    )
    [line] = lines(out)
    assert line["api_key"] == "***"
    assert line["Authorization"] == "***"
    assert line["token"] == ""  # nothing to hide
    assert line["request_id"] == "r"
    assert line["user"] == "u"
    assert line["level"] == "warning"
    assert "sk-123" not in out.getvalue()


def test_levels_below_the_configured_one_are_dropped(out: io.StringIO) -> None:
    configure_logging("warning", "json", out)
    log = structlog.get_logger("t")
    log.info("quiet")
    log.warning("loud")
    assert [line["event"] for line in lines(out)] == ["loud"]


def test_a_value_orjson_cannot_write_still_makes_a_line(out: io.StringIO) -> None:
    log = structlog.get_logger("t")
    log.info("odd", header="caf\udc80", thing=object(), number=2**70, table={1: "a"})
    [line] = lines(out)
    assert line["header"] == "caf\udc80"
    assert str(line["thing"]).startswith("<object object")
    assert line["number"] == 2**70
    assert line["table"] == {"1": "a"}


def test_an_exception_is_logged_with_its_traceback(out: io.StringIO) -> None:
    try:
        raise ZeroDivisionError("boom")
    except ZeroDivisionError:
        structlog.get_logger("t").exception("failed")
    [line] = lines(out)
    assert line["level"] == "error"
    assert "ZeroDivisionError: boom" in str(line["exception"])


def test_reconfiguring_sends_later_lines_to_the_new_stream(out: io.StringIO) -> None:
    log = structlog.get_logger("t")
    log.info("first")
    second = io.StringIO()
    configure_logging("info", "json", second)
    log.info("second")
    assert [line["event"] for line in lines(out)] == ["first"]
    assert [line["event"] for line in lines(second)] == ["second"]


def test_the_clock_writes_iso_8601_utc_with_microseconds() -> None:
    clock = UtcClock()
    stamps = [clock() for _ in range(3)]
    for stamp in stamps:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp)
    assert stamps == sorted(stamps)
