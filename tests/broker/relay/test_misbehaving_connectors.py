"""Connectors that misbehave: a wrong token or version, garbage, refusals, junk, silence."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from broker.server import BrokerServer
from shared import protocol as p
from tests.conftest import CONNECTOR_TOKEN, MakeBroker, Relay, wait_models
from tests.e2e.test_relay import AUTH, CHAT, post


class FakeConnector:
    """A connector speaking the protocol by hand, to misbehave on purpose."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.heads: list[p.RequestHead] = []
        self._pending: list[p.RequestHead] = []

    @classmethod
    async def attach(cls, broker: BrokerServer, models: tuple[str, ...]) -> FakeConnector:
        ws = await connect(
            f"ws://127.0.0.1:{broker.port}/relay",
            additional_headers={"Authorization": f"Bearer {CONNECTOR_TOKEN}"},
            close_timeout=1,
        )
        await ws.send(p.encode(p.Hello(p.PROTOCOL_VERSION, "fake", models, 8)))
        assert isinstance(p.decode(await ws.recv())[0], p.Welcome)
        return cls(ws)

    async def next_request(self) -> p.RequestHead:
        """The next request head; one message may carry several (the broker batches)."""
        while not self._pending:
            for frame in p.decode(await self.ws.recv()):  # type: ignore[arg-type]
                if isinstance(frame, p.RequestHead):
                    self.heads.append(frame)
                    self._pending.append(frame)
        return self._pending.pop(0)


@pytest.fixture
async def fakes() -> AsyncIterator[list[FakeConnector]]:
    made: list[FakeConnector] = []
    yield made
    for fake in made:
        await fake.ws.close()


async def test_a_connector_declining_a_request_sends_it_to_another(
    relay: Relay, fakes: list[FakeConnector]
) -> None:
    fake = await FakeConnector.attach(relay.broker, ("stub-model",))
    fakes.append(fake)

    async def refuse_all() -> None:
        while True:
            head = await fake.next_request()
            await fake.ws.send(p.encode(p.Error(head.stream_id, "over_capacity", "busy")))

    refuser = asyncio.create_task(refuse_all())
    try:
        results = await asyncio.gather(
            *(post(f"{relay.base_url}/chat/completions", CHAT) for _ in range(4))
        )
    finally:
        refuser.cancel()
    assert [status for status, _, _ in results] == [200] * 4
    assert fake.heads, "the fake connector was never chosen, so nothing was tested"
    assert len(relay.stub.seen) == 4


async def test_a_bodiless_status_carries_no_bytes_to_the_client(
    make_broker: MakeBroker, fakes: list[FakeConnector]
) -> None:
    broker = await make_broker()
    fake = await FakeConnector.attach(broker, ("stub-model",))
    fakes.append(fake)

    async def answer_204_with_junk() -> None:
        for _ in range(2):
            sid = (await fake.next_request()).stream_id
            frames = [p.ResponseHead(sid, 204, ()), p.ResponseBody(sid, b"junk"), p.End(sid)]
            await fake.ws.send(p.encode_many(frames))

    answering = asyncio.create_task(answer_204_with_junk())
    async with aiohttp.ClientSession() as session:  # one keep-alive connection for both
        for _ in range(2):
            url = f"{broker.base_url}/v1/chat/completions"
            async with session.post(url, json=CHAT, headers=AUTH) as resp:
                assert resp.status == 204
                assert await resp.read() == b""
    await answering


async def test_a_head_with_an_injected_header_closes_that_link(
    make_broker: MakeBroker, fakes: list[FakeConnector]
) -> None:
    broker = await make_broker(connector_wait=0.2)
    fake = await FakeConnector.attach(broker, ("stub-model",))
    fakes.append(fake)

    async def inject() -> None:
        sid = (await fake.next_request()).stream_id
        evil = {"status": 200, "headers": [["X-Evil", "a\r\nSet-Cookie: stolen=1"]]}
        payload = json.dumps(evil).encode()
        await fake.ws.send(p.HEADER.pack(p.FrameType.RESPONSE_HEAD, sid, len(payload)) + payload)

    injecting = asyncio.create_task(inject())
    status, headers, _ = await post(f"{broker.base_url}/v1/chat/completions", CHAT)
    await injecting
    assert status == 503  # the link was dropped before answering; no other connector
    assert "Set-Cookie" not in headers
    assert broker.hub.links == []


async def test_the_broker_drops_a_connector_that_stops_answering_pings(
    make_broker: MakeBroker, fakes: list[FakeConnector]
) -> None:
    broker = await make_broker(heartbeat=0.2)
    fake = await FakeConnector.attach(broker, ("silent-model",))
    fakes.append(fake)
    assert len(broker.hub.links) == 1
    fake.ws.transport.pause_reading()  # a half-open link: nothing comes back
    await wait_models(broker, set())


async def test_wrong_connector_token_is_refused_before_the_upgrade(relay: Relay) -> None:
    url = f"{relay.broker.base_url}/relay"
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await session.ws_connect(url, headers={"Authorization": "Bearer wrong"})
    assert caught.value.status == 401


def raw_link(relay: Relay) -> connect:
    url = f"ws://127.0.0.1:{relay.broker.port}/relay"
    return connect(url, additional_headers={"Authorization": f"Bearer {CONNECTOR_TOKEN}"})


async def test_incompatible_protocol_version_is_refused_with_a_reason(relay: Relay) -> None:
    async with raw_link(relay) as ws:
        await ws.send(p.encode(p.Hello(99, "future", ("m",), 1)))
        with pytest.raises(ConnectionClosed) as caught:
            await ws.recv()
    assert caught.value.rcvd is not None
    assert caught.value.rcvd.code == p.CLOSE_UNSUPPORTED_VERSION
    assert "version 99" in caught.value.rcvd.reason
    assert set(relay.broker.hub.models()) == {"stub-model"}


@pytest.mark.parametrize(
    "garbage",
    [b"\x01\x00", b"\xff\x00\x00\x00\x01\x00\x00\x00\x00", p.encode(p.Cancel(1)), b"text"],
    ids=["truncated", "unknown-type", "wrong-direction", "text-message"],
)
async def test_malformed_input_closes_the_link_cleanly(relay: Relay, garbage: bytes) -> None:
    async with raw_link(relay) as ws:
        await ws.send(p.encode(p.Hello(p.PROTOCOL_VERSION, "bad", ("evil",), 1)))
        assert isinstance(p.decode(await ws.recv())[0], p.Welcome)
        await ws.send(garbage.decode() if garbage == b"text" else garbage)
        with pytest.raises(ConnectionClosed) as caught:
            await asyncio.wait_for(ws.recv(), 10)
    assert caught.value.rcvd is not None
    assert caught.value.rcvd.code == p.CLOSE_PROTOCOL_ERROR
    # The broker is unharmed and still serves the honest connector.
    await wait_models(relay.broker, {"stub-model"})
    status, _, _ = await post(f"{relay.base_url}/chat/completions", CHAT)
    assert status == 200
