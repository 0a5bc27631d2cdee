"""The express lane: plain API posts on a bare protocol, everything else on aiohttp.

Each test checks which server answered (`BrokerServer.express.served`), so a change
that quietly sends every request to aiohttp fails here, not only in the benchmark.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from broker.server import BrokerServer
from broker.stream import callbacktrip
from broker.stream.machine import StreamMachine
from shared import protocol as p
from tests.broker.relay.test_misbehaving_connectors import FakeConnector, fakes
from tests.conftest import USER_KEY, MakeBroker, Relay, broker_settings
from tests.e2e.test_relay import CHAT, sdk
from tests.stub_llm import CHAT_BODY

__all__ = ["fakes"]  # a fixture, used by name

Response = tuple[int, dict[str, str], bytes]


def post_bytes(
    body: Any = CHAT,
    path: str = "/v1/chat/completions",
    key: str = USER_KEY,
    *extra: str,
    chunked: bool = False,
) -> bytes:
    """A POST as a client would write it; `chunked` sends the body in chunks (aiohttp's)."""
    data = json.dumps(body).encode() if not isinstance(body, bytes) else body
    lines = [f"POST {path} HTTP/1.1", "Host: broker", f"Authorization: Bearer {key}", *extra]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        data = b"%x\r\n%b\r\n0\r\n\r\n" % (len(data), data) if data else b"0\r\n\r\n"
    else:
        lines.append(f"Content-Length: {len(data)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


async def read_response(reader: asyncio.StreamReader) -> Response:
    """One response off a kept-alive connection: status, lower-cased headers, whole body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")[:-2]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    status = int(lines[0].split(" ")[1])
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        parts = []
        while size := int((await reader.readuntil(b"\r\n"))[:-2], 16):
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        await reader.readexactly(2)
        body = b"".join(parts)
    else:
        body = b""
    return status, headers, body


class Client:
    """One raw keep-alive connection to the broker."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def ask(self, raw: bytes) -> Response:
        self.writer.write(raw)
        return await read_response(self.reader)

    async def closed(self) -> bool:
        """Whether the broker hung up (EOF within a few seconds, nothing more to read)."""
        return await asyncio.wait_for(self.reader.read(), 5) == b""


@pytest.fixture
async def connect() -> AsyncIterator[Any]:
    clients: list[Client] = []

    async def open_(broker: BrokerServer) -> Client:
        client = Client(*await asyncio.open_connection("127.0.0.1", broker.port))
        clients.append(client)
        return client

    yield open_
    for client in clients:
        client.writer.close()


async def test_an_sdk_request_takes_the_express_lane_and_comes_back_unchanged(
    relay: Relay,
) -> None:
    async with sdk(relay) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="stub-model", messages=[{"role": "user", "content": "Hi"}]
        )
    assert raw.http_response.content == CHAT_BODY
    assert relay.broker.express is not None and relay.broker.express.served == 1
    headers = raw.http_response.headers
    assert headers["x-request-id"] and headers["date"] and headers["server"]
    assert headers["content-length"] == str(len(CHAT_BODY))


async def test_a_stream_on_the_express_lane_is_chunked_and_complete(relay: Relay) -> None:
    async with sdk(relay) as client:
        stream = await client.chat.completions.create(
            model="stub-model",
            messages=[{"role": "user", "content": "Hi"}],
            stream=True,
            extra_body={"x_stub": {"mode": "events", "events": 5}},
        )
        chunks = [chunk async for chunk in stream]
    assert len(chunks) == 5
    assert relay.broker.express is not None and relay.broker.express.served == 1


async def test_requests_on_one_connection_move_to_aiohttp_at_the_first_it_does_not_take(
    relay: Relay, connect: Any
) -> None:
    broker = relay.broker
    client = await connect(broker)
    first = await client.ask(post_bytes())
    second = await client.ask(post_bytes())
    health = await client.ask(b"GET /health HTTP/1.1\r\nHost: broker\r\n\r\n")
    after = await client.ask(post_bytes())  # aiohttp's now, and answered the same
    assert [r[0] for r in (first, second, health, after)] == [200, 200, 200, 200]
    assert first[2] == second[2] == after[2] == CHAT_BODY
    assert json.loads(health[2])["status"] == "ok"
    assert broker.express is not None and broker.express.served == 2
    assert len(relay.stub.seen) == 3


async def test_pipelined_requests_are_answered_in_order(relay: Relay, connect: Any) -> None:
    client = await connect(relay.broker)
    streamed = {**CHAT, "stream": True, "x_stub": {"mode": "events", "events": 3}}
    client.writer.write(post_bytes(streamed) + post_bytes() + post_bytes(streamed))
    answers = [await read_response(client.reader) for _ in range(3)]
    assert [a[0] for a in answers] == [200, 200, 200]
    assert answers[0][2].count(b"data: ") == 4  # three events and [DONE]
    assert answers[1][2] == CHAT_BODY
    assert answers[2][2] == answers[0][2]
    assert relay.broker.express is not None and relay.broker.express.served == 3


async def test_a_body_that_arrives_later_than_its_head_is_waited_for(
    relay: Relay, connect: Any
) -> None:
    client = await connect(relay.broker)
    raw = post_bytes()
    split = raw.index(b"\r\n\r\n") + 4
    client.writer.write(raw[:split] + raw[split : split + 5])
    await client.writer.drain()
    await asyncio.sleep(0.1)
    client.writer.write(raw[split + 5 :])
    status, _, body = await read_response(client.reader)
    assert (status, body) == (200, CHAT_BODY)
    assert relay.broker.express is not None and relay.broker.express.served == 1


def _same_answer(express: Response, aiohttp: Response) -> None:
    assert express[0] == aiohttp[0]
    assert json.loads(express[2]) == json.loads(aiohttp[2])
    for name in ("content-type", "retry-after", "x-should-retry"):
        assert express[1].get(name) == aiohttp[1].get(name), name
    for answer in (express, aiohttp):
        assert answer[1]["x-request-id"].startswith("req_")
        assert answer[1]["content-length"] == str(len(answer[2]))


REFUSED = {
    "a wrong key": (CHAT, "/v1/chat/completions", "sk-wrong-key"),
    "no model": ({"messages": []}, "/v1/chat/completions", USER_KEY),
    "not JSON": (b"{not json", "/v1/chat/completions", USER_KEY),
    "an unknown model, Anthropic's shape": ({"model": "nope"}, "/v1/messages", USER_KEY),
    "an unknown model, Ollama's shape": ({"model": "nope"}, "/api/chat", USER_KEY),
}


@pytest.mark.parametrize("case", REFUSED.values(), ids=REFUSED.keys())
async def test_a_refusal_reads_the_same_on_both_servers(
    relay: Relay, connect: Any, case: tuple[Any, str, str]
) -> None:
    body, path, key = case
    express = await (await connect(relay.broker)).ask(post_bytes(body, path, key))
    aiohttp = await (await connect(relay.broker)).ask(post_bytes(body, path, key, chunked=True))
    assert relay.broker.express is not None and relay.broker.express.served == 1
    assert express[0] >= 400
    _same_answer(express, aiohttp)


async def test_a_body_over_the_limit_gets_aiohttps_413(
    make_broker: MakeBroker, connect: Any
) -> None:
    broker = await make_broker(max_body_size=1024)
    body = {"model": "m", "pad": "x" * 1100}
    status, headers, answer = await (await connect(broker)).ask(post_bytes(body))
    assert status == 413
    assert json.loads(answer)["error"]["code"] == "request_too_large"
    assert headers["x-should-retry"] == "false"
    assert broker.express is not None and broker.express.served == 0


async def test_connection_close_is_answered_and_honoured(relay: Relay, connect: Any) -> None:
    client = await connect(relay.broker)
    status, headers, body = await client.ask(
        post_bytes(CHAT, "/v1/chat/completions", USER_KEY, "Connection: close")
    )
    assert (status, body, headers["connection"]) == (200, CHAT_BODY, "close")
    assert await client.closed()


async def test_an_idle_connection_is_closed_after_the_keepalive_timeout(
    stub: Any, connect: Any
) -> None:
    broker = BrokerServer(broker_settings(idle_timeout=0.2, head_timeout=0.2))
    await broker.start()
    try:
        client = await connect(broker)
        status, _, _ = await client.ask(post_bytes({"model": "nobody-serves-this"}))
        assert status == 503
        client.writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: b")  # and stalls
        assert await client.closed()
    finally:
        await broker.stop()


async def test_a_client_that_hangs_up_mid_stream_cancels_the_llm_call(
    relay: Relay, connect: Any
) -> None:
    client = await connect(relay.broker)
    hanging = {**CHAT, "stream": True, "x_stub": {"mode": "hang"}}
    client.writer.write(post_bytes(hanging))
    async with asyncio.timeout(10):
        while not relay.stub.seen:
            await asyncio.sleep(0.01)
    client.writer.close()
    await asyncio.wait_for(relay.stub.disconnected.wait(), 10)
    assert relay.broker.express is not None and relay.broker.express.served == 1


async def broker_with_fake(
    make_broker: MakeBroker, fakes: list[FakeConnector]
) -> tuple[BrokerServer, FakeConnector]:
    """A broker whose one connector, serving model "m", is driven by the test."""
    broker = await make_broker()
    fake = await FakeConnector.attach(broker, ("m",))
    fakes.append(fake)
    return broker, fake


async def test_a_bodiless_answer_carries_nothing_onto_the_connection(
    make_broker: MakeBroker, fakes: list[FakeConnector], connect: Any
) -> None:
    broker, fake = await broker_with_fake(make_broker, fakes)

    async def answer() -> None:
        for status in (204, 200):
            sid = (await fake.next_request()).stream_id
            headers = (("Content-Length", "5"),) if status == 204 else ()
            frames: list[p.Frame] = [p.ResponseHead(sid, status, headers)]
            if status == 200:
                frames.append(p.ResponseBody(sid, b"hello"))
            await fake.ws.send(p.encode_many([*frames, p.End(sid)]))

    answering = asyncio.create_task(answer())
    client = await connect(broker)
    empty = await client.ask(post_bytes({"model": "m"}))
    full = await client.ask(post_bytes({"model": "m"}))
    await answering
    assert (empty[0], empty[2], full[0], full[2]) == (204, b"", 200, b"hello")
    assert "content-length" not in empty[1] and "transfer-encoding" not in empty[1]
    assert full[1]["transfer-encoding"] == "chunked"
    assert full[1]["content-type"] == "application/octet-stream"  # as aiohttp says it


async def test_stopping_the_broker_closes_idle_express_connections(
    make_broker: MakeBroker, connect: Any
) -> None:
    broker = await make_broker(connector_wait=0.05)
    client = await connect(broker)
    status, _, _ = await client.ask(post_bytes({"model": "m"}))
    assert status == 503
    assert broker.express is not None and len(broker.express.connections) == 1
    await broker.stop()
    assert await client.closed()
    assert broker.express.connections == set()


async def test_a_refusal_sent_before_the_body_came_still_reads_that_body_past(
    relay: Relay, connect: Any
) -> None:
    client = await connect(relay.broker)
    refused = post_bytes(CHAT, "/v1/chat/completions", "sk-wrong-key")
    split = refused.index(b"\r\n\r\n") + 4
    status, _, _ = await client.ask(refused[:split])  # the key is checked before the body
    assert status == 401
    client.writer.write(refused[split:])  # the body of the refused request, then the next one
    status, _, body = await client.ask(post_bytes())
    assert (status, body) == (200, CHAT_BODY)
    assert relay.broker.express is not None and relay.broker.express.served == 2


@pytest.mark.parametrize("driver", ["task", "callbacks"])
async def test_a_bug_in_the_request_path_still_answers_500_and_closes(
    relay: Relay, connect: Any, monkeypatch: pytest.MonkeyPatch, driver: str
) -> None:
    def broken(*args: Any) -> None:
        raise RuntimeError("a bug")

    if driver == "task":
        monkeypatch.setattr(callbacktrip, "start", lambda services, call, owner: None)
    # The bug in the connector's response head, as the task or a callback writes it.
    monkeypatch.setattr(StreamMachine, "_head", broken)
    client = await connect(relay.broker)
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        status, headers, body = await client.ask(
            post_bytes(CHAT, "/v1/chat/completions", USER_KEY, "X-Request-ID: req-bug-1")
        )
    assert status == 500
    assert json.loads(body)["error"]["code"] == "internal_error"
    assert headers["connection"] == "close"
    assert await client.closed()
    failed = [e for e in logs if e["event"] == "request failed with an internal error"]
    assert failed and failed[0]["request_id"] == "req-bug-1"  # logged in the request's context
    finished = [e for e in logs if e["event"] == "request finished"]
    assert [(e["status"], e["outcome"]) for e in finished] == [(500, "error")]  # as answered
    assert relay.broker.express is not None
    assert relay.broker.express.from_callbacks == (driver == "callbacks")


@pytest.mark.parametrize("driver", ["task", "callbacks"])
@pytest.mark.parametrize(
    ("raised", "answer"),
    [(ValueError("frame too large"), (400, "invalid_request")), (RuntimeError("a bug"), None)],
)
async def test_only_a_request_the_relay_cannot_encode_is_refused_as_unrelayable(
    relay: Relay,
    connect: Any,
    monkeypatch: pytest.MonkeyPatch,
    driver: str,
    raised: Exception,
    answer: tuple[int, str] | None,
) -> None:
    """The encoder's ValueError is the client's request (400); anything else is a bug (500)."""

    def failing(*args: Any, **kwargs: Any) -> list[p.Frame]:
        raise raised

    if driver == "task":
        monkeypatch.setattr(callbacktrip, "start", lambda services, call, owner: None)
    monkeypatch.setattr(p, "split_body", failing)
    client = await connect(relay.broker)
    with capture_logs() as logs:
        status, _, body = await client.ask(post_bytes())
    if answer is not None:
        assert (status, json.loads(body)["error"]["code"]) == answer
    else:
        assert (status, json.loads(body)["error"]["code"]) == (500, "internal_error")
        assert "request failed with an internal error" in [e["event"] for e in logs]
    finished = [e["status"] for e in logs if e["event"] == "request finished"]
    assert finished == [status]  # counted once
    monkeypatch.undo()
    status, _, body = await (await connect(relay.broker)).ask(post_bytes())
    assert (status, body) == (200, CHAT_BODY)  # the connector's slot and the lease came back
