"""/health and /metrics say what is going on, and never name a key."""

from __future__ import annotations

import os

import aiohttp

from tests.conftest import USER_KEY, Relay
from tests.e2e.test_relay import CHAT, post


async def get_text(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.text()


async def test_health_counts_connectors_and_models(relay: Relay) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{relay.broker.base_url}/health") as resp,
    ):
        health = await resp.json()
    assert health == {
        "status": "ok",
        "connectors": 1,
        "models": 1,
        "in_flight": 0,
        "pid": os.getpid(),
    }


async def test_metrics_count_requests_by_model_and_status(relay: Relay) -> None:
    await post(f"{relay.base_url}/chat/completions", CHAT)
    await post(f"{relay.base_url}/chat/completions", {**CHAT, "model": "made-up-by-a-client"})
    status, text = await get_text(f"{relay.broker.base_url}/metrics")
    assert status == 200
    assert 'remotellm_requests_total{model="stub-model",status="200"} 1.0' in text
    # A model nobody serves is not a label: clients cannot blow up the series count.
    assert 'remotellm_requests_total{model="unknown",status="404"} 1.0' in text
    assert "made-up-by-a-client" not in text
    assert 'remotellm_request_duration_seconds_count{model="stub-model"} 1.0' in text
    assert 'remotellm_time_to_first_byte_seconds_count{model="stub-model"} 1.0' in text
    assert "remotellm_connectors_connected 1.0" in text
    assert "remotellm_requests_in_flight 0.0" in text
    assert USER_KEY not in text
