"""A busy connector's turns, through a real broker and connector: round robin by user."""

from __future__ import annotations

import asyncio
import json

import aiohttp
from pydantic import SecretStr

from tests.conftest import USER_KEY, MakeBroker, MakeConnector, wait_models
from tests.stub_llm import StubLLM

OTHER_KEY = "sk-test-other-user-key-98765"
GUARD = 30.0  # hang guard, never a timing assertion


async def ask(session: aiohttp.ClientSession, url: str, key: str, tag: str) -> int:
    body = {
        "model": "stub-model",
        "messages": [{"role": "user", "content": tag}],
        "stream": True,
        "x_stub": {"mode": "events", "events": 2, "gated": tag == "A0"},
    }
    headers = {"Authorization": f"Bearer {key}"}
    async with session.post(url, json=body, headers=headers) as response:
        await response.read()
        return response.status


async def test_a_later_user_is_served_before_a_floods_backlog(
    stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector
) -> None:
    broker = await make_broker(
        user_api_key=[SecretStr(USER_KEY), SecretStr(OTHER_KEY)], queue_timeout=GUARD
    )
    await make_connector(broker, stub.url, max_concurrency=1)
    await wait_models(broker, {"stub-model"})
    url = f"{broker.base_url}/v1/chat/completions"
    async with aiohttp.ClientSession() as session, asyncio.timeout(GUARD):
        holder = asyncio.create_task(ask(session, url, USER_KEY, "A0"))  # holds the one slot
        await stub.started.wait()
        flood = [asyncio.create_task(ask(session, url, USER_KEY, f"A{i}")) for i in range(1, 6)]
        while broker.hub.queued("stub-model") < 5:
            await asyncio.sleep(0.01)
        late = asyncio.create_task(ask(session, url, OTHER_KEY, "B0"))
        while broker.hub.queued("stub-model") < 6:
            await asyncio.sleep(0.01)
        stub.gate(0).set()
        statuses = await asyncio.gather(holder, *flood, late)
    assert statuses == [200] * 7
    served = [json.loads(seen.body)["messages"][0]["content"] for seen in stub.seen]
    # A's backlog joined the rotation first, so A has the first turn; B has the next one.
    assert served[0] == "A0" and served[1].startswith("A") and served[2] == "B0"
    assert sorted(served) == ["A0", "A1", "A2", "A3", "A4", "A5", "B0"]
