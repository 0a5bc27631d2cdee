"""The stream's rules on their own (`broker.stream.machine`): every transition, and each one it
refuses, with no socket, task or clock."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.stream.machine import (
    DONE,
    STREAMING,
    WAITING,
    Failure,
    Finish,
    LinkLost,
    MachineError,
    Retry,
    Start,
    StreamEvent,
    StreamMachine,
)
from shared import protocol as p

SSE = (("Content-Type", "text/event-stream"),)
NDJSON = (("Content-Type", "application/x-ndjson"),)
JSON = (("Content-Type", "application/json"),)
SIZED = (("Content-Type", "text/event-stream"), ("Content-Length", "100"))


def machine(path: str = "/v1/chat/completions", method: str = "POST") -> StreamMachine:
    stream = StreamMachine(method, path, "req_1", started=10.0)
    stream.routed("c1")
    return stream


def head(headers: p.Headers = SSE, status: int = 200) -> p.ResponseHead:
    return p.ResponseHead(1, status, headers)


def body(data: bytes) -> p.ResponseBody:
    return p.ResponseBody(1, data)


def error_of(data: bytes) -> dict[str, object]:
    """The JSON of one SSE error event, or one NDJSON line."""
    text = data.decode()
    line = next(x for x in text.splitlines() if x.strip() and not x.startswith("event:"))
    parsed: dict[str, object] = json.loads(line.removeprefix("data: "))
    return parsed


# -- the order of a stream ----------------------------------------------------------------


def test_a_stream_relays_its_head_then_whole_events_then_the_tail_at_its_end() -> None:
    stream = machine()
    start = stream.feed(head())
    assert isinstance(start, Start) and start.status == 200 and start.chunked
    assert ("X-Request-ID", "req_1") in start.headers
    assert ("Cache-Control", "no-cache") in start.headers
    assert ("X-Accel-Buffering", "no") in start.headers
    assert stream.state == STREAMING
    assert stream.feed(body(b"data: 1\n\nda")) == b"data: 1\n\n"  # half an event waits
    assert stream.feed(body(b"ta: 2\n\n")) == b"data: 2\n\n"
    assert stream.feed(body(b"partial")) == b""
    finish = stream.feed(p.End(1))
    assert finish == Finish(b"partial")
    assert stream.state == DONE and stream.connector_done
    outcome = stream.outcome(now=12.5)
    assert (outcome.status, outcome.outcome, outcome.elapsed) == (200, "ok", 2.5)


def test_a_head_with_a_length_is_not_chunked_and_other_types_get_no_stream_headers() -> None:
    start = machine().feed(head((("Content-Type", "application/json"), ("Content-Length", "2"))))
    assert isinstance(start, Start) and not start.chunked
    assert ("Cache-Control", "no-cache") not in start.headers


def test_a_body_before_the_head_is_the_connectors_protocol_error() -> None:
    stream = machine()
    failure = stream.feed(body(b"x"))
    assert isinstance(failure, Failure) and failure.reply is not None
    assert (failure.status, failure.code) == (502, "connector_protocol_error")
    assert "before a head" in failure.message
    assert stream.state == DONE and stream.outcome(11.0).outcome == "error"


def test_an_end_before_the_head_is_the_connectors_protocol_error() -> None:
    failure = machine().feed(p.End(1))
    assert isinstance(failure, Failure) and failure.reply is not None
    assert (failure.status, failure.code) == (502, "connector_protocol_error")


def test_a_second_head_ends_the_started_stream_with_an_error_event() -> None:
    stream = machine()
    stream.feed(head())
    stream.feed(body(b"data: 1\n\ndata: half"))
    failure = stream.feed(head())
    assert isinstance(failure, Failure) and failure.reply is None and failure.tail is not None
    assert failure.tail.startswith(b"data: ")  # the half event was dropped, not glued to it
    assert error_of(failure.tail)["error"]["code"] == "connector_protocol_error"  # type: ignore[index]
    outcome = stream.outcome(11.0)
    assert (outcome.status, outcome.outcome) == (200, "error")


def test_a_head_that_cannot_be_relayed_is_refused_before_anything_is_written() -> None:
    failure = machine().feed(head((("Content-Length", "12a"),)))
    assert isinstance(failure, Failure) and failure.reply is not None
    assert (failure.status, failure.code) == (502, "connector_protocol_error")
    assert "Content-Length" in failure.message


@pytest.mark.parametrize(
    "event",
    [head(), body(b"x"), p.End(1), p.Error(1, "x", "y"), LinkLost("c1")],
    ids=["head", "body", "end", "error", "lost"],
)
@pytest.mark.parametrize("ending", ["end", "failure", "client", "timeout", "crash"])
def test_nothing_is_accepted_after_the_stream_ended(event: StreamEvent, ending: str) -> None:
    stream = machine()
    stream.feed(head())
    if ending == "end":
        stream.feed(p.End(1))
    elif ending == "failure":
        stream.feed(p.Error(1, "llm_error", "boom"))
    elif ending == "client":
        stream.client_gone()
    elif ending == "timeout":
        stream.timeout(30.0)
    else:
        stream.crashed()
    with pytest.raises(MachineError):
        stream.feed(event)


@pytest.mark.parametrize("ending", ["client", "timeout", "crash"])
def test_a_request_that_ended_otherwise_does_not_time_out(ending: str) -> None:
    stream = machine()
    stream.feed(head())
    if ending == "client":
        stream.client_gone()
    elif ending == "timeout":
        stream.timeout(30.0)
    else:
        stream.crashed()
    with pytest.raises(MachineError):
        stream.timeout(30.0)


@pytest.mark.parametrize("end", [p.End(1), p.Error(1, "llm_error", "boom")], ids=["end", "error"])
def test_the_timeout_while_the_end_is_written_cuts_and_counts_a_timeout(end: StreamEvent) -> None:
    stream = machine()
    stream.feed(head())
    stream.feed(end)  # its Finish or Failure is still being written to a slow client
    failure = stream.timeout(30.0)
    assert failure.reply is None and failure.tail is None  # only a cut is left
    outcome = stream.outcome(41.0)
    assert (outcome.status, outcome.outcome) == (200, "timeout")


# -- retries ---------------------------------------------------------------------------------


def test_a_refusal_or_a_lost_link_before_the_head_is_a_retry_on_another_connector() -> None:
    stream = machine()
    assert stream.feed(p.Error(1, "over_capacity", "busy")) == Retry("refused")
    assert stream.connector_done  # the connector ended its side: nothing to cancel
    stream.routed("c2")
    assert not stream.connector_done
    assert stream.feed(LinkLost("c2")) == Retry("lost")
    assert not stream.connector_done  # a lost link: the driver still forgets the stream
    stream.routed("c3")
    assert isinstance(stream.feed(head()), Start)
    assert stream.connector == "c3"


def test_a_blocked_user_is_tried_elsewhere_and_told_the_block_when_none_is_left() -> None:
    stream = machine()
    message = "The owner of this connector does not serve you."
    assert stream.feed(p.Error(1, "user_blocked", message)) == Retry("blocked")
    stream.routed("c2")
    assert stream.feed(p.Error(1, "over_capacity", "busy")) == Retry("refused")
    assert stream.blocked
    failure = stream.no_connector("blocked", "llama")
    assert failure.status == 403 and failure.reply is not None
    assert json.loads(failure.reply[1])["error"] == {
        "message": message,
        "type": "permission_error",
        "param": None,
        "code": "user_blocked",
    }


@pytest.mark.parametrize(("reason", "status"), [("busy", 503), ("offline", 503)])
def test_after_a_block_a_connector_merely_busy_or_offline_is_the_usual_503(
    reason: str, status: int
) -> None:
    stream = machine()
    assert stream.feed(p.Error(1, "user_blocked", "no")) == Retry("blocked")
    failure = stream.no_connector(reason, "llama")
    assert (failure.status, failure.code) == (status, "no_connector_available")


def test_a_model_only_refusing_connectors_serve_is_model_not_allowed() -> None:
    stream = machine(path="/api/chat")
    failure = stream.no_connector("refused", "llama")
    assert failure.status == 403 and failure.reply is not None
    error = json.loads(failure.reply[1])
    assert error["error"].startswith("The connectors serving 'llama' are not shared with you.")


def test_no_retry_once_the_head_went_out() -> None:
    stream = machine(path="/api/chat")
    stream.feed(head(NDJSON))
    failure = stream.feed(p.Error(1, "over_capacity", "busy"))
    assert isinstance(failure, Failure) and failure.tail is not None
    assert error_of(failure.tail) == {"error": "busy"}  # Ollama's shape, one NDJSON line
    with pytest.raises(MachineError):
        stream.routed("c2")


def test_a_lost_link_after_the_head_ends_the_stream_in_band() -> None:
    stream = machine(path="/v1/messages")
    stream.feed(head())
    failure = stream.feed(LinkLost("c1", sent_away="broker stopping"))
    assert isinstance(failure, Failure) and failure.tail is not None
    assert failure.tail.startswith(b"event: error\ndata: ")  # Anthropic's error event
    assert "broker stopping" in failure.message
    assert failure.code == "connector_disconnected"


def test_an_error_other_than_a_refusal_before_the_head_is_the_clients_answer() -> None:
    stream = machine()
    failure = stream.feed(p.Error(1, "llm_unreachable", "The LLM is down."))
    assert isinstance(failure, Failure) and failure.reply is not None
    headers, payload = failure.reply
    assert failure.status == 502
    assert json.loads(payload)["error"]["code"] == "llm_unreachable"
    assert headers["Content-Type"].startswith("application/json")


# -- failures where the format has no error event ---------------------------------------------


def test_a_failure_after_a_sized_head_cuts_the_connection() -> None:
    stream = machine()
    stream.feed(head(SIZED))
    failure = stream.feed(p.Error(1, "llm_error", "boom"))
    assert isinstance(failure, Failure) and failure.reply is None and failure.tail is None


def test_a_failure_in_a_plain_body_cuts_the_connection() -> None:
    stream = machine()
    stream.feed(head(JSON))
    failure = stream.feed(LinkLost("c1"))
    assert isinstance(failure, Failure) and failure.reply is None and failure.tail is None


# -- what the driver reports ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "status", "retry_after"),
    [("unknown", 404, None), ("busy", 503, "2"), ("offline", 503, "5")],
)
def test_no_connector(reason: str, status: int, retry_after: str | None) -> None:
    stream = StreamMachine("POST", "/v1/chat/completions", "req_1", 0.0)
    failure = stream.no_connector(reason, "m")
    assert failure.status == status and failure.reply is not None
    assert failure.reply[0].get("Retry-After") == retry_after
    assert stream.outcome(1.0).outcome == "error"


def test_an_unsendable_request_is_the_clients_error() -> None:
    failure = machine().unsendable()
    assert (failure.status, failure.code) == (400, "invalid_request")


def test_the_timeout_before_the_head_is_a_504_and_counts_as_a_timeout() -> None:
    stream = machine()
    failure = stream.timeout(30.0)
    assert failure.status == 504 and failure.reply is not None
    assert "30 seconds" in failure.message
    outcome = stream.outcome(40.0)
    assert (outcome.status, outcome.outcome) == (504, "timeout")


def test_the_timeout_after_the_head_ends_the_stream_with_an_error_event() -> None:
    stream = machine()
    stream.feed(head())
    failure = stream.timeout(30.0)
    assert failure.tail is not None and failure.code == "timeout"
    assert stream.outcome(40.0).outcome == "timeout"


def test_a_client_that_left_is_cancelled_with_499_whatever_came_before() -> None:
    stream = machine()
    stream.feed(head())
    stream.timeout(30.0)  # the error event could not be written: the client had gone
    stream.client_gone()
    outcome = stream.outcome(11.0)
    assert (outcome.status, outcome.outcome) == (499, "cancelled")


def test_a_bug_before_the_head_is_a_500_and_after_it_a_cut() -> None:
    before = machine()
    failure = before.crashed()
    assert failure.status == 500 and failure.reply is not None
    after = machine()
    after.feed(head())
    failure = after.crashed()
    assert failure.reply is None and failure.tail is None
    assert after.outcome(11.0).status == 200  # the status the client got
    assert before.outcome(11.0).outcome == after.outcome(11.0).outcome == "error"


def test_a_bug_while_an_error_response_is_written_is_a_500() -> None:
    stream = machine()
    stream.feed(p.Error(1, "llm_error", "boom"))  # its 502 reply is being written
    failure = stream.crashed()
    assert failure.status == 500 and failure.reply is not None
    outcome = stream.outcome(11.0)
    assert (outcome.status, outcome.outcome) == (500, "error")


def test_an_unwritable_head_counts_as_a_502() -> None:
    stream = machine()
    stream.feed(head())
    stream.unwritable()
    outcome = stream.outcome(11.0)
    assert (outcome.status, outcome.outcome) == (502, "error")


def test_routing_is_refused_after_the_head() -> None:
    stream = machine()
    stream.feed(head())
    with pytest.raises(MachineError):
        stream.routed("c2")


# -- bodiless answers, charges and times ------------------------------------------------------


@pytest.mark.parametrize(("method", "status"), [("HEAD", 200), ("POST", 204), ("POST", 304)])
def test_a_bodiless_answer_writes_no_body(method: str, status: int) -> None:
    stream = machine(method=method)
    stream.feed(head(status=status))
    assert stream.feed(body(b"data: 1\n\n")) == b""
    assert stream.feed(p.End(1)) == Finish(b"")


def test_the_tokens_an_answer_reports_are_charged() -> None:
    stream = machine()
    stream.feed(head())
    stream.feed(body(b'data: {"choices": []}\n\n'))
    stream.feed(body(b'data: {"usage": {"prompt_tokens": 7, "completion_tokens": 5}}\n\n'))
    stream.feed(p.End(1))
    outcome = stream.outcome(11.0)
    assert (outcome.prompt_tokens, outcome.completion_tokens, outcome.charged) == (7, 5, 12)


def test_without_a_usage_report_the_events_are_charged() -> None:
    stream = machine()
    stream.feed(head())
    stream.feed(body(b"data: a\n\ndata: b\n\ndata: [DONE]\n\n"))
    stream.feed(p.End(1))
    outcome = stream.outcome(11.0)
    assert (outcome.completion_tokens, outcome.charged) == (None, 3)


def test_a_stream_that_never_started_charges_nothing() -> None:
    stream = machine()
    stream.feed(p.Error(1, "llm_error", "boom"))
    assert stream.outcome(11.0).charged == 0


def test_the_time_to_first_byte_is_counted_from_the_arrival() -> None:
    stream = machine()
    stream.feed(head())
    assert stream.head_written(10.25) == 0.25
    assert stream.outcome(11.0).ttfb == 0.25


# -- any order of events --------------------------------------------------------------------------

EVENTS = st.sampled_from(
    [
        head(),
        head(SIZED),
        head(JSON),
        body(b"data: x\n\n"),
        body(b"half"),
        p.End(1),
        p.Error(1, "over_capacity", "busy"),
        p.Error(1, "user_blocked", "blocked"),
        p.Error(1, "llm_error", "boom"),
        LinkLost("c1"),
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(EVENTS, max_size=8), st.sampled_from(["/v1/chat/completions", "/api/chat"]))
def test_any_order_of_events_keeps_the_rules(events: list[StreamEvent], path: str) -> None:
    stream = machine(path=path)
    starts = 0
    for event in events:
        was = stream.state
        if was == DONE:
            with pytest.raises(MachineError):
                stream.feed(event)
            continue
        action = stream.feed(event)
        if isinstance(action, Start):
            starts += 1
            assert was == WAITING
        elif isinstance(action, Retry):
            assert was == WAITING  # never once the head went out
            stream.routed("c2")
        elif isinstance(action, Failure):
            assert stream.state == DONE
            assert (action.reply is not None) == (was == WAITING)
            assert action.status == stream.status
        elif isinstance(action, Finish):
            assert was == STREAMING and stream.state == DONE
        else:
            assert isinstance(action, bytes) and was == STREAMING
    assert starts <= 1
    if stream.state == DONE:
        outcome = stream.outcome(11.0)
        assert outcome.outcome in ("ok", "error")
        assert (outcome.outcome == "ok") == (not stream.failed and 0 < outcome.status < 400)
