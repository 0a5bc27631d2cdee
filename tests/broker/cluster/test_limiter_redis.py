"""One `SharedLimiter` on a real redis-server: bursts, lost answers and outages."""

from __future__ import annotations

import asyncio
from collections import Counter

from redis.asyncio import Redis

from broker.accounts.limits import Lease, Rejection
from broker.accounts.principals import Limits, Principal
from broker.cluster.limits import SharedLimiter, redis_keys
from broker.cluster.limitscript import ADMIT, RELEASE
from broker.cluster.redisclient import MAX_CONNECTIONS, open_redis
from tests.redisserver import RedisServer


def who(**limits: int) -> Principal:
    return Principal(bucket="key:7", limits=Limits(**limits), key_id=7)


async def used(redis: Redis, bucket: str = "key:7") -> int | None:
    raw = await redis.hget(redis_keys(bucket)[2], "used")
    return None if raw is None else int(raw)


async def test_a_burst_larger_than_the_pool_waits_its_turn_and_is_counted_exactly(
    redis_url: str,
) -> None:
    redis = open_redis(redis_url)
    limiter = SharedLimiter(redis)
    try:
        burst = MAX_CONNECTIONS * 4
        answers = await asyncio.gather(*(limiter.admit(who(rpm=200)) for _ in range(burst)))
        assert limiter.shared  # never taken for an unreachable Redis
        kinds = Counter(isinstance(answer, Lease) for answer in answers)
        assert kinds == {True: 200, False: burst - 200}
        assert all(isinstance(a, Lease | Rejection) for a in answers)
        assert await redis.zcard(redis_keys("key:7")[0]) == 200
    finally:
        await redis.aclose()


async def test_an_admission_cancelled_while_redis_runs_it_frees_its_slot_and_counts_tokens_once(
    redis_url: str, redis_server: RedisServer
) -> None:
    redis = open_redis(redis_url)
    limiter = SharedLimiter(redis)  # no background sender: admissions carry the releases
    limits = {"concurrency": 1, "daily_tokens": 1000}
    try:
        first = await limiter.admit(who(**limits))
        assert isinstance(first, Lease)
        first.release(5)  # queued: the next admission carries it
        redis_server.pause()
        try:
            asking = asyncio.create_task(limiter.admit(who(**limits)))
            await asyncio.sleep(0.3)  # sent; Redis runs it when it wakes
            asking.cancel()
            await asyncio.gather(asking, return_exceptions=True)
        finally:
            redis_server.resume()
        # The cancelled admission's lease (if Redis recorded it) is given back by the next.
        third = await limiter.admit(who(**limits))
        assert isinstance(third, Lease)
        assert await used(redis) == 5
        third.release(2)
        assert isinstance(await limiter.admit(who(**limits)), Lease)
        assert await used(redis) == 7
    finally:
        await redis.aclose()


async def test_a_lost_admissions_give_back_holds_even_when_redis_runs_it_first(
    redis_url: str,
) -> None:
    """The give-back of an admission whose answer was lost may reach Redis before the
    admission itself (another connection, a frozen Redis): the admission then records
    nothing, so the slot is free once both ran, whatever their order."""
    redis = open_redis(redis_url)
    try:
        keys = redis_keys("key:7")
        lease = "abc:1"
        give_back = redis.register_script(RELEASE)
        await give_back(keys=keys, args=[1, lease, 0, lease])  # as the limiter queues it
        admit = redis.register_script(ADMIT)
        reply = await admit(keys=keys, args=[5, 1, 0, lease, 60_000, "", 0, 0])
        assert reply[0] == b"gone"
        assert await redis.zcard(keys[0]) == 0 and await redis.zcard(keys[1]) == 0
        reply = await admit(keys=keys, args=[5, 1, 0, "abc:2", 60_000, "", 0, 0])
        assert reply[0] == b"ok"
    finally:
        await redis.aclose()


async def test_tokens_used_while_redis_froze_reach_its_daily_counter(
    redis_url: str, redis_server: RedisServer
) -> None:
    redis = open_redis(redis_url)
    limiter = SharedLimiter(redis, probe_every=0.1)
    limiter.start()
    try:
        lease = await limiter.admit(who(daily_tokens=1000))
        assert isinstance(lease, Lease)
        lease.release(3)
        async with asyncio.timeout(10):
            while await used(redis) != 3:
                await asyncio.sleep(0.02)
        redis_server.pause()
        try:
            async with asyncio.timeout(10):
                while limiter.shared:  # the first asks wait out the client's timeout
                    answer = await limiter.admit(who(daily_tokens=1000))
                    assert isinstance(answer, Lease)
                    answer.release(0)
            for _ in range(3):
                answer = await limiter.admit(who(daily_tokens=1000))
                assert isinstance(answer, Lease)
                answer.release(10)  # counted locally, and queued for Redis
        finally:
            redis_server.resume()
        async with asyncio.timeout(10):
            while not limiter.shared or await used(redis) != 33:
                await asyncio.sleep(0.05)
    finally:
        await limiter.close()
        await redis.aclose()


async def test_close_returns_while_redis_is_frozen(
    redis_url: str, redis_server: RedisServer
) -> None:
    redis = open_redis(redis_url)
    limiter = SharedLimiter(redis, probe_every=0.05, refresh_every=0.05)
    limiter.start()
    lease = await limiter.admit(who(concurrency=2))
    assert isinstance(lease, Lease)
    redis_server.pause()
    try:
        await asyncio.sleep(0.3)  # the keeper is waiting on Redis
        async with asyncio.timeout(10):
            await limiter.close()
    finally:
        redis_server.resume()
        await redis.aclose()
