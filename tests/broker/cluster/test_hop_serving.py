"""The internal hop's receiving end serves from its own connectors only, and never holds."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from broker.cluster import hopauth
from broker.cluster.forwarding import HOP_PATH, PeerLink
from broker.server import BrokerServer
from broker.stream.machine import HOP_ERROR
from tests.broker.cluster.test_forwarding import AUTH, CHAT, cluster_broker
from tests.conftest import MakeBroker, MakeConnector, wait_models
from tests.stub_llm import StubLLM

SECRET = "c" * 40
HANG = {**CHAT, "x_stub": {"mode": "hang"}}


@dataclass
class BusyB:
    b: BrokerServer
    stub: StubLLM


@pytest.fixture
async def busy_b(
    make_broker: MakeBroker,
    make_connector: MakeConnector,
    stub: StubLLM,
    redis_url: str,
    tmp_path: Path,
) -> AsyncIterator[BusyB]:
    """A broker whose one connector (one slot) is busy with a request of its own client."""
    store = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    b = await cluster_broker(make_broker, redis_url, store, queue_timeout=60.0)
    await make_connector(b, stub.url, max_concurrency=1)
    await wait_models(b, {"stub-model"})
    async with aiohttp.ClientSession() as session:
        held = asyncio.create_task(
            session.post(f"{b.base_url}/v1/chat/completions", json=HANG, headers=AUTH)
        )
        await asyncio.wait_for(stub.started.wait(), 10)
        yield BusyB(b, stub)
        held.cancel()
        await asyncio.gather(held, return_exceptions=True)


async def hop(broker: BrokerServer) -> tuple[int, str | None]:
    """A request forwarded to `broker` as another broker of the cluster would: its status and
    hop error."""
    target = "/v1/chat/completions"
    principal = hopauth.encode_user(("", ""))
    body = json.dumps(CHAT).encode()
    node = broker.services.cluster.node.id
    signature = hopauth.sign(SECRET.encode(), node, target, "req-hop", principal, body, time.time())
    headers = {
        hopauth.HOP: signature,
        hopauth.PRINCIPAL: principal,
        hopauth.TARGET: target,
        "X-Request-ID": "req-hop",
        "Content-Type": "application/json",
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{broker.base_url}{HOP_PATH}", data=body, headers=headers) as resp,
    ):
        await resp.read()
        return resp.status, resp.headers.get(HOP_ERROR)


async def test_a_hop_is_answered_at_once_when_the_connectors_are_busy(busy_b: BusyB) -> None:
    """The forwarding broker holds the request (or tries another connector), never this one:
    within --queue-timeout (a minute here) the answer is the busy code, not a hold."""
    status, code = await asyncio.wait_for(hop(busy_b.b), 10)
    assert (status, code) == (503, "no_connector_available")
    assert len(busy_b.stub.seen) == 1  # the busy connector's own request only


async def test_a_hop_never_takes_a_connector_of_another_broker(busy_b: BusyB) -> None:
    """A connector attached elsewhere that this broker's hub lists (whenever it came) is not
    used for a forwarded request: no loops, whatever the peers were as the hop arrived."""
    accepted: list[asyncio.StreamWriter] = []

    async def trap(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(trap, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cluster = busy_b.b.services.cluster
    assert cluster is not None
    elsewhere = PeerLink(cluster.forwarder, "elsewhere", f"http://127.0.0.1:{port}", "1")
    elsewhere.name = "attached-elsewhere"
    elsewhere.models = frozenset({"stub-model"})
    elsewhere.max_concurrency = 4
    async with server:
        busy_b.b.hub.register(elsewhere)
        try:
            status, code = await asyncio.wait_for(hop(busy_b.b), 10)
        finally:
            busy_b.b.hub.unregister(elsewhere)
            for writer in accepted:
                writer.close()
        assert (status, code) == (503, "no_connector_available")
        assert accepted == []
