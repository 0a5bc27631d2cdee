"""A connector's owner decides who it serves and when (issue 21): blocked users and a pause.

A real broker (with its store and two users' keys), real connectors and stub LLMs on
loopback: the broker tells each connector who sent a request, a connector refuses a user
its settings block (the broker tries another connector, else answers 403 `user_blocked`),
and a paused connector takes no new request while the one it runs finishes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from broker.server import BrokerServer
from tests.conftest import MakeBroker, MakeConnector, wait_models
from tests.stub_llm import StubLLM

CHAT = {"model": "stub-model", "messages": [{"role": "user", "content": "Hi"}]}


async def user_key(broker: BrokerServer, username: str) -> tuple[str, str]:
    """A user in the broker's store and a key of theirs: (user id as relayed, key)."""
    store = broker.services.store
    assert store is not None
    user = await store.create_user(username, username.title())
    key, _ = await store.create_key(user.id, "test")
    return str(user.id), key


async def chat(
    broker: BrokerServer, key: str, body: dict[str, Any] = CHAT
) -> tuple[int, dict[str, Any] | bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{broker.base_url}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
        ) as resp,
    ):
        if resp.content_type == "application/json":
            answer: dict[str, Any] = await resp.json()
            return resp.status, answer
        return resp.status, await resp.read()


async def test_a_blocked_user_gets_403_and_another_user_is_served(
    stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector
) -> None:
    broker = await make_broker()
    alice, alice_key = await user_key(broker, "alice")
    _, bob_key = await user_key(broker, "bob")
    await make_connector(broker, stub.url, blocked_users=[alice])
    await wait_models(broker, {"stub-model"})

    status, answer = await chat(broker, alice_key)
    assert status == 403
    assert answer == {
        "error": {
            "message": "The owner of this connector does not serve you.",
            "type": "permission_error",
            "param": None,
            "code": "user_blocked",
        }
    }
    assert stub.seen == []  # refused before the local LLM was called
    status, _ = await chat(broker, bob_key)
    assert status == 200
    assert len(stub.seen) == 1


async def test_a_blocked_user_is_served_by_a_connector_that_does_not_block_them(
    stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector
) -> None:
    other = StubLLM()
    await other.start()
    try:
        broker = await make_broker()
        alice, alice_key = await user_key(broker, "alice")
        await make_connector(broker, stub.url, blocked_users=[alice], name="blocks-alice")
        await make_connector(broker, other.url, name="serves-all")
        await wait_models(broker, {"stub-model"})
        async with asyncio.timeout(10):
            while len(broker.hub.links) < 2:
                await asyncio.sleep(0.01)
        for _ in range(4):  # the least-loaded pick alternates: both connectors are tried
            status, _ = await chat(broker, alice_key)
            assert status == 200
        assert stub.seen == [] and len(other.seen) == 4
    finally:
        await other.stop()


async def test_pause_lets_the_running_stream_finish_and_takes_no_new_request(
    stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector
) -> None:
    broker = await make_broker()
    _, key = await user_key(broker, "carol")
    running = await make_connector(broker, stub.url)
    await wait_models(broker, {"stub-model"})
    gated = {**CHAT, "stream": True, "x_stub": {"mode": "events", "events": 3, "gated": True}}
    first = asyncio.create_task(chat(broker, key, gated))
    async with asyncio.timeout(10):
        while stub.written != [0]:
            await asyncio.sleep(0.01)

    running.connector.client.set_paused(True)
    await wait_models(broker, set())  # the paused connector announces no models
    status, answer = await chat(broker, key)  # no other connector: the broker's usual 503
    assert status == 503
    assert isinstance(answer, dict) and answer["error"]["code"] == "no_connector_available"
    for i in range(2):
        stub.gate(i).set()
    status, streamed = await first
    assert status == 200 and isinstance(streamed, bytes) and streamed.endswith(b"[DONE]\n\n")
    assert len(stub.seen) == 1

    running.connector.client.set_paused(False)
    await wait_models(broker, {"stub-model"})  # announced again on resume
    status, _ = await chat(broker, key)
    assert status == 200


async def test_a_paused_connector_is_not_offered_requests_another_one_serves_them(
    stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector
) -> None:
    other = StubLLM()
    await other.start()
    try:
        broker = await make_broker()
        _, key = await user_key(broker, "dave")
        paused = await make_connector(broker, stub.url, name="paused")
        await make_connector(broker, other.url, name="serving")
        async with asyncio.timeout(10):
            while sorted(link.name for link in broker.hub.links if link.models) != [
                "paused",
                "serving",
            ]:
                await asyncio.sleep(0.01)
        paused.connector.client.set_paused(True)
        async with asyncio.timeout(10):
            while any(link.models for link in broker.hub.links if link.name == "paused"):
                await asyncio.sleep(0.01)
        # Idle, the paused connector would be the least loaded pick as often as not; it is
        # never offered a request, so none is refused or retried.
        for _ in range(4):
            status, _ = await chat(broker, key)
            assert status == 200
        assert stub.seen == [] and len(other.seen) == 4
        assert paused.connector.client.models == ("stub-model",)  # still known locally
        paused.connector.client.set_paused(False)
        async with asyncio.timeout(10):
            while not any(link.models for link in broker.hub.links if link.name == "paused"):
                await asyncio.sleep(0.01)
    finally:
        await other.stop()
