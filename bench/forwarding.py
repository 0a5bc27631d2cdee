"""The cluster's internal hop: what forwarding a request to another broker adds.

Real processes on loopback: a Redis, two brokers in cluster mode (A and B), one connector
attached to B and the bench stub behind it. Non-streamed requests, one at a time, alternate
between the direct path (client -> B -> connector -> stub), B's internal route called by the
client itself with a signature (B's share of the hop: client -> B's /internal/hop ->
connector), and the forwarded one (client -> A -> B -> connector -> stub) in one run, so all
see the same machine; the forwarded path's
added latency is its p50 (p99) minus the direct path's. The issue's goal is at most 0.3 ms
added at p50; the command prints the verdict and exits 0 whatever it says.

    uv run python -m bench.forwarding [--requests 2000] [--warmup 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.client import chat_body
from bench.procs import (
    MODEL,
    USER_KEY,
    Children,
    broker_argv,
    broker_port_of,
    start_connector,
    start_stub,
)
from bench.stats import summary_ms
from broker.cluster import hopauth
from broker.cluster.forwarding import HOP_PATH

GOAL_MS = 0.3
SECRET = "bench-cluster-secret-0123456789abcdef"
SPEC = "bench size=256"


async def _redis(children: Children, port: int) -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("needs redis-server (Debian's redis-server package)")
    children.start(
        "redis",
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return f"redis://127.0.0.1:{port}/0"
        except OSError:
            await asyncio.sleep(0.05)
    raise SystemExit("redis-server did not start")


async def _broker(children: Children, name: str, redis_url: str) -> int:
    argv = [*broker_argv(), "--redis-url", redis_url, "--cluster-secret", SECRET]
    child = children.start(name, argv)
    return int(await child.wait_for(broker_port_of, timeout=30))


async def _wait_model(session: aiohttp.ClientSession, port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        async with session.get(f"http://127.0.0.1:{port}/v1/models") as resp:
            if resp.status == 200 and MODEL in {m["id"] for m in (await resp.json())["data"]}:
                return
        await asyncio.sleep(0.1)
    raise SystemExit(f"the broker on port {port} never listed {MODEL}")


async def _node_of(redis_url: str, port: int) -> str:
    """The instance id of the broker listening on `port`, from its record in Redis."""
    from redis.asyncio import Redis

    from broker.cluster.registry import NODES, node_key

    client = Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for raw in await client.zrange(NODES, 0, -1):
                record = await client.get(node_key(raw.decode()))
                if record and json.loads(record)["url"].endswith(f":{port}"):
                    return str(raw.decode())
            await asyncio.sleep(0.1)
    finally:
        await client.aclose()
    raise SystemExit(f"no broker on port {port} announced itself in Redis")


def _signed(request_id: str, node: str, body: bytes) -> dict[str, str]:
    """The headers broker A would add: B's internal route alone, with A's part left out."""
    user = hopauth.encode_user(("configured", ""))
    target = "/v1/chat/completions"
    secret = SECRET.encode()
    return {
        hopauth.HOP: hopauth.sign(secret, node, target, request_id, user, body, time.time()),
        hopauth.PRINCIPAL: user,
        hopauth.TARGET: target,
        "X-Request-ID": request_id,
        "Authorization": "",
    }


async def measure(requests: int, warmup: int, log_dir: Path) -> dict[str, Any]:
    """Run both paths in turns; the summaries (ms) per path and the added latency."""
    from tests.redisserver import free_port

    children = Children(log_dir)
    try:
        redis_url = await _redis(children, free_port())
        _, stub_port = await start_stub(children)
        port_b = await _broker(children, "broker-b", redis_url)
        port_a = await _broker(children, "broker-a", redis_url)
        start_connector(children, port_b, stub_port)
        headers = {"Authorization": f"Bearer {USER_KEY}", "Content-Type": "application/json"}
        body = chat_body(SPEC, stream=False)
        samples: dict[str, list[int]] = {"direct": [], "internal": [], "forwarded": []}
        async with aiohttp.ClientSession(headers=headers) as session:
            await _wait_model(session, port_b)
            await _wait_model(session, port_a)
            node_b = await _node_of(redis_url, port_b)
            urls = {
                "direct": f"http://127.0.0.1:{port_b}/v1/chat/completions",
                "internal": f"http://127.0.0.1:{port_b}{HOP_PATH}",
                "forwarded": f"http://127.0.0.1:{port_a}/v1/chat/completions",
            }
            for i in range(warmup + requests):
                for path, url in urls.items():
                    extra = _signed(f"bench-{i}", node_b, body) if path == "internal" else {}
                    start = time.perf_counter_ns()
                    async with session.post(url, data=body, headers=extra) as resp:
                        await resp.read()
                        ok = resp.status == 200
                    took = time.perf_counter_ns() - start
                    if not ok:
                        raise SystemExit(f"{path}: status {resp.status}")
                    if i >= warmup:
                        samples[path].append(took)
    finally:
        children.stop_all()
    direct, forwarded = summary_ms(samples["direct"]), summary_ms(samples["forwarded"])
    return {
        "direct": direct,
        "internal": summary_ms(samples["internal"]),
        "forwarded": forwarded,
        "added_p50_ms": forwarded["p50"] - direct["p50"],
        "added_p99_ms": forwarded["p99"] - direct["p99"],
    }


def table(result: dict[str, Any]) -> str:
    direct, internal, forwarded = result["direct"], result["internal"], result["forwarded"]
    added = result["added_p50_ms"]
    verdict = "pass" if added <= GOAL_MS else "fail"
    return "\n".join(
        [
            "| path | n | p50 (ms) | p90 (ms) | p99 (ms) |",
            "| --- | --- | --- | --- | --- |",
            f"| direct (client → B → connector) | {direct['n']} | {direct['p50']:.3f}"
            f" | {direct['p90']:.3f} | {direct['p99']:.3f} |",
            f"| B's internal route alone (client → B's hop route → connector) | {internal['n']}"
            f" | {internal['p50']:.3f} | {internal['p90']:.3f} | {internal['p99']:.3f} |",
            f"| forwarded (client → A → B → connector) | {forwarded['n']}"
            f" | {forwarded['p50']:.3f} | {forwarded['p90']:.3f} | {forwarded['p99']:.3f} |",
            f"| added by the hop | | {added:.3f} | | {result['added_p99_ms']:.3f} |",
            "",
            f"Goal: the hop adds at most {GOAL_MS} ms at p50: {verdict}.",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.forwarding", description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="bench-forwarding-"))
    result = asyncio.run(measure(args.requests, args.warmup, log_dir))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
