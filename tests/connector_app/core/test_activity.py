"""Per-request events from the relay client, and the bounded activity log."""

from __future__ import annotations

import json

import aiohttp

from connector_app.core.activity import (
    USAGE_WINDOW,
    Activity,
    RequestEvent,
    RequestFinished,
    RequestStarted,
    UsageProbe,
    describe_change,
    model_of,
)
from connector_app.core.status import LinkState, Status
from tests.conftest import USER_KEY, Relay
from tests.stub_llm import CHAT_BODY

AUTH = {"Authorization": f"Bearer {USER_KEY}", "X-Request-ID": "req-from-test-1"}


async def test_the_client_publishes_start_and_finish_with_model_status_and_tokens(
    relay: Relay,
) -> None:
    seen: list[RequestEvent] = []
    relay.connector.connector.events.subscribe(seen.append)
    body = {"model": "stub-model", "messages": [{"role": "user", "content": "Hi"}]}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{relay.base_url}/chat/completions", json=body, headers=AUTH) as resp,
    ):
        relayed = await resp.read()
    assert relayed == CHAT_BODY  # listening did not change a byte
    started, finished = seen
    assert isinstance(started, RequestStarted)
    assert (started.request_id, started.model, started.path) == (
        "req-from-test-1",
        "stub-model",
        "/v1/chat/completions",
    )
    assert isinstance(finished, RequestFinished)
    assert finished.request_id == "req-from-test-1"
    assert (finished.status, finished.outcome) == (200, "ok")
    assert (finished.prompt_tokens, finished.completion_tokens) == (3, 4)
    assert finished.duration >= 0


async def test_a_failed_request_is_published_as_failed(relay: Relay) -> None:
    seen: list[RequestEvent] = []
    relay.connector.connector.events.subscribe(seen.append)
    body = {"model": "stub-model", "x_stub": {"mode": "status", "status": 400}}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{relay.base_url}/chat/completions", json=body, headers=AUTH) as resp,
    ):
        assert resp.status == 400
    finished = seen[-1]
    assert isinstance(finished, RequestFinished)
    assert finished.status == 400
    assert finished.prompt_tokens is None


def test_model_of_reads_json_and_tolerates_garbage() -> None:
    assert model_of(b'{"model": "llama3.1:8b", "messages": []}') == "llama3.1:8b"
    assert model_of(b"not json") == "?"
    assert model_of(b'{"model": 3}') == "?"
    big = b'{"model": "big-one", "input": "' + b"x" * (300 * 1024) + b'"}'
    assert model_of(big) == "big-one"


def test_usage_probe_finds_openai_anthropic_and_ollama_counts() -> None:
    probe = UsageProbe()
    probe.feed(CHAT_BODY)
    assert probe.tokens() == (3, 4)

    anthropic = UsageProbe()
    anthropic.feed(b'event: message_start\ndata: {"message":{"usage":{"input_tokens":12}}}\n\n')
    for _ in range(2000):
        anthropic.feed(b'event: content_block_delta\ndata: {"delta":{"text":"hi"}}\n\n')
    anthropic.feed(b'event: message_delta\ndata: {"usage":{"output_tokens":34}}\n\n')
    assert anthropic.tokens() == (12, 34)

    ollama = UsageProbe()
    ollama.feed(b'{"done":false}\n' * 10)
    ollama.feed(b'{"done":true,"prompt_eval_count":5,"eval_count":6}\n')
    assert ollama.tokens() == (5, 6)

    assert UsageProbe().tokens() == (None, None)


def test_usage_probe_stays_small_on_long_streams() -> None:
    probe = UsageProbe()
    for _ in range(10_000):
        probe.feed(b"data: " + json.dumps({"x": "y" * 100}).encode() + b"\n\n")
    assert len(probe._head) <= USAGE_WINDOW
    assert len(probe._tail) <= 2 * USAGE_WINDOW


def finished(i: int) -> RequestFinished:
    return RequestFinished(f"r{i}", "m", "/v1/chat/completions", 200, "ok", 0.1, 1, 2, 0.0)


def test_activity_is_bounded_and_tracks_in_flight() -> None:
    activity = Activity(limit=3, events_limit=2, clock=lambda: 42.0)
    activity.on_request(RequestStarted("r0", "m", "/v1/chat/completions", 0.0))
    assert list(activity.in_flight) == ["r0"]
    for i in range(5):
        activity.on_request(finished(i))
    assert [r.request_id for r in activity.recent] == ["r2", "r3", "r4"]
    assert activity.in_flight == {}
    old = Status()
    for state in (LinkState.CONNECTING, LinkState.CONNECTED, LinkState.DISCONNECTED):
        activity.on_status(old, new := Status(state=state))
        old = new
    assert [e.text for e in activity.link_events] == ["connected to the broker", "disconnected"]
    assert activity.link_events[0].at == 42.0


def test_status_changes_read_as_connection_events() -> None:
    up = Status(state=LinkState.CONNECTED, models=("a",))
    down = Status(
        state=LinkState.RECONNECTING, models=("a",), last_error="the link was lost", retry_in=2.5
    )
    assert describe_change(up, down) == ["link dropped; reconnecting in 2.5 s: the link was lost"]
    assert describe_change(up, Status(state=LinkState.CONNECTED, models=("a", "b"))) == [
        "models changed: a, b"
    ]
