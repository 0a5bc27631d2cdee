"""Every error the broker produces, in the shape each client family expects."""

from __future__ import annotations

import asyncio
import json
import socket

import aiohttp
import openai
import pytest

from tests.conftest import USER_KEY, MakeBroker, MakeConnector, Relay, wait_models
from tests.e2e.test_relay import AUTH, CHAT, post, sdk
from tests.stub_llm import StubLLM


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def assert_openai_error(body: bytes, code: str, kind: str) -> None:
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["code"], error["type"]) == (code, kind)
    assert error["message"]


async def test_missing_or_wrong_key_gets_401(relay: Relay) -> None:
    status, headers, body = await post(f"{relay.base_url}/chat/completions", CHAT, {})
    assert status == 401
    assert_openai_error(body, "invalid_api_key", "authentication_error")
    assert headers["X-Request-ID"]
    async with openai.AsyncOpenAI(base_url=relay.base_url, api_key="sk-wrong") as client:
        with pytest.raises(openai.AuthenticationError):
            await client.chat.completions.create(model="stub-model", messages=[])
    assert relay.stub.seen == []


async def test_models_endpoint_needs_a_key(relay: Relay) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"{relay.base_url}/models") as r:
        assert r.status == 401


async def test_unknown_model_gets_404_model_not_found(relay: Relay) -> None:
    async with sdk(relay, max_retries=0) as client:
        with pytest.raises(openai.NotFoundError) as caught:
            await client.chat.completions.create(model="no-such-model", messages=[])
    assert caught.value.code == "model_not_found"


async def test_no_connector_gets_503_with_retry_after(make_broker: MakeBroker) -> None:
    broker = await make_broker(connector_wait=0.2)
    status, headers, body = await post(f"{broker.base_url}/v1/chat/completions", CHAT)
    assert status == 503
    assert int(headers["Retry-After"]) > 0
    assert_openai_error(body, "no_connector_available", "server_error")


async def test_model_whose_connector_left_gets_503_not_404(
    relay: Relay, make_connector: MakeConnector
) -> None:
    await relay.connector.stop()
    await wait_models(relay.broker, set())
    status, headers, body = await post(f"{relay.base_url}/chat/completions", CHAT)
    assert status == 503
    assert "Retry-After" in headers
    assert_openai_error(body, "no_connector_available", "server_error")


async def test_busy_connectors_get_503_after_the_queue_timeout(
    stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector
) -> None:
    broker = await make_broker(queue_timeout=0.2)
    await make_connector(broker, stub.url, max_concurrency=1)
    await wait_models(broker, {"stub-model"})
    hanging = asyncio.create_task(
        post(f"{broker.base_url}/v1/chat/completions", {**CHAT, "x_stub": {"mode": "hang"}})
    )
    await asyncio.wait_for(stub.started.wait(), 10)
    status, headers, body = await post(f"{broker.base_url}/v1/chat/completions", CHAT)
    assert status == 503
    assert "Retry-After" in headers
    assert "capacity" in json.loads(body)["error"]["message"]
    hanging.cancel()


async def test_body_over_the_limit_gets_413(make_broker: MakeBroker) -> None:
    broker = await make_broker(max_body_size=2048)
    big = {**CHAT, "messages": [{"role": "user", "content": "z" * 4096}]}
    status, headers, body = await post(f"{broker.base_url}/v1/chat/completions", big)
    assert status == 413
    assert headers["x-should-retry"] == "false"
    assert_openai_error(body, "request_too_large", "invalid_request_error")


@pytest.mark.parametrize("payload", [b"not json", b"[1, 2]", b'{"messages": []}', b'{"model": 5}'])
async def test_body_without_a_model_gets_400(relay: Relay, payload: bytes) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{relay.base_url}/chat/completions", data=payload, headers=AUTH) as resp,
    ):
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["param"] == "model"


async def test_unreachable_llm_gets_502(
    make_broker: MakeBroker, make_connector: MakeConnector
) -> None:
    broker = await make_broker()
    dead = f"http://127.0.0.1:{free_port()}"
    await make_connector(broker, dead, model=["stub-model"])
    await wait_models(broker, {"stub-model"})
    status, _, body = await post(f"{broker.base_url}/v1/chat/completions", CHAT)
    assert status == 502
    assert_openai_error(body, "llm_unreachable", "server_error")
    assert "unreachable" in json.loads(body)["error"]["message"]


async def test_slow_model_gets_504_and_the_upstream_is_cancelled(
    stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector
) -> None:
    broker = await make_broker(request_timeout=0.5)
    await make_connector(broker, stub.url)
    await wait_models(broker, {"stub-model"})
    status, _, body = await post(
        f"{broker.base_url}/v1/chat/completions", {**CHAT, "x_stub": {"mode": "hang"}}
    )
    assert status == 504
    assert_openai_error(body, "timeout", "server_error")
    await asyncio.wait_for(stub.disconnected.wait(), 10)


async def test_failure_after_the_stream_started_ends_with_an_error_event(relay: Relay) -> None:
    async with sdk(relay, max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="stub-model",
            messages=[],
            stream=True,
            extra_body={"x_stub": {"mode": "events", "events": 5, "break_after": 1}},
        )
        tokens: list[str | None] = []
        with pytest.raises(openai.APIError) as caught:
            async for chunk in stream:
                tokens.append(chunk.choices[0].delta.content)
    assert tokens == ["tok0 ", "tok1 "]
    assert "mid-response" in caught.value.message


async def test_timeout_after_the_stream_started_ends_with_an_error_event(
    stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector
) -> None:
    broker = await make_broker(request_timeout=0.5)
    await make_connector(broker, stub.url)
    await wait_models(broker, {"stub-model"})
    body = {**CHAT, "stream": True, "x_stub": {"mode": "events", "events": 1, "hang_at_end": True}}
    status, _, raw = await post(f"{broker.base_url}/v1/chat/completions", body)
    assert status == 200
    last = raw.strip().split(b"\n\n")[-1]
    assert last.startswith(b"data: ")
    assert json.loads(last[6:])["error"]["code"] == "timeout"
    await asyncio.wait_for(stub.disconnected.wait(), 10)


async def test_anthropic_endpoint_errors_use_anthropic_shape(relay: Relay) -> None:
    status, _, body = await post(f"{relay.base_url}/messages", {"model": "stub-model"}, {})
    assert status == 401
    parsed = json.loads(body)
    assert parsed["type"] == "error"
    assert parsed["error"]["type"] == "authentication_error"


async def test_ollama_endpoint_errors_use_ollama_shape(relay: Relay) -> None:
    status, _, body = await post(f"{relay.broker.base_url}/api/chat", {"model": "nope"})
    assert status == 404
    assert isinstance(json.loads(body)["error"], str)


async def test_unknown_path_gets_a_json_404(relay: Relay) -> None:
    status, headers, body = await post(f"{relay.base_url}/nothing-here", CHAT)
    assert status == 404
    assert_openai_error(body, "not_found", "invalid_request_error")
    assert headers["X-Request-ID"]


async def test_user_key_is_never_logged(relay: Relay, capsys: pytest.CaptureFixture[str]) -> None:
    await post(f"{relay.base_url}/chat/completions", CHAT)
    await post(f"{relay.base_url}/chat/completions", CHAT, {"Authorization": "Bearer sk-wrong-1"})
    out = capsys.readouterr()
    assert USER_KEY not in out.out + out.err
    assert "sk-wrong-1" not in out.out + out.err
    assert "request finished" in out.out + out.err
