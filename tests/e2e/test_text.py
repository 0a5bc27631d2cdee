"""Text that is not valid Unicode at the broker's edges: bodies, header values, model names.

A lone surrogate is a valid JSON escape, a header may carry bytes above 0x7F, and a local
server may list any name: none of it may reach shared state (the usage ledger, the links'
stream tables, the connector's announcement) in a form that breaks it for everyone.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from structlog.testing import capture_logs

from broker.relay.link import ConnectorLink
from broker.server import BrokerServer
from shared import protocol as p
from shared.text import shown
from tests.broker.edge.test_express import post_bytes
from tests.broker.relay.test_misbehaving_connectors import FakeConnector, fakes
from tests.conftest import USER_KEY, MakeBroker, MakeConnector, Relay, wait_models
from tests.e2e.test_relay import CHAT
from tests.raw_connector import http_exchange
from tests.stub_llm import StubLLM

__all__ = ["fakes"]  # a fixture, used by name


async def raw_post(
    broker: BrokerServer, body: Any, *extra: str, chunked: bool = False
) -> tuple[int, dict[str, str], Any]:
    """POST over a raw socket (`chunked`: a head the express lane leaves to aiohttp)."""
    request = post_bytes(
        body, "/v1/chat/completions", USER_KEY, *extra, "Connection: close", chunked=chunked
    )
    status, headers, rest = await http_exchange(broker.port, request)
    if "content-length" in headers:
        rest = rest[: int(headers["content-length"])]
    try:
        return status, headers, json.loads(rest)
    except ValueError:
        return status, headers, rest


async def usage_of(broker: BrokerServer, request_id: str) -> None:
    """Return once the usage row of `request_id` is in the store."""
    store = broker.services.store
    async with asyncio.timeout(10):
        while request_id not in {row.request_id for row in await store.usage.rows()}:
            await asyncio.sleep(0.02)


async def health(broker: BrokerServer) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{broker.base_url}/health") as resp,
    ):
        assert resp.status == 200
        answer: dict[str, Any] = await resp.json()
        return answer


async def test_a_model_that_is_not_clean_text_is_refused_on_every_lane_and_usage_goes_on(
    relay: Relay,
) -> None:
    broker = relay.broker
    for model in ("\udcff", "stub\x00model", "x" * 257, "a\u2028b"):
        body = {"model": model, "messages": []}
        for chunked in (False, True):  # the express lane, then aiohttp's
            status, headers, answer = await raw_post(broker, body, chunked=chunked)
            assert status == 400, (model, chunked)
            assert headers["x-should-retry"] == "false"
            assert answer["error"]["code"] == "invalid_request"
            assert answer["error"]["param"] == "model"
            assert "printable" in answer["error"]["message"]
    assert relay.stub.seen == []  # refused before routing
    # The ledger was not stalled by any of it: a normal request still gets its usage row.
    status, _, _ = await raw_post(broker, {"model": "stub-model"}, "X-Request-ID: after-odd")
    assert status == 200
    await usage_of(broker, "after-odd")
    assert (await health(broker))["in_flight"] == 0


def open_streams(broker: BrokerServer) -> list[int]:
    return [link.open_streams for link in broker.hub.links if isinstance(link, ConnectorLink)]


async def settled(broker: BrokerServer) -> None:
    """Return once no request is in flight and no link holds a stream."""
    async with asyncio.timeout(10):
        while (await health(broker))["in_flight"] or any(open_streams(broker)):
            await asyncio.sleep(0.02)


def odd_post(value: bytes, *, chunked: bool = False) -> bytes:
    """A chat request whose `X-Odd` header holds `value`, bytes as they are."""
    request = post_bytes(
        CHAT, "/v1/chat/completions", USER_KEY, "Connection: close", chunked=chunked
    )
    head, _, body = request.partition(b"\r\n\r\n")
    return head + b"\r\nX-Odd: " + value + b"\r\n\r\n" + body


async def test_a_header_byte_above_0x7f_reaches_the_local_server_unchanged(relay: Relay) -> None:
    broker = relay.broker
    values = [b"caf\xe9", "café ☕".encode(), b"\xff\xfe\x80", b"\xed\xa0\x80"]
    for value in values:
        for chunked in (False, True):  # handed over by the express lane / aiohttp's from the start
            status, _, _ = await http_exchange(broker.port, odd_post(value, chunked=chunked))
            assert status == 200, (value, chunked)
            seen = relay.stub.seen[-1].headers["X-Odd"]
            assert seen.encode("utf-8", "surrogateescape") == value
    await settled(broker)
    assert open_streams(broker) == [0]


async def test_a_header_with_a_control_character_is_refused_with_400_and_leaves_nothing(
    relay: Relay,
) -> None:
    broker = relay.broker
    for value in (b"a\x01b", b"a\x7fb", b"a\x00b", b"a\x1bb", b"\x08"):
        for chunked in (False, True):
            status, _, _ = await http_exchange(broker.port, odd_post(value, chunked=chunked))
            assert status == 400, (value, chunked)
    assert relay.stub.seen == []
    await settled(broker)
    assert open_streams(broker) == [0]


async def test_a_head_the_relay_cannot_carry_is_refused_with_400_and_leaves_no_stream(
    relay: Relay,
) -> None:
    """More header bytes than a relay frame holds (1 MiB): refused, and no stream is left on
    the link (each one used to stay there until the connector disconnected)."""
    broker = relay.broker
    # Each byte that is not UTF-8 takes six in the relay's JSON (a \udcXX escape).
    request = post_bytes(CHAT, "/v1/chat/completions", USER_KEY, "Connection: close")
    head, _, body = request.partition(b"\r\n\r\n")
    lines = b"".join(b"\r\nX-Big-%d: %b" % (i, b"\xe9" * 8000) for i in range(30))
    request = head + lines + b"\r\n\r\n" + body
    for _ in range(3):
        status, headers, rest = await http_exchange(broker.port, request)
        assert status == 400
        assert headers["x-should-retry"] == "false"
        assert json.loads(rest[: int(headers["content-length"])])["error"]["code"] == (
            "invalid_request"
        )
    assert relay.stub.seen == []
    await settled(broker)
    assert open_streams(broker) == [0]


async def test_a_response_header_that_is_not_utf8_is_refused_alike_on_both_lanes(
    make_broker: MakeBroker, fakes: list[FakeConnector]
) -> None:
    """aiohttp cannot write such a byte (it would leave it out): both lanes answer 502."""
    broker = await make_broker()
    fake = await FakeConnector.attach(broker, ("stub-model",))
    fakes.append(fake)

    async def answer_with_latin1() -> None:
        while True:
            sid = (await fake.next_request()).stream_id
            head = {"status": 200, "headers": [["X-Odd", "caf\udce9"]]}
            payload = json.dumps(head).encode()  # a \udce9 escape
            frame = p.HEADER.pack(p.FrameType.RESPONSE_HEAD, sid, len(payload)) + payload
            await fake.ws.send(frame + p.encode(p.End(sid)))

    answering = asyncio.create_task(answer_with_latin1())
    try:
        for chunked in (False, True):
            request = post_bytes(
                CHAT, "/v1/chat/completions", USER_KEY, "Connection: close", chunked=chunked
            )
            status, headers, rest = await http_exchange(broker.port, request)
            assert status == 502, chunked
            answer = json.loads(rest[: int(headers["content-length"])])
            assert answer["error"]["code"] == "connector_protocol_error"
    finally:
        answering.cancel()
    await settled(broker)


ODD_NAMES = ["bad\udcffname", "bell\x07", "x" * 300, "line\nbreak", ""]


async def test_a_local_server_listing_names_that_cannot_be_announced_still_gets_served(
    stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector
) -> None:
    stub.models = ["stub-model", *ODD_NAMES, "café ☕"]
    broker = await make_broker()
    with capture_logs() as logs:
        running = await make_connector(broker, stub.url)
        await wait_models(broker, {"stub-model", "café ☕"})
        await running.connector.refresh_models()  # a later discovery lists them again
    status, _, _ = await raw_post(broker, CHAT)
    assert status == 200
    skipped = [e for e in logs if e["event"].startswith("skipping a model")]
    assert sorted(e["model"] for e in skipped) == sorted(shown(name) for name in ODD_NAMES)
    assert running.connector.status.available == ("café ☕", "stub-model")
    assert not [e for e in logs if "cannot reach the broker" in str(e)]


async def test_models_given_in_the_settings_are_skipped_alike(
    stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector
) -> None:
    broker = await make_broker()
    with capture_logs() as logs:
        await make_connector(broker, stub.url, model=["stub-model", "bad\udcffname"])
        await wait_models(broker, {"stub-model"})
    skipped = [e["model"] for e in logs if e["event"].startswith("skipping a model")]
    assert skipped == ["bad\\udcffname"]
