"""Routing across instances: two brokers on one Redis, the connector attached to the second.

A request to A for a model only B's connector serves goes A -> B (the internal hop) ->
connector -> stub LLM, streamed back event by event.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr
from redis import asyncio as aioredis

from broker.cluster import hopauth
from broker.cluster.forwarding import HOP_PATH, PeerLink
from broker.cluster.registry import CHANGED, EXPIRE, NODES, node_key
from broker.server import BrokerServer
from tests.conftest import USER_KEY, MakeBroker, MakeConnector, RunningConnector, wait_models
from tests.stub_llm import StubLLM, sse_event
from tests.tlsca import use_system_store, write_private_ca

SECRET = "c" * 40
AUTH = {"Authorization": f"Bearer {USER_KEY}"}
CHAT = {"model": "stub-model", "messages": [{"role": "user", "content": "Hi"}]}


@dataclass
class Pair:
    a: BrokerServer
    b: BrokerServer
    connector: RunningConnector
    stub: StubLLM


async def cluster_broker(
    make_broker: MakeBroker, redis_url: str, store: str, **extra: Any
) -> BrokerServer:
    settings: dict[str, Any] = {"connector_wait": 3.0, **extra}
    return await make_broker(
        database_url=store,
        redis_url=SecretStr(redis_url),
        cluster_secret=SecretStr(SECRET),
        **settings,
    )


@pytest.fixture
async def pair(
    make_broker: MakeBroker,
    make_connector: MakeConnector,
    stub: StubLLM,
    redis_url: str,
    tmp_path: Path,
) -> AsyncIterator[Pair]:
    store = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    a = await cluster_broker(make_broker, redis_url, store)
    b = await cluster_broker(make_broker, redis_url, store)
    connector = await make_connector(b, stub.url)
    await wait_models(b, {"stub-model"})
    await wait_models(a, {"stub-model"})  # through the registry
    yield Pair(a, b, connector, stub)


async def plant_record(redis_url: str, node: str, url: str, name: str) -> None:
    """Write a broker's record as the registry would: one connector `name` serving the stub's
    model, idle, open to everyone; announced at once."""
    record = {
        "url": url,
        "links": [
            {
                "k": name,
                "name": name,
                "models": ["stub-model"],
                "cap": 4,
                "load": 0,
                "token": None,
                "draining": False,
                "gate": None,
            }
        ],
    }
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.set(node_key(node), json.dumps(record), px=int(EXPIRE * 1000))
        await client.zadd(NODES, {node: time.time() + EXPIRE})
        await client.publish(CHANGED, node)
    finally:
        await client.aclose()


def peers(broker: BrokerServer) -> list[PeerLink]:
    return [link for link in broker.hub.links if isinstance(link, PeerLink)]


async def test_a_request_to_a_is_forwarded_to_b_and_streamed_event_by_event(pair: Pair) -> None:
    assert len(peers(pair.a)) == 1 and not peers(pair.b)
    body = {**CHAT, "stream": True, "x_stub": {"mode": "events", "events": 6, "gated": True}}
    received: list[bytes] = []
    headers = {**AUTH, "X-Request-ID": "req-forwarded-1"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{pair.a.base_url}/v1/chat/completions", json=body, headers=headers) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["X-Request-ID"] == "req-forwarded-1"
        assert resp.headers.getall("Cache-Control") == ["no-cache"]
        buffer = b""
        async for chunk in resp.content.iter_any():
            buffer += chunk
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                received.append(event + b"\n\n")
                index = len(received) - 1
                if index < 6:
                    # The stub writes the next event only once the client holds this one.
                    assert pair.stub.written == list(range(index + 1))
                    pair.stub.gate(index).set()
    assert received[:6] == [sse_event(i) for i in range(6)]
    # The connector was told the request id, and the user, never the key.
    seen = pair.stub.seen[-1].headers
    assert seen["X-Request-ID"] == "req-forwarded-1"
    assert not any(name.lower().startswith("x-remotellm-hop") for name in seen)
    # One usage row, written by the broker that admitted the request.
    await pair.a.services.ledger.flush()
    await pair.b.services.ledger.flush()
    rows = [
        r for r in await pair.a.services.store.usage.rows() if r.request_id == "req-forwarded-1"
    ]
    assert len(rows) == 1
    assert rows[0].status == 200 and rows[0].connector == "test-connector"


async def test_no_header_of_the_brokers_own_crosses_from_a_connector(pair: Pair) -> None:
    """A connector's `X-RemoteLLM-*` headers never reach the client, nor pass for B's hop
    error (which would hold the request as if the connector were busy, then answer 503)."""
    ours = {"X-RemoteLLM-Hop-Error": "no_connector_available", "X-RemoteLLM-Other": "1"}
    body = {**CHAT, "x_stub": {"mode": "status", "status": 429, "headers": ours}}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{pair.a.base_url}/v1/chat/completions", json=body, headers=AUTH) as resp,
    ):
        assert resp.status == 429
        assert (await resp.json())["error"]["message"] == "stub says no"
        assert not [name for name in resp.headers if name.lower().startswith("x-remotellm-")]


async def test_no_header_of_the_brokers_own_crosses_from_a_client_or_a_connector(
    pair: Pair,
) -> None:
    """`X-RemoteLLM-*` headers are the brokers': a client's never reach the hop or the
    connector, and a connector's never reach the client nor pass for B's hop error."""
    ours = {
        hopauth.TARGET: "/v1/embeddings",
        hopauth.PRINCIPAL: hopauth.encode_user(("1", "mallory")),
        "X-RemoteLLM-Hop-Error": "no_connector_available",
        "X-RemoteLLM-Other": "1",
    }
    body = {**CHAT, "x_stub": {"mode": "status", "status": 429, "headers": ours}}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{pair.a.base_url}/v1/chat/completions", json=body, headers={**AUTH, **ours}
        ) as resp,
    ):
        # The connector's own answer, not a busy connector's hold then A's 503.
        assert resp.status == 429
        assert (await resp.json())["error"]["message"] == "stub says no"
        assert not [name for name in resp.headers if name.lower().startswith("x-remotellm-")]
    [seen] = pair.stub.seen
    assert seen.path == "/v1/chat/completions"
    assert not [name for name in seen.headers if name.lower().startswith("x-remotellm-")]


async def test_a_client_hang_up_on_a_cancels_the_generation_behind_b(pair: Pair) -> None:
    body = {**CHAT, "stream": True, "x_stub": {"mode": "events", "events": 2, "hang_at_end": True}}
    async with aiohttp.ClientSession() as session:
        resp = await session.post(f"{pair.a.base_url}/v1/chat/completions", json=body, headers=AUTH)
        await resp.content.readuntil(b"\n\n")
        resp.close()  # the user goes away mid-stream
    await asyncio.wait_for(pair.stub.disconnected.wait(), 10)
    async with asyncio.timeout(10):
        while pair.a.hub.in_flight() or pair.b.hub.in_flight():
            await asyncio.sleep(0.01)


async def test_a_stopped_broker_leaves_the_registry_and_a_answers_503(
    pair: Pair, make_broker: MakeBroker
) -> None:
    await pair.connector.stop(grace=1.0)
    await pair.b.stop()
    async with asyncio.timeout(EXPIRE + 5):
        while peers(pair.a):
            await asyncio.sleep(0.05)
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{pair.a.base_url}/v1/chat/completions", json=CHAT, headers=AUTH) as resp,
    ):
        # Held for --connector-wait (the model is known: it may come back), then 503.
        assert resp.status == 503
        assert (await resp.json())["error"]["code"] == "no_connector_available"


async def test_least_loaded_picks_the_idle_side(
    make_broker: MakeBroker,
    make_connector: MakeConnector,
    stub: StubLLM,
    redis_url: str,
    tmp_path: Path,
) -> None:
    store = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    a = await cluster_broker(make_broker, redis_url, store)
    b = await cluster_broker(make_broker, redis_url, store)
    await make_connector(a, stub.url, name="on-a", max_concurrency=2)
    await make_connector(b, stub.url, name="on-b", max_concurrency=2)
    async with asyncio.timeout(10):
        while len(a.hub.links) < 2 or len(b.hub.links) < 2:
            await asyncio.sleep(0.02)
    body = {**CHAT, "x_stub": {"mode": "hang"}}
    async with aiohttp.ClientSession() as session:
        # One request held on A's own connector: A's next request goes to B's idle one.
        first = asyncio.create_task(
            session.post(f"{a.base_url}/v1/chat/completions", json=body, headers=AUTH)
        )
        await asyncio.wait_for(stub.started.wait(), 10)
        local = [link for link in a.hub.links if not isinstance(link, PeerLink)]
        assert [a.hub.load(link) for link in local] == [1]
        stub.started.clear()
        second = asyncio.create_task(
            session.post(f"{a.base_url}/v1/chat/completions", json=body, headers=AUTH)
        )
        await asyncio.wait_for(stub.started.wait(), 10)
        [peer] = peers(a)
        assert a.hub.load(peer) == 1
        local_b = [link for link in b.hub.links if not isinstance(link, PeerLink)]
        assert [b.hub.load(link) for link in local_b] == [1]
        for task in (first, second):
            task.cancel()
        await asyncio.gather(first, second, return_exceptions=True)


async def test_a_request_is_held_while_the_connector_comes_back_to_b(
    pair: Pair, make_connector: MakeConnector
) -> None:
    await pair.connector.stop(grace=1.0)
    async with asyncio.timeout(10):
        while peers(pair.a):
            await asyncio.sleep(0.02)
    async with aiohttp.ClientSession() as session:
        held = asyncio.create_task(
            session.post(f"{pair.a.base_url}/v1/chat/completions", json=CHAT, headers=AUTH)
        )
        await asyncio.sleep(0.2)
        assert not held.done()  # held for --connector-wait: the model was served recently
        await make_connector(pair.b, pair.stub.url)
        resp = await asyncio.wait_for(held, 10)
        async with resp:
            assert resp.status == 200
            assert (await resp.json())["object"] == "chat.completion"


async def test_a_crashed_broker_s_connectors_expire_and_its_requests_get_503(
    make_broker: MakeBroker, redis_url: str, tmp_path: Path
) -> None:
    """A broker that stops writing its record (killed) leaves the others' routing within the
    expiry; meanwhile a request routed to it finds it unreachable, and is held then refused."""
    store = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    a = await cluster_broker(make_broker, redis_url, store, connector_wait=0.5)
    with socket.socket() as probe:  # a port nobody listens on: the dead broker's
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    await plant_record(redis_url, "dead", f"http://127.0.0.1:{dead_port}", "on-the-dead-broker")
    await wait_models(a, {"stub-model"})
    seen = time.monotonic()
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{a.base_url}/v1/chat/completions", json=CHAT, headers=AUTH) as resp,
    ):
        assert resp.status == 503
        assert (await resp.json())["error"]["code"] == "no_connector_available"
    async with asyncio.timeout(EXPIRE + 5):
        while peers(a):
            await asyncio.sleep(0.05)
    assert time.monotonic() - seen < EXPIRE + 5


async def test_without_cluster_mode_there_is_no_internal_route(make_broker: MakeBroker) -> None:
    broker = await make_broker()
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{broker.base_url}{HOP_PATH}", json=CHAT) as resp,
    ):
        assert resp.status == 404


async def test_a_hop_connection_the_other_broker_closed_while_idle_is_replaced(
    make_broker: MakeBroker,
    make_connector: MakeConnector,
    stub: StubLLM,
    redis_url: str,
    tmp_path: Path,
) -> None:
    store = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    a = await cluster_broker(make_broker, redis_url, store, idle_timeout=60.0)
    b = await cluster_broker(make_broker, redis_url, store, idle_timeout=0.2)
    await make_connector(b, stub.url)
    await wait_models(a, {"stub-model"})
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            async with session.post(
                f"{a.base_url}/v1/chat/completions", json=CHAT, headers=AUTH
            ) as resp:
                assert resp.status == 200
            await asyncio.sleep(0.5)  # B closes the hop's idle connection meanwhile


async def test_a_broker_without_the_connector_any_more_sends_the_request_back_to_be_routed(
    make_broker: MakeBroker, redis_url: str, tmp_path: Path
) -> None:
    """A's view is behind: B no longer holds the connector A forwards to. B answers with its
    error code in the hop's header; A treats it as a busy connector (another one, or the hold),
    and its client gets A's own 503, never B's header."""
    store = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    a = await cluster_broker(make_broker, redis_url, store, connector_wait=0.5)
    b = await cluster_broker(make_broker, redis_url, store)
    await plant_record(redis_url, "stale", b.base_url, "left-b-a-moment-ago")
    await wait_models(a, {"stub-model"})
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{a.base_url}/v1/chat/completions", json=CHAT, headers=AUTH) as resp,
    ):
        assert resp.status == 503
        assert "X-RemoteLLM-Hop-Error" not in resp.headers
        assert (await resp.json())["error"]["code"] == "no_connector_available"


async def test_a_large_answer_crosses_the_hop_whole_to_a_client_that_reads_late(
    pair: Pair,
) -> None:
    """Past its read-ahead the hop stops reading until the client takes its part, then goes on:
    every byte arrives, in order."""
    size = 8 * 1024 * 1024
    body = {**CHAT, "x_stub": {"mode": "big", "size": size}}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{pair.a.base_url}/v1/chat/completions", json=body, headers=AUTH) as resp,
    ):
        assert resp.status == 200
        await asyncio.sleep(0.5)  # the client reads nothing yet
        data = await resp.read()
    assert data == b"x" * size


async def test_the_hop_uses_tls_when_the_brokers_do(
    make_broker: MakeBroker,
    make_connector: MakeConnector,
    stub: StubLLM,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With TLS the internal URL is https://, and the hop verifies the other broker's
    certificate against the system's trust store (a private CA through SSL_CERT_FILE)."""
    ca_file, chain = write_private_ca(tmp_path)
    use_system_store(monkeypatch, ca_file)
    store = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    tls = {"tls_cert": chain, "tls_key": chain}
    a = await cluster_broker(make_broker, redis_url, store, **tls)
    b = await cluster_broker(make_broker, redis_url, store, **tls)
    assert b.services.cluster is not None and b.services.cluster.node.url == b.base_url
    assert b.base_url.startswith("https://")
    await make_connector(
        b.port, stub.url, broker_url=f"wss://127.0.0.1:{b.port}/relay", ca_file=str(ca_file)
    )
    await wait_models(a, {"stub-model"})
    [peer] = peers(a)
    assert peer.url.startswith("https://")
    connector = aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=str(ca_file)))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(f"{a.base_url}/v1/chat/completions", json=CHAT, headers=AUTH) as resp,
    ):
        assert resp.status == 200
        assert (await resp.json())["object"] == "chat.completion"


