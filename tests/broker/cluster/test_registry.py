"""The registry's view of the other brokers: what a read of their records does to the hub."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from broker.cluster.forwarding import Forwarder, PeerLink
from broker.cluster.node import Node, listening_url
from broker.cluster.redisclient import open_redis
from broker.cluster.registry import EXPIRE, NODES, Registry
from broker.relay.hub import Hub


def record(*links: dict[str, Any], url: str = "http://10.0.0.2:8080") -> dict[str, Any]:
    return {"url": url, "links": list(links)}


def entry(key: str, models: list[str], load: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "k": key,
        "name": f"connector-{key}",
        "models": models,
        "cap": 4,
        "load": load,
        "token": 7,
        "draining": False,
        "gate": None,
        **extra,
    }


def registry(hub: Hub) -> Registry:
    # The client connects on its first command: these tests send none.
    redis = open_redis("redis://127.0.0.1:1/0")
    return Registry(redis, hub, Node(None), Forwarder("s" * 32))


def test_records_become_peer_links_and_leave_with_their_broker() -> None:
    hub = Hub()
    reg = registry(hub)
    reg.apply({"b": record(entry("1", ["m1"]), entry("2", ["m2"], load=3))}, now=100.0)
    assert set(hub.models()) == {"m1", "m2"}
    busy = next(p for p in reg.peers if p.key == "2")
    assert isinstance(busy, PeerLink) and busy.elsewhere == 3 and busy.token_id == 7
    reg.apply({"b": record(entry("1", ["m1", "m3"]))}, now=101.0)
    assert set(hub.models()) == {"m1", "m3"}
    reg.apply({}, now=102.0)  # a read that worked, without b: b stopped or expired
    assert not hub.links and not reg.peers


def test_the_gate_travels_in_the_record() -> None:
    hub = Hub()
    reg = registry(hub)
    gate = {"admitted": [1, 2], "blocked": [2], "configured": False}
    reg.apply({"b": record(entry("1", ["m"], gate=gate))}, now=0.0)
    assert hub.serves("m", user=1)
    assert not hub.serves("m", user=2)  # blocked by the connector itself
    assert not hub.serves("m", user=3)  # not admitted by the owner's rule
    assert hub.refusal("m", 2) == "blocked" and hub.refusal("m", 3) == "refused"


async def test_with_redis_unreachable_known_peers_stay_until_they_would_expire() -> None:
    hub = Hub()
    reg = registry(hub)
    reg.apply({"b": record(entry("1", ["m"]))}, now=10.0)
    assert reg.peers
    reg.apply({}, now=10.0 + EXPIRE / 2, complete=False)
    assert reg.peers  # Redis did not answer: b may still be up
    reg.apply({}, now=10.0 + EXPIRE, complete=False)
    assert not reg.peers and not hub.links


def test_a_wildcard_host_becomes_an_address_others_reach() -> None:
    url = listening_url("0.0.0.0", 8080, tls=False)
    assert url.startswith("http://") and url.endswith(":8080") and "0.0.0.0" not in url
    assert listening_url("::1", 443, tls=True) == "https://[::1]:443"
    node = Node("https://10.0.0.5:9443/")
    node.listening("0.0.0.0", 8080, tls=False)
    assert node.url == "https://10.0.0.5:9443"


async def test_brokers_whose_clocks_disagree_by_ten_seconds_still_see_each_other(
    redis_url: str,
) -> None:
    """Whether a broker is up is its record's expiry on Redis's clock, not the brokers'."""
    redis = open_redis(redis_url)
    try:
        a, b, c = (Node(f"http://10.0.0.{n}:8080") for n in (1, 2, 3))

        def skewed(node: Node, skew: float) -> Registry:
            def clock() -> float:
                return time.time() + skew

            return Registry(redis, Hub(), node, Forwarder("s" * 32), expire=1.0, clock=clock)

        ahead, behind, third = skewed(a, 10.0), skewed(b, -10.0), skewed(c, 0.0)
        for reg in (ahead, behind, third):
            await reg.publish()
        for reg in (ahead, behind, third):
            await reg.read()
        assert ahead.nodes == {b.id, c.id}
        assert behind.nodes == {a.id, c.id}
        # `third` stops writing (it died): it leaves when its record expires, and its id is
        # pruned from the set, however far ahead the others' clocks are.
        async with asyncio.timeout(10):
            while c.id in ahead.nodes or c.id in behind.nodes:
                await asyncio.sleep(0.1)
                for reg in (ahead, behind):
                    await reg.publish()
                for reg in (ahead, behind):
                    await reg.read()
        assert ahead.nodes == {b.id} and behind.nodes == {a.id}
        listed = {raw.decode() for raw in await redis.zrange(NODES, 0, -1)}
        assert listed == {a.id, b.id}
    finally:
        await redis.aclose()
