"""Redis round trips per request in cluster mode, counted by the Redis server itself.

    uv run python -m bench.roundtrips [--requests 500] [--redis-url URL]

Starts a throwaway redis-server (Debian's; or uses `--redis-url`, whose database it does not
flush), a stub LLM, a cluster-mode broker (`--redis-url`) in this process with a store in a
temporary folder, and a connector. Then, for keys with different limits, it sends
`--requests` non-streamed requests one after another and reads Redis's own command counts
(`INFO commandstats`) before and after. Redis counts the commands a script runs as well as
the EVALSHA that ran it; those named in the limiter's scripts (`broker.cluster.limitscript`)
are shown apart, and the rest, which the broker sent itself, one command per round trip
(it pipelines nothing on this path), are the round trips per request. The same keys are
then measured on a single-process broker (no Redis), for the median latency of a request
beside the cluster one's. Each
key's first request comes before the count (for a key with a daily token limit it reads
the day's usage from the store and sets the counter: one more EVALSHA, once a day per key).
The keeper's lease refresh (one EVALSHA per key holding leases, every 5 s) may fall inside
a phase: it shows as a fraction of a command per request. Nothing is asserted; the figures
go to docs/performance.md and docs/cluster.md.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from pydantic import SecretStr

from broker.accounts.store import database_url
from broker.cluster import limitscript
from broker.cluster.limits import redis_keys
from broker.server import BrokerServer
from connector_app.core.backoff import Backoff
from connector_app.core.connector import Connector
from tests.conftest import broker_settings, connector_settings, wait_models
from tests.redisserver import RedisServer
from tests.stub_llm import StubLLM

KEYS: dict[str, dict[str, int]] = {
    "unlimited": {},
    "rpm": {"rpm": 1_000_000},
    "rpm+concurrency+daily": {"rpm": 1_000_000, "concurrency": 64, "daily_tokens": 10**12},
}
"""Each key's limits (none of them reached: the common, admitted path)."""


IN_SCRIPTS = frozenset(
    name.lower()
    for text in (limitscript.ADMIT, limitscript.RELEASE, limitscript.REFRESH)
    for name in re.findall(r"redis\.call\('([A-Z]+)'", text)
)
"""Commands the limiter's scripts run inside Redis (no round trip of their own)."""


@dataclass
class Phase:
    broker: str
    key: str
    requests: int
    commands: dict[str, int]
    """Redis commands the phase cost, by name (INFO's own calls left out)."""
    p50_ms: float
    memory: int = 0
    """Bytes the key's limit state holds in Redis after the phase (`MEMORY USAGE`)."""
    starts: int = 0
    """Starts the key's sliding minute holds after the phase."""

    @property
    def sent(self) -> dict[str, int]:
        """The commands the broker sent: one round trip each."""
        return {n: c for n, c in self.commands.items() if n not in IN_SCRIPTS}

    @property
    def per_request(self) -> float:
        return sum(self.sent.values()) / self.requests


async def command_counts(redis: Any) -> dict[str, int]:
    stats = await redis.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(value["calls"])
        for name, value in stats.items()
        if name != "cmdstat_info"
    }


@asynccontextmanager
async def served_broker(redis_url: str | None, folder: Path) -> AsyncIterator[BrokerServer]:
    """A broker (in cluster mode with a Redis URL) with one connector to a stub LLM, all in
    this process."""
    stub = StubLLM()
    await stub.start()
    cluster: dict[str, Any] = {}
    if redis_url is not None:
        cluster = {"redis_url": SecretStr(redis_url), "cluster_secret": SecretStr("b" * 32)}
    broker = BrokerServer(broker_settings(database_url=database_url(folder, None), **cluster))
    await broker.start()
    connector = Connector(connector_settings(broker.port, stub.url), backoff=Backoff(0.05, 0.2))
    task = asyncio.create_task(connector.run())
    try:
        await wait_models(broker, {"stub-model"})
        yield broker
    finally:
        await connector.stop(1.0)
        await asyncio.wait([task], timeout=10)
        await broker.stop()
        await stub.stop()


async def phase(broker: BrokerServer, name: str, limits: dict[str, int], count: int) -> Phase:
    """`count` requests with a key of these limits; Redis's command counts around them."""
    cluster = broker.services.settings.cluster
    store = broker.services.store
    user = await store.create_user(f"bench-{name.replace('+', '-')}")
    if limits:
        await store.set_limits(
            user.id,
            rpm=limits.get("rpm"),
            concurrency=limits.get("concurrency"),
            daily_tokens=limits.get("daily_tokens"),
            models=None,
        )
    key, _ = await store.create_key(user.id, "bench")
    url = f"{broker.base_url}/v1/chat/completions"
    body = {"model": "stub-model", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession() as http:

        async def one() -> float:
            started = time.perf_counter()
            async with http.post(url, json=body, headers=headers) as response:
                await response.read()
                assert response.status == 200, response.status
            return time.perf_counter() - started

        await one()  # the key's first request: looked up in the store, the counter seeded
        await asyncio.sleep(0.05)  # its release sent
        before = await command_counts(broker.services.redis) if cluster else {}
        latencies = [await one() for _ in range(count)]
        await asyncio.sleep(0.05)  # the last release sent (in the background)
        after = await command_counts(broker.services.redis) if cluster else {}
    commands = {n: after[n] - before.get(n, 0) for n in after if after[n] != before.get(n, 0)}
    result = Phase(
        "cluster" if cluster else "single",
        name,
        count,
        commands,
        statistics.median(latencies) * 1000,
    )
    if cluster:
        (record,) = await store.keys(user.id)
        redis = broker.services.redis
        for held in redis_keys(f"key:{record.id}"):
            result.memory += await redis.memory_usage(held) or 0
        result.starts = await redis.zcard(redis_keys(f"key:{record.id}")[0])
    return result


async def main_async(args: argparse.Namespace) -> list[Phase]:
    server = None
    url = args.redis_url
    if url is None:
        server = RedisServer()
        server.start()
        url = server.url
    try:
        phases = []
        for redis_url in (url, None):
            with tempfile.TemporaryDirectory(prefix="remotellm-roundtrips-") as folder:
                async with served_broker(redis_url, Path(folder)) as broker:
                    for name, limits in KEYS.items():
                        phases.append(await phase(broker, name, limits, args.requests))
        return phases
    finally:
        if server is not None:
            server.close()


def report(phases: list[Phase]) -> str:
    lines = [
        "| broker | key's limits | requests | commands sent | run inside scripts"
        " | round trips per request | p50 (ms) | key's state in Redis |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in phases:
        sent = ", ".join(f"{n} {c}" for n, c in sorted(p.sent.items())) or "none"
        inside = sum(c for n, c in p.commands.items() if n in IN_SCRIPTS)
        trips = f"{p.per_request:.2f}" if p.broker == "cluster" else "-"
        state = f"{p.memory} B, {p.starts} starts in the minute" if p.memory else "-"
        lines.append(
            f"| {p.broker} | {p.key} | {p.requests} | {sent} | {inside} | {trips}"
            f" | {p.p50_ms:.2f} | {state} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.roundtrips", description=__doc__)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--redis-url", default=None)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    print(report(asyncio.run(main_async(args))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
