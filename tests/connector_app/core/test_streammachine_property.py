"""The rules of one served stream under any order of events (hypothesis).

Whatever the local LLM's callbacks, the window updates and the cancels do, in whatever order,
what the machine sends keeps the stream's rules: one head before the body, body bytes in order
and within the credit, nothing after the end, and an event it refuses changes nothing.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from connector_app.core.streammachine import (
    CALLING,
    CANCELLED,
    FAILED,
    OK,
    OVER,
    StreamStateError,
)
from shared import protocol as p
from shared.http1 import HTTPError
from tests.connector_app.core.test_streammachine import SID, machine, snapshot

Event = tuple[str, int]
EVENTS = st.one_of(
    st.tuples(st.just("head"), st.just(0)),
    st.tuples(st.just("body"), st.integers(0, 3000)),
    st.tuples(st.just("credit"), st.integers(1, 2000)),
    st.tuples(st.just("complete"), st.just(0)),
    st.tuples(st.just("fail"), st.integers(0, 3)),
    st.tuples(st.just("cancel"), st.just(0)),
)


class Checked:
    """Feeds a started stream events and checks the frames it returns, step by step."""

    def __init__(self, window: int) -> None:
        self.m = machine(CALLING, window=window)
        self.frames: list[p.Frame] = []
        self.fed = b""
        self.granted = window
        self.counter = 0

    def feed(self, event: Event) -> None:
        kind, n = event
        m = self.m
        before = snapshot(m)
        try:
            out = self._apply(kind, n)
        except StreamStateError:
            assert snapshot(m) == before  # a refused event changes nothing
            return
        if before[0] == OVER:
            assert not out, f"{kind} after the end sent {out}"
        self.frames.extend(out)

    def _apply(self, kind: str, n: int) -> list[p.Frame]:
        m = self.m
        if kind == "head":
            head = m.response_head(200, (("Connection", "close"),))
            return [] if head is None else [head]
        if kind == "body":
            data = bytes((self.counter + i) % 251 for i in range(n))
            self.counter += n
            frames: list[p.Frame] = list(m.response_body(data))
            if m.phase != OVER:
                self.fed += data
            return frames
        if kind == "credit":
            self.granted += n
            return [*m.window_update(n)]
        if kind == "complete":
            end = m.complete()
            return [end] if end is not None else []
        if kind == "cancel":
            m.cancel()
            return []
        exc = [HTTPError("x"), ConnectionResetError(), RuntimeError("bug"), TimeoutError()][n]
        error = m.failed(exc, kept_alive=n % 2 == 1, received=n < 2)
        return [error] if error is not None else []

    def check(self) -> None:
        m, frames = self.m, self.frames
        assert all(getattr(f, "stream_id", None) == SID for f in frames)
        kinds = [type(f) for f in frames]
        heads = [i for i, k in enumerate(kinds) if k is p.ResponseHead]
        bodies = [i for i, k in enumerate(kinds) if k is p.ResponseBody]
        ends = [i for i, k in enumerate(kinds) if k in (p.End, p.Error)]
        assert len(heads) <= 1 and len(ends) <= 1
        if bodies:
            assert heads and heads[0] < bodies[0]
        if ends:
            assert ends[0] == len(frames) - 1  # nothing after the end
        sent = b"".join(f.data for f in frames if isinstance(f, p.ResponseBody))
        assert all(
            0 < len(f.data) <= p.MAX_BODY_CHUNK for f in frames if isinstance(f, p.ResponseBody)
        )
        assert len(sent) <= self.granted  # never past the credit
        assert self.fed.startswith(sent)  # in order, nothing invented
        if m.phase != OVER:
            assert sent + m.held == self.fed  # nothing lost while it runs
            assert m.outcome is None
        else:
            assert m.outcome in (OK, FAILED, CANCELLED) and m.held == b""
        if kinds and kinds[-1] is p.End:
            assert sent == self.fed and m.outcome == OK
        if m.held:
            assert len(sent) == self.granted  # held only when the credit is spent


@settings(max_examples=300, deadline=None)
@given(window=st.integers(0, 4096), events=st.lists(EVENTS, max_size=40))
def test_any_order_of_events_keeps_the_stream_rules(window: int, events: list[Event]) -> None:
    checked = Checked(window)
    for event in events:
        checked.feed(event)
        checked.check()


@settings(max_examples=200, deadline=None)
@given(window=st.integers(0, 512), sizes=st.lists(st.integers(0, 900), max_size=20))
def test_an_answer_fed_with_enough_credit_arrives_whole_and_in_order(
    window: int, sizes: list[int]
) -> None:
    checked = Checked(window)
    checked.feed(("head", 0))
    for size in sizes:
        checked.feed(("body", size))
        while checked.m.held:
            checked.feed(("credit", 100))
            checked.check()
    checked.feed(("complete", 0))
    checked.check()
    assert checked.m.outcome == OK
    assert isinstance(checked.frames[-1], p.End)
