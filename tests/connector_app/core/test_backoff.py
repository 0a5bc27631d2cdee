"""Reconnect backoff: exponential ceilings, capped, full jitter, and a reset."""

from __future__ import annotations

import random

import pytest

from connector_app.core.backoff import RECONNECT_WINDOW, SLOW_CEILING, Backoff


class RecordingRand:
    """Stands in for random.uniform: records its bounds and returns a fixed share of the range."""

    def __init__(self, share: float = 1.0) -> None:
        self.share = share
        self.calls: list[tuple[float, float]] = []

    def __call__(self, low: float, high: float) -> float:
        self.calls.append((low, high))
        return low + (high - low) * self.share


def test_a_lost_link_is_redialled_at_most_the_reconnect_window_apart() -> None:
    backoff = Backoff(rand=RecordingRand())
    delays = [backoff.next() for _ in range(10)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0]
    assert RECONNECT_WINDOW == 8.0


def test_a_failure_retrying_cannot_fix_doubles_to_the_slow_ceiling() -> None:
    backoff = Backoff(rand=RecordingRand())
    delays = [backoff.next(fatal=True) for _ in range(10)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]
    assert SLOW_CEILING == 30.0


def test_the_window_never_raises_the_cap() -> None:
    backoff = Backoff(base=0.5, cap=2.0, rand=RecordingRand(), window=8.0)
    assert [backoff.next() for _ in range(5)] == [0.5, 1.0, 2.0, 2.0, 2.0]


def test_a_fixed_failure_goes_back_to_the_window_at_once() -> None:
    backoff = Backoff(rand=RecordingRand())
    for _ in range(8):
        backoff.next(fatal=True)
    assert backoff.next() == 8.0


def first_dials_after(back_at: float, connectors: int, seed: int) -> list[float]:
    """When each of `connectors` that lost the broker at 0 first dials at or after `back_at`,
    drawing their jitter from one seeded random source."""
    rand = random.Random(seed).uniform
    dials = []
    for _ in range(connectors):
        backoff, at = Backoff(rand=rand), 0.0
        while at < back_at:
            at += backoff.next()
        dials.append(at - back_at)
    return dials


@pytest.mark.parametrize(
    ("back_at", "most_in_a_tenth"),
    [(1.0, 0.15), (2.0, 0.1), (5.0, 0.05), (20.0, 0.05), (600.0, 0.05)],
)
def test_connectors_return_within_the_window_spread_over_it(
    back_at: float, most_in_a_tenth: float
) -> None:
    dials = first_dials_after(back_at, connectors=2000, seed=18)
    assert max(dials) <= RECONNECT_WINDOW
    # Spread, not a stampede. A broker back within a second or two meets a crowd still
    # in its first, short delays (as before the window existed); later, no tenth of a
    # second takes more than 5% of it.
    buckets: dict[int, int] = {}
    for dial in dials:
        buckets[int(dial * 10)] = buckets.get(int(dial * 10), 0) + 1
    assert max(buckets.values()) <= most_in_a_tenth * len(dials)


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
    delays = [backoff.next(fatal=True) for _ in range(5000)]
    assert delays[-1] == 30.0
    assert max(delays) == 30.0
    assert [backoff.next() for _ in range(5000)][-1] == 8.0


def test_default_jitter_stays_within_the_ceiling() -> None:
    backoff = Backoff(base=0.5, cap=2.0)
    for ceiling in [0.5, 1.0, 2.0, 2.0, 2.0] * 20:
        if ceiling == 0.5:
            backoff.reset()
        assert 0.0 <= backoff.next() <= ceiling
