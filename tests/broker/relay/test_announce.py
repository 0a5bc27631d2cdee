"""What a connector announces (its name, its models) is bounded and checked at the hello.

A hand-made connector (tests/raw_connector.py) announces names no real connector would:
text that is not clean, too long, too many. The broker must refuse or leave out what it
cannot keep, and `/metrics`, `/health` and the API must keep answering, also after the
connector left.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.metrics import MAX_MODEL_LABELS
from broker.relay.modelbook import REMEMBER_AT_MOST
from broker.server import BrokerServer
from connector_app.core.status import LinkState
from shared import protocol as p
from shared import websocket as ws
from shared.handshake import MAX_MODELS
from shared.text import MAX_NAME_LENGTH, is_clean
from tests.conftest import USER_KEY, MakeBroker, MakeConnector, broker_settings
from tests.raw_connector import RawConnector
from tests.stub_llm import StubLLM

LONE_SURROGATE = json.loads('"bad\\udcff"')
AUTH = {"Authorization": f"Bearer {USER_KEY}"}


def json_frame(kind: p.FrameType, obj: dict[str, Any]) -> bytes:
    """A control frame whose JSON is escaped ASCII: it can carry lone surrogates, as JSON may."""
    payload = json.dumps(obj).encode()
    return p.HEADER.pack(kind, 0, len(payload)) + payload


def hello(name: str, models: Iterable[str]) -> bytes:
    obj = {"version": p.PROTOCOL_VERSION, "name": name, "models": list(models)}
    return json_frame(p.FrameType.HELLO, {**obj, "max_concurrency": 4})


def models_update(models: Iterable[str]) -> bytes:
    return json_frame(p.FrameType.MODELS, {"models": list(models)})


class Announcer:
    """A hand-made connector past its hello: answers every request 200, notes the close."""

    def __init__(self, raw: RawConnector) -> None:
        self.raw = raw
        self.closed: asyncio.Future[ws.Close | None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._serve())

    async def _serve(self) -> None:
        try:
            while True:
                event = await self.raw.next_event(timeout=60)
                if isinstance(event, ws.Close):
                    self.closed.set_result(event)
                    return
                if isinstance(event, ws.Message):
                    for frame in p.decode(event.data):
                        if isinstance(frame, p.RequestHead):
                            self._answer(frame.stream_id)
        except (EOFError, ConnectionError, TimeoutError):
            if not self.closed.done():
                self.closed.set_result(None)

    def _answer(self, stream_id: int) -> None:
        head = p.ResponseHead(stream_id, 200, (("content-type", "application/json"),))
        body = p.ResponseBody(stream_id, b"{}")
        self.raw.send(p.encode_many([head, body, p.End(stream_id)]))

    async def leave(self) -> None:
        self.raw.close()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def announce(broker: BrokerServer, name: str, models: Iterable[str]) -> Announcer | ws.Close:
    """Upgrade and send a hello: an Announcer when welcomed, else the broker's close frame."""
    raw = await RawConnector.upgrade(broker.port)
    raw.send(hello(name, models))
    event = await raw.next_event()
    if isinstance(event, ws.Close):
        raw.close()
        return event
    assert isinstance(event, ws.Message)
    assert isinstance(p.decode(event.data)[0], p.Welcome)
    return Announcer(raw)


async def welcomed(broker: BrokerServer, name: str, models: Iterable[str]) -> Announcer:
    announcer = await announce(broker, name, models)
    assert isinstance(announcer, Announcer), announcer
    return announcer


async def wait_no_links(broker: BrokerServer) -> None:
    async with asyncio.timeout(10):
        while broker.hub.links:
            await asyncio.sleep(0.01)


async def chat(session: aiohttp.ClientSession, broker: BrokerServer, model: str) -> int:
    body = json.dumps({"model": model, "messages": []})  # escapes a lone surrogate, as JSON may
    async with session.post(
        f"{broker.base_url}/v1/chat/completions",
        data=body,
        headers={**AUTH, "Content-Type": "application/json"},
    ) as response:
        await response.read()
        return response.status


