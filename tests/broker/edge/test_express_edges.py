"""The express lane's edges, found by review: each failed on the lane's first version.

Where the aiohttp path should behave the same, the test runs on both: a request with
`Content-Length` takes the express lane, the same request sent chunked goes to aiohttp.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gzip
import json
import socket
from typing import Any

import pytest

from broker.accounts.principals import Accounts
from broker.accounts.records import UsageRow
from broker.edge import express, expresscall
from broker.server import BrokerServer
from broker.stream.headers import BadHead, relayable
from shared import protocol as p
from tests.broker.edge.test_express import (
    broker_with_fake,
    connect,
    post_bytes,
    read_response,
)
from tests.broker.relay.test_misbehaving_connectors import FakeConnector, fakes
from tests.conftest import USER_KEY, MakeBroker, broker_settings

__all__ = ["connect", "fakes"]  # fixtures, used by name

LANES = ["express", "aiohttp"]


def recorded(broker: BrokerServer) -> list[UsageRow]:
    """Every usage row the broker's ledger is given from now on."""
    rows: list[UsageRow] = []
    ledger = broker.services.ledger
    record = ledger.record

    def keep(row: UsageRow) -> None:
        rows.append(row)
        record(row)

    ledger.record = keep  # type: ignore[method-assign]
    return rows


async def raw_socket(broker: BrokerServer, receive_buffer: int | None = None) -> socket.socket:
    sock = socket.socket()
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", broker.port))
    return sock


async def until(condition: Any, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def reply(fake: FakeConnector, status: int, headers: p.Headers, body: bytes = b"") -> None:
    """Answer the fake connector's next request with one head, one body and the end."""
    sid = (await fake.next_request()).stream_id
    frames: list[p.Frame] = [p.ResponseHead(sid, status, headers)]
    if body:
        frames.append(p.ResponseBody(sid, body))
    await fake.ws.send(p.encode_many([*frames, p.End(sid)]))


def test_a_connectors_headers_are_relayed_only_when_unambiguous() -> None:
    kept, length, kind = relayable(
        (("Content-Type", "application/json"), ("Content-Length", "5"), ("content-length", "5"))
    )
    assert (kept, length, kind) == (
        [("Content-Type", "application/json"), ("Content-Length", "5")],
        "5",
        "application/json",
    )
    for bad in (
        (("Content-Length", "5"), ("Content-Length", "2")),
        (("Content-Length", " 5"),),
        (("Content-Length", "\u0665"),),  # an Arabic-Indic five: a digit to Python, not to HTTP
        (("X-A", "a\x01b"),),
        (("X-A", "a\x7f"),),
    ):
        with pytest.raises(BadHead):
            relayable(bad)


@pytest.mark.parametrize("lane", LANES)
async def test_a_head_that_cannot_be_relayed_is_a_502_and_the_connection_stays_in_step(
    make_broker: MakeBroker, fakes: list[FakeConnector], connect: Any, lane: str
) -> None:
    broker, fake = await broker_with_fake(make_broker, fakes)

    async def answer() -> None:
        await reply(fake, 200, (("X-A", "a\x01b"),), b"hello")
        await reply(fake, 200, (("Content-Length", "6"),), b"SECOND")

    answering = asyncio.create_task(answer())
    client = await connect(broker)
    chunked = lane == "aiohttp"
    first = await client.ask(post_bytes({"model": "m"}, chunked=chunked))
    second = await client.ask(post_bytes({"model": "m"}, chunked=chunked))
    await answering
    assert first[0] == 502 and b"connector_protocol_error" in first[2]
    assert (second[0], second[2]) == (200, b"SECOND")
    assert broker.express is not None and broker.express.served == (2 if lane == "express" else 0)


@pytest.mark.parametrize("lane", LANES)
async def test_an_answer_shorter_than_its_length_closes_the_connection_on_both(
    make_broker: MakeBroker, fakes: list[FakeConnector], connect: Any, lane: str
) -> None:
    broker, fake = await broker_with_fake(make_broker, fakes)

    async def answer() -> None:
        await reply(fake, 200, (("Content-Length", "10"),), b"short")

    answering = asyncio.create_task(answer())
    client = await connect(broker)
    client.writer.write(post_bytes({"model": "m"}, chunked=lane == "aiohttp"))
    await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 10)
    await answering
    assert await asyncio.wait_for(client.reader.read(), 5) == b"short"  # then EOF


