"""Three broker processes behind HAProxy, sharing Redis and PostgreSQL (tests/clusterharness.py).

One cluster runs for the whole module, with ONE real `remotellm-connector --headless` process
given the load balancer's URL: it attaches to one broker, and the other two forward to that one
over the internal hop. The tests run in file order and the later ones break things (Redis
stopped, the connector's broker killed), each leaving the cluster whole again for the next.
Every wait is bounded by `asyncio.timeout`; nothing asserts milliseconds.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from redis.asyncio import Redis

from broker.accounts.limits import day_start
from broker.accounts.store import Store
from broker.cluster.limits import redis_keys
from tests.clusterharness import (
    CLUSTER_SECRET,
    KEY,
    Broker,
    Cluster,
    json_events,
    running_cluster,
)
from tests.e2e.test_processes import Proc
from tests.fake_gitlab import CLIENT_ID, CLIENT_SECRET, FakeGitLab
from tests.stub_llm import SSE_DONE, StubLLM, sse_event

pytestmark = [pytest.mark.timeout(300), pytest.mark.asyncio(loop_scope="module")]

HEADERS = {"Authorization": f"Bearer {KEY}"}
CONNECTOR_WAIT = 10
KEY_PATTERN = re.compile(r"sk-[0-9A-Za-z]{38}")


@dataclass
class Served:
    cluster: Cluster
    stub: StubLLM


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served() -> AsyncIterator[Served]:
    """The module's cluster (three brokers, HAProxy) and one connector to one stub LLM."""
    stub = StubLLM()
    await stub.start()
    gitlab = FakeGitLab()
    await gitlab.start()
    portal = [
        "--public-url={lb_url}",
        f"--gitlab-url={gitlab.url}",
        f"--gitlab-client-id={CLIENT_ID}",
        f"--gitlab-client-secret={CLIENT_SECRET}",
    ]
    try:
        async with running_cluster(3, f"--connector-wait={CONNECTOR_WAIT}", *portal) as cluster:
            await cluster.start_connector(stub.url, "only")
            # Every broker serves the model once the holder's record has reached the others.
            async with asyncio.timeout(20), aiohttp.ClientSession() as session:
                for broker in cluster.brokers:
                    while (await chat(session, broker.url))[0] != 200:
                        await asyncio.sleep(0.1)
            yield Served(cluster, stub)
    finally:
        for gate in stub.gates.values():
            gate.set()
        await stub.stop()
        await gitlab.stop()