async def assert_observable(session: aiohttp.ClientSession, broker: BrokerServer) -> None:
    """`/metrics` and `/health` answer 200, with a bounded `model` label."""
    async with session.get(f"{broker.base_url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    labels = {
        line.split('model="', 1)[1].split('"', 1)[0]
        for line in text.splitlines()
        if line.startswith("remotellm_requests_total{")
    }
    assert len(labels - {"unknown", "other"}) <= MAX_MODEL_LABELS
    assert "\nremotellm_requests_in_flight 0.0\n" in text
    async with session.get(f"{broker.base_url}/health") as response:
        assert response.status == 200
        await response.json()


# ---------------------------------------------------------------------------
# Model names that are not clean text


async def test_a_model_name_that_is_not_clean_text_is_left_out(
    make_broker: MakeBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    broker = await make_broker()
    announcer = await welcomed(broker, "plain", ["good", LONE_SURROGATE, "ctl\x00", "nl\nx"])
    try:
        async with aiohttp.ClientSession() as session:
            assert await chat(session, broker, "good") == 200
            assert await chat(session, broker, LONE_SURROGATE) < 500
            await assert_observable(session, broker)
            assert broker.hub.models().keys() == {"good"}
            await announcer.leave()
            await wait_no_links(broker)
            await assert_observable(session, broker)
    finally:
        await announcer.leave()
    warnings = [line for line in capsys.readouterr().out.splitlines() if "not clean" in line]
    assert len(warnings) == 1
    assert "count=3" in warnings[0] and "bad\\\\udcff" in warnings[0]


async def test_a_models_update_leaves_out_names_that_are_not_clean_text(
    make_broker: MakeBroker,
) -> None:
    broker = await make_broker()
    announcer = await welcomed(broker, "plain", ["good"])
    try:
        announcer.raw.send(models_update(["good", "new", LONE_SURROGATE]))
        async with asyncio.timeout(10):
            while broker.hub.models().keys() != {"good", "new"}:
                await asyncio.sleep(0.01)
        async with aiohttp.ClientSession() as session:
            assert await chat(session, broker, LONE_SURROGATE) < 500
            await assert_observable(session, broker)
    finally:
        await announcer.leave()


# ---------------------------------------------------------------------------
# Bounds: how many models, how long a name


async def test_more_models_than_the_bound_are_refused_at_the_hello(
    make_broker: MakeBroker,
) -> None:
    broker = await make_broker()
    close = await announce(broker, "many", [f"m{i}" for i in range(MAX_MODELS + 1)])
    assert isinstance(close, ws.Close)
    assert close.code == p.CLOSE_POLICY_VIOLATION
    assert f"announced {MAX_MODELS + 1} models" in close.reason
    assert not broker.hub.links and broker.hub.remembered() == 0
    announcer = await welcomed(broker, "enough", [f"m{i}" for i in range(MAX_MODELS)])
    await announcer.leave()


async def test_a_models_update_past_the_bound_closes_the_link(make_broker: MakeBroker) -> None:
    broker = await make_broker()
    announcer = await welcomed(broker, "growing", ["m0"])
    try:
        announcer.raw.send(models_update(f"m{i}" for i in range(MAX_MODELS + 1)))
        close = await asyncio.wait_for(announcer.closed, 10)
        assert close is not None and close.code == p.CLOSE_POLICY_VIOLATION
        assert f"announced {MAX_MODELS + 1} models" in close.reason
        await wait_no_links(broker)
        assert broker.hub.remembered() == 1  # m0, remembered for a while: a 503, not a 404
    finally:
        await announcer.leave()


async def test_a_model_name_too_long_is_refused(make_broker: MakeBroker) -> None:
    broker = await make_broker()
    close = await announce(broker, "long", ["x" * (MAX_NAME_LENGTH + 1)])
    assert isinstance(close, ws.Close)
    assert close.code == p.CLOSE_POLICY_VIOLATION
    assert f"at most {MAX_NAME_LENGTH}" in close.reason
    assert not broker.hub.links


@pytest.mark.parametrize(
    "name", ["x" * (MAX_NAME_LENGTH + 1), "", "two\nlines", LONE_SURROGATE, "nul\x00"]
)
async def test_a_connector_name_too_long_or_not_clean_is_refused(
    make_broker: MakeBroker, name: str
) -> None:
    broker = await make_broker()
    close = await announce(broker, name, ["m"])
    assert isinstance(close, ws.Close)
    assert close.code == p.CLOSE_POLICY_VIOLATION
    assert "connector name" in close.reason
    assert not broker.hub.links


async def test_a_connector_refused_for_its_models_says_so_plainly_and_backs_off(
    make_broker: MakeBroker, make_connector: MakeConnector, stub: StubLLM
) -> None:
    stub.models = [f"m{i}" for i in range(MAX_MODELS + 1)]
    broker = await make_broker()
    running = await make_connector(broker, stub.url)
    async with asyncio.timeout(10):
        # The error is shown first, the retry scheduled just after: wait for both.
        while running.connector.status.retry_in is None:
            await asyncio.sleep(0.01)
    status = running.connector.status
    assert status.last_error == (
        f"the broker refused this connector: the connector announced {MAX_MODELS + 1} models, "
        f"over the broker's limit of {MAX_MODELS}; choose some with --model"
    )
    assert status.fatal
    assert status.state is LinkState.RECONNECTING and status.retry_in is not None
    assert not broker.hub.links


# ---------------------------------------------------------------------------
# The property: whatever a connector announces, shared state stays sound

MODEL_NAMES = st.one_of(
    st.lists(st.text(max_size=MAX_NAME_LENGTH + 20), max_size=8),
    # Many models at once: near and past the bound, each set new (the hub's memory grows).
    st.builds(
        lambda count, tag: [f"{tag}-{i}" for i in range(count)],
        st.integers(0, MAX_MODELS + 50),
        st.text(st.characters(codec="utf-8"), min_size=1, max_size=8),
    ),
)
CONNECTOR_NAMES = st.one_of(st.text(max_size=MAX_NAME_LENGTH + 20), st.just("plain"))


async def use(session: aiohttp.ClientSession, broker: BrokerServer, models: list[str]) -> None:
    """Ask for a few of the announced models; whatever they are, no 500 and sound state."""
    for model in models[:3]:
        status = await chat(session, broker, model)
        assert status in (200, 400, 404, 503), (model, status)
    await assert_observable(session, broker)
    assert all(is_clean(model) for model in broker.hub.models())


async def taken(broker: BrokerServer, announcer: Announcer, update: list[str]) -> None:
    """Wait until the broker took the models update in, or closed the link for it."""
    expected = {model for model in update if is_clean(model)}
    async with asyncio.timeout(10):
        while not announcer.closed.done() and broker.hub.models().keys() != expected:
            await asyncio.sleep(0.01)


async def one_announcement(
    broker: BrokerServer, name: str, models: list[str], update: list[str] | None
) -> None:
    """Announce, use what was announced, leave; then check every invariant."""
    announcer = await announce(broker, name, models)
    async with aiohttp.ClientSession() as session:
        if isinstance(announcer, Announcer):
            try:
                await use(session, broker, models)
                if update is not None:
                    announcer.raw.send(models_update(update))
                    await taken(broker, announcer, update)
                    await use(session, broker, update)
            finally:
                await announcer.leave()
        else:
            assert announcer.code == p.CLOSE_POLICY_VIOLATION, announcer
        await wait_no_links(broker)
        await assert_observable(session, broker)
    hub = broker.hub
    assert hub.remembered() <= REMEMBER_AT_MOST
    assert not hub.models()
    assert hub.in_flight() == 0 and broker.services.lifecycle.active == 0


def test_whatever_a_connector_announces_the_broker_keeps_answering() -> None:
    with asyncio.Runner() as runner:
        # One broker for the whole run: what one example leaves behind, the next one meets.
        broker = BrokerServer(broker_settings(connector_wait=0.05, queue_timeout=0.05))
        runner.run(broker.start())
        try:

            @settings(
                max_examples=40,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )
            @given(CONNECTOR_NAMES, MODEL_NAMES, st.one_of(st.none(), MODEL_NAMES))
            def announcing(name: str, models: list[str], update: list[str] | None) -> None:
                runner.run(one_announcement(broker, name, models, update))

            announcing()
        finally:
            runner.run(broker.stop())
