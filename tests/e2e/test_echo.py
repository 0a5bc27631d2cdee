"""The demo's built-in `echo` model answers every endpoint family, through the relay.

OpenAI's endpoints are checked with the openai SDK (a dev dependency); Anthropic's and
Ollama's with plain HTTP against the shapes their SDKs read (neither SDK is a dependency).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from broker.server import BrokerServer
from connector_app.core.echo import create_echo_app
from connector_app.core.echoformats import vector
from shared.endpoints import MODEL_ENDPOINTS
from tests.conftest import USER_KEY, MakeBroker, MakeConnector, wait_models

AUTH = {"Authorization": f"Bearer {USER_KEY}"}
SAID = "one two three"


@dataclass
class Demo:
    broker: BrokerServer

    @property
    def url(self) -> str:
        return self.broker.base_url

    def openai(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=USER_KEY, max_retries=0)

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, str, bytes]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{self.url}{path}", json=body, headers=AUTH) as resp,
        ):
            return resp.status, resp.headers.get("Content-Type", ""), await resp.read()


@pytest.fixture
async def demo(make_broker: MakeBroker, make_connector: MakeConnector) -> AsyncIterator[Demo]:
    runner = web.AppRunner(create_echo_app(delay=0.0), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    broker = await make_broker()
    await make_connector(broker, f"http://127.0.0.1:{runner.addresses[0][1]}")
    await wait_models(broker, {"echo"})
    yield Demo(broker)
    await runner.cleanup()


def sse(raw: bytes) -> list[tuple[str | None, dict[str, Any] | str]]:
    """An SSE body as (event name, parsed data) pairs."""
    events: list[tuple[str | None, dict[str, Any] | str]] = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        name = None
        data = ""
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data = line[len("data: ") :]
        events.append((name, data if data == "[DONE]" else json.loads(data)))
    return events


async def test_every_model_endpoint_gets_an_answer(demo: Demo) -> None:
    body = {"model": "echo", "messages": [{"role": "user", "content": SAID}], "prompt": SAID}
    for path in MODEL_ENDPOINTS:
        status, _, answer = await demo.post(path, {**body, "input": SAID, "stream": False})
        assert status == 200, (path, answer)
        assert answer and json.loads(answer), path


async def test_openai_chat_and_completions_whole_and_streamed(demo: Demo) -> None:
    async with demo.openai() as client:
        chat = await client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": SAID}]
        )
        assert chat.choices[0].message.content == SAID
        completion = await client.completions.create(model="echo", prompt=SAID)
        assert completion.choices[0].text == SAID and completion.usage is not None
        stream = await client.completions.create(
            model="echo", prompt=SAID, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == SAID
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3


async def test_openai_responses_whole_and_streamed(demo: Demo) -> None:
    async with demo.openai() as client:
        response = await client.responses.create(model="echo", input=SAID)
        assert response.output_text == SAID
        assert response.usage is not None and response.usage.output_tokens == 3
        listed = await client.responses.create(
            model="echo",
            input=[{"role": "user", "content": [{"type": "input_text", "text": "hi there"}]}],
        )
        assert listed.output_text == "hi there"
        async with client.responses.stream(model="echo", input=SAID) as stream:
            deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
            final = await stream.get_final_response()
    assert "".join(deltas) == SAID
    assert final.output_text == SAID and final.status == "completed"


async def test_openai_embeddings_are_deterministic_vectors(demo: Demo) -> None:
    async with demo.openai() as client:
        # The SDK asks for base64 unless told otherwise, and decodes it.
        default = await client.embeddings.create(model="echo", input=["a", "b"])
        floats = await client.embeddings.create(model="echo", input="a", encoding_format="float")
    assert [d.index for d in default.data] == [0, 1]
    assert default.data[0].embedding == pytest.approx(vector("a"), abs=1e-6)
    assert floats.data[0].embedding == vector("a") != vector("b")
    assert sum(x * x for x in vector("a")) == pytest.approx(1.0, abs=1e-4)


async def test_anthropic_messages_whole_and_streamed(demo: Demo) -> None:
    body: dict[str, Any] = {
        "model": "echo",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": [{"type": "text", "text": SAID}]}],
    }
    status, _, whole = await demo.post("/v1/messages", body)
    message = json.loads(whole)
    assert status == 200 and message["type"] == "message" and message["role"] == "assistant"
    assert message["content"] == [{"type": "text", "text": SAID}]
    assert message["stop_reason"] == "end_turn" and message["usage"]["output_tokens"] == 3
    status, kind, raw = await demo.post("/v1/messages", {**body, "stream": True})
    assert status == 200 and kind.startswith("text/event-stream")
    events = sse(raw)
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert all(isinstance(data, dict) and data["type"] == name for name, data in events)
    text = "".join(
        data["delta"]["text"]
        for name, data in events
        if name == "content_block_delta" and isinstance(data, dict)
    )
    assert text == SAID


async def test_ollama_chat_and_generate_stream_ndjson_by_default(demo: Demo) -> None:
    chat = {"model": "echo", "messages": [{"role": "user", "content": SAID}]}
    for path, body, field in [
        ("/api/chat", chat, lambda line: line["message"]["content"]),
        ("/api/generate", {"model": "echo", "prompt": SAID}, lambda line: line["response"]),
    ]:
        status, kind, raw = await demo.post(path, body)
        assert status == 200 and kind.startswith("application/x-ndjson")
        lines = [json.loads(line) for line in raw.decode().splitlines()]
        assert "".join(field(line) for line in lines) == SAID
        assert [line["done"] for line in lines] == [False, False, False, True]
        assert lines[-1]["done_reason"] == "stop" and lines[-1]["eval_count"] == 3
        status, kind, raw = await demo.post(path, {**body, "stream": False})
        whole = json.loads(raw)
        assert kind.startswith("application/json") and field(whole) == SAID and whole["done"]


async def test_ollama_embed_embeddings_and_show(demo: Demo) -> None:
    status, _, raw = await demo.post("/api/embed", {"model": "echo", "input": ["a", "b"]})
    assert status == 200 and json.loads(raw)["embeddings"] == [vector("a"), vector("b")]
    status, _, raw = await demo.post("/api/embeddings", {"model": "echo", "prompt": "a"})
    assert status == 200 and json.loads(raw) == {"embedding": vector("a")}
    for body in ({"model": "echo"}, {"name": "echo"}):
        status, _, raw = await demo.post("/api/show", body)
        shown = json.loads(raw)
        assert status == 200 and shown["details"]["family"] == "echo" and shown["capabilities"]


@pytest.mark.parametrize(
    ("path", "read"),
    [
        ("/v1/completions", lambda body: body["error"]["code"]),
        ("/v1/messages", lambda body: body["error"]["type"]),
        ("/api/generate", lambda body: body["error"]),
    ],
)
async def test_another_model_gets_a_404_in_the_familys_shape(path: str, read: Any) -> None:
    runner = web.AppRunner(create_echo_app(delay=0.0), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}{path}"
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, json={"model": "other"}) as resp,
        ):
            assert resp.status == 404
            assert read(await resp.json())
    finally:
        await runner.cleanup()
