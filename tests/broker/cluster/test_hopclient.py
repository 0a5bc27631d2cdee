"""The internal hop's connections and their pool, against a raw asyncio server standing in
for the other broker (it answers exactly the bytes each test needs, when the test says)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from broker.cluster.forwarding import HOP_PATH, WINDOW, Forwarder, PeerExchange, PeerLink
from broker.stream.machine import LinkLost, StreamEvent
from shared import protocol as p
from shared.http1 import request_bytes

REQUEST = request_bytes("POST", HOP_PATH, "b", (), b"")


@dataclass
class FakeB:
    """A server that hands each request's connection to the test's `answer`."""

    answer: Callable[[FakeB, asyncio.StreamWriter], None] | None = None
    connections: int = 0
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""
    requests: asyncio.Queue[asyncio.StreamWriter] = field(default_factory=asyncio.Queue)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")  # every request here has no body
                assert head.startswith(b"POST ")
                await self.requests.put(writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed.set()
        finally:
            writer.close()


@pytest.fixture
async def fake_b() -> AsyncIterator[FakeB]:
    fake = FakeB()
    server = await asyncio.start_server(fake.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    fake.url = f"http://127.0.0.1:{port}"
    async with server:
        yield fake
        server.close()


@pytest.fixture
async def link(fake_b: FakeB) -> AsyncIterator[PeerLink]:
    forwarder = Forwarder("s" * 40)
    yield PeerLink(forwarder, "b", fake_b.url, "1")
    await forwarder.close()


def open_exchange(link: PeerLink) -> PeerExchange:
    exchange = PeerExchange(link, REQUEST)
    exchange.start()
    return exchange


async def next_event(exchange: PeerExchange) -> StreamEvent:
    return await asyncio.wait_for(exchange.events.get(), 10)


async def test_a_connection_paused_by_the_read_that_ended_its_answer_serves_the_next(
    fake_b: FakeB, link: PeerLink
) -> None:
    """The last read of a large keep-alive answer takes it past the hop's read-ahead (the
    client reads slowly) and ends it: the connection goes back to the pool reading, and the
    next forwarded request on it is answered."""
    size = WINDOW + 20
    first = open_exchange(link)
    writer = await asyncio.wait_for(fake_b.requests.get(), 10)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"x" * (WINDOW - 10))
    assert type(await next_event(first)) is p.ResponseHead
    got = 0
    while got < WINDOW - 10:  # nothing of it reached the client yet
        event = await next_event(first)
        assert type(event) is p.ResponseBody
        got += len(event.data)
    writer.write(b"x" * 30)  # one read: past the read-ahead, and the answer's end
    while type(event := await next_event(first)) is p.ResponseBody:
        got += len(event.data)
    assert type(event) is p.End and got == size
    first.delivered(size)  # the client takes it all, late
    first.close(cancel=False)

    second = open_exchange(link)
    writer = await asyncio.wait_for(fake_b.requests.get(), 10)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert type(await next_event(second)) is p.ResponseHead
    assert await next_event(second) == p.ResponseBody(0, b"ok")
    assert type(await next_event(second)) is p.End
    assert fake_b.connections == 1  # the same connection, from the pool


async def test_a_new_connection_closed_without_an_answer_is_not_tried_again(
    fake_b: FakeB, link: PeerLink
) -> None:
    """The other broker may have started the generation: the request is not sent twice."""
    exchange = open_exchange(link)
    writer = await asyncio.wait_for(fake_b.requests.get(), 10)
    writer.close()
    assert type(await next_event(exchange)) is LinkLost
    assert fake_b.connections == 1
    assert fake_b.requests.empty()


async def test_an_idle_connection_closed_as_the_request_left_is_replaced_once(
    fake_b: FakeB, link: PeerLink
) -> None:
    first = open_exchange(link)
    writer = await asyncio.wait_for(fake_b.requests.get(), 10)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert type(await next_event(first)) is p.ResponseHead
    assert type(await next_event(first)) is p.End
    second = open_exchange(link)  # on the pooled connection, which B closes unanswered
    writer = await asyncio.wait_for(fake_b.requests.get(), 10)
    writer.close()
    writer = await asyncio.wait_for(fake_b.requests.get(), 10)  # again, on a new one
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert type(await next_event(second)) is p.ResponseHead
    assert type(await next_event(second)) is p.End
    assert fake_b.connections == 2


async def test_a_connection_still_opening_when_the_pool_closes_is_closed_too(
    fake_b: FakeB, link: PeerLink
) -> None:
    """The broker stopping as a hop connection opens leaves no connection to the other broker
    behind (the connection is known to the pool from its first callback)."""
    pool = link.forwarder.pool
    connecting = asyncio.create_task(pool.connect(fake_b.url))
    await asyncio.sleep(0)  # the connection is under way
    pool.close()
    with pytest.raises(ConnectionAbortedError):
        await connecting
    await asyncio.wait_for(fake_b.closed.wait(), 10)
