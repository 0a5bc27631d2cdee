"""The relay client on its link, against a hand-written broker end: what the operator sees."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from connector_app.core.backoff import Backoff
from connector_app.core.client import RelayClient
from connector_app.core.llm import LocalLLM
from connector_app.core.status import LinkState, StatusBoard
from shared import protocol as p
from shared import websocket as ws
from tests.connector_app.core.wsserver import WsServer


@pytest.fixture
async def server() -> AsyncIterator[WsServer]:
    broker = WsServer()
    await broker.start()
    yield broker
    await broker.stop()


@pytest.fixture
async def llm() -> AsyncIterator[LocalLLM]:
    local = LocalLLM("http://127.0.0.1:9")
    yield local
    await local.close()


async def run_client(
    url: str, board: StatusBoard, llm: LocalLLM, backoff: Backoff | None = None
) -> tuple[RelayClient, asyncio.Task[None]]:
    client = RelayClient(
        url=url,
        token="t",
        name="link-test",
        max_concurrency=1,
        llm=llm,
        board=board,
        backoff=backoff or Backoff(base=5, cap=5),
    )
    return client, asyncio.create_task(client.run())


async def until(board: StatusBoard, state: LinkState) -> None:
    async with asyncio.timeout(10):
        while board.status.state is not state:
            await asyncio.sleep(0.01)


async def welcome(server: WsServer) -> p.Hello:
    hello = await server.next_event()
    assert isinstance(hello, ws.Message)
    (frame,) = p.decode(hello.data)
    assert isinstance(frame, p.Hello)
    server.send(ws.OP_BINARY, p.encode(p.Welcome(p.PROTOCOL_VERSION, p.DEFAULT_WINDOW)))
    return frame


async def test_a_protocol_error_from_the_broker_closes_the_link_with_1002(
    server: WsServer, llm: LocalLLM
) -> None:
    board = StatusBoard()
    client, task = await run_client(server.url, board, llm)
    try:
        hello = await welcome(server)
        assert hello.name == "link-test"
        await until(board, LinkState.CONNECTED)
        server.send(ws.OP_BINARY, p.encode(p.Hello(p.PROTOCOL_VERSION, "not from a broker", (), 1)))
        closing = await server.next_event()
        assert isinstance(closing, ws.Close)
        assert closing.code == p.CLOSE_PROTOCOL_ERROR
        await until(board, LinkState.RECONNECTING)
        assert (board.status.last_error or "").startswith("protocol error")
        assert not board.status.fatal
    finally:
        await client.stop(0)
        await asyncio.wait_for(task, 10)


async def test_stopping_sends_a_going_away_close(server: WsServer, llm: LocalLLM) -> None:
    board = StatusBoard()
    client, task = await run_client(server.url, board, llm)
    await welcome(server)
    await until(board, LinkState.CONNECTED)
    stopping = asyncio.create_task(client.stop(0))
    assert await server.next_event() == ws.Close(p.CLOSE_GOING_AWAY, "connector shutting down")
    server.send_close(p.CLOSE_GOING_AWAY, "")
    await asyncio.wait_for(stopping, 10)
    await asyncio.wait_for(task, 10)
    assert board.status.state is LinkState.DISCONNECTED


async def test_a_refused_token_is_shown_as_fatal(llm: LocalLLM) -> None:
    refusing = WsServer(status=401)
    await refusing.start()
    board = StatusBoard()
    client, task = await run_client(refusing.url, board, llm)
    try:
        async with asyncio.timeout(10):
            while board.status.last_error is None:
                await asyncio.sleep(0.01)
        assert "rejected the connector token (HTTP 401)" in board.status.last_error
        assert board.status.fatal
    finally:
        await client.stop(0)
        await asyncio.wait_for(task, 10)
        await refusing.stop()


class Ceilings:
    """Stands in for random.uniform: records each ceiling and returns 0, so redials are at once."""

    def __init__(self) -> None:
        self.seen: list[float] = []

    def __call__(self, low: float, high: float) -> float:
        self.seen.append(high)
        return low


async def ceilings_while_failing(url: str, llm: LocalLLM, dials: int) -> list[float]:
    """The backoff ceilings a client draws from over its first `dials` failed dials to `url`."""
    ceilings = Ceilings()
    client, task = await run_client(url, StatusBoard(), llm, Backoff(rand=ceilings))
    try:
        async with asyncio.timeout(10):
            while len(ceilings.seen) < dials:
                await asyncio.sleep(0.01)
    finally:
        await client.stop(0)
        await asyncio.wait_for(task, 10)
    return ceilings.seen[:dials]


async def test_a_broker_that_is_down_is_redialled_within_the_reconnect_window(
    llm: LocalLLM,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port now: each dial is refused, a failure the broker's
    # return fixes, so the ceiling stops at the window instead of doubling to 30 s.
    seen = await ceilings_while_failing(f"ws://127.0.0.1:{port}/relay", llm, dials=8)
    assert seen == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]


async def test_a_refused_token_is_retried_at_the_slow_ceiling(llm: LocalLLM) -> None:
    refusing = WsServer(status=401)
    await refusing.start()
    try:
        seen = await ceilings_while_failing(refusing.url, llm, dials=8)
    finally:
        await refusing.stop()
    assert seen == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


async def next_frames(server: WsServer) -> list[p.Frame]:
    message = await server.next_event(ws.Message)
    assert isinstance(message, ws.Message)
    return p.decode(message.data)


@pytest.mark.parametrize("features", [(), (p.FEATURE_BLOCKED,)])
async def test_the_blocked_users_go_in_the_hello_and_to_a_broker_that_takes_them(
    server: WsServer, llm: LocalLLM, features: tuple[str, ...]
) -> None:
    board = StatusBoard()
    client, task = await run_client(server.url, board, llm)
    client.set_blocked(frozenset({"42", "7"}))
    try:
        hello = await server.next_event()
        assert isinstance(hello, ws.Message)
        (frame,) = p.decode(hello.data)
        assert isinstance(frame, p.Hello) and frame.blocked_users == ("42", "7")
        welcome = p.Welcome(p.PROTOCOL_VERSION, p.DEFAULT_WINDOW, features)
        server.send(ws.OP_BINARY, p.encode(welcome))
        await until(board, LinkState.CONNECTED)
        client.set_blocked(frozenset({"7"}))
        client.set_models(("later",))  # a frame that always goes: it shows what came before
        frames = await next_frames(server)
        if features:
            assert frames == [p.Blocked(("7",)), p.ModelsUpdate(("later",))]
        else:  # an older broker would take BLOCKED for a protocol error: none is sent
            assert frames == [p.ModelsUpdate(("later",))]
    finally:
        await client.stop(0)
        await asyncio.wait_for(task, 10)
