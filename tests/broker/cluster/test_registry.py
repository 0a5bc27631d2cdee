"""The registry's view of the other brokers: what a read of their records does to the hub."""

from __future__ import annotations

from typing import Any

from broker.cluster.forwarding import Forwarder, PeerLink
from broker.cluster.node import Node, listening_url
from broker.cluster.redisclient import open_redis
from broker.cluster.registry import EXPIRE, Registry
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
