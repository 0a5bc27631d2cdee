"""Keys from the store through the relay: revocation, limits, allow-lists and the usage ledger."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from broker.accounts.store import Store, database_url
from broker.app import _watch_revoked_connectors
from broker.server import BrokerServer
from connector_app.core.status import LinkState
from tests.conftest import USER_KEY, MakeBroker, MakeConnector, wait_models
from tests.stub_llm import StubLLM


async def store_key(broker: BrokerServer, username: str = "kim", **limits: Any) -> str:
    store = broker.services.store
    user = await store.create_user(username)
    if limits:
        await store.set_limits(
            user.id,
            rpm=limits.get("rpm"),
            concurrency=limits.get("concurrency"),
            daily_tokens=limits.get("daily_tokens"),
            models=limits.get("models"),
        )
    raw, _ = await store.create_key(user.id, "test")
    return raw


async def chat(
    http: aiohttp.ClientSession, broker: BrokerServer, key: str, **body: Any
) -> tuple[int, dict[str, str], Any]:
    payload = {"model": "stub-model", "messages": [{"role": "user", "content": "hi"}], **body}
    async with http.post(
        f"{broker.base_url}/v1/chat/completions",
        json=payload,
        headers={"Authorization": f"Bearer {key}"},
    ) as response:
        text = await response.text()
        parsed: Any = None
        with contextlib.suppress(ValueError):
            parsed = await response.json(content_type=None)
        return response.status, dict(response.headers), parsed if parsed is not None else text


@pytest.fixture
async def served(
    stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector, tmp_path: Path
) -> BrokerServer:
    broker = await make_broker(database_url=database_url(tmp_path, None))
    await make_connector(broker, stub.url)
    await wait_models(broker, {"stub-model"})
    return broker


async def rows_after_flush(broker: BrokerServer) -> list[Any]:
    await broker.services.ledger.flush()
    return await broker.services.store.usage.rows()


async def test_a_store_key_works_and_every_request_leaves_a_usage_row(
    served: BrokerServer,
) -> None:
    key = await store_key(served)
    async with aiohttp.ClientSession() as http:
        status, _, body = await chat(http, served, key)
        assert status == 200 and body["usage"]["completion_tokens"] == 4
        status, _, text = await chat(
            http,
            served,
            key,
            stream=True,
            stream_options={"include_usage": True},
            x_stub={"mode": "events", "events": 6, "usage": True},
        )
        assert status == 200 and text.endswith("data: [DONE]\n\n")
        status, _, _ = await chat(http, served, "sk-not-a-real-key")
        assert status == 401
        status, _, _ = await chat(http, served, key, model="no-such-model")
        assert status in (404, 503)
    rows = await rows_after_flush(served)
    assert [r.status for r in rows][:3] == [200, 200, 401]
    plain, streamed, rejected = rows[:3]
    user = await served.services.store.find_user("kim")
    assert (plain.user_id, plain.prompt_tokens, plain.completion_tokens) == (user.id, 3, 4)
    assert plain.connector == "test-connector" and plain.ttfb_ms is not None
    assert (streamed.prompt_tokens, streamed.completion_tokens) == (11, 6)
    assert rejected.user_id is None and rejected.key_id is None and rejected.model is None
    assert rows[3].model == "no-such-model" and rows[3].user_id == user.id
    (record,) = await served.services.store.keys(user.id)
    assert record.last_used is not None


async def test_a_cancelled_request_is_recorded_as_cancelled(
    served: BrokerServer, stub: StubLLM
) -> None:
    key = await store_key(served)
    async with aiohttp.ClientSession() as http:
        call = asyncio.create_task(chat(http, served, key, stream=True, x_stub={"mode": "hang"}))
        await asyncio.wait_for(stub.started.wait(), 10)
        call.cancel()  # the client hangs up before any answer
        with contextlib.suppress(asyncio.CancelledError):
            await call
    async with asyncio.timeout(10):
        while not await rows_after_flush(served):
            await asyncio.sleep(0.05)
    (row,) = await rows_after_flush(served)
    assert row.cancelled and row.status == 499


async def test_revoking_a_key_or_blocking_its_user_stops_it_without_a_restart(
    served: BrokerServer,
) -> None:
    store = served.services.store
    key = await store_key(served)
    async with aiohttp.ClientSession() as http:
        assert (await chat(http, served, key))[0] == 200
        user = await store.find_user("kim")
        await store.set_status(user.id, "blocked")  # as the admin CLI does, in the store
        async with asyncio.timeout(10):  # within the key cache's lifetime (1 s)
            while (await chat(http, served, key))[0] != 403:
                await asyncio.sleep(0.1)
        _, _, body = await chat(http, served, key)
        assert body["error"]["code"] == "account_blocked"
        await store.set_status(user.id, "active")
        served.services.accounts.forget()
        assert (await chat(http, served, key))[0] == 200
        (record,) = await store.keys(user.id)
        await store.revoke_key(record.id)
        async with asyncio.timeout(10):
            while (await chat(http, served, key))[0] != 401:
                await asyncio.sleep(0.1)


async def test_requests_per_minute_limit(served: BrokerServer) -> None:
    key = await store_key(served, rpm=2)
    async with aiohttp.ClientSession() as http:
        assert (await chat(http, served, key))[0] == 200
        assert (await chat(http, served, key))[0] == 200
        status, headers, body = await chat(http, served, key)
    assert status == 429
    assert 1 <= int(headers["Retry-After"]) <= 60
    assert body["error"]["type"] == "rate_limit_error"
    assert body["error"]["code"] == "rate_limit_exceeded"
    rows = await rows_after_flush(served)
    assert [r.status for r in rows] == [200, 200, 429]


async def test_concurrency_limit(served: BrokerServer, stub: StubLLM) -> None:
    key = await store_key(served, concurrency=1)
    async with aiohttp.ClientSession() as http:
        held = await http.post(
            f"{served.base_url}/v1/chat/completions",
            json={
                "model": "stub-model",
                "stream": True,
                "x_stub": {"mode": "events", "events": 2, "gated": True},
            },
            headers={"Authorization": f"Bearer {key}"},
        )
        await held.content.readline()  # the first event: the request is in flight
        status, headers, body = await chat(http, served, key)
        assert status == 429 and headers["Retry-After"] == "1"
        assert body["error"]["code"] == "concurrency_limit_exceeded"
        stub.gate(0).set()
        await held.read()
        held.release()
        assert (await chat(http, served, key))[0] == 200


async def test_daily_token_limit(served: BrokerServer) -> None:
    key = await store_key(served, daily_tokens=5)
    async with aiohttp.ClientSession() as http:
        assert (await chat(http, served, key))[0] == 200  # uses 7 tokens
        status, headers, body = await chat(http, served, key)
    assert status == 429 and body["error"]["code"] == "daily_token_limit_exceeded"
    assert 1 <= int(headers["Retry-After"]) <= 86400


async def test_broker_wide_defaults_apply_to_every_key(
    stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector
) -> None:
    broker = await make_broker(key_rpm=1)
    await make_connector(broker, stub.url)
    await wait_models(broker, {"stub-model"})
    async with aiohttp.ClientSession() as http:
        assert (await chat(http, broker, USER_KEY))[0] == 200  # a configured key too
        assert (await chat(http, broker, USER_KEY))[0] == 429
        unlimited = await store_key(broker, rpm=0)  # a per-user override: unlimited
        for _ in range(3):
            assert (await chat(http, broker, unlimited))[0] == 200


async def test_model_allow_list(served: BrokerServer, stub: StubLLM) -> None:
    key = await store_key(served, models=["other-model"])
    async with aiohttp.ClientSession() as http:
        status, _, body = await chat(http, served, key)
        assert status == 403 and body["error"]["code"] == "model_not_allowed"
        async with http.get(
            f"{served.base_url}/v1/models", headers={"Authorization": f"Bearer {key}"}
        ) as listing:
            assert (await listing.json())["data"] == []
    assert stub.seen == []  # never reached the LLM


async def test_connector_tokens_from_the_store(
    stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector
) -> None:
    broker = await make_broker(connector_token=[])
    raw, _ = await broker.services.store.create_connector_token("gpu-box")
    connector = await make_connector(broker, stub.url, broker_token=raw)
    await wait_models(broker, {"stub-model"})
    await broker.services.relay.settle()  # the last-seen time is written in the background
    (seen,) = await broker.services.store.connector_tokens()
    assert seen.last_seen is not None
    key = await store_key(broker)
    async with aiohttp.ClientSession() as http:
        assert (await chat(http, broker, key))[0] == 200
    (row,) = await rows_after_flush(broker)
    assert (row.connector, row.connector_id) == ("test-connector", seen.id)
    (served,) = await broker.services.store.usage.served([seen.id], row.time - 1)
    assert (served.username, served.requests, served.tokens) == ("kim", 1, 7)
    await connector.stop()
    await broker.services.store.revoke_connector_token("gpu-box")
    refused = await make_connector(broker, stub.url, broker_token=raw)
    # Told the token is revoked, the connector stops dialing, and says why.
    await asyncio.wait_for(refused.task, 10)
    status = refused.connector.status
    assert status.state is LinkState.DISCONNECTED and status.fatal
    assert "revoked" in (status.last_error or ""), status.last_error
    assert broker.hub.links == []
    unknown = await make_connector(broker, stub.url, broker_token="rlc-" + "x" * 38)
    await unknown.wait_state(LinkState.RECONNECTING)  # an unknown token may be fixed: retried
    assert "401" in (unknown.connector.status.last_error or "")


async def test_a_clean_shutdown_writes_every_usage_row(
    stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector, tmp_path: Path
) -> None:
    url = database_url(tmp_path, None)
    broker = await make_broker(database_url=url)
    await make_connector(broker, stub.url)
    await wait_models(broker, {"stub-model"})
    broker.services.ledger.interval = 3600  # nothing is written until shutdown
    async with aiohttp.ClientSession() as http:
        for _ in range(20):
            assert (await chat(http, broker, USER_KEY))[0] == 200
    await broker.stop()
    store = await Store.open(url)
    try:
        assert len(await store.usage.rows()) == 20
    finally:
        await store.close()


async def test_a_connected_connector_is_shut_out_when_its_token_is_revoked(
    stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector
) -> None:
    """Revoked by the admin CLI (another process): the watcher closes the link with 1008, the
    connector's next dial is refused as revoked, and it stops dialing."""
    broker = await make_broker(connector_token=[])
    raw, _ = await broker.services.store.create_connector_token("gpu-box")
    connector = await make_connector(broker, stub.url, broker_token=raw)
    await wait_models(broker, {"stub-model"})
    watcher = asyncio.create_task(_watch_revoked_connectors(broker.services, every=0.05))
    try:
        assert await broker.services.store.revoke_connector_token("gpu-box")
        await wait_models(broker, set())
        await asyncio.wait_for(connector.task, 10)
        status = connector.connector.status
        assert status.state is LinkState.DISCONNECTED and status.fatal
        assert "revoked" in (status.last_error or "")
        assert broker.hub.links == []
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def test_a_failing_store_never_leaves_a_ghost_connector(
    stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector
) -> None:
    broker = await make_broker(connector_token=[])
    store = broker.services.store
    raw, _ = await store.create_connector_token("gpu-box")

    async def locked(token_id: int, when: float) -> None:
        raise OSError("database is locked")

    store.connector_seen = locked  # type: ignore[method-assign]
    connector = await make_connector(broker, stub.url, broker_token=raw)
    await wait_models(broker, {"stub-model"})
    async with aiohttp.ClientSession() as http:
        assert (await chat(http, broker, USER_KEY))[0] == 200
    await connector.stop()
    await wait_models(broker, set())
    assert broker.hub.links == []