async def test_refusals_to_a_client_that_does_not_read_are_counted_once(
    make_broker: MakeBroker,
) -> None:
    broker = await make_broker()
    rows = recorded(broker)
    loop = asyncio.get_running_loop()
    sock = await raw_socket(broker, receive_buffer=4096)
    refused = b"".join(
        post_bytes(b"{}", "/v1/chat/completions", "sk-wrong", f"X-Request-ID: r{i}")
        for i in range(2000)
    )
    sending = asyncio.create_task(loop.sock_sendall(sock, refused))
    assert broker.express is not None
    lane = broker.express
    await until(lambda: lane.connections)
    (connection,) = lane.connections
    assert connection.transport is not None
    connection.transport.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
    )
    await until(lambda: connection._paused_writing)
    assert connection.task is None  # no request runs while the client reads no answers
    sending.cancel()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()  # a reset
    await until(lambda: not lane.connections)
    counts = collections.Counter(row.request_id for row in rows)
    assert counts and max(counts.values()) == 1
    assert {row.status for row in rows} == {401}
    assert broker.services.lifecycle.active == 0


async def test_a_request_cancelled_before_its_first_step_is_still_counted(
    make_broker: MakeBroker,
) -> None:
    broker = await make_broker()
    rows = recorded(broker)
    sock = await raw_socket(broker)
    assert broker.express is not None
    await asyncio.get_running_loop().sock_sendall(sock, b"POST /")
    await until(lambda: broker.express is not None and broker.express.connections)
    (connection,) = broker.express.connections
    # The rest of the request and the hang-up in one step of the loop, before its task runs.
    connection.data_received(post_bytes(b"{}", "/v1/chat/completions", USER_KEY)[6:])
    assert connection.task is not None
    connection.connection_lost(None)
    await until(lambda: rows)
    assert (rows[0].status, rows[0].cancelled) == (499, True)
    sock.close()


