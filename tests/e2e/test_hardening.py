"""Every model endpoint through the whole path, and a failure midway reaching the client."""

from __future__ import annotations

import json

import openai
import pytest

from shared.endpoints import MODEL_ENDPOINTS
from tests.conftest import Relay
from tests.e2e.test_relay import post, sdk
from tests.stub_llm import ECHOED


@pytest.mark.parametrize("path", [p for p in MODEL_ENDPOINTS if p in ECHOED])
async def test_every_model_endpoint_is_relayed_unchanged(relay: Relay, path: str) -> None:
    body = {"model": "stub-model", "input": "hello", "prompt": "hi"}
    status, _, relayed = await post(f"{relay.broker.base_url}{path}", body)
    assert status == 200
    assert json.loads(relayed) == {"path": path, "body": body}


async def test_every_model_endpoint_is_covered_by_some_test() -> None:
    covered = set(ECHOED) | {"/v1/chat/completions", "/v1/messages", "/api/chat"}
    assert covered == set(MODEL_ENDPOINTS)


async def test_failure_in_the_middle_of_an_event_still_reaches_the_client_as_an_error(
    relay: Relay,
) -> None:
    async with sdk(relay, max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="stub-model", messages=[], stream=True, extra_body={"x_stub": {"mode": "partial"}}
        )
        with pytest.raises(openai.APIError) as caught:
            async for _ in stream:
                pass
    assert "mid-response" in caught.value.message
