"""Verdicts of the benchmark's result rows."""

from __future__ import annotations

from bench.report import Row, added_at_most, markdown


def row(direct: float, relay: float) -> Row:
    return Row("W3 1000 streams", "event delay p99 (ms)", {"direct": direct, "remotellm": relay})


def test_added_time_within_the_limit_passes_and_over_it_fails() -> None:
    assert added_at_most(row(30.0, 35.0), 10.0).passed is True
    assert added_at_most(row(30.0, 45.0), 10.0).passed is False
    assert added_at_most(row(30.0, 25.0), 10.0).passed is True  # a little faster: noise


def test_a_relay_faster_than_direct_by_more_than_the_limit_gets_no_verdict() -> None:
    checked = added_at_most(row(161.0, 103.0), 10.0)
    assert checked.passed is None
    assert "161 ms" in checked.note
    line = markdown([checked], with_litellm=False).splitlines()[-1]
    assert "| n/a (no verdict: the direct path itself was 161 ms" in line


def test_a_w2_run_whose_harness_stalled_at_a_low_rate_is_flagged() -> None:
    from bench.latency import stall_note

    def step(rate: int, lag: float) -> dict[str, float]:
        return {"rate": rate, "client_lag_max_ms": lag}

    quiet = {
        "direct": [step(500, 2.0), step(8000, 40.0), step(6000, 30.0), step(5000, 25.0)],
        "remotellm": [step(1000, 16.0)],  # one late step: noise any run can have
    }
    assert stall_note(quiet) is None  # lag at a saturating rate is the client's own
    stalled = {"direct": [step(500, 12.0)], "remotellm": [step(800, 27.3), step(1000, 11.0)]}
    note = stall_note(stalled)
    assert note is not None and "in 3 steps" in note and "up to 27 ms" in note and "rerun" in note