async def chat(
    session: aiohttp.ClientSession, url: str, key: str = KEY, request_id: str = ""
) -> tuple[int, dict[str, str], Any]:
    """A chat request, bounded; its status, headers and JSON body (or text)."""
    body = {"model": "stub-model", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": f"Bearer {key}"}
    if request_id:
        headers["X-Request-ID"] = request_id
    async with asyncio.timeout(30):
        async with session.post(f"{url}/v1/chat/completions", json=body, headers=headers) as resp:
            text = await resp.text()
            try:
                parsed: Any = await resp.json(content_type=None)
            except ValueError:
                parsed = text
            return resp.status, dict(resp.headers), parsed


async def health(session: aiohttp.ClientSession, broker: Broker) -> dict[str, Any]:
    async with asyncio.timeout(5), session.get(f"{broker.url}/health") as resp:
        result: dict[str, Any] = await resp.json()
        return result


async def readyz(session: aiohttp.ClientSession, broker: Broker) -> tuple[int, dict[str, Any]]:
    async with asyncio.timeout(5), session.get(f"{broker.url}/readyz") as resp:
        return resp.status, await resp.json()


async def holder(cluster: Cluster, brokers: list[Broker] | None = None) -> Broker:
    """The one broker the connector is attached to, asked directly (not through HAProxy)."""
    async with aiohttp.ClientSession() as session:
        held = [b for b in brokers or cluster.brokers if (await health(session, b))["connectors"]]
    assert len(held) == 1, held
    return held[0]


async def user_key(database_url: str, username: str, **limits: int) -> tuple[str, int]:
    """A user with these limits and a key of theirs, written to the cluster's store."""
    store = await Store.open(database_url)
    try:
        user = await store.create_user(username)
        await store.set_limits(
            user.id,
            rpm=limits.get("rpm"),
            concurrency=limits.get("concurrency"),
            daily_tokens=limits.get("daily_tokens"),
            models=None,
        )
        raw, key = await store.create_key(user.id, "e2e")
        return raw, key.id
    finally:
        await store.close()


def gated_stream(events: int) -> dict[str, Any]:
    """A stream whose event i is written only once the test sets the stub's gate i - 1."""
    return {"stream": True, "x_stub": {"mode": "events", "events": events, "gated": True}}


def finished(broker: Broker, prefix: str) -> set[str]:
    """The request ids starting with `prefix` that this broker logged as finished."""
    assert broker.proc is not None
    return {
        str(line.get("request_id"))
        for line in json_events(broker.proc, "request finished")
        if str(line.get("request_id", "")).startswith(prefix)
    }


async def test_one_connector_serves_requests_landing_on_every_broker(served: Served) -> None:
    cluster = served.cluster
    far = await holder(cluster)
    async with aiohttp.ClientSession() as session:
        # Directly to each broker: two of them forward to the one holding the connector.
        for broker in cluster.brokers:
            assert (await chat(session, broker.url))[0] == 200
        # Through HAProxy, at once, so `leastconn` spreads them over the three.
        answers = await asyncio.gather(
            *(chat(session, cluster.url, request_id=f"via-lb-{n}") for n in range(9))
        )
    assert [status for status, _, _ in answers] == [200] * 9
    # Those that landed on a broker without the connector were forwarded: the holder
    # logged all nine, each of the others its share.
    async with asyncio.timeout(10):
        while len(finished(far, "via-lb-")) < 9:
            await asyncio.sleep(0.05)
    for broker in cluster.brokers:
        if broker is not far:
            assert finished(broker, "via-lb-"), f"HAProxy sent b{broker.index} nothing"


async def test_a_forwarded_stream_arrives_token_by_token_with_its_request_id(
    served: Served,
) -> None:
    cluster, stub = served.cluster, served.stub
    far = await holder(cluster)
    near = next(b for b in cluster.brokers if b is not far)
    for n, url in enumerate([near.url, cluster.url]):
        stub.gates.clear()
        stub.written.clear()
        request_id = f"e2e-stream-{n}"
        body = {
            "model": "stub-model",
            "messages": [{"role": "user", "content": "hi"}],
            **gated_stream(4),
        }
        headers = {**HEADERS, "X-Request-ID": request_id}
        async with (
            asyncio.timeout(30),
            aiohttp.ClientSession() as session,
            session.post(f"{url}/v1/chat/completions", json=body, headers=headers) as resp,
        ):
            assert resp.status == 200
            assert resp.headers["X-Request-ID"] == request_id
            for i in range(4):
                assert await resp.content.readuntil(b"\n\n") == sse_event(i)
                # Event i reached the client before event i + 1 was written at the stub.
                assert stub.written == list(range(i + 1))
                stub.gate(i).set()
            assert await resp.content.read() == SSE_DONE


async def test_a_client_hang_up_on_a_forwarding_broker_cancels_at_the_llm(
    served: Served,
) -> None:
    cluster, stub = served.cluster, served.stub
    far = await holder(cluster)
    near = next(b for b in cluster.brokers if b is not far)
    stub.disconnected.clear()
    body = {
        "model": "stub-model",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "x_stub": {"mode": "events", "events": 1, "hang_at_end": True},
    }
    async with asyncio.timeout(20):
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{near.url}/v1/chat/completions", json=body, headers=HEADERS) as resp,
        ):
            assert resp.status == 200
            assert await resp.content.readuntil(b"\n\n") == sse_event(0)
            assert not stub.disconnected.is_set()
        # The client went away: near cancels the hop, far the connector's stream, the
        # connector its request to the LLM.
        await stub.disconnected.wait()


