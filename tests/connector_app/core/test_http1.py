"""The connector's HTTP/1.1 client: the parser byte by byte, the pool against real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from connector_app.core.pool import Pool
from shared.http1 import MAX_HEAD, HTTPError, ResponseParser, request_bytes

# ---------------------------------------------------------------------------
# ResponseParser (no sockets)


def parse(raw: bytes, *, step: int = 0, no_body: bool = False) -> tuple[ResponseParser, bytes]:
    """Feed `raw` whole (step 0) or in pieces of `step` bytes; return the parser and the body."""
    parser = ResponseParser(no_body=no_body)
    pieces = [raw] if step == 0 else [raw[i : i + step] for i in range(0, len(raw), step)]
    body = b"".join(parser.feed(piece) for piece in pieces)
    return parser, body


CHUNKED = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"6;ext=1\r\ndata: \r\n" + b"3\r\nab\n\r\n" + b"0\r\nX-Trailer: t\r\n\r\n"
)


@pytest.mark.parametrize("step", [0, 1, 2, 7])
def test_chunked_body_is_decoded_whatever_the_pieces(step: int) -> None:
    parser, body = parse(CHUNKED, step=step)
    assert body == b"data: ab\n"
    assert parser.complete and parser.keep_alive
    assert parser.head == (
        200,
        (("Content-Type", "text/event-stream"), ("Transfer-Encoding", "chunked")),
    )


@pytest.mark.parametrize("step", [0, 1, 5])
def test_content_length_body_ends_at_its_length(step: int) -> None:
    parser, body = parse(b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\n\r\nhello", step=step)
    assert (body, parser.complete, parser.keep_alive) == (b"hello", True, True)
    assert parser.head is not None and parser.head[0] == 201


def test_bytes_after_the_end_make_the_connection_unusable() -> None:
    parser, body = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA")
    assert body == b"ok"
    assert parser.complete and not parser.keep_alive


def test_body_without_framing_lasts_until_close() -> None:
    parser, body = parse(b"HTTP/1.1 200 OK\r\n\r\nsome bytes")
    assert body == b"some bytes" and not parser.complete and not parser.keep_alive
    parser.eof()
    assert parser.complete


def test_a_cut_content_length_body_is_an_error_at_eof() -> None:
    parser, _ = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")
    with pytest.raises(HTTPError):
        parser.eof()


def test_a_cut_chunked_body_is_an_error_at_eof() -> None:
    parser, _ = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab")
    with pytest.raises(HTTPError):
        parser.eof()


@pytest.mark.parametrize(
    ("raw", "no_body"),
    [
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n", False),
        (b"HTTP/1.1 304 Not Modified\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", False),
    ],
)
def test_bodiless_responses_are_complete_after_the_head(raw: bytes, no_body: bool) -> None:
    parser, body = parse(raw, no_body=no_body)
    assert body == b"" and parser.complete and parser.keep_alive


def test_interim_responses_are_skipped() -> None:
    raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"
    parser, body = parse(raw, step=3)
    assert parser.head == (200, (("Content-Length", "1"),)) and body == b"x"


@pytest.mark.parametrize(
    ("raw", "keep_alive"),
    [
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n", True),
    ],
)
def test_keep_alive_follows_the_version_and_connection_header(raw: bytes, keep_alive: bool) -> None:
    parser, _ = parse(raw)
    assert parser.keep_alive is keep_alive


def test_header_bytes_survive_decoding() -> None:
    parser, _ = parse("HTTP/1.1 200 OK\r\nX-Name: café\r\n\r\n".encode())
    assert parser.head is not None
    ((_, value),) = parser.head[1]
    assert value.encode("utf-8", "surrogateescape") == "café".encode()


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/2 200 OK\r\n\r\n",
        b"ICY 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nNo colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Name : 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nxYY",
    ],
)
def test_malformed_responses_raise(raw: bytes) -> None:
    with pytest.raises(HTTPError):
        parse(raw)


def test_an_endless_head_is_refused() -> None:
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 200 OK\r\n")
    with pytest.raises(HTTPError, match="too large"):
        parser.feed(b"X-Long: " + b"a" * MAX_HEAD)


def test_request_bytes_set_host_and_length_and_drop_framing_headers() -> None:
    raw = request_bytes(
        "POST",
        "/v1/chat completions?q=1",
        "127.0.0.1:8080",
        (("Content-Type", "application/json"), ("Content-Length", "99"), ("Host", "evil")),
        b"{}",
    )
    assert raw == (
        b"POST /v1/chat%20completions?q=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    )
    assert request_bytes("GET", "/v1/models", "h", (), b"") == (
        b"GET /v1/models HTTP/1.1\r\nHost: h\r\n\r\n"
    )


# ---------------------------------------------------------------------------
# Pool, against a scripted server on loopback

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A loopback server running `handler` per connection, counting connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.closed = asyncio.Event()
        self.url = ""
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        finally:
            writer.close()
            self.closed.set()

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head, await reader.readexactly(length)


async def echo_forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer each request with its body, chunked, keeping the connection."""
    while True:
        try:
            _, body = await read_request(reader)
        except asyncio.IncompleteReadError:
            return
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        await writer.drain()


