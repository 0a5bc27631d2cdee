"""The whole path on loopback: client -> broker -> WebSocket -> connector -> stub LLM."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import openai
import pytest
import structlog
from structlog.testing import capture_logs

from tests.conftest import USER_KEY, MakeBroker, MakeConnector, Relay, wait_models
from tests.stub_llm import CHAT_BODY, StubLLM, sse_event

AUTH = {"Authorization": f"Bearer {USER_KEY}"}
CHAT = {"model": "stub-model", "messages": [{"role": "user", "content": "Hi"}]}


def sdk(relay: Relay, **kwargs: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=relay.base_url, api_key=USER_KEY, **kwargs)


async def post(
    url: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, Any, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=body, headers=headers if headers is not None else AUTH) as resp,
    ):
        return resp.status, resp.headers, await resp.read()


async def test_non_streamed_chat_through_the_sdk_is_byte_identical(relay: Relay) -> None:
    async with sdk(relay) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="stub-model", messages=[{"role": "user", "content": "Hi"}]
        )
        completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from the stub."
    assert raw.http_response.content == CHAT_BODY
    status, _, direct = await post(f"{relay.stub.url}/v1/chat/completions", CHAT, {})
    assert (status, direct) == (200, raw.http_response.content)
    assert raw.headers["x-request-id"]


async def test_streamed_chat_through_the_sdk_is_byte_identical(relay: Relay) -> None:
    body = {**CHAT, "stream": True, "x_stub": {"mode": "events", "events": 6}}
    async with sdk(relay) as client:
        stream = await client.chat.completions.create(
            model="stub-model",
            messages=[{"role": "user", "content": "Hi"}],
            stream=True,
            extra_body={"x_stub": {"mode": "events", "events": 6}},
        )
        tokens = [chunk.choices[0].delta.content async for chunk in stream]
    assert tokens == [f"tok{i} " for i in range(6)]
    _, headers, relayed = await post(f"{relay.base_url}/chat/completions", body)
    _, _, direct = await post(f"{relay.stub.url}/v1/chat/completions", body, {})
    assert relayed == direct == b"".join(sse_event(i) for i in range(6)) + b"data: [DONE]\n\n"
    assert headers["Content-Type"] == "text/event-stream"
    assert headers["Cache-Control"] == "no-cache"
    assert headers["X-Accel-Buffering"] == "no"
    assert "Content-Encoding" not in headers


async def test_each_event_reaches_the_client_before_the_next_is_written(relay: Relay) -> None:
    """No buffering anywhere: the stub writes event i+1 only after the client holds event i."""
    body = {**CHAT, "stream": True, "x_stub": {"mode": "events", "events": 8, "gated": True}}
    received: list[bytes] = []
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{relay.base_url}/chat/completions", json=body, headers=AUTH) as resp,
    ):
        buffer = b""
        async for chunk in resp.content.iter_any():
            buffer += chunk
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                received.append(event + b"\n\n")
                index = len(received) - 1
                if index < 8:
                    # The stub has not written the next event yet: it waits for this gate.
                    assert relay.stub.written == list(range(index + 1))
                    relay.stub.gate(index).set()
    assert received[:8] == [sse_event(i) for i in range(8)]


async def test_ollama_ndjson_stream_passes_unchanged(relay: Relay) -> None:
    body = {"model": "stub-model", "messages": [{"role": "user", "content": "Hi"}]}
    status, headers, relayed = await post(f"{relay.broker.base_url}/api/chat", body)
    _, _, direct = await post(f"{relay.stub.url}/api/chat", body, {})
    assert status == 200
    assert headers["Content-Type"] == "application/x-ndjson"
    assert relayed == direct


async def test_upstream_status_and_body_pass_unchanged(relay: Relay) -> None:
    body = {**CHAT, "x_stub": {"mode": "status", "status": 422}}
    status, _, relayed = await post(f"{relay.base_url}/chat/completions", body)
    _, _, direct = await post(f"{relay.stub.url}/v1/chat/completions", body, {})
    assert status == 422
    assert relayed == direct


async def test_large_non_streamed_body_passes_whole(relay: Relay) -> None:
    size = 3 * 1024 * 1024 + 17  # several flow-control windows
    body = {**CHAT, "x_stub": {"mode": "big", "size": size}}
    status, headers, relayed = await post(f"{relay.base_url}/chat/completions", body)
    assert status == 200
    assert relayed == b"x" * size
    assert headers["Content-Length"] == str(size)


async def test_large_request_body_arrives_whole(relay: Relay) -> None:
    text = "y" * (300 * 1024)  # split into several 64 KiB frames on the way
    body = {"model": "stub-model", "messages": [{"role": "user", "content": text}]}
    status, _, _ = await post(f"{relay.base_url}/chat/completions", body)
    assert status == 200
    assert json.loads(relay.stub.seen[-1].body) == body


async def test_models_lists_the_union_of_connectors(
    relay: Relay, make_connector: MakeConnector
) -> None:
    other = StubLLM(models=["other-model", "stub-model"])
    await other.start()
    try:
        await make_connector(relay.broker, other.url, name="second")
        await wait_models(relay.broker, {"stub-model", "other-model"})
        async with sdk(relay) as client:
            models = await client.models.list()
        assert sorted(m.id for m in models.data) == ["other-model", "stub-model"]
        assert all(m.object == "model" and m.owned_by for m in models.data)
    finally:
        await other.stop()


async def test_request_id_travels_end_to_end_and_is_logged_on_both_sides(relay: Relay) -> None:
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        status, headers, _ = await post(
            f"{relay.base_url}/chat/completions", CHAT, {**AUTH, "X-Request-ID": "corr-42"}
        )
    assert status == 200
    assert headers["X-Request-ID"] == "corr-42"
    assert relay.stub.seen[-1].headers["X-Request-ID"] == "corr-42"
    events = {(entry["event"], entry.get("request_id")) for entry in logs}
    assert ("request finished", "corr-42") in events  # broker
    assert ("request served", "corr-42") in events  # connector


async def test_generated_request_id_when_client_sends_none(relay: Relay) -> None:
    _, headers, _ = await post(f"{relay.base_url}/chat/completions", CHAT)
    assert headers["X-Request-ID"].startswith("req_")
    assert relay.stub.seen[-1].headers["X-Request-ID"] == headers["X-Request-ID"]


async def test_user_credentials_never_reach_the_llm(relay: Relay) -> None:
    headers = {
        "x-api-key": USER_KEY,
        "Authorization": f"Bearer {USER_KEY}",
        "Cookie": "session=secret",
        "Connection": "keep-alive, X-Hop",
        "X-Hop": "hop-value",
        "X-Custom": "kept",
    }
    status, _, _ = await post(f"{relay.base_url}/chat/completions", CHAT, headers)
    assert status == 200
    seen = relay.stub.seen[-1]
    assert USER_KEY not in json.dumps(dict(seen.headers))
    assert "Cookie" not in seen.headers
    assert "X-Hop" not in seen.headers
    assert seen.headers["X-Custom"] == "kept"


async def test_anthropic_style_key_header_is_accepted(relay: Relay) -> None:
    body = {"model": "stub-model", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    status, _, relayed = await post(
        f"{relay.base_url}/messages",
        body,
        {"x-api-key": USER_KEY, "anthropic-version": "2023-06-01"},
    )
    assert status == 200
    assert json.loads(relayed)["id"] == "msg_stub"
    assert relay.stub.seen[-1].headers["anthropic-version"] == "2023-06-01"


async def test_local_llm_api_key_is_sent_as_bearer(
    stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector
) -> None:
    broker = await make_broker()
    await make_connector(broker, stub.url, llm_api_key="local-secret")
    await wait_models(broker, {"stub-model"})
    await post(f"{broker.base_url}/v1/chat/completions", CHAT)
    assert stub.seen[-1].headers["Authorization"] == "Bearer local-secret"


async def test_client_disconnect_mid_stream_cancels_the_upstream_request(relay: Relay) -> None:
    body = {**CHAT, "stream": True, "x_stub": {"mode": "events", "events": 2, "hang_at_end": True}}
    async with aiohttp.ClientSession() as session:
        resp = await session.post(f"{relay.base_url}/chat/completions", json=body, headers=AUTH)
        await resp.content.readuntil(b"\n\n")
        resp.close()  # the user goes away mid-stream
    await asyncio.wait_for(relay.stub.disconnected.wait(), 10)
    await wait_idle(relay)


async def test_client_disconnect_before_response_cancels_the_upstream_request(
    relay: Relay,
) -> None:
    body = {**CHAT, "x_stub": {"mode": "hang"}}
    async with aiohttp.ClientSession() as session:
        task = asyncio.create_task(
            session.post(f"{relay.base_url}/chat/completions", json=body, headers=AUTH)
        )
        await asyncio.wait_for(relay.stub.started.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await asyncio.wait_for(relay.stub.disconnected.wait(), 10)
    await wait_idle(relay)


async def wait_idle(relay: Relay) -> None:
    async with asyncio.timeout(10):
        while relay.broker.hub.in_flight() or relay.connector.connector.status.in_flight:
            await asyncio.sleep(0.01)


async def test_ollama_clients_can_list_models(relay: Relay) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{relay.broker.base_url}/api/tags", headers=AUTH) as resp,
    ):
        assert resp.status == 200
        tags = await resp.json()
    assert [m["name"] for m in tags["models"]] == ["stub-model"]