async def test_the_body_of_a_refused_request_is_dropped_and_waited_for_only_a_while(
    make_broker: MakeBroker, connect: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(express, "LINGER_TIMEOUT", 0.3)
    broker = await make_broker()
    client = await connect(broker)
    head = post_bytes(b"x" * 100_000, "/v1/chat/completions", "sk-wrong")[:-100_000]
    status, _, _ = await client.ask(head + b"x" * 50_000)
    assert status == 401
    assert broker.express is not None
    (connection,) = broker.express.connections
    call = connection._call
    assert call is not None and call._body == b""  # read past, not kept
    assert await client.closed()  # the other 50,000 bytes never came


async def test_a_refusal_with_connection_close_lets_a_large_upload_finish_first(
    make_broker: MakeBroker,
) -> None:
    broker = await make_broker(max_body_size=8 * 1024 * 1024)
    loop = asyncio.get_running_loop()
    sock = await raw_socket(broker)
    upload = post_bytes(
        b"x" * 4 * 1024 * 1024, "/v1/chat/completions", "sk-wrong", "Connection: close"
    )
    await asyncio.wait_for(loop.sock_sendall(sock, upload), 10)  # no reset on the way
    answer = b""
    async with asyncio.timeout(10):
        while chunk := await loop.sock_recv(sock, 65536):
            answer += chunk
    sock.close()
    assert answer.startswith(b"HTTP/1.1 401 ")


@pytest.mark.parametrize(
    "head",
    [
        b"POST /v1/chat/completions HTTP/1.1\nHost: b\nContent-Length: 2\n\n{}",
        b"POST /v1/chat/completions HTTP/1.1\rHost: b\rContent-Length: 2\r\r{}",
    ],
    ids=["bare LF", "bare CR"],
)
async def test_a_head_with_stray_line_ends_goes_to_aiohttp_at_once(
    make_broker: MakeBroker, connect: Any, head: bytes
) -> None:
    broker = await make_broker()
    client = await connect(broker)
    client.writer.write(head)
    status, _, _ = await read_response(client.reader)  # within read_response's 10 s
    assert status == 400
    assert broker.express is not None and broker.express.served == 0


@pytest.mark.parametrize("lane", LANES)
async def test_a_client_that_never_reads_a_stream_is_let_go_after_the_request_timeout(
    make_broker: MakeBroker, fakes: list[FakeConnector], lane: str
) -> None:
    broker = await make_broker(request_timeout=1.0)
    rows = recorded(broker)
    fake = await FakeConnector.attach(broker, ("m",))
    fakes.append(fake)

    async def answer() -> None:
        sid = (await fake.next_request()).stream_id
        assert broker._runner.server is not None
        handlers = [c.transport for c in broker._runner.server.connections]
        assert broker.express is not None
        for transport in [c.transport for c in broker.express.connections] + handlers:
            if transport is not None:
                sock = transport.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        events = (("Content-Type", "text/event-stream"),)
        await fake.ws.send(p.encode(p.ResponseHead(sid, 200, events)))
        for _ in range(15):
            await fake.ws.send(p.encode(p.ResponseBody(sid, b"data: " + b"x" * 16000 + b"\n\n")))
        await asyncio.sleep(30)

    answering = asyncio.create_task(answer())
    sock = await raw_socket(broker, receive_buffer=4096)
    try:
        request = post_bytes({"model": "m"}, chunked=lane == "aiohttp")
        await asyncio.get_running_loop().sock_sendall(sock, request)
        await until(lambda: rows, timeout=10)
        assert broker.services.lifecycle.active == 0
        assert rows[0].status == 200  # the head went out; the timeout ended the stream
    finally:
        answering.cancel()
        sock.close()


async def test_a_body_waits_in_the_socket_while_the_key_is_checked(
    make_broker: MakeBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    checking = asyncio.Event()
    checked = asyncio.Event()
    authenticate = Accounts.authenticate

    async def slow(self: Accounts, presented: str | None) -> Any:
        checking.set()
        await checked.wait()  # a store that takes its time
        return await authenticate(self, presented)

    monkeypatch.setattr(Accounts, "authenticate", slow)
    broker = await make_broker(max_body_size=8 * 1024 * 1024)
    loop = asyncio.get_running_loop()
    sock = await raw_socket(broker)
    upload = post_bytes(b"x" * 4 * 1024 * 1024, "/v1/chat/completions", "sk-wrong")
    sending = asyncio.create_task(loop.sock_sendall(sock, upload))
    await asyncio.wait_for(checking.wait(), 10)
    assert broker.express is not None
    (connection,) = broker.express.connections
    await until(lambda: connection._paused_reading)
    await asyncio.sleep(0.2)  # time enough to read megabytes, were it reading
    call = connection._call
    assert call is not None and len(call._body) < 2 * expresscall.BODY_AHEAD
    checked.set()
    await asyncio.wait_for(sending, 10)  # the rest is read once the request path wants it
    answer = await asyncio.wait_for(loop.sock_recv(sock, 65536), 10)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 401 ")


async def test_no_request_starts_once_the_broker_is_stopping(make_broker: MakeBroker) -> None:
    broker = await make_broker(shutdown_grace=0.2)
    loop = asyncio.get_running_loop()
    sock = await raw_socket(broker, receive_buffer=4096)
    assert broker.express is not None
    lane = broker.express
    await loop.sock_sendall(sock, post_bytes(b"{}", "/v1/chat/completions", "sk-wrong"))
    await until(lambda: lane.connections)
    (connection,) = lane.connections
    assert connection.transport is not None
    connection.transport.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
    )
    refused = post_bytes(b"{}", "/v1/chat/completions", "sk-wrong") * 400
    sending = asyncio.create_task(loop.sock_sendall(sock, refused))
    await until(lambda: connection._resume_next)  # waiting for the client to read
    served = lane.served
    await asyncio.wait_for(broker.stop(), 10)
    with contextlib.suppress(ConnectionError, TimeoutError):
        async with asyncio.timeout(5):
            while await loop.sock_recv(sock, 65536):  # the client reads at last
                pass
    sending.cancel()
    sock.close()
    assert lane.served == served


BODILESS_OR_EMPTY = {
    "204 with a length": (204, (("Content-Length", "5"),), b""),
    "304 with a length": (304, (("Content-Length", "5"),), b""),
    "200 of length 0 and no type": (200, (("Content-Length", "0"),), b""),
    "200 chunked and no type": (200, (), b"hello"),
}


async def _answer_twice(
    make_broker: MakeBroker,
    fakes: list[FakeConnector],
    connect: Any,
    lane: str,
    answer: tuple[int, p.Headers, bytes],
) -> tuple[int, str | None, str | None, int]:
    """(status, Content-Type, Content-Length, the next request's status) on one connection."""
    broker, fake = await broker_with_fake(make_broker, fakes)
    status, headers, body = answer

    async def answering() -> None:
        for _ in range(2):
            await reply(fake, status, headers, body)

    task = asyncio.create_task(answering())
    client = await connect(broker)
    first = await client.ask(post_bytes({"model": "m"}, chunked=lane == "aiohttp"))
    second = await client.ask(post_bytes({"model": "m"}, chunked=lane == "aiohttp"))
    await task
    return first[0], first[1].get("content-type"), first[1].get("content-length"), second[0]


@pytest.mark.parametrize("answer", BODILESS_OR_EMPTY.values(), ids=BODILESS_OR_EMPTY.keys())
async def test_bodiless_and_empty_answers_read_the_same_on_both_and_keep_the_connection(
    make_broker: MakeBroker,
    fakes: list[FakeConnector],
    connect: Any,
    answer: tuple[int, p.Headers, bytes],
) -> None:
    on_express = await _answer_twice(make_broker, fakes, connect, "express", answer)
    on_aiohttp = await _answer_twice(make_broker, fakes, connect, "aiohttp", answer)
    assert on_express == on_aiohttp
    assert on_express[3] == answer[0]  # the connection carried the next request


async def test_a_client_that_reads_none_of_its_answers_is_dropped_in_the_end(
    connect: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(express, "LINGER_TIMEOUT", 0.3)
    broker = BrokerServer(broker_settings(stall_timeout=0.3))
    await broker.start()
    loop = asyncio.get_running_loop()
    sock = await raw_socket(broker, receive_buffer=4096)
    try:
        await loop.sock_sendall(sock, post_bytes(b"{}", "/v1/chat/completions", "sk-wrong"))
        assert broker.express is not None
        lane = broker.express
        await until(lambda: lane.connections)
        (connection,) = lane.connections
        assert connection.transport is not None
        connection.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
        )
        refused = post_bytes(b"{}", "/v1/chat/completions", "sk-wrong") * 2000
        sending = asyncio.create_task(loop.sock_sendall(sock, refused))
        await until(lambda: connection._resume_next)
        await until(lambda: connection not in lane.connections)  # closed, then dropped
        sending.cancel()
    finally:
        sock.close()
        await broker.stop()


async def body_of_next_request(fake: FakeConnector) -> tuple[p.RequestHead, bytes]:
    """The next request's head and its whole body, as the connector receives them."""
    head: p.RequestHead | None = None
    body = b""
    while True:
        for frame in p.decode(await fake.ws.recv()):  # type: ignore[arg-type]
            if isinstance(frame, p.RequestHead):
                head = frame
            elif isinstance(frame, p.RequestBody):
                body += frame.data
            elif isinstance(frame, p.End) and head is not None:
                return head, body


async def relayed_with_200(
    broker: BrokerServer, fake: FakeConnector, connect: Any, request: bytes
) -> tuple[p.RequestHead, bytes]:
    """Send `request`, answer it 200 from the fake connector; the head and body it got."""

    async def answer() -> tuple[p.RequestHead, bytes]:
        head, body = await body_of_next_request(fake)
        frames: list[p.Frame] = [p.ResponseHead(head.stream_id, 200, ()), p.End(head.stream_id)]
        await fake.ws.send(p.encode_many(frames))
        return head, body

    answering = asyncio.create_task(answer())
    try:
        client = await connect(broker)
        status, _, answered = await client.ask(request)
        assert status == 200, answered
        return await asyncio.wait_for(answering, 10)
    finally:
        answering.cancel()


@pytest.mark.parametrize("lane", LANES)
async def test_a_gzip_encoded_body_reaches_the_connector_decoded_and_labelled_so(
    make_broker: MakeBroker, fakes: list[FakeConnector], connect: Any, lane: str
) -> None:
    broker, fake = await broker_with_fake(make_broker, fakes)
    plain = json.dumps({"model": "m", "messages": []}).encode()
    request = post_bytes(
        gzip.compress(plain),
        "/v1/chat/completions",
        USER_KEY,
        "Content-Encoding: gzip",
        chunked=lane == "aiohttp",
    )

    # The express lane took it once, and answered 400: now the connector gets it.
    head, body = await relayed_with_200(broker, fake, connect, request)
    assert body == plain
    assert "content-encoding" not in {name.lower() for name, _ in head.headers}
    assert broker.express is not None and broker.express.served == 0


async def test_every_content_encoding_label_goes_once_aiohttp_decoded_the_body(
    make_broker: MakeBroker, fakes: list[FakeConnector], connect: Any
) -> None:
    """aiohttp decodes one coding (with its C parser, the last label's). The broker then reads
    the model from the body, so a body passed on is plain: no label describes it any more."""
    broker, fake = await broker_with_fake(make_broker, fakes)
    plain = json.dumps({"model": "m", "messages": []}).encode()
    labels = ["Content-Encoding: identity", "Content-Encoding: gzip"]
    request = post_bytes(gzip.compress(plain), "/v1/chat/completions", USER_KEY, *labels)

    head, body = await relayed_with_200(broker, fake, connect, request)
    assert body == plain
    assert "content-encoding" not in {name.lower() for name, _ in head.headers}
