"""Three broker processes behind HAProxy, sharing Redis and PostgreSQL (tests/clusterharness.py).

Connectors are real `remotellm-connector --headless` processes given the load balancer's URL.
Until requests are forwarded between instances, each test keeps a connector on every broker,
so a request served through HAProxy does not depend on which broker it lands on.
"""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import pytest

from tests.clusterharness import KEY, Broker, Cluster, running_cluster
from tests.stub_llm import StubLLM, sse_event

pytestmark = pytest.mark.timeout(300)

HEADERS = {"Authorization": f"Bearer {KEY}"}


async def chat(session: aiohttp.ClientSession, url: str) -> int:
    body = {"model": "stub-model", "messages": [{"role": "user", "content": "hi"}]}
    async with asyncio.timeout(30):
        async with session.post(f"{url}/v1/chat/completions", json=body, headers=HEADERS) as resp:
            await resp.read()
            return resp.status


async def connector_on_every_broker(cluster: Cluster, stub: StubLLM) -> None:
    """Start connectors through HAProxy until every broker holds at least one (leastconn
    spreads them, so that is one each unless a health check raced a connect)."""
    for n in range(3 * len(cluster.brokers)):
        if all(b.connectors_connected() for b in cluster.brokers):
            return
        await cluster.start_connector(stub.url, f"conn-{n}")
        # The broker logs the link after the connector does: wait until some broker has it.
        async with asyncio.timeout(10):
            while sum(b.connectors_connected() for b in cluster.brokers) < n + 1:
                await asyncio.sleep(0.05)
    raise AssertionError("HAProxy never spread the connectors over every broker")


def paced_stream(events: int) -> dict[str, object]:
    return {
        "model": "stub-model",
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
        "x_stub": {"mode": "events", "events": events, "interval": 0.1},
    }


async def broker_in_flight(cluster: Cluster) -> Broker:
    """The one broker with a request in flight, asked directly (not through HAProxy)."""
    async with aiohttp.ClientSession() as session:
        busy = []
        for broker in cluster.brokers:
            async with session.get(f"{broker.url}/health") as resp:
                if (await resp.json())["in_flight"]:
                    busy.append(broker)
    assert len(busy) == 1, busy
    return busy[0]


async def test_connectors_attach_through_haproxy_and_come_back_after_a_kill_9(
    stub: StubLLM,
) -> None:
    async with running_cluster(3) as cluster:
        await connector_on_every_broker(cluster, stub)
        async with aiohttp.ClientSession() as session:
            statuses = [await chat(session, cluster.url) for _ in range(6)]
        assert statuses == [200] * 6

        # A stream through HAProxy; kill -9 the broker it runs on: no drain, no goodbye.
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{cluster.url}/v1/chat/completions", json=paced_stream(60), headers=HEADERS
            ) as resp,
        ):
            assert resp.status == 200
            received = await resp.content.readuntil(b"\n\n")
            victim = await broker_in_flight(cluster)
            held = victim.connectors_connected()
            others = [b for b in cluster.brokers if b is not victim]
            before = sum(b.connectors_connected() for b in others)
            await victim.kill()
            # The client learns at once that its stream broke; it is not left waiting.
            with pytest.raises(aiohttp.ClientPayloadError):
                async with asyncio.timeout(10):
                    received += await resp.content.read()
        assert b"[DONE]" not in received

        # Requests meanwhile reach a live broker (HAProxy retries a refused connect on another
        # server) and are served by the connectors there; none hangs (each is bounded).
        async with aiohttp.ClientSession() as session:
            statuses = await asyncio.gather(*(chat(session, cluster.url) for _ in range(6)))
        assert statuses == [200] * 6

        # Every connector the dead broker held is back, on a live broker, within 10 s.
        async with asyncio.timeout(10):
            while sum(b.connectors_connected() for b in others) < before + held:
                await asyncio.sleep(0.05)
        await cluster.wait_states({f"b{victim.index}": "DOWN"})
        async with aiohttp.ClientSession() as session:
            statuses = [await chat(session, cluster.url) for _ in range(6)]
        assert statuses == [200] * 6

        # Started again on its port, the broker is checked back in.
        await victim.start()
        await cluster.wait_states({f"b{victim.index}": "UP"})


async def test_a_draining_broker_leaves_haproxy_and_finishes_its_streams(stub: StubLLM) -> None:
    async with running_cluster(2) as cluster:
        await connector_on_every_broker(cluster, stub)
        target = cluster.brokers[0]
        body = paced_stream(60)
        expected = b"".join(sse_event(i) for i in range(60)) + b"data: [DONE]\n\n"
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{target.url}/v1/chat/completions", json=body, headers=HEADERS) as resp,
        ):
            assert resp.status == 200
            received = await resp.content.readuntil(b"\n\n")
            assert target.proc is not None
            target.proc.process.send_signal(signal.SIGTERM)
            # Draining: /readyz answers 503 (or the listener is closed), HAProxy takes it out
            # while the stream goes on.
            await cluster.wait_states({"b0": "DOWN", "b1": "UP"})
            received += await resp.content.read()
        assert received == expected
        assert await target.proc.ended(30) == 0
        async with aiohttp.ClientSession() as session:
            statuses = [await chat(session, cluster.url) for _ in range(4)]
        assert statuses == [200] * 4
