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
