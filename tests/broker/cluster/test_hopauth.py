"""The internal hop's signature: what a broker refuses, and what a refused broker does.

Brokers in one process sharing one Redis (tests/broker/cluster/test_forwarding.py's pair).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import aiohttp
from pydantic import SecretStr

from broker.cluster import hopauth
from broker.cluster.forwarding import HOP_PATH
from tests.broker.cluster.test_forwarding import (
    AUTH,
    CHAT,
    SECRET,
    Pair,
    cluster_broker,
    pair,
)
from tests.conftest import MakeBroker, MakeConnector, wait_models
from tests.stub_llm import StubLLM

__all__ = ["pair"]  # a fixture, used by name


async def test_a_forged_internal_request_is_refused_and_reaches_no_connector(pair: Pair) -> None:
    url = f"{pair.b.base_url}{HOP_PATH}"
    principal = hopauth.encode_user(("1", "mallory"))
    body = json.dumps(CHAT).encode()
    target, rid = "/v1/chat/completions", "req-forged"
    forged = {hopauth.TARGET: target, hopauth.PRINCIPAL: principal, "X-Request-ID": rid}
    node = pair.b.services.cluster.node.id
    now = time.time()
    key = SECRET.encode()
    wrong = hopauth.sign(b"w" * 40, node, target, rid, principal, body, now)
    stale = hopauth.sign(key, node, target, rid, principal, body, now - 3600)
    elsewhere = hopauth.sign(key, "another-broker", target, rid, principal, body, now)
    other_body = hopauth.sign(key, node, target, rid, principal, b'{"model":"x"}', now)
    cases = [
        ({}, 401),
        ({hopauth.HOP: wrong}, 403),
        ({hopauth.HOP: stale}, 403),
        ({hopauth.HOP: elsewhere}, 403),  # signed for another broker
        ({hopauth.HOP: other_body}, 403),  # signed for another body
    ]
    async with aiohttp.ClientSession() as session:
        for extra, status in cases:
            headers = {**forged, **extra, "Content-Type": "application/json"}
            async with session.post(url, data=body, headers=headers) as resp:
                assert resp.status == status
                assert "cluster" in (await resp.json())["error"]["message"]
                assert resp.headers["X-RemoteLLM-Hop-Error"].endswith("cluster_signature")
    assert pair.stub.seen == []


async def test_a_signed_hop_is_served_once_however_often_it_is_sent(pair: Pair) -> None:
    """A hop seen on the wire cannot be sent again: the same signature is refused."""
    url = f"{pair.b.base_url}{HOP_PATH}"
    principal = hopauth.encode_user(("configured", ""))
    body = json.dumps(CHAT).encode()
    target, rid = "/v1/chat/completions", "req-replayed"
    node = pair.b.services.cluster.node.id
    signature = hopauth.sign(SECRET.encode(), node, target, rid, principal, body, time.time())
    headers = {
        hopauth.HOP: signature,
        hopauth.TARGET: target,
        hopauth.PRINCIPAL: principal,
        "X-Request-ID": rid,
        "Content-Type": "application/json",
    }
    statuses = []
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                statuses.append(resp.status)
    assert statuses == [200, 403]
    assert len(pair.stub.seen) == 1


async def test_brokers_with_different_secrets_never_pass_the_refusal_to_the_client(
    make_broker: MakeBroker,
    make_connector: MakeConnector,
    stub: StubLLM,
    redis_url: str,
    tmp_path: Path,
) -> None:
    """A misconfigured cluster: B refuses A's signature; A's client gets A's own 503 after
    the hold (the request found no connector it could use), never B's 403, and no connector
    runs it."""
    store = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    a = await cluster_broker(make_broker, redis_url, store, connector_wait=0.5)
    b = await make_broker(
        database_url=store,
        redis_url=SecretStr(redis_url),
        cluster_secret=SecretStr("another-secret-" + "x" * 32),
    )
    await make_connector(b, stub.url)
    await wait_models(a, {"stub-model"})
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{a.base_url}/v1/chat/completions", json=CHAT, headers=AUTH) as resp,
    ):
        body = await resp.json()
    assert resp.status == 503
    assert body["error"]["code"] == "no_connector_available"
    assert stub.seen == []
