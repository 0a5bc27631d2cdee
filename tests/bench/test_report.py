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


def test_w1_is_judged_against_what_litellm_adds_not_its_whole_latency() -> None:
    from bench.report import added_versus_litellm

    p50 = Row(
        "W1 1 KB",
        "p50 latency (ms)",
        {"direct": 1.0, "remotellm": 1.5, "bare": 1.2, "litellm": 11.0},
    )
    checked = added_versus_litellm(p50, 0.1)
    assert checked is not None
    # 0.5 ms added against LiteLLM's 10: 0.05x (whole latencies would give 1.5 / 11 = 0.14x).
    assert checked.value("remotellm") == 0.05 and checked.passed is True
    assert checked.value("bare") is not None and abs(checked.value("bare") - 0.02) < 1e-9
    assert checked.metric == "p50 added, ÷ LiteLLM's added" and checked.target == "≤ 0.1x LiteLLM's"
    slow = Row("W1 1 KB", "p50 latency (ms)", {"direct": 1.0, "remotellm": 3.0, "litellm": 11.0})
    assert added_versus_litellm(slow, 0.1).passed is False  # type: ignore[union-attr]
    failed = Row("W1 1 KB", "p50 latency (ms)", {"direct": 1.0, "remotellm": None, "litellm": 9.0})
    unknown = added_versus_litellm(failed, 0.1)  # RemoteLLM's requests all failed: n/a, not hidden
    assert unknown is not None and unknown.passed is None and unknown.target
    assert "| n/a" in markdown([unknown], with_litellm=True).splitlines()[-1]
    alone = Row("W1 1 KB", "p50 latency (ms)", {"direct": 1.0, "remotellm": 3.0})
    assert added_versus_litellm(alone, 0.1) is None  # no LiteLLM in the run: no row


def test_w2_against_a_litellm_that_failed_the_first_step_is_a_lower_bound() -> None:
    from bench.report import frontier_versus_litellm

    def frontier(relay: float | None, litellm: float | None) -> Row:
        values = {"direct": 6000.0, "remotellm": relay, "litellm": litellm}
        return Row("W2 1 KB", "frontier (req/s)", values, compare="ratio")

    failed_first = frontier_versus_litellm(frontier(2000.0, None), 25.0, 10.0)
    assert failed_first is not None
    assert failed_first.value("remotellm") == 80.0 and failed_first.passed is True
    assert "at least" in failed_first.note
    # A lower bound under the limit says nothing of the true ratio: no verdict, not a fail.
    bound = frontier_versus_litellm(frontier(200.0, None), 25.0, 10.0)
    assert bound is not None and bound.value("remotellm") == 8.0 and bound.passed is None
    assert "no verdict" in bound.note and "≥ 8x" in bound.note
    assert frontier_versus_litellm(frontier(2000.0, 400.0), 25.0, 10.0).passed is False  # type: ignore[union-attr]
    assert frontier_versus_litellm(frontier(None, None), 25.0, 10.0).passed is None  # type: ignore[union-attr]
    no_litellm = Row("W2 1 KB", "frontier (req/s)", {"direct": 6000.0, "remotellm": 2000.0})
    assert frontier_versus_litellm(no_litellm, 25.0, 10.0) is None
