"""Routing and forwarding agree: the path routed is the path forwarded, and a started answer
that cannot be finished reads as unfinished.

Each test runs on both servers: a request with `Content-Length` as the first on its
connection takes the express lane; sent chunked, the same request goes to aiohttp.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from shared import protocol as p
from tests.broker.edge.test_express import connect, post_bytes
from tests.broker.relay.test_misbehaving_connectors import FakeConnector, fakes
from tests.conftest import MakeBroker, Relay
from tests.stub_llm import sse_event

__all__ = ["connect", "fakes"]  # fixtures, used by name

LANES = ["express", "aiohttp"]


async def _head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = raw.decode("latin-1").split("\r\n")[:-2]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split(" ")[1]), headers


@pytest.mark.parametrize("lane", LANES)
async def test_a_sized_stream_that_fails_midway_reads_as_incomplete(
    relay: Relay, connect: Any, lane: str
) -> None:
    body = {"model": "stub-model", "stream": True, "x_stub": {"mode": "sized_partial"}}
    client = await connect(relay.broker)
    client.writer.write(post_bytes(body, chunked=lane == "aiohttp"))
    status, headers = await _head(client.reader)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    length = int(headers["content-length"])
    with pytest.raises(asyncio.IncompleteReadError) as caught:
        await asyncio.wait_for(client.reader.readexactly(length), 10)
    # What came is the LLM's own complete event, then the connection closed: no error event
    # squeezed into the announced length to make the body look whole.
    assert caught.value.partial == sse_event(0)
    served = relay.broker.express.served if relay.broker.express else 0
    assert served == (1 if lane == "express" else 0)


@pytest.mark.parametrize("lane", LANES)
@pytest.mark.parametrize(
    "path",
    [
        "/v1/chat/completion%73",  # an endpoint once decoded, but not as sent
        "/api/cha%74",
        "/v1/chat/completions#fragment",
        "/v1/chat/completions%3Fstream=true",
        "/v1/./chat/completions",
        "//v1/chat/completions",
        "/v1/chat/completions/",
    ],
)
async def test_a_path_that_is_an_endpoint_only_once_decoded_gets_404(
    relay: Relay, connect: Any, lane: str, path: str
) -> None:
    client = await connect(relay.broker)
    status, headers, body = await client.ask(post_bytes(path=path, chunked=lane == "aiohttp"))
    assert status == 404, body
    error = json.loads(body)["error"]  # Ollama's shape on /api: a plain message
    assert error["code"] == "not_found" if isinstance(error, dict) else "no endpoint" in error
    assert headers["x-should-retry"] == "false"
    assert relay.stub.seen == []  # never routed, so never refused by the connector either
    # The connection stays in step for the next request.
    status, _, _ = await client.ask(post_bytes(chunked=lane == "aiohttp"))
    assert status == 200


@pytest.mark.parametrize("lane", LANES)
async def test_the_query_is_forwarded_exactly_as_sent(
    relay: Relay, connect: Any, lane: str
) -> None:
    target = "/v1/completions?beta=true&q=a%20b+c&empty="
    body = {"model": "stub-model", "prompt": "hi"}
    client = await connect(relay.broker)
    status, _, answer = await client.ask(post_bytes(body, path=target, chunked=lane == "aiohttp"))
    assert status == 200
    assert json.loads(answer)["path"] == target


async def test_an_absolute_form_target_is_forwarded_as_its_path_and_query(
    relay: Relay, connect: Any
) -> None:
    body = {"model": "stub-model", "prompt": "hi"}
    client = await connect(relay.broker)
    raw = post_bytes(body, path="http://broker/v1/completions?x=1")
    status, _, answer = await client.ask(raw)
    assert status == 200
    assert json.loads(answer)["path"] == "/v1/completions?x=1"


@pytest.mark.parametrize("lane", LANES)
@pytest.mark.parametrize("failure", ["timeout", "connector_error"])
async def test_a_sized_stream_cut_short_by_the_broker_carries_no_error_bytes(
    make_broker: MakeBroker, fakes: list[FakeConnector], connect: Any, lane: str, failure: str
) -> None:
    broker = await make_broker(request_timeout=1.0)
    fake = await FakeConnector.attach(broker, ("m",))
    fakes.append(fake)
    event = sse_event(0)

    async def answer() -> None:
        sid = (await fake.next_request()).stream_id
        head = (("Content-Type", "text/event-stream"), ("Content-Length", "1000"))
        frames: list[p.Frame] = [p.ResponseHead(sid, 200, head), p.ResponseBody(sid, event)]
        if failure == "connector_error":
            frames.append(p.Error(sid, "llm_stream_failed", "the LLM server went away"))
        await fake.ws.send(p.encode_many(frames))  # a timeout: nothing more, ever

    answering = asyncio.create_task(answer())
    client = await connect(broker)
    client.writer.write(post_bytes({"model": "m"}, chunked=lane == "aiohttp"))
    status, headers = await _head(client.reader)
    await answering
    assert status == 200 and headers["content-length"] == "1000"
    with pytest.raises(asyncio.IncompleteReadError) as caught:
        await asyncio.wait_for(client.reader.readexactly(1000), 10)
    assert caught.value.partial == event
    # The express lane's request was served from the sockets' callbacks
    # (broker.stream.callbacktrip),
    # aiohttp's by a task (broker.stream.trip): each driver is covered.
    assert broker.express is not None
    assert (broker.express.served, broker.express.from_callbacks) == (
        (1, 1) if lane == "express" else (0, 0)
    )