async def test_many_concurrent_requests_each_leave_one_row(served: BrokerServer) -> None:
    key = await store_key(served)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        results = await asyncio.gather(*(chat(http, served, key) for _ in range(200)))
    assert [status for status, _, _ in results] == [200] * 200
    rows = await rows_after_flush(served)
    assert len(rows) == 200
    assert len({row.request_id for row in rows}) == 200
    assert sum(row.completion_tokens or 0 for row in rows) == 200 * 4


async def test_a_failing_store_answers_503_in_the_clients_dialect(served: BrokerServer) -> None:
    key = await store_key(served)
    store = served.services.store

    async def down(fingerprint: str) -> None:
        raise OSError("database is locked")

    store.key_owner = down  # type: ignore[assignment,method-assign]
    async with aiohttp.ClientSession() as http:
        status, headers, body = await chat(http, served, key)
        assert status == 503 and headers["Retry-After"] == "5"
        assert body["error"]["code"] == "store_unavailable"
        assert (await chat(http, served, USER_KEY))[0] == 200  # configured keys still work
    rows = await rows_after_flush(served)
    assert [r.status for r in rows] == [503, 200]


async def test_a_client_gone_during_upload_leaves_a_cancelled_row(served: BrokerServer) -> None:
    key = await store_key(served)
    _reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {key}\r\nContent-Length: 100000\r\n\r\n".encode()
        + b'{"model": "stub-model", "messages": ['
    )
    await writer.drain()
    async with asyncio.timeout(10):  # the handler is reading the body
        # Once the key is looked up (and cached), the same step goes on to wait for the body;
        # a hang-up before that would be a request gone during the key check instead.
        while served.services.lifecycle.active == 0 or not served.services.accounts._cache:
            await asyncio.sleep(0.01)
    writer.close()
    await writer.wait_closed()
    async with asyncio.timeout(10):
        while not await rows_after_flush(served):
            await asyncio.sleep(0.05)
    (row,) = await rows_after_flush(served)
    assert row.cancelled and row.status == 499 and row.key_id is not None