@pytest.fixture
async def pool_factory() -> AsyncIterator[Callable[[str], Pool]]:
    pools: list[Pool] = []

    def make(url: str) -> Pool:
        pools.append(Pool(url, limit=4, connect_timeout=2.0))
        return pools[-1]

    yield make
    for pool in pools:
        await pool.close()


async def test_keep_alive_reuses_one_connection(pool_factory: Callable[[str], Pool]) -> None:
    async with Server(echo_forever) as server:
        pool = pool_factory(server.url)
        for i in range(3):
            async with pool.request("POST", "/x", (), b"body %d" % i) as response:
                assert response.status == 200
                assert await response.body() == b"body %d" % i
        assert server.connections == 1


async def test_a_connection_the_server_closed_while_idle_is_replaced(
    pool_factory: Callable[[str], Pool],
) -> None:
    async def one_per_connection(reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(reader)
        # Claims keep-alive, then closes: the next request on it would find it gone.
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await w.drain()

    async with Server(one_per_connection) as server:
        pool = pool_factory(server.url)
        for _ in range(3):
            async with pool.request("POST", "/x", (), b"{}") as response:
                assert await response.body() == b"ok"
        assert server.connections == 3


async def test_a_body_cut_mid_way_raises(pool_factory: Callable[[str], Pool]) -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()

    async with Server(cut) as server:
        pool = pool_factory(server.url)
        async with pool.request("POST", "/x", (), b"{}") as response:
            assert await response.read() == b"partial"
            with pytest.raises(HTTPError):
                await response.read()


async def test_leaving_early_closes_the_connection(pool_factory: Callable[[str], Pool]) -> None:
    async def slow_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n")
        await writer.drain()
        await reader.read()  # returns when the client closes

    async with Server(slow_stream) as server:
        pool = pool_factory(server.url)

        async def consume() -> None:
            async with pool.request("POST", "/x", (), b"{}") as response:
                assert await response.read() == b"hi"
                await response.read()  # waits forever: the stream never ends

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(server.closed.wait(), 5)


async def test_an_unreachable_server_raises_oserror(pool_factory: Callable[[str], Pool]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    pool = pool_factory(f"http://127.0.0.1:{port}")
    with pytest.raises(OSError):
        async with pool.request("GET", "/v1/models", (), b""):
            pass


async def test_a_garbage_reply_raises(pool_factory: Callable[[str], Pool]) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()

    async with Server(garbage) as server:
        pool = pool_factory(server.url)
        with pytest.raises(HTTPError):
            async with pool.request("GET", "/v1/models", (), b""):
                pass


async def test_a_base_path_prefixes_every_request(pool_factory: Callable[[str], Pool]) -> None:
    seen: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, _ = await read_request(reader)
        seen.append(head.split(b"\r\n")[0])
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    async with Server(record) as server:
        pool = pool_factory(server.url + "/llm/")
        async with pool.request("GET", "/v1/models", (), b"") as response:
            assert await response.body() == b""
        assert seen == [b"GET /llm/v1/models HTTP/1.1"]


async def test_a_kept_alive_socket_that_fails_before_any_reply_is_retried_once(
    pool_factory: Callable[[str], Pool],
) -> None:
    async def drop_the_second(reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(reader)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await w.drain()
        await read_request(reader)  # the second request on this socket gets no reply at all

    async with Server(drop_the_second) as server:
        pool = pool_factory(server.url)
        for _ in range(2):
            async with pool.request("POST", "/x", (), b"{}") as response:
                assert await response.body() == b"ok"
        assert server.connections == 2


async def test_a_socket_that_talked_while_idle_is_not_reused(
    pool_factory: Callable[[str], Pool],
) -> None:
    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale")

    async with Server(chatty) as server:
        pool = pool_factory(server.url)
        for _ in range(2):
            async with pool.request("POST", "/x", (), b"{}") as response:
                assert await response.body() == b"ok"
            await asyncio.sleep(0.2)
        assert server.connections == 2


async def test_on_data_takes_bytes_until_it_refuses_and_read_keeps_the_order(
    pool_factory: Callable[[str], Pool],
) -> None:
    go = asyncio.Event()

    async def three_parts(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n")
        for part in (b"one", b"two", b"333"):
            await go.wait()
            go.clear()
            writer.write(part)
            await writer.drain()

    async with Server(three_parts) as server:
        pool = pool_factory(server.url)
        taken: list[bytes] = []

        def take_the_first(data: bytes) -> bool:
            if taken:
                return False
            taken.append(data)
            return True

        async with pool.request("POST", "/x", (), b"{}") as response:
            # Takes "one", refuses "two"; "333" then goes to read() as well.
            response.on_data(take_the_first)
            go.set()
            while not taken:
                await asyncio.sleep(0.01)
            go.set()
            assert await response.read() == b"two"
            go.set()
            rest = await response.body()
        assert (taken, rest) == ([b"one"], b"333")


async def test_pool_slots_go_in_turn_and_a_cancelled_waiter_passes_its_slot_on() -> None:
    from connector_app.core.pool import _Slots

    slots = _Slots(2)
    assert slots.try_take() and slots.try_take()
    assert not slots.try_take()
    order: list[str] = []

    async def take(name: str) -> None:
        await slots.take()
        order.append(name)

    first = asyncio.create_task(take("first"))
    second = asyncio.create_task(take("second"))
    third = asyncio.create_task(take("third"))
    await asyncio.sleep(0)
    assert not slots.try_take()  # others are waiting: no jumping the line
    slots.give()  # handed to "first"
    second.cancel()  # "second" leaves the line
    slots.give()  # goes to "third", not to the cancelled one
    await asyncio.gather(first, third)
    with contextlib.suppress(asyncio.CancelledError):
        await second
    assert order == ["first", "third"]
    assert slots.free == 0
    slots.give()
    slots.give()
    assert slots.free == 2

    # A waiter cancelled just after it was handed a slot gives it to the next in line.
    assert slots.try_take() and slots.try_take()
    late = asyncio.create_task(take("late"))
    last = asyncio.create_task(take("last"))
    await asyncio.sleep(0)
    slots.give()  # handed to "late"...
    late.cancel()  # ...which is cancelled before it runs again
    with contextlib.suppress(asyncio.CancelledError):
        await late
    await asyncio.wait_for(last, 5)
    assert order == ["first", "third", "last"]
    assert slots.free == 0
