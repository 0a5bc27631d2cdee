"""The rules of one served stream, on their own: every event in every phase.

No sockets, no tasks: a `StreamMachine` is fed events and what it returns is compared
(`test_streammachine_property.py` feeds it events in any order).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from connector_app.core.streammachine import (
    CALLING,
    CANCELLED,
    FAILED,
    OK,
    OVER,
    RECEIVING,
    REFUSED,
    RELAYING,
    RETRYING,
    StreamMachine,
    StreamStateError,
    already_open,
    is_llm_failure,
    on_closed_stream,
)
from shared import protocol as p
from shared.http1 import HTTPError

SID = 7
HEAD = p.RequestHead(SID, "POST", "/v1/chat/completions", (("content-type", "json"),), "r7")
PHASES = (RECEIVING, CALLING, RETRYING, RELAYING, OVER)
LIVE = (RECEIVING, CALLING, RETRYING, RELAYING)


def machine(
    phase: int = RECEIVING, window: int = 1024, head: p.RequestHead = HEAD
) -> StreamMachine:
    """A machine brought to `phase` the ordinary way (OVER: cancelled while relaying)."""
    m = StreamMachine(head, window)
    if phase == RECEIVING:
        return m
    m.request_body(b'{"model": "m"}')
    assert m.request_end(0, 4, False) is None
    if phase == RETRYING:
        assert m.failed(ConnectionResetError(), kept_alive=True, received=False) is None
    elif phase in (RELAYING, OVER):
        assert m.response_head(200, ()) is not None
        if phase == OVER:
            m.cancel()
    assert m.phase == phase
    return m


def snapshot(m: StreamMachine) -> tuple[Any, ...]:
    return (m.phase, m.outcome, m.status, m.held, bytes(m.body), m.admitted, m._credit.available)


def refused_as_a_bug(m: StreamMachine, event: Callable[[], object]) -> None:
    """`event` raises StreamStateError and leaves the machine as it was."""
    before = snapshot(m)
    with pytest.raises(StreamStateError):
        event()
    assert snapshot(m) == before


# -- the request, from the broker ------------------------------------------------


def test_a_new_stream_receives_its_request_and_has_no_outcome() -> None:
    m = machine()
    assert (m.phase, m.outcome, m.status, m.held, m.admitted) == (RECEIVING, None, None, b"", False)
    assert not m.over


def test_the_request_body_accumulates_until_the_end() -> None:
    m = machine()
    m.request_body(b"ab")
    m.request_body(b"")
    m.request_body(b"cd")
    assert bytes(m.body) == b"abcd"


@pytest.mark.parametrize("phase", [CALLING, RETRYING, RELAYING, OVER])
def test_a_request_body_after_the_request_ended_is_a_protocol_error(phase: int) -> None:
    m = machine(phase)
    with pytest.raises(p.ProtocolError, match="request body on stream 7 that is not open"):
        m.request_body(b"x")


def test_a_request_body_over_the_limit_is_a_protocol_error_and_is_not_kept() -> None:
    m = machine()
    m.request_body(b"0123456789")
    # bytes(n) is zero pages the refusal never touches: the size alone is checked.
    with pytest.raises(p.ProtocolError, match="request body on stream 7 is too large"):
        m.request_body(bytes(p.MAX_REQUEST_BODY - 9))
    assert bytes(m.body) == b"0123456789"


def test_a_request_body_exactly_at_the_limit_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(p, "MAX_REQUEST_BODY", 16)
    m = machine()
    m.request_body(b"x" * 10)
    m.request_body(b"y" * 6)
    with pytest.raises(p.ProtocolError, match="too large"):
        m.request_body(b"z")


def test_the_end_of_a_request_within_capacity_starts_the_call() -> None:
    m = machine()
    assert m.request_end(3, 4, False) is None
    assert (m.phase, m.admitted, m.outcome) == (CALLING, True, None)


@pytest.mark.parametrize("phase", [CALLING, RETRYING, RELAYING, OVER])
def test_a_second_end_of_the_request_is_a_protocol_error(phase: int) -> None:
    m = machine(phase)
    with pytest.raises(p.ProtocolError, match="end of stream 7 that is not open"):
        m.request_end(0, 4, False)


@pytest.mark.parametrize(
    ("busy", "limit", "draining", "reason"),
    [
        (4, 4, False, "The connector is at its concurrency limit."),
        (9, 4, False, "The connector is at its concurrency limit."),
        (0, 4, True, "The connector is shutting down."),
        (4, 4, True, "The connector is shutting down."),
    ],
)
def test_a_request_over_capacity_is_refused_and_not_admitted(
    busy: int, limit: int, draining: bool, reason: str
) -> None:
    m = machine()
    assert m.request_end(busy, limit, draining) == p.Error(SID, "over_capacity", reason)
    assert (m.phase, m.outcome, m.admitted) == (OVER, REFUSED, False)


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/api/pull"), ("POST", "/admin/users"), ("GET", "/v1/chat/completions")],
)
def test_a_request_outside_the_model_endpoints_is_refused_as_forbidden(
    method: str, path: str
) -> None:
    m = machine(head=p.RequestHead(SID, method, path, (), "r7"))
    message = "The connector serves model endpoints only."
    assert m.request_end(0, 4, False) == p.Error(SID, "forbidden", message)
    assert (m.phase, m.outcome, m.admitted) == (OVER, REFUSED, True)


def test_capacity_is_checked_before_the_path() -> None:
    m = machine(head=p.RequestHead(SID, "POST", "/api/pull", (), "r7"))
    refusal = m.request_end(0, 4, True)
    assert refusal is not None and refusal.code == "over_capacity"
    assert not m.admitted


def test_a_model_endpoint_with_a_query_is_served() -> None:
    m = machine(head=p.RequestHead(SID, "POST", "/api/chat?stream=true", (), "r7"))
    assert m.request_end(0, 4, False) is None


@pytest.mark.parametrize("phase", LIVE)
def test_a_cancel_ends_a_live_stream_without_a_frame(phase: int) -> None:
    m = machine(phase)
    assert m.cancel() is None  # type: ignore[func-returns-value]
    assert (m.phase, m.outcome, m.held) == (OVER, CANCELLED, b"")


@pytest.mark.parametrize("outcome", [OK, FAILED, REFUSED, CANCELLED])
def test_a_cancel_after_the_end_changes_nothing(outcome: str) -> None:
    m = ended(outcome)
    m.cancel()
    assert (m.phase, m.outcome) == (OVER, outcome)


def ended(outcome: str) -> StreamMachine:
    """A machine over with `outcome`."""
    if outcome == REFUSED:
        m = machine()
        m.request_end(0, 0, False)
    elif outcome == CANCELLED:
        m = machine(OVER)
    else:
        m = machine(RELAYING)
        if outcome == OK:
            m.complete()
        else:
            m.failed(HTTPError("cut"))
    assert m.outcome == outcome
    return m


@pytest.mark.parametrize("phase", PHASES)
def test_a_window_update_with_nothing_held_only_adds_credit(phase: int) -> None:
    m = machine(phase, window=0)
    assert m.window_update(5) == ()
    if phase == RELAYING:
        assert m.response_body(b"12345") == (p.ResponseBody(SID, b"12345"),)


# -- the answer, from the local LLM ----------------------------------------------


@pytest.mark.parametrize("phase", [CALLING, RETRYING])
def test_the_response_head_is_relayed_without_hop_by_hop_headers(phase: int) -> None:
    m = machine(phase)
    headers = (
        ("Content-Type", "text/event-stream"),
        ("Connection", "keep-alive"),
        ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"),
        ("TE", "trailers"),
        ("Trailer", "x"),
        ("Upgrade", "h2c"),
        ("X-Request-Id", "abc"),
    )
    kept = (("Content-Type", "text/event-stream"), ("X-Request-Id", "abc"))
    assert m.response_head(503, headers) == p.ResponseHead(SID, 503, kept)
    assert (m.phase, m.status, m.outcome) == (RELAYING, 503, None)


@pytest.mark.parametrize("phase", [RECEIVING, RELAYING])
def test_a_response_head_out_of_turn_is_a_bug(phase: int) -> None:
    m = machine(phase)
    refused_as_a_bug(m, lambda: m.response_head(200, ()))


def test_a_response_head_after_a_cancel_is_dropped() -> None:
    m = machine(CALLING)
    m.cancel()
    assert m.response_head(200, ()) is None
    assert (m.status, m.outcome) == (None, CANCELLED)


@pytest.mark.parametrize("phase", [RECEIVING, CALLING, RETRYING])
def test_body_bytes_before_the_head_are_a_bug(phase: int) -> None:
    m = machine(phase)
    refused_as_a_bug(m, lambda: m.response_body(b"x"))


def test_body_bytes_after_a_cancel_are_dropped() -> None:
    m = machine(OVER)
    assert m.response_body(b"late") == ()


@pytest.mark.parametrize("outcome", [OK, FAILED])
def test_body_bytes_after_the_end_are_dropped(outcome: str) -> None:
    m = ended(outcome)
    assert m.response_body(b"late") == ()
    assert m.window_update(100) == ()


def test_body_bytes_within_the_credit_go_as_they_are() -> None:
    m = machine(RELAYING, window=10)
    data = b"0123456789"
    (frame,) = m.response_body(data)
    assert frame == p.ResponseBody(SID, data) and frame.data is data
    assert m.held == b""
    assert m.response_body(b"") == ()


def test_body_bytes_over_the_credit_are_held_until_window_updates_cover_them() -> None:
    m = machine(RELAYING, window=4)
    assert m.response_body(b"abcdef") == (p.ResponseBody(SID, b"abcd"),)
    assert m.held == b"ef"
    # Later bytes queue behind the held ones, whatever the credit.
    assert m.response_body(b"gh") == ()
    assert m.held == b"efgh"
    assert m.window_update(3) == (p.ResponseBody(SID, b"efg"),)
    assert m.held == b"h"
    assert m.window_update(10) == (p.ResponseBody(SID, b"h"),)
    assert m.held == b""
    assert m.response_body(b"ij") == (p.ResponseBody(SID, b"ij"),)


def test_a_chunk_larger_than_a_frame_is_split_into_frames() -> None:
    m = machine(RELAYING, window=3 * p.MAX_BODY_CHUNK)
    data = bytes(range(256)) * (p.MAX_BODY_CHUNK // 128)  # two frames' worth, and more
    data += b"tail"
    frames = m.response_body(data)
    assert [len(f.data) for f in frames] == [p.MAX_BODY_CHUNK, p.MAX_BODY_CHUNK, 4]
    assert b"".join(f.data for f in frames) == data
    assert m.held == b""


def test_with_no_credit_at_all_every_byte_is_held() -> None:
    m = machine(RELAYING, window=0)
    assert m.response_body(b"abc") == ()
    assert m.held == b"abc"


def test_the_end_of_the_answer_ends_the_stream_ok() -> None:
    m = machine(RELAYING)
    assert m.complete() == p.End(SID)
    assert (m.phase, m.outcome) == (OVER, OK)


def test_the_end_while_bytes_wait_for_credit_is_a_bug() -> None:
    m = machine(RELAYING, window=1)
    m.response_body(b"ab")
    refused_as_a_bug(m, m.complete)


@pytest.mark.parametrize("phase", [RECEIVING, CALLING, RETRYING])
def test_the_end_before_the_head_is_a_bug(phase: int) -> None:
    m = machine(phase)
    refused_as_a_bug(m, m.complete)


@pytest.mark.parametrize("outcome", [OK, FAILED, CANCELLED])
def test_the_end_after_the_stream_ended_is_dropped(outcome: str) -> None:
    m = ended(outcome)
    assert m.complete() is None
    assert m.outcome == outcome


# -- failures and the retry ------------------------------------------------------

LLM_FAILURES = [
    HTTPError("the server closed the connection"),
    ConnectionResetError("reset"),
    ConnectionRefusedError("refused"),
    OSError("no route"),
    TimeoutError(),
]
UNREACHABLE = p.Error(SID, "llm_unreachable", "The local LLM server is unreachable.")
CUT = p.Error(SID, "llm_stream_failed", "The local LLM server failed mid-response.")


@pytest.mark.parametrize("exc", LLM_FAILURES)
def test_a_kept_alive_connection_failing_before_any_byte_retries_once(exc: Exception) -> None:
    m = machine(CALLING)
    assert m.failed(exc, kept_alive=True, received=False) is None
    assert (m.phase, m.outcome) == (RETRYING, None)
    # The retry may fail the same way: that failure is final.
    assert m.failed(exc, kept_alive=True, received=False) == UNREACHABLE
    assert (m.phase, m.outcome) == (OVER, FAILED)


@pytest.mark.parametrize("phase", [CALLING, RETRYING])
@pytest.mark.parametrize(("kept_alive", "received"), [(False, False), (False, True), (True, True)])
@pytest.mark.parametrize("exc", LLM_FAILURES)
def test_other_failures_before_the_head_are_unreachable(
    phase: int, kept_alive: bool, received: bool, exc: Exception
) -> None:
    m = machine(phase)
    assert m.failed(exc, kept_alive=kept_alive, received=received) == UNREACHABLE
    assert (m.phase, m.outcome, m.status) == (OVER, FAILED, None)


@pytest.mark.parametrize(("kept_alive", "received"), [(False, True), (True, False)])
@pytest.mark.parametrize("exc", LLM_FAILURES)
def test_a_failure_after_the_head_is_a_stream_failure(
    kept_alive: bool, received: bool, exc: Exception
) -> None:
    m = machine(RELAYING, window=1)
    m.response_body(b"ab")  # one byte held: it is dropped with the failure
    assert m.failed(exc, kept_alive=kept_alive, received=received) == CUT
    assert (m.phase, m.outcome, m.status, m.held) == (OVER, FAILED, 200, b"")


@pytest.mark.parametrize("phase", [CALLING, RETRYING, RELAYING])
@pytest.mark.parametrize("exc", [RuntimeError("secret detail"), ValueError(), KeyError("k")])
def test_a_bug_is_a_connector_error_and_never_retried(phase: int, exc: Exception) -> None:
    m = machine(phase)
    error = m.failed(exc, kept_alive=True, received=False)
    message = f"The connector failed: {type(exc).__name__}"
    assert error == p.Error(SID, "connector_error", message)
    assert (m.phase, m.outcome) == (OVER, FAILED)


def test_what_went_wrong_stays_out_of_the_error_frame() -> None:
    for exc in [*LLM_FAILURES, RuntimeError("secret detail")]:
        error = machine(CALLING).failed(exc)
        assert error is not None and (not str(exc) or str(exc) not in error.message)


def test_a_failure_before_the_request_was_served_is_a_bug() -> None:
    m = machine()
    refused_as_a_bug(m, lambda: m.failed(HTTPError("x")))


@pytest.mark.parametrize("outcome", [OK, FAILED, REFUSED, CANCELLED])
def test_a_failure_after_the_stream_ended_is_dropped(outcome: str) -> None:
    m = ended(outcome)
    assert m.failed(HTTPError("late"), kept_alive=True, received=False) is None
    assert m.failed(RuntimeError("late")) is None
    assert (m.phase, m.outcome) == (OVER, outcome)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (HTTPError("x"), True),
        (OSError(), True),
        (ConnectionResetError(), True),
        (TimeoutError(), True),
        (RuntimeError(), False),
        (UnicodeEncodeError("ascii", "\udc41", 0, 1, "surrogate"), False),
    ],
)
def test_what_counts_as_the_local_llm_failing(exc: BaseException, expected: bool) -> None:
    assert is_llm_failure(exc) is expected


# -- frames for streams that are not open ---------------------------------------


def test_a_request_head_for_an_open_stream_is_a_protocol_error() -> None:
    assert str(already_open(3)) == "stream 3 is already open"


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (p.RequestBody(3, b"x"), "request body on stream 3 that is not open"),
        (p.End(3), "end of stream 3 that is not open"),
    ],
)
def test_a_request_frame_for_a_stream_not_open_is_a_protocol_error(
    frame: p.Frame, message: str
) -> None:
    with pytest.raises(p.ProtocolError, match=message):
        on_closed_stream(frame)


@pytest.mark.parametrize("frame", [p.Cancel(3), p.WindowUpdate(3, 10)])
def test_a_cancel_or_window_update_may_cross_the_end_of_a_stream(frame: p.Frame) -> None:
    assert on_closed_stream(frame) is None  # type: ignore[func-returns-value]


def test_a_blocked_user_is_refused_before_the_llm_and_not_admitted() -> None:
    head = p.RequestHead(SID, "POST", "/v1/chat/completions", (), "r7", "42", "Ada")
    m = machine(head=head)
    refusal = m.request_end(0, 4, False, blocked=frozenset({"42"}))
    assert refusal == p.Error(
        SID, "user_blocked", "The owner of this connector does not serve you."
    )
    assert (m.phase, m.outcome, m.admitted) == (OVER, REFUSED, False)


def test_another_user_and_a_head_without_a_user_are_served_despite_blocks() -> None:
    other = p.RequestHead(SID, "POST", "/v1/chat/completions", (), "r7", "43", "Bob")
    assert machine(head=other).request_end(0, 4, False, blocked=frozenset({"42"})) is None
    assert machine().request_end(0, 4, False, blocked=frozenset({"", "42"})) is None


def test_a_paused_connector_refuses_new_requests_as_over_capacity() -> None:
    m = machine()
    refusal = m.request_end(0, 4, False, paused=True)
    assert refusal == p.Error(SID, "over_capacity", "The connector is paused by its owner.")
    assert not m.admitted
