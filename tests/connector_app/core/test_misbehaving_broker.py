"""A broker that misbehaves on purpose: a bad welcome, off-endpoint requests, garbage frames."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from connector_app.core.status import LinkState
from shared import protocol as p
from tests.conftest import MakeConnector
from tests.stub_llm import StubLLM


class FakeBroker:
    """A broker endpoint that answers HELLO however the test says, then sends frames."""

    def __init__(self, welcome: bytes, then: bytes = b"") -> None:
        self.welcome = welcome
        self.then = then
        self.received: list[p.Frame] = []
        self.runner: web.AppRunner | None = None
        self.port = 0
        self.sockets: list[web.WebSocketResponse] = []

    async def _relay(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sockets.append(ws)
        await ws.receive()
        await ws.send_bytes(self.welcome)
        if self.then:
            await ws.send_bytes(self.then)
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.BINARY:
                self.received.extend(p.decode(msg.data))
        return ws

    async def __aenter__(self) -> FakeBroker:
        app = web.Application()
        app.router.add_get("/relay", self._relay)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = self.runner.addresses[0][1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.runner is not None
        for ws in self.sockets:
            await ws.close()
        await self.runner.cleanup()


WELCOME = p.encode(p.Welcome(p.PROTOCOL_VERSION, p.DEFAULT_WINDOW))


@pytest.mark.parametrize(
    ("welcome", "mentions"),
    [
        (p.encode(p.Welcome(2, p.DEFAULT_WINDOW)), "protocol version 2"),
        (b"\x02\x00", "protocol error"),
        (p.encode(p.Hello(1, "x", (), 1)), "welcome"),
    ],
    ids=["future-version", "garbage", "wrong-frame"],
)
async def test_connector_refuses_a_bad_welcome_and_says_why(
    stub: StubLLM, make_connector: MakeConnector, welcome: bytes, mentions: str
) -> None:
    async with FakeBroker(welcome) as fake:
        connector = await make_connector(fake.port, stub.url)
        await connector.wait_state(LinkState.RECONNECTING)
        assert mentions in (connector.connector.status.last_error or "")


async def test_connector_serves_only_model_endpoints(
    stub: StubLLM, make_connector: MakeConnector
) -> None:
    head = p.RequestHead(1, "DELETE", "/api/delete", (), "req-evil")
    pull = p.RequestHead(2, "POST", "/api/pull", (), "req-evil-2")
    frames = p.encode_many([head, p.End(1), pull, p.End(2)])
    async with FakeBroker(WELCOME, then=frames) as fake:
        await make_connector(fake.port, stub.url)
        async with asyncio.timeout(10):
            while len([f for f in fake.received if isinstance(f, p.Error)]) < 2:
                await asyncio.sleep(0.01)
    errors = [f for f in fake.received if isinstance(f, p.Error)]
    assert {(e.stream_id, e.code) for e in errors} == {(1, "forbidden"), (2, "forbidden")}
    assert stub.seen == []


async def test_connector_closes_the_link_on_garbage_from_the_broker(
    stub: StubLLM, make_connector: MakeConnector
) -> None:
    async with FakeBroker(WELCOME, then=b"\xee\x00\x00\x00\x01\x00\x00\x00\x00") as fake:
        connector = await make_connector(fake.port, stub.url)
        # The connected state lasts only until the garbage is read (polling may miss it):
        # wait for what it leaves behind, the reason the link was closed.
        async with asyncio.timeout(10):
            while "unknown frame type 0xee" not in (connector.connector.status.last_error or ""):
                await asyncio.sleep(0.01)
            while not fake.sockets[0].closed:
                await asyncio.sleep(0.01)