async def test_requests_per_minute_are_exact_across_the_brokers(served: Served) -> None:
    cluster = served.cluster
    key, _ = await user_key(cluster.database_url, "rpm-user", rpm=10)
    brokers = cluster.brokers
    async with aiohttp.ClientSession() as session:
        answers = await asyncio.gather(*(chat(session, brokers[n % 3].url, key) for n in range(30)))
    statuses = Counter(status for status, _, _ in answers)
    assert statuses == {200: 10, 429: 20}
    for status, headers, body in answers:
        if status == 429:
            assert int(headers["Retry-After"]) >= 1
            assert body["error"]["code"] == "rate_limit_exceeded"


async def test_concurrency_is_exact_across_the_brokers(served: Served) -> None:
    cluster, stub = served.cluster, served.stub
    key, _ = await user_key(cluster.database_url, "busy-user", concurrency=2)
    stub.gates.clear()
    body = {"model": "stub-model", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": f"Bearer {key}"}
    async with asyncio.timeout(30), aiohttp.ClientSession() as session:
        streams = []
        for broker in cluster.brokers[:2]:
            resp = await session.post(
                f"{broker.url}/v1/chat/completions",
                json={**body, **gated_stream(2)},
                headers=headers,
            )
            assert resp.status == 200
            assert await resp.content.readuntil(b"\n\n") == sse_event(0)
            streams.append(resp)
        # Two streams held open, on two brokers: every broker refuses a third.
        for broker in cluster.brokers:
            status, answer_headers, answer = await chat(session, broker.url, key)
            assert status == 429, answer
            assert answer["error"]["code"] == "concurrency_limit_exceeded"
            assert "Retry-After" in answer_headers
        stub.gate(0).set()
        for resp in streams:
            assert (await resp.content.read()).endswith(SSE_DONE)
            resp.release()
        # The slots are given back: every broker admits again.
        for broker in cluster.brokers:
            while (await chat(session, broker.url, key))[0] != 200:
                await asyncio.sleep(0.1)


async def test_the_request_crossing_the_daily_tokens_finishes_then_every_broker_refuses(
    served: Served,
) -> None:
    cluster = served.cluster
    key, key_id = await user_key(cluster.database_url, "token-user", daily_tokens=10)
    counter = redis_keys(f"key:{key_id}")[2]
    async with aiohttp.ClientSession() as session, Redis.from_url(cluster.redis.url) as redis:
        # The stub's answer counts 7 tokens: the second request crosses 10 and still finishes.
        for n, broker in enumerate(cluster.brokers[:2]):
            status, _, answer = await chat(session, broker.url, key)
            assert status == 200
            assert answer["usage"]["total_tokens"] == 7
            # Counted when the answer ends, then sent to Redis in the background.
            async with asyncio.timeout(10):
                while await redis.hget(counter, "used") != str(7 * (n + 1)).encode():
                    await asyncio.sleep(0.02)
        for broker in cluster.brokers:
            status, headers, answer = await chat(session, broker.url, key)
            assert status == 429, answer
            assert answer["error"]["code"] == "daily_token_limit_exceeded"
            assert 1 <= int(headers["Retry-After"]) <= 86400
    # The usage rows the brokers wrote to PostgreSQL agree (written within half a second).
    store = await Store.open(cluster.database_url)
    try:
        async with asyncio.timeout(10):
            while await store.usage.tokens_since(key_id, day_start(time.time())) != 14:
                await asyncio.sleep(0.1)
    finally:
        await store.close()


async def test_a_revoked_key_is_refused_by_every_broker_within_a_second(served: Served) -> None:
    cluster = served.cluster
    key, key_id = await user_key(cluster.database_url, "revoked-user")
    async with aiohttp.ClientSession() as session:
        for broker in cluster.brokers:  # each broker has the key cached as working
            assert (await chat(session, broker.url, key))[0] == 200
        revoke = await Proc.start(
            "broker.cli",
            "keys",
            "revoke",
            str(key_id),
            f"--database-url={cluster.database_url}",
            f"--redis-url={cluster.redis.url}",
            f"--cluster-secret={CLUSTER_SECRET}",
        )
        assert await revoke.ended(60) == 0
        # The brokers' key cache lives 1 s, and the admin process takes longer than that to
        # start: this proves every broker refuses within a second of the command, not which
        # of the event or the expiry told it (tests/broker/cluster/test_events.py does that).
        async with asyncio.timeout(2):
            for broker in cluster.brokers:
                while True:
                    status, _, answer = await chat(session, broker.url, key)
                    if status == 401:
                        assert answer["error"]["code"] == "invalid_api_key"
                        break
                    assert status == 200
                    await asyncio.sleep(0.05)


async def page(session: aiohttp.ClientSession, url: str) -> str:
    async with asyncio.timeout(10), session.get(url, allow_redirects=False) as response:
        assert response.status == 200, f"{url}: {response.status}"
        return await response.text()


async def test_a_key_shown_once_on_one_broker_is_not_shown_again_on_another(
    served: Served,
) -> None:
    cluster = served.cluster
    a, b, c = cluster.brokers
    # Every broker is 127.0.0.1 (ports do not separate cookies): one browser, one cookie.
    async with (
        asyncio.timeout(30),
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser,
    ):
        # Sign-in starts through HAProxy; GitLab sends the browser back to the public address
        # (HAProxy's), answered here by B as HAProxy might.
        async with browser.get(f"{cluster.url}/login", allow_redirects=False) as started:
            authorize = started.headers["Location"]
        async with browser.get(authorize, allow_redirects=False) as granted:
            callback = granted.headers["Location"]
        assert callback.startswith(f"{cluster.url}/auth/callback?")
        back = b.url + callback.removeprefix(cluster.url)
        async with browser.get(back, allow_redirects=False) as done:
            assert (done.status, done.headers["Location"]) == (302, "/portal")
        # The first key, made on B, is shown on C, once: not on A, nor through HAProxy.
        shown = set(KEY_PATTERN.findall(await page(browser, f"{c.url}/portal")))
        assert len(shown) == 1
        assert not KEY_PATTERN.search(await page(browser, f"{a.url}/portal"))
        assert not KEY_PATTERN.search(await page(browser, f"{cluster.url}/portal"))
        # And it works, on every broker.
        (key,) = shown
        for broker in cluster.brokers:
            assert (await chat(browser, broker.url, key))[0] == 200


async def test_redis_stopped_and_restarted_mid_traffic(served: Served) -> None:
    cluster = served.cluster
    key, _ = await user_key(cluster.database_url, "steady-user", rpm=1000)
    far = await holder(cluster)
    nears = [b for b in cluster.brokers if b is not far]
    statuses: list[int] = []
    stop = asyncio.Event()

    async def traffic(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            statuses.append((await chat(session, far.url, key))[0])
            await asyncio.sleep(0.05)

    async with aiohttp.ClientSession() as session:
        task = asyncio.create_task(traffic(session))
        try:
            await asyncio.sleep(0.3)
            cluster.redis.stop()
            # Every broker goes on serving, counts limits alone and polls for changes.
            async with asyncio.timeout(10):
                for broker in cluster.brokers:
                    while await readyz(session, broker) != (
                        200,
                        {"status": "ready", "limits": "local", "changes": "polling"},
                    ):
                        await asyncio.sleep(0.1)
            # HAProxy's health checks (/readyz) keep every broker in.
            assert set(cluster.server_states().values()) == {"UP"}
            served_during = len(statuses)
            # A broker without the connector stops seeing it once its record would have
            # expired (3 s); a request there is then held and gets the documented 503.
            await asyncio.sleep(3.5)
            status, _, answer = await chat(session, nears[0].url, key)
            assert (status, answer["error"]["code"]) == (503, "no_connector_available")
            assert len(statuses) > served_during

            cluster.redis.start()
            async with asyncio.timeout(10):
                for broker in cluster.brokers:
                    while await readyz(session, broker) != (
                        200,
                        {"status": "ready", "limits": "shared", "changes": "live"},
                    ):
                        await asyncio.sleep(0.1)
                # Records are written again: forwarding between brokers works again.
                for broker in nears:
                    while (await chat(session, broker.url, key))[0] != 200:
                        await asyncio.sleep(0.1)
        finally:
            stop.set()
            await task
        # Counting is shared and exact again.
        key, _ = await user_key(cluster.database_url, "after-redis-user", rpm=3)
        answers = await asyncio.gather(
            *(chat(session, cluster.brokers[n % 3].url, key) for n in range(9))
        )
        assert Counter(status for status, _, _ in answers) == {200: 3, 429: 6}
    assert statuses and set(statuses) == {200}


async def test_kill_9_of_the_connectors_broker_it_comes_back_through_haproxy(
    served: Served,
) -> None:
    cluster = served.cluster
    victim = await holder(cluster)
    others = [b for b in cluster.brokers if b is not victim]
    body = {
        "model": "stub-model",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "x_stub": {"mode": "events", "events": 60, "interval": 0.1},
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{victim.url}/v1/chat/completions", json=body, headers=HEADERS) as resp,
    ):
        assert resp.status == 200
        received = await resp.content.readuntil(b"\n\n")
        await victim.kill()
        # The client learns at once that its stream broke; it is not left waiting.
        with pytest.raises(aiohttp.ClientPayloadError):
            async with asyncio.timeout(10):
                received += await resp.content.read()
    assert b"[DONE]" not in received

    async with aiohttp.ClientSession() as session:
        # Sent meanwhile through HAProxy: held for the connector and served, or the
        # documented 503 once --connector-wait is over; never hanging.
        meanwhile = asyncio.gather(*(chat(session, cluster.url) for _ in range(3)))
        # The connector is back, on a live broker, within 10 s.
        async with asyncio.timeout(10):
            while True:
                states = [(await health(session, b))["connectors"] for b in others]
                if sum(states) == 1:
                    break
                await asyncio.sleep(0.1)
        async with asyncio.timeout(CONNECTOR_WAIT + 20):
            for status, _, answer in await meanwhile:
                assert status == 200 or (
                    status == 503 and answer["error"]["code"] == "no_connector_available"
                ), answer
        await cluster.wait_states({f"b{victim.index}": "DOWN"})
        answers = await asyncio.gather(*(chat(session, cluster.url) for _ in range(6)))
        assert [status for status, _, _ in answers] == [200] * 6
        for broker in others:
            assert (await chat(session, broker.url))[0] == 200

        # Started again on its port, the broker is checked back in and forwards.
        await victim.start()
        await cluster.wait_states({f"b{victim.index}": "UP"})
        async with asyncio.timeout(10):
            while (await chat(session, victim.url))[0] != 200:
                await asyncio.sleep(0.1)


async def test_a_draining_broker_leaves_haproxy_and_finishes_its_streams(
    served: Served,
) -> None:
    cluster = served.cluster
    far = await holder(cluster)
    target = next(b for b in cluster.brokers if b is not far)
    body = {
        "model": "stub-model",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "x_stub": {"mode": "events", "events": 30, "interval": 0.1},
    }
    expected = b"".join(sse_event(i) for i in range(30)) + SSE_DONE
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{target.url}/v1/chat/completions", json=body, headers=HEADERS) as resp,
    ):
        assert resp.status == 200
        received = await resp.content.readuntil(b"\n\n")
        assert target.proc is not None
        target.proc.process.send_signal(signal.SIGTERM)
        # Draining: /readyz answers 503 (or the listener is closed), HAProxy takes it out
        # while the forwarded stream goes on.
        await cluster.wait_states({f"b{target.index}": "DOWN"})
        async with asyncio.timeout(20):
            received += await resp.content.read()
    assert received == expected
    assert await target.proc.ended(30) == 0
    async with aiohttp.ClientSession() as session:
        answers = await asyncio.gather(*(chat(session, cluster.url) for _ in range(4)))
    assert [status for status, _, _ in answers] == [200] * 4
