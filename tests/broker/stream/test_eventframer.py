"""Only whole events are written; an unfinished one is held, then flushed or dropped."""

from __future__ import annotations

import pytest

from broker.stream.eventframer import MAX_HELD, EventFramer


@pytest.mark.parametrize("end", [b"\n\n", b"\r\n\r\n", b"\r\r"])
def test_sse_is_written_up_to_the_last_complete_event(end: bytes) -> None:
    framer = EventFramer("text/event-stream; charset=utf-8")
    assert framer.feed(b"data: 1" + end + b"data: 2" + end + b"data: 3") == (
        b"data: 1" + end + b"data: 2" + end
    )
    assert framer.feed(end) == b"data: 3" + end
    assert framer.flush() == b""


def test_an_event_split_over_many_chunks_is_written_once_complete() -> None:
    framer = EventFramer("text/event-stream")
    assert framer.feed(b"da") == b""
    assert framer.feed(b"ta: x\n") == b""
    assert framer.feed(b"\n") == b"data: x\n\n"


def test_ndjson_is_written_by_line() -> None:
    framer = EventFramer("application/x-ndjson")
    assert framer.feed(b'{"a":1}\n{"b"') == b'{"a":1}\n'
    assert framer.feed(b":2}\n") == b'{"b":2}\n'


def test_the_tail_is_flushed_at_the_end_and_dropped_on_failure() -> None:
    framer = EventFramer("text/event-stream")
    framer.feed(b"data: partial")
    assert framer.flush() == b"data: partial"
    framer.feed(b"data: broken")
    framer.discard()
    assert framer.flush() == b""


def test_other_bodies_pass_at_once() -> None:
    framer = EventFramer("application/json")
    assert framer.feed(b'{"half": ') == b'{"half": '
    assert framer.flush() == b""


def test_a_stream_that_never_ends_an_event_is_not_held_forever() -> None:
    framer = EventFramer("text/event-stream")
    big = b"x" * (MAX_HELD + 1)
    assert framer.feed(big) == big


def test_mixed_event_ends_are_cut_at_the_last_one() -> None:
    framer = EventFramer("text/event-stream")
    assert framer.feed(b"data: a\n\ndata: b\r\rdata: c") == b"data: a\n\ndata: b\r\r"
    assert framer.feed(b"\n\n") == b"data: c\n\n"
    assert framer.feed(b"data: d\r\n\r\ndata: e\n\n") == b"data: d\r\n\r\ndata: e\n\n"
