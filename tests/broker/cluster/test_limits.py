"""Per-key limits across three broker instances sharing one Redis and one store.

Three in-process brokers (each its own app, its own connector to one stub LLM) share a
SQLite file and a real redis-server; requests for one key are spread over them at once.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from broker.accounts.limits import Lease, Rejection, day_start
from broker.accounts.principals import Limits, Principal
from broker.accounts.store import database_url
from broker.cluster.limits import SharedLimiter, redis_keys
from broker.server import BrokerServer
from tests.broker.accounts.test_accounts import chat, store_key
from tests.conftest import MakeBroker, MakeConnector, wait_models
from tests.redisserver import RedisServer
from tests.stub_llm import StubLLM

SECRET = "c" * 32


async def three_brokers(
    stub: StubLLM,
    make_broker: MakeBroker,
    make_connector: MakeConnector,
    redis_url: str,
    store_url: str,
) -> list[BrokerServer]:
    """Three cluster members on one Redis and one store, each with a connector."""
    servers = []
    for _ in range(3):
        broker = await make_broker(
            database_url=store_url,
            redis_url=SecretStr(redis_url),
            cluster_secret=SecretStr(SECRET),
        )
        await make_connector(broker, stub.url)
        await wait_models(broker, {"stub-model"})
        servers.append(broker)
    return servers


@pytest.fixture
async def brokers(
    stub: StubLLM,
    make_broker: MakeBroker,
    make_connector: MakeConnector,
    redis_url: str,
    tmp_path: Path,
) -> list[BrokerServer]:
    """Three cluster members sharing a SQLite file."""
    store_url = database_url(tmp_path, None)
    return await three_brokers(stub, make_broker, make_connector, redis_url, store_url)


async def spread(
    brokers: list[BrokerServer], key: str, count: int, **body: Any
) -> list[tuple[int, dict[str, str], Any]]:
    """`count` requests for `key` at once, round-robin over the brokers."""
    async with aiohttp.ClientSession() as http:
        return await asyncio.gather(
            *(chat(http, brokers[n % len(brokers)], key, **body) for n in range(count))
        )


async def readyz(broker: BrokerServer) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{broker.base_url}/readyz") as response,
    ):
        return response.status, await response.json()


async def test_ten_requests_a_minute_admit_exactly_ten_across_three_instances(
    brokers: list[BrokerServer],
) -> None:
    key = await store_key(brokers[0], rpm=10)
    answers = await spread(brokers, key, 30)
    assert Counter(status for status, _, _ in answers) == {200: 10, 429: 20}
    for status, headers, body in answers:
        if status == 429:
            assert body["error"]["code"] == "rate_limit_exceeded"
            assert 1 <= int(headers["Retry-After"]) <= 60
    # Every instance refuses the next one too.
    for status, _, _ in await spread(brokers, key, 3):
        assert status == 429


async def test_concurrency_counts_requests_in_flight_on_every_instance(
    brokers: list[BrokerServer], stub: StubLLM
) -> None:
    key = await store_key(brokers[0], concurrency=3)
    held = {"stream": True, "x_stub": {"mode": "events", "events": 2, "gated": True}}
    async with aiohttp.ClientSession() as http:
        calls = [asyncio.create_task(chat(http, brokers[n % 3], key, **held)) for n in range(9)]
        async with asyncio.timeout(20):
            while sum(call.done() for call in calls) < 6:
                await asyncio.sleep(0.02)
        finished = [call for call in calls if call.done()]
        refused = [call.result() for call in finished]
        assert len(refused) == 6
        for status, headers, body in refused:
            assert status == 429 and headers["Retry-After"] == "1"
            assert body["error"]["code"] == "concurrency_limit_exceeded"
        async with asyncio.timeout(10):  # the three admitted reach the LLM
            while len(stub.seen) < 3:
                await asyncio.sleep(0.02)
        assert not any(call.done() for call in calls if call not in finished)
        stub.gate(0).set()
        answers = await asyncio.gather(*calls)
        assert Counter(status for status, _, _ in answers) == {200: 3, 429: 6}
        # The leases were given back: each instance admits one again.
        for broker in brokers:
            assert (await chat(http, broker, key))[0] == 200


async def test_one_request_at_a_time_is_never_refused_for_concurrency(
    brokers: list[BrokerServer],
) -> None:
    """A client that sends each request when the last one ended, through any instance, as
    behind a load balancer: its slot is always free again (released after the answer, on
    whichever instance served it)."""
    key = await store_key(brokers[0], concurrency=1)
    async with aiohttp.ClientSession() as http:
        for n in range(30):
            status, _, body = await chat(http, brokers[n % 3], key)
            assert status == 200, body


async def redis_tokens(broker: BrokerServer, bucket: str) -> int | None:
    used = await broker.services.redis.hget(redis_keys(bucket)[2], "used")
    return None if used is None else int(used)


@pytest.fixture(params=["sqlite", "postgresql"])
async def brokers_on_either_store(
    request: pytest.FixtureRequest,
    stub: StubLLM,
    make_broker: MakeBroker,
    make_connector: MakeConnector,
    redis_url: str,
    tmp_path: Path,
) -> list[BrokerServer]:
    """Three cluster members on a SQLite file, or on PostgreSQL as a cluster is deployed."""
    if request.param == "sqlite":
        store_url = database_url(tmp_path, None)
    else:
        store_url = request.getfixturevalue("postgres")
    return await three_brokers(stub, make_broker, make_connector, redis_url, store_url)


async def test_daily_tokens_are_counted_once_across_instances_and_agree_with_the_store(
    brokers_on_either_store: list[BrokerServer],
) -> None:
    a, b, c = brokers_on_either_store
    key = await store_key(a, daily_tokens=10)
    store = a.services.store
    (record,) = await store.keys((await store.find_user("kim")).id)
    bucket = f"key:{record.id}"
    async with aiohttp.ClientSession() as http:
        assert (await chat(http, a, key))[0] == 200  # 7 tokens
        async with asyncio.timeout(10):  # the release is sent in the background
            while await redis_tokens(a, bucket) != 7:
                await asyncio.sleep(0.02)
        assert (await chat(http, b, key))[0] == 200  # 14: crosses the limit, finishes
        async with asyncio.timeout(10):
            while await redis_tokens(a, bucket) != 14:
                await asyncio.sleep(0.02)
        for broker in (c, a, b):
            status, headers, body = await chat(http, broker, key)
            assert status == 429 and body["error"]["code"] == "daily_token_limit_exceeded"
            assert 1 <= int(headers["Retry-After"]) <= 86400
            assert headers["x-should-retry"] == "false"
    for broker in brokers_on_either_store:
        await broker.services.ledger.flush()
    assert await store.usage.tokens_since(record.id, day_start(time.time())) == 14


async def test_todays_token_counter_is_seeded_from_the_stores_usage(
    brokers: list[BrokerServer],
) -> None:
    a, b, _ = brokers
    key = await store_key(a, daily_tokens=10)
    store = a.services.store
    (record,) = await store.keys((await store.find_user("kim")).id)
    async with aiohttp.ClientSession() as http:
        assert (await chat(http, a, key))[0] == 200
        assert (await chat(http, a, key))[0] == 200  # 14 tokens used
        await a.services.ledger.flush()
        # Redis forgets the counter (flushed, or restarted without a disk): read again
        # from the usage rows, so the key stays over its limit.
        await a.services.redis.delete(*redis_keys(f"key:{record.id}"))
        status, _, body = await chat(http, b, key)
    assert status == 429 and body["error"]["code"] == "daily_token_limit_exceeded"
    assert await redis_tokens(a, f"key:{record.id}") == 14


async def test_a_key_without_limits_costs_no_redis_command(
    brokers: list[BrokerServer],
) -> None:
    key = await store_key(brokers[0])
    redis = brokers[0].services.redis
    before = (await redis.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0)
    for _status, _, _ in await spread(brokers, key, 9):
        assert _status == 200
    after = (await redis.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0)
    assert after == before
    assert await redis.keys("remotellm:lim:*") == []


async def test_the_leases_of_an_instance_that_died_expire_and_a_live_ones_do_not(
    redis_url: str,
) -> None:
    """Two limiters on one Redis stand for two instances: the leases of one that stops
    refreshing them (killed) free themselves; those of one that runs stay taken."""
    from redis.asyncio import Redis

    def who() -> Principal:
        return Principal(bucket="key:7", limits=Limits(concurrency=1), key_id=7)

    async with Redis.from_url(redis_url) as redis:
        quick = {"lease_ttl": 1.0, "refresh_every": 0.2, "probe_every": 0.1}
        dead, alive, other = (SharedLimiter(redis, **quick) for _ in range(3))  # type: ignore[arg-type]
        alive.start()
        try:
            assert isinstance(await dead.admit(who()), Lease)  # never released, never refreshed
            assert isinstance(await other.admit(who()), Rejection)
            async with asyncio.timeout(10):  # its lease expires a second after it was taken
                while not isinstance(lease := await alive.admit(who()), Lease):
                    await asyncio.sleep(0.05)
            await asyncio.sleep(2.0)  # twice the lease's life: refreshed meanwhile
            assert isinstance(await other.admit(who()), Rejection)
            lease.release()
            async with asyncio.timeout(10):  # sent in the background
                while not isinstance(await other.admit(who()), Lease):
                    await asyncio.sleep(0.02)
        finally:
            await alive.close()


async def test_redis_stopped_and_started_mid_traffic(
    brokers: list[BrokerServer], redis_server: RedisServer
) -> None:
    """Unreachable Redis: each instance counts alone (limit x instances at worst), /readyz
    stays 200 and says so, nothing hangs; back, counting is shared and exact again."""
    key = await store_key(brokers[0], rpm=4)
    with capture_logs() as logs:
        assert Counter(s for s, _, _ in await spread(brokers, key, 6)) == {200: 4, 429: 2}
        redis_server.stop()
        async with asyncio.timeout(30):  # nothing hangs (each command fails within 1 s)
            during = await spread(brokers, key, 18)
        # Each instance now counts on its own, from an empty window: 4 each.
        assert Counter(s for s, _, _ in during) == {200: 12, 429: 6}
        async with asyncio.timeout(30):
            during = await spread(brokers, key, 3)
        assert Counter(s for s, _, _ in during) == {429: 3}
        for broker in brokers:
            status, ready = await readyz(broker)
            assert (status, ready["status"], ready["limits"]) == (200, "ready", "local")
        redis_server.start()  # empty: it keeps nothing on disk
        for broker in brokers:
            async with asyncio.timeout(10):  # probed every second
                while (await readyz(broker))[1].get("limits") != "shared":
                    await asyncio.sleep(0.05)
        assert Counter(s for s, _, _ in await spread(brokers, key, 9)) == {200: 4, 429: 5}
    lost = [e for e in logs if e["event"].startswith("Redis unreachable")]
    back = [e for e in logs if e["event"].startswith("Redis answers again")]
    assert len(lost) == 3 and len(back) == 3  # once per instance and transition
    assert {e["log_level"] for e in lost} == {"warning"}
    assert {e["log_level"] for e in back} == {"info"}


async def test_a_redis_that_stops_answering_holds_no_request_up(
    brokers: list[BrokerServer], redis_server: RedisServer
) -> None:
    """A frozen Redis (connections open, no answer): the requests asking it when it froze
    wait out the client's timeout, then each instance counts alone; resumed, shared again."""
    key = await store_key(brokers[0], rpm=4)
    redis_server.pause()
    try:
        async with asyncio.timeout(20):  # each command gives up after 1 s
            answers = await spread(brokers, key, 6)
        assert Counter(s for s, _, _ in answers) == {200: 6}  # 2 each, under 4 each
        for broker in brokers:
            status, ready = await readyz(broker)
            assert (status, ready["status"], ready["limits"]) == (200, "ready", "local")
    finally:
        redis_server.resume()
    for broker in brokers:
        async with asyncio.timeout(10):
            while (await readyz(broker))[1].get("limits") != "shared":
                await asyncio.sleep(0.05)
    other = await store_key(brokers[0], username="lee", rpm=3)
    assert Counter(s for s, _, _ in await spread(brokers, other, 9)) == {200: 3, 429: 6}


async def test_an_idle_instance_learns_that_redis_went_away_and_came_back(
    redis_server: RedisServer, redis_url: str
) -> None:
    """No limited request reaches it, no lease to refresh: it still finds out (a PING at each
    refresh), so its /readyz says `local` while Redis is away, not a stale `shared`."""
    from redis.asyncio import Redis

    async with Redis.from_url(redis_url, socket_timeout=1, socket_connect_timeout=1) as redis:
        idle = SharedLimiter(redis, refresh_every=0.2, probe_every=0.1)  # type: ignore[arg-type]
        idle.start()
        try:
            redis_server.stop()
            async with asyncio.timeout(10):
                while idle.shared:
                    await asyncio.sleep(0.05)
            redis_server.start()
            async with asyncio.timeout(10):
                while not idle.shared:
                    await asyncio.sleep(0.05)
        finally:
            await idle.close()
