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

from broker.keys import STORE
from broker.server import BrokerServer
from tests.conftest import USER_KEY, Relay
from tests.e2e.test_express import post_bytes
from tests.raw_connector import http_exchange


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
    store = broker.app[STORE]
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
