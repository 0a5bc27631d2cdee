"""JSON log lines: one object per line, the context bound, secrets masked, nothing lost."""

from __future__ import annotations

import dataclasses
import datetime
import io
import json
import logging
import time
from collections.abc import Iterator
from typing import Literal

import pytest
import structlog

from shared.logging import UtcClock, configure_logging


@pytest.fixture
def restored() -> Iterator[None]:
    """For a test that configures logging itself: quiet console lines again afterwards (the
    standard library's handler too, which conftest's fixture leaves alone)."""
    yield
    configure_logging("warning", "console", io.StringIO())


@pytest.fixture
def out(restored: None) -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    yield stream
    structlog.contextvars.clear_contextvars()


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


class Writes(io.StringIO):
    """A stream that remembers each write and flush it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def write(self, text: str) -> int:
        self.calls.append(text)
        return super().write(text)

    def flush(self) -> None:
        self.calls.append("<flush>")


def test_each_line_reaches_the_stream_whole_in_one_write_then_a_flush(restored: None) -> None:
    stream = Writes()
    configure_logging("info", "json", stream)
    structlog.get_logger("t").info("request finished", status=200)
    structlog.get_logger("t").info("request finished", status=404)
    first, flush, second, flush_again = stream.calls
    assert json.loads(first)["status"] == 200 and first.endswith("}\n")
    assert json.loads(second)["status"] == 404 and second.endswith("}\n")
    assert flush == flush_again == "<flush>"


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_a_process_without_stderr_or_stdout_logs_without_failing(
    monkeypatch: pytest.MonkeyPatch, fmt: Literal["json", "console"], restored: None
) -> None:
    # As under pythonw or in a windowed build (the tray app): neither stream exists.
    monkeypatch.setattr("sys.stderr", None)
    monkeypatch.setattr("sys.stdout", None)
    configure_logging("info", fmt)
    line = structlog.get_logger("t").info("request finished", status=200)
    logging.getLogger("aiohttp.server").warning("through the standard library")
    assert "request finished" in line  # rendered, then dropped


def test_a_process_without_stderr_logs_to_stdout(
    monkeypatch: pytest.MonkeyPatch, restored: None
) -> None:
    stdout = io.StringIO()
    monkeypatch.setattr("sys.stderr", None)
    monkeypatch.setattr("sys.stdout", stdout)
    configure_logging("info", "json")
    structlog.get_logger("t").info("request finished", status=200)
    [line] = lines(stdout)
    assert line["status"] == 200


def test_secret_looking_fields_are_masked_and_the_request_id_is_not(out: io.StringIO) -> None:
    structlog.contextvars.bind_contextvars(session_token="tok-in-context")
    structlog.get_logger("t").warning(
        "oops", api_key="sk-123", Authorization="Bearer x", token="", request_id="r", user="u"
    )
    [line] = lines(out)
    assert line["api_key"] == "***"
    assert line["session_token"] == "***"
    assert line["Authorization"] == "***"
    assert line["token"] == ""  # nothing to hide
    assert line["request_id"] == "r"
    assert line["user"] == "u"
    assert line["level"] == "warning"
    assert "sk-123" not in out.getvalue()
    assert "tok-in-context" not in out.getvalue()


def test_levels_below_the_configured_one_are_dropped(out: io.StringIO) -> None:
    configure_logging("warning", "json", out)
    log = structlog.get_logger("t")
    log.info("quiet")
    log.warning("loud")
    assert [line["event"] for line in lines(out)] == ["loud"]


def test_values_json_cannot_hold_as_they_are_are_written_as_before(out: io.StringIO) -> None:
    @dataclasses.dataclass
    class Credential:
        user: str
        secret: str = dataclasses.field(repr=False)

    class Custom:
        def __structlog__(self) -> str:
            return "custom!"

    log = structlog.get_logger("t")
    log.info("odd", thing=object(), table={1: "a"}, cred=Credential("u", "sk-hidden"))
    log.info("custom", value=Custom(), when=datetime.datetime(2026, 12, 1, 12, 0))
    odd, custom = lines(out)
    assert str(odd["thing"]).startswith("<object object")
    assert odd["table"] == {"1": "a"}
    assert str(odd["cred"]).endswith("Credential(user='u')")  # its repr, as before
    assert "sk-hidden" not in out.getvalue()
    assert custom["value"] == "custom!"
    assert custom["when"] == repr(datetime.datetime(2026, 12, 1, 12, 0))


def test_a_value_orjson_refuses_still_makes_a_line(out: io.StringIO) -> None:
    log = structlog.get_logger("t")
    log.info("surrogate", header="caf\udc80")
    log.info("big", number=2**70)
    surrogate, big = lines(out)
    assert surrogate["header"] == "caf\udc80"
    assert big["number"] == 2**70


def test_lines_are_ascii_whatever_the_text(out: io.StringIO) -> None:
    structlog.get_logger("t").info("hi", model="café ☕")
    assert out.getvalue().isascii()
    assert lines(out)[0]["model"] == "café ☕"


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


def test_the_clock_writes_iso_8601_utc_with_microseconds_across_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    second = 1_764_629_438  # 2025-12-01T22:50:38Z
    times = iter(
        [
            second * 10**9 + 999_999_999,
            (second + 1) * 10**9,
            (second + 1) * 10**9 + 5_000,
            (second - 1) * 10**9 + 500_000_000,  # the clock went back
        ]
    )
    monkeypatch.setattr(time, "time_ns", lambda: next(times))
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        clock = UtcClock()
        stamps = [clock() for _ in range(4)]
    finally:
        monkeypatch.undo()
        time.tzset()
    assert stamps == [
        "2025-12-01T22:50:38.999999Z",
        "2025-12-01T22:50:39.000000Z",
        "2025-12-01T22:50:39.000005Z",
        "2025-12-01T22:50:37.500000Z",
    ]
