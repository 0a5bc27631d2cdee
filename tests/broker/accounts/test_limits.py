from __future__ import annotations

from broker.accounts.limits import DAY, Lease, Limiter, Rejection
from broker.accounts.principals import Limits, Principal


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def who(**limits: int) -> Principal:
    return Principal(bucket="key:1", limits=Limits(**limits), key_id=1, user_id=1)


async def test_unlimited_never_rejects() -> None:
    limiter = Limiter()
    for _ in range(1000):
        lease = await limiter.admit(who())
        assert isinstance(lease, Lease)


async def test_requests_per_minute_with_retry_after() -> None:
    clock = Clock()
    limiter = Limiter(clock=clock)
    for _ in range(3):
        assert isinstance(await limiter.admit(who(rpm=3)), Lease)
    clock.now += 20
    rejected = await limiter.admit(who(rpm=3))
    assert isinstance(rejected, Rejection)
    assert rejected.denied.status == 429 and rejected.denied.code == "rate_limit_exceeded"
    assert rejected.retry_after == 40
    clock.now += 40
    assert isinstance(await limiter.admit(who(rpm=3)), Lease)


async def test_concurrency_counts_until_release() -> None:
    limiter = Limiter()
    first = await limiter.admit(who(concurrency=2))
    second = await limiter.admit(who(concurrency=2))
    assert isinstance(first, Lease) and isinstance(second, Lease)
    third = await limiter.admit(who(concurrency=2))
    assert isinstance(third, Rejection) and third.denied.code == "concurrency_limit_exceeded"
    first.release()
    first.release()  # twice is harmless
    assert isinstance(await limiter.admit(who(concurrency=2)), Lease)
    assert isinstance(await limiter.admit(who(concurrency=2)), Rejection)


async def test_daily_tokens_load_today_from_the_store_and_reset_at_midnight() -> None:
    wall = Clock(10 * DAY + 3600)
    asked: list[tuple[int, float]] = []

    async def tokens_since(key_id: int, since: float) -> int:
        asked.append((key_id, since))
        return 90

    limiter = Limiter(tokens_since, wall=wall)
    lease = await limiter.admit(who(daily_tokens=100))
    assert isinstance(lease, Lease)
    assert asked == [(1, 10 * DAY)]
    lease.release(tokens=15)  # 105 used: the next request is over
    rejected = await limiter.admit(who(daily_tokens=100))
    assert isinstance(rejected, Rejection)
    assert rejected.denied.code == "daily_token_limit_exceeded"
    assert rejected.retry_after == DAY - 3600
    wall.now = 11 * DAY + 1  # a new UTC day
    assert isinstance(await limiter.admit(who(daily_tokens=100)), Lease)
    assert asked[-1] == (1, 11 * DAY)


async def test_keys_are_counted_apart() -> None:
    limiter = Limiter()
    one = Principal(bucket="key:1", limits=Limits(concurrency=1))
    two = Principal(bucket="key:2", limits=Limits(concurrency=1))
    assert isinstance(await limiter.admit(one), Lease)
    assert isinstance(await limiter.admit(two), Lease)
    assert isinstance(await limiter.admit(one), Rejection)


async def test_a_failed_read_of_todays_tokens_is_retried_not_taken_as_zero() -> None:
    calls = 0

    async def tokens_since(key_id: int, since: float) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("database is locked")
        return 500

    limiter = Limiter(tokens_since)
    try:
        await limiter.admit(who(daily_tokens=100))
    except OSError:
        pass
    else:
        raise AssertionError("the store error should reach the caller")
    rejected = await limiter.admit(who(daily_tokens=100))
    assert isinstance(rejected, Rejection) and calls == 2
