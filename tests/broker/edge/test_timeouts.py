"""Slow and stalled peers: every wait on a client is bounded, on both lanes.

A request whose first line starts `POST /` with a Content-Length takes the express lane; a
GET, or the same POST sent chunked, is served by aiohttp. Each test sets small timeouts and
asserts what happens (closed, served), never how long it took.
"""

from __future__ import annotations

import asyncio
import json
import resource
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from broker.server import BrokerServer
from tests.broker.edge.test_express import CHAT, CHAT_BODY, Client, connect, post_bytes
from tests.conftest import MakeBroker, MakeConnector, wait_models
from tests.stub_llm import StubLLM

__all__ = ["connect"]  # a fixture, used by name

LANES = ["express", "aiohttp"]

PARTIAL_HEADS = (
    b"POS",  # the front has not chosen a lane yet
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: b",  # the express lane
    b"GET /v1/models HTTP/1.1\r\nHost: b",  # aiohttp
    b"GET /relay HTTP/1.1\r\nHost: b",  # the relay's handshake
)


async def until(condition: Any, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def sees_eof(client: Client, timeout: float = 30) -> bool:
    """Whether the broker closed the connection (what it reads before the EOF is ignored)."""
    try:
        async with asyncio.timeout(timeout):
            while await client.reader.read(65536):
                pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


@pytest.fixture
def room_for_2000_sockets() -> Iterator[None]:
    """Both ends of a thousand connections live in this process: raise the soft limit on open
    files if it is below what they need (1,024 on many systems), and put it back after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 4096
    if soft != resource.RLIM_INFINITY and soft < need:
        assert hard == resource.RLIM_INFINITY or hard >= need, (
            f"this test needs {need} open files; the hard limit here is {hard} (ulimit -Hn)"
        )
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.usefixtures("room_for_2000_sockets")
async def test_a_thousand_half_open_connections_do_not_stop_requests_and_are_each_closed(
    stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector, connect: Any
) -> None:
    broker = await make_broker(head_timeout=2.0, idle_timeout=2.0)
    await make_connector(broker, stub.url)
    await wait_models(broker, {"stub-model"})
    half_open: list[Client] = []
    for i in range(1000):
        client = await connect(broker)
        client.writer.write(PARTIAL_HEADS[i % len(PARTIAL_HEADS)])
        half_open.append(client)
    for raw in (post_bytes(CHAT), post_bytes(CHAT, chunked=True)):
        status, _, body = await (await connect(broker)).ask(raw)
        assert (status, body) == (200, CHAT_BODY)
    closed = await asyncio.gather(*(sees_eof(client) for client in half_open))
    assert all(closed)


@pytest.mark.parametrize("lane", LANES)
async def test_a_head_that_stops_after_a_first_request_is_closed(
    make_broker: MakeBroker, connect: Any, lane: str
) -> None:
    # aiohttp bounds an idle connection and a partial head with one timer: the idle timeout.
    broker = await make_broker(head_timeout=0.3, idle_timeout=0.3)
    client = await connect(broker)
    status, _, _ = await client.ask(post_bytes({"model": "nobody"}, chunked=lane == "aiohttp"))
    assert status == 503
    client.writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: b")  # and nothing more
    assert await sees_eof(client, 10)


@pytest.mark.parametrize("lane", LANES)
async def test_an_idle_kept_alive_connection_is_closed(
    make_broker: MakeBroker, connect: Any, lane: str
) -> None:
    broker = await make_broker(idle_timeout=0.3)
    client = await connect(broker)
    if lane == "express":
        status, _, _ = await client.ask(post_bytes({"model": "nobody"}))
        assert status == 503
    else:
        status, _, _ = await client.ask(b"GET /health HTTP/1.1\r\nHost: b\r\n\r\n")
        assert status == 200
    assert await sees_eof(client, 10)


@pytest.mark.parametrize("lane", LANES)
async def test_a_body_that_stops_midway_is_closed_and_counted(
    stub: StubLLM,
    make_broker: MakeBroker,
    make_connector: MakeConnector,
    connect: Any,
    lane: str,
) -> None:
    broker = await make_broker(body_timeout=0.3)
    await make_connector(broker, stub.url)
    await wait_models(broker, {"stub-model"})
    client = await connect(broker)
    body = json.dumps(CHAT).encode()
    if lane == "express":
        raw = post_bytes(body)
        client.writer.write(raw[: len(raw) - len(body) // 2])  # half the body, then nothing
    else:
        raw = post_bytes(body, chunked=True)
        client.writer.write(raw[: raw.index(b"\r\n\r\n") + 4 + 10])  # part of the first chunk
    assert await sees_eof(client, 10)
    await until(lambda: broker.services.lifecycle.active == 0)
    again = await connect(broker)
    status, _, answer = await again.ask(post_bytes(CHAT, chunked=lane == "aiohttp"))
    assert (status, answer) == (200, CHAT_BODY)
    assert len(stub.seen) == 1, "the stalled request reached the model"


async def stalled_client(broker: BrokerServer, raw: bytes) -> socket.socket:
    """A client that sends `raw` and then never reads a byte of its answer."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", broker.port))
    await loop.sock_sendall(sock, raw)
    return sock


@pytest.mark.parametrize("lane", LANES)
async def test_a_client_that_reads_nothing_is_cut_and_frees_its_slot(
    stub: StubLLM,
    make_broker: MakeBroker,
    make_connector: MakeConnector,
    connect: Any,
    lane: str,
) -> None:
    broker = await make_broker(stall_timeout=0.5, key_concurrency=1, queue_timeout=0.3)
    await make_connector(broker, stub.url, max_concurrency=1)
    await wait_models(broker, {"stub-model"})
    endless = {**CHAT, "stream": True, "x_stub": {"mode": "events", "events": 200_000}}
    sock = await stalled_client(broker, post_bytes(endless, chunked=lane == "aiohttp"))
    try:
        # The connector cancels the call to the model: the stub sees its client go.
        await asyncio.wait_for(stub.disconnected.wait(), 30)
        await until(lambda: broker.services.lifecycle.active == 0)
        client = await connect(broker)
        status, _, answer = await client.ask(post_bytes(CHAT, chunked=lane == "aiohttp"))
        assert (status, answer) == (200, CHAT_BODY)  # the connector's slot and the key's are free
    finally:
        sock.close()


async def test_a_client_that_reads_slowly_is_not_cut(
    stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector, connect: Any
) -> None:
    broker = await make_broker(stall_timeout=5.0)
    await make_connector(broker, stub.url)
    await wait_models(broker, {"stub-model"})
    stream = {**CHAT, "stream": True, "x_stub": {"mode": "events", "events": 20_000}}
    client = await connect(broker)
    client.writer.write(post_bytes(stream))
    received = bytearray()
    while not received.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n"):
        chunk = await asyncio.wait_for(client.reader.read(4096), 10)
        assert chunk, "the broker hung up on a client that reads"
        received += chunk
        await asyncio.sleep(0.001)  # a reader that takes its time, yet always takes something
    assert received.startswith(b"HTTP/1.1 200") and len(received) > 1_000_000
    assert not stub.disconnected.is_set()
