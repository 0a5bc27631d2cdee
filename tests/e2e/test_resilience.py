"""Several connectors, dropped links, restarts, refused peers and slow clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from broker.relay.link import ConnectorLink
from connector_app.core.status import LinkState, Status
from shared import protocol as p
from tests.broker.api.test_errors import free_port
from tests.conftest import MakeBroker, MakeConnector, Relay, wait_models
from tests.e2e.test_relay import AUTH, CHAT, post
from tests.stub_llm import StubLLM


@pytest.fixture
async def second_stub() -> AsyncIterator[StubLLM]:
    llm = StubLLM()
    await llm.start()
    yield llm
    await llm.stop()


async def test_two_connectors_share_one_model_least_loaded_first(
    stub: StubLLM, second_stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector
) -> None:
    broker = await make_broker()
    await make_connector(broker, stub.url, name="a")
    await make_connector(broker, second_stub.url, name="b")
    async with asyncio.timeout(10):
        while len(broker.hub.links) < 2:
            await asyncio.sleep(0.01)
    hang = {**CHAT, "x_stub": {"mode": "hang"}}
    first = asyncio.create_task(post(f"{broker.base_url}/v1/chat/completions", hang))
    second = asyncio.create_task(post(f"{broker.base_url}/v1/chat/completions", hang))
    # Each connector got one of the two requests: the second went to the idle one.
    await asyncio.wait_for(stub.started.wait(), 10)
    await asyncio.wait_for(second_stub.started.wait(), 10)
    assert len(stub.seen) == len(second_stub.seen) == 1
    first.cancel()
    second.cancel()


async def test_request_moves_to_another_connector_when_the_first_drops_before_answering(
    stub: StubLLM, second_stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector
) -> None:
    broker = await make_broker()
    stub.override = {"mode": "hang"}
    doomed = await make_connector(broker, stub.url, name="doomed")
    await wait_models(broker, {"stub-model"})
    request = asyncio.create_task(post(f"{broker.base_url}/v1/chat/completions", CHAT))
    await asyncio.wait_for(stub.started.wait(), 10)
    await make_connector(broker, second_stub.url, name="healthy")
    async with asyncio.timeout(10):
        while len(broker.hub.links) < 2:
            await asyncio.sleep(0.01)
    doomed.task.cancel()  # the link drops without a goodbye
    status, _, body = await asyncio.wait_for(request, 10)
    assert status == 200
    assert json.loads(body)["choices"][0]["message"]["content"] == "Hello from the stub."
    assert len(second_stub.seen) == 1


async def test_request_is_held_while_a_connector_restarts(
    stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector
) -> None:
    broker = await make_broker(connector_wait=10)
    first = await make_connector(broker, stub.url)
    await wait_models(broker, {"stub-model"})
    await first.stop()
    await wait_models(broker, set())
    request = asyncio.create_task(post(f"{broker.base_url}/v1/chat/completions", CHAT))
    await asyncio.sleep(0.2)
    assert not request.done()
    await make_connector(broker, stub.url)
    status, _, _ = await asyncio.wait_for(request, 10)
    assert status == 200


async def test_connector_reconnects_by_itself_after_a_broker_restart(
    stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector
) -> None:
    port = free_port()
    broker = await make_broker(port=port)
    connector = await make_connector(port, stub.url)
    await wait_models(broker, {"stub-model"})
    await broker.stop()
    await connector.wait_state(LinkState.RECONNECTING)
    restarted = await make_broker(port=port)
    await wait_models(restarted, {"stub-model"})
    await connector.wait_state(LinkState.CONNECTED)
    status, _, _ = await post(f"{restarted.base_url}/v1/chat/completions", CHAT)
    assert status == 200


async def test_connector_keeps_retrying_while_the_broker_is_down(
    stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector
) -> None:
    port = free_port()
    connector = await make_connector(port, stub.url)
    seen: list[Status] = []
    connector.connector.board.subscribe(seen.append)
    await connector.wait_state(LinkState.RECONNECTING)
    # Every status it published while waiting to retry says why and when (reading the status
    # once could land in the next attempt, which clears retry_in, when the delay is short).
    async with asyncio.timeout(10):
        while not any(s.retry_in is not None for s in seen):
            await asyncio.sleep(0.01)
    waiting = [s for s in seen if s.retry_in is not None]
    assert all(s.state is LinkState.RECONNECTING for s in waiting)
    assert all(s.last_error and "cannot reach the broker" in s.last_error for s in waiting)
    broker = await make_broker(port=port)
    await wait_models(broker, {"stub-model"})


async def test_models_discovered_later_are_pushed_to_the_broker(
    stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector
) -> None:
    broker = await make_broker()
    await make_connector(broker, stub.url, discovery_interval=0.1)
    await wait_models(broker, {"stub-model"})
    stub.models = ["stub-model", "new-model"]
    await wait_models(broker, {"stub-model", "new-model"})


async def test_half_open_link_is_detected_by_the_heartbeat(
    stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector
) -> None:
    """A link that silently stops carrying bytes is dropped and re-dialled."""
    broker = await make_broker()
    proxy = FreezableProxy(broker.port)
    await proxy.start()
    try:
        connector = await make_connector(proxy.port, stub.url, heartbeat=0.3)
        await connector.wait_state(LinkState.CONNECTED)
        proxy.frozen = True
        await connector.wait_state(LinkState.RECONNECTING)
        proxy.frozen = False
        await connector.wait_state(LinkState.CONNECTED)
    finally:
        await proxy.stop()


async def test_connector_with_a_wrong_token_says_so(
    stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector
) -> None:
    broker = await make_broker()
    connector = await make_connector(broker, stub.url, broker_token="not-the-token")
    await connector.wait_state(LinkState.RECONNECTING)
    assert "rejected the connector token" in (connector.connector.status.last_error or "")


async def test_slow_client_is_held_to_one_window_and_does_not_stall_others(relay: Relay) -> None:
    # Far more than the window and the loopback socket buffers (autotuned to megabytes) hold.
    size = 64 * 1024 * 1024
    big = {**CHAT, "x_stub": {"mode": "big", "size": size}}
    async with aiohttp.ClientSession(read_bufsize=2**16) as session:
        slow = await session.post(f"{relay.base_url}/chat/completions", json=big, headers=AUTH)
        await slow.content.readexactly(1024)  # then stop reading
        # Other streams on the same link still flow while the slow one is parked.
        for _ in range(3):
            status, _, _ = await post(f"{relay.base_url}/chat/completions", CHAT)
            assert status == 200
        (link,) = relay.broker.hub.links
        assert isinstance(link, ConnectorLink)
        (exchange,) = link._streams.values()
        async with asyncio.timeout(10):
            # Parked: the broker holds bytes it cannot write, and never more than one window.
            while exchange.credit.outstanding == 0:
                await asyncio.sleep(0.01)
        assert exchange.credit.outstanding <= p.DEFAULT_WINDOW
        rest = await slow.content.read()
        assert len(rest) + 1024 == size
        slow.close()


class FreezableProxy:
    """A loopback TCP proxy that can stop forwarding without closing anything."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.frozen = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                while self.frozen:
                    await asyncio.sleep(0.05)
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.frozen:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [writer, up_writer]
        for task in (
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
