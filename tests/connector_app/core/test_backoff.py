"""Reconnect backoff: exponential ceilings, capped, full jitter, and a reset."""

from __future__ import annotations

import pytest

from connector_app.core.backoff import Backoff


class RecordingRand:
    """Stands in for random.uniform: records its bounds and returns a fixed share of the range."""

    def __init__(self, share: float = 1.0) -> None:
        self.share = share
        self.calls: list[tuple[float, float]] = []

    def __call__(self, low: float, high: float) -> float:
        self.calls.append((low, high))
        return low + (high - low) * self.share


def test_ceilings_double_from_base_until_the_cap() -> None:
    rand = RecordingRand()
    backoff = Backoff(base=0.5, cap=30.0, rand=rand)
    delays = [backoff.next() for _ in range(10)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]


def test_full_jitter_draws_between_zero_and_the_ceiling() -> None:
    rand = RecordingRand(share=0.25)
    backoff = Backoff(base=1.0, cap=5.0, rand=rand)
    delays = [backoff.next() for _ in range(5)]
    assert rand.calls == [(0.0, 1.0), (0.0, 2.0), (0.0, 4.0), (0.0, 5.0), (0.0, 5.0)]
    assert delays == [0.25, 0.5, 1.0, 1.25, 1.25]


def test_the_delay_is_whatever_rand_returns() -> None:
    backoff = Backoff(base=2.0, cap=100.0, rand=lambda low, high: 0.0)
    assert [backoff.next() for _ in range(3)] == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(("base", "cap"), [(0.05, 0.2), (1.0, 1.0), (3.0, 2.0)])
def test_ceilings_follow_base_times_two_to_the_n(base: float, cap: float) -> None:
    rand = RecordingRand()
    backoff = Backoff(base=base, cap=cap, rand=rand)
    for _ in range(8):
        backoff.next()
    assert [high for _, high in rand.calls] == [min(cap, base * 2**n) for n in range(8)]
    assert all(low == 0.0 for low, _ in rand.calls)


def test_reset_starts_over_from_base() -> None:
    rand = RecordingRand()
    backoff = Backoff(base=0.5, cap=30.0, rand=rand)
    for _ in range(6):
        backoff.next()
    backoff.reset()
    assert [backoff.next() for _ in range(3)] == [0.5, 1.0, 2.0]


def test_a_long_outage_neither_overflows_nor_exceeds_the_cap() -> None:
    rand = RecordingRand()
    backoff = Backoff(base=0.5, cap=30.0, rand=rand)
    delays = [backoff.next() for _ in range(5000)]
    assert delays[-1] == 30.0
    assert max(delays) == 30.0


def test_default_jitter_stays_within_the_ceiling() -> None:
    backoff = Backoff(base=0.5, cap=2.0)
    for ceiling in [0.5, 1.0, 2.0, 2.0, 2.0] * 20:
        if ceiling == 0.5:
            backoff.reset()
        assert 0.0 <= backoff.next() <= ceiling
