"""/livez, /readyz and /health: what a load balancer, systemd and a person are told."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import aiohttp

from broker.server import BrokerServer
from shared import protocol as p
from tests.broker.edge.test_express import post_bytes, read_response
from tests.broker.relay.test_misbehaving_connectors import FakeConnector, fakes
from tests.broker.stream.test_callbacktrip import one_fake, send, started
from tests.conftest import MakeBroker, Relay

__all__ = ["fakes"]


async def get(broker: BrokerServer, path: str) -> tuple[int, dict[str, str], Any]:
    async with aiohttp.ClientSession() as session, session.get(broker.base_url + path) as resp:
        return resp.status, dict(resp.headers), await resp.json()


async def test_a_ready_broker_is_alive_and_ready(make_broker: MakeBroker) -> None:
    broker = await make_broker()
    assert (await get(broker, "/livez"))[::2] == (200, {"status": "alive"})
    status, headers, body = await get(broker, "/readyz")
    assert (status, body) == (200, {"status": "ready"})
    assert headers["Cache-Control"] == "no-store"


async def test_health_holds_counts_and_names_no_model(
    relay: Relay, fakes: list[FakeConnector]
) -> None:
    fake = await FakeConnector.attach(relay.broker, ("stub-model", "secret-model"))
    fakes.append(fake)
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{relay.broker.base_url}/health") as resp,
    ):
        text = await resp.text()
    assert resp.status == 200
    assert json.loads(text) == {
        "status": "ok",
        "connectors": 2,
        "models": 2,
        "in_flight": 0,
        "pid": os.getpid(),
    }
    assert "stub-model" not in text and "secret-model" not in text


async def test_a_store_that_does_not_answer_makes_the_broker_unready(
    make_broker: MakeBroker,
) -> None:
    broker = await make_broker()

    async def down() -> None:
        raise OSError("database is locked")

    broker.services.store.ping = down  # type: ignore[method-assign]
    assert (await get(broker, "/readyz"))[::2] == (503, {"status": "store_unavailable"})
    assert (await get(broker, "/livez"))[0] == 200


async def ask(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str
) -> tuple[int, Any]:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: broker\r\n\r\n".encode())
    status, _, body = await read_response(reader)
    return status, json.loads(body)


async def test_a_draining_broker_is_alive_but_not_ready(
    make_broker: MakeBroker, fakes: list[FakeConnector]
) -> None:
    broker, fake, _reader, writer = await one_fake(make_broker, fakes)
    # A load balancer's kept-alive connection, open before the drain closes the listener.
    probe_reader, probe_writer = await asyncio.open_connection("127.0.0.1", broker.port)
    try:
        assert await ask(probe_reader, probe_writer, "/readyz") == (200, {"status": "ready"})
        writer.write(post_bytes())
        head = await fake.next_request()
        await send(fake, *started(head.stream_id))
        stopping = asyncio.create_task(broker.stop())
        async with asyncio.timeout(10):
            while (await ask(probe_reader, probe_writer, "/health"))[1]["status"] != "draining":
                await asyncio.sleep(0.01)
        assert await ask(probe_reader, probe_writer, "/readyz") == (503, {"status": "draining"})
        assert await ask(probe_reader, probe_writer, "/livez") == (200, {"status": "alive"})
        assert not stopping.done()
        await send(fake, p.End(head.stream_id))
        await asyncio.wait_for(stopping, 10)
    finally:
        writer.close()
        probe_writer.close()
