"""Every endpoint, discovery fallbacks, and peers that misbehave on either side."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import openai
import pytest
from aiohttp import web
from websockets.asyncio.client import ClientConnection, connect

from broker.server import BrokerServer
from connector_app.core.discovery import detect_local_server, discover_models
from connector_app.core.llm import LocalLLM
from connector_app.core.status import LinkState
from shared import protocol as p
from shared.endpoints import MODEL_ENDPOINTS
from tests.broker.api.test_errors import free_port
from tests.conftest import CONNECTOR_TOKEN, MakeBroker, MakeConnector, Relay, wait_models
from tests.e2e.test_relay import AUTH, CHAT, post, sdk
from tests.stub_llm import ECHOED, StubLLM


@pytest.mark.parametrize("path", [p for p in MODEL_ENDPOINTS if p in ECHOED])
async def test_every_model_endpoint_is_relayed_unchanged(relay: Relay, path: str) -> None:
    body = {"model": "stub-model", "input": "hello", "prompt": "hi"}
    status, _, relayed = await post(f"{relay.broker.base_url}{path}", body)
    assert status == 200
    assert json.loads(relayed) == {"path": path, "body": body}


async def test_every_model_endpoint_is_covered_by_some_test() -> None:
    covered = set(ECHOED) | {"/v1/chat/completions", "/v1/messages", "/api/chat"}
    assert covered == set(MODEL_ENDPOINTS)


async def test_discovery_falls_back_to_ollama_tags(stub: StubLLM) -> None:
    stub.openai_models = False
    stub.models = ["llama3:8b", "qwen2.5:7b"]
    llm = LocalLLM(stub.url)
    try:
        assert await discover_models(llm) == ["llama3:8b", "qwen2.5:7b"]
    finally:
        await llm.close()


async def test_detection_finds_the_first_answering_server(stub: StubLLM) -> None:
    port = int(stub.url.rsplit(":", 1)[1])
    servers = [("Nothing here", free_port()), ("Stub", port)]
    assert await detect_local_server(servers=servers) == ("Stub", stub.url)
    assert await detect_local_server(servers=[("Nothing here", free_port())]) is None


async def test_failure_in_the_middle_of_an_event_still_reaches_the_client_as_an_error(
    relay: Relay,
) -> None:
    async with sdk(relay, max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="stub-model", messages=[], stream=True, extra_body={"x_stub": {"mode": "partial"}}
        )
        with pytest.raises(openai.APIError) as caught:
            async for _ in stream:
                pass
    assert "mid-response" in caught.value.message


# -- a hand-driven connector ---------------------------------------------------


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


# -- a hand-driven broker ------------------------------------------------------


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
        await connector.wait_state(LinkState.CONNECTED)
        await connector.wait_state(LinkState.RECONNECTING)
        assert "unknown frame type 0xee" in (connector.connector.status.last_error or "")