async def test_an_internal_url_on_its_own_port_is_listened_on_and_used(
    make_broker: MakeBroker,
    make_connector: MakeConnector,
    stub: StubLLM,
    redis_url: str,
    tmp_path: Path,
) -> None:
    """Each worker of `serve --workers N` shares the public port and has its own internal one."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        internal_port = probe.getsockname()[1]
    internal = f"http://127.0.0.1:{internal_port}"
    store = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    a = await cluster_broker(make_broker, redis_url, store)
    b = await cluster_broker(make_broker, redis_url, store, internal_url=internal)
    assert b.port != internal_port
    await make_connector(b, stub.url)
    await wait_models(a, {"stub-model"})
    [peer] = peers(a)
    assert peer.url == internal
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{a.base_url}/v1/chat/completions", json=CHAT, headers=AUTH) as resp,
    ):
        assert resp.status == 200
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{b.base_url}{HOP_PATH}", json=CHAT) as resp,
    ):
        # The hop is offered on the internal port only, never on the public one.
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "not_found"
    await b.stop()
    with socket.socket() as probe:  # the internal port is let go with the broker
        # (connections it closed may linger in TIME_WAIT; a listener would still refuse this)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", internal_port))
        probe.listen()


async def test_a_connector_found_full_on_another_broker_is_waited_for_not_given_up(
    make_broker: MakeBroker,
    make_connector: MakeConnector,
    stub: StubLLM,
    redis_url: str,
    tmp_path: Path,
) -> None:
    """B's own clients fill its one connector between two of its records: A, which still
    counted a free slot, is told busy; it waits for the slot (as for a local connector at
    capacity) instead of counting the connector out and answering 503."""
    store = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    a = await cluster_broker(make_broker, redis_url, store, connector_wait=0.5, queue_timeout=30)
    b = await cluster_broker(make_broker, redis_url, store)
    await make_connector(b, stub.url, max_concurrency=1)
    await wait_models(a, {"stub-model"})
    paced = {**CHAT, "stream": True, "x_stub": {"mode": "events", "events": 4, "interval": 0.3}}
    async with aiohttp.ClientSession() as session:

        async def ask(url: str, body: dict[str, Any]) -> int:
            async with session.post(f"{url}/v1/chat/completions", json=body, headers=AUTH) as r:
                await r.read()
                return r.status

        on_b = asyncio.create_task(ask(b.base_url, paced))
        await asyncio.wait_for(stub.started.wait(), 10)
        statuses = await asyncio.gather(ask(a.base_url, CHAT), ask(a.base_url, CHAT))
        assert await on_b == 200
    assert statuses == [200, 200]
    assert len(stub.seen) == 3
