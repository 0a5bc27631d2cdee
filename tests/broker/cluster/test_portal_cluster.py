"""The portal on any broker of a cluster: a browser's requests land on whichever broker the
load balancer picks (here: each request sent to a broker of the test's choosing)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest
from pydantic import SecretStr

from broker.api.pairing import STARTS_PER_WINDOW
from broker.cluster.reveals import PREFIX
from broker.portal.reveals import REVEALS
from broker.server import BrokerServer
from tests.broker.cluster.test_events import (
    LONG,
    a_user_with_a_key,
    eventually,
    listening,
    refused_everywhere,
    status,
)
from tests.conftest import MakeBroker, MakeConnector, wait_models
from tests.fake_gitlab import CLIENT_ID, CLIENT_SECRET, FakeGitLab
from tests.redisserver import RedisServer
from tests.stub_llm import StubLLM

SECRET = "p" * 32
PUBLIC = "http://portal.example"
"""The address users see (the load balancer's): GitLab sends the browser back there."""
KEY_PATTERN = re.compile(r"sk-[0-9A-Za-z]{38}")
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
async def gitlab() -> AsyncIterator[FakeGitLab]:
    fake = FakeGitLab()
    await fake.start()
    yield fake
    await fake.stop()


async def portals(
    make_broker: MakeBroker, gitlab: FakeGitLab, redis_url: str, tmp_path: Path
) -> list[BrokerServer]:
    return [
        await make_broker(
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'cluster.db'}",
            redis_url=SecretStr(redis_url),
            cluster_secret=SecretStr(SECRET),
            session_secret=None,  # shared through the cluster secret,
            data_dir=tmp_path / f"broker-{n}",  # not through a shared data directory
            public_url=PUBLIC,
            gitlab_url=gitlab.url,
            gitlab_client_id=CLIENT_ID,
            gitlab_client_secret=CLIENT_SECRET,
            user_api_key=[],
        )
        for n in range(3)
    ]


async def sign_in(session: aiohttp.ClientSession, start: BrokerServer, back: BrokerServer) -> None:
    """Sign in with GitLab: started on `start`, GitLab's redirect answered by `back`."""
    async with session.get(start.base_url + "/login", allow_redirects=False) as response:
        authorize = response.headers["Location"]
    async with session.get(authorize, allow_redirects=False) as granted:
        callback = granted.headers["Location"]
    assert callback.startswith(PUBLIC + "/auth/callback?")
    async with session.get(on(back, callback), allow_redirects=False) as done:
        assert done.status == 302 and done.headers["Location"] == "/portal"


async def post(session: aiohttp.ClientSession, broker: BrokerServer, path: str, csrf: str) -> None:
    async with session.post(
        broker.base_url + path, data={"csrf": csrf}, allow_redirects=False
    ) as response:
        assert response.status == 302, f"{path}: {response.status} {await response.text()}"


def browser() -> aiohttp.ClientSession:
    # Every broker is 127.0.0.1 (ports do not separate cookies): one browser, one cookie.
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


def on(broker: BrokerServer, url: str) -> str:
    """`url` (on the public address) sent to `broker` instead, as a load balancer would."""
    parts = urlsplit(url)
    return broker.base_url + parts.path + (f"?{parts.query}" if parts.query else "")


async def page(session: aiohttp.ClientSession, broker: BrokerServer, path: str) -> str:
    async with session.get(broker.base_url + path, allow_redirects=False) as response:
        assert response.status == 200, f"{path} on port {broker.port}: {response.status}"
        return await response.text()


async def test_sign_in_and_a_new_key_work_across_brokers(
    make_broker: MakeBroker, gitlab: FakeGitLab, redis_url: str, tmp_path: Path
) -> None:
    a, b, c = await portals(make_broker, gitlab, redis_url, tmp_path)
    async with browser() as session:
        # Sign-in starts on A, GitLab sends the browser back to the public address: B answers.
        await sign_in(session, a, b)
        # The first key, made on B, shown on C, once.
        first = KEY_PATTERN.findall(await page(session, c, "/portal"))
        assert len(set(first)) == 1
        assert not KEY_PATTERN.search(await page(session, a, "/portal"))
        # A key made on A is shown on B; a copy of the cookie from before cannot show it on C.
        keys = await page(session, a, "/portal/keys")
        csrf = CSRF.search(keys)
        assert csrf
        async with session.post(
            a.base_url + "/portal/keys",
            data={"name": "second", "csrf": csrf.group(1)},
            allow_redirects=False,
        ) as made:
            assert made.status == 302
        copied = {cookie.key: cookie.value for cookie in session.cookie_jar}
        waiting = [key async for key in a.services.redis.scan_iter(match=PREFIX + "*")]
        assert len(waiting) == 1
        shown = KEY_PATTERN.findall(await page(session, b, "/portal/keys"))
        assert len(set(shown)) == 1 and shown[0] not in first
        # Kept in Redis only sealed, and gone once shown.
        assert [key async for key in a.services.redis.scan_iter(match=PREFIX + "*")] == []
        # Signed in on every broker.
        for broker in (a, b, c):
            assert "second" in await page(session, broker, "/portal/keys")
    async with aiohttp.ClientSession(cookies=copied) as replay:
        again = await page(replay, c, "/portal/keys")
        assert "second" in again  # the copied session works ...
        assert not KEY_PATTERN.search(again)  # ... but the key was shown once, on B


async def test_a_waiting_key_is_sealed_in_redis(
    make_broker: MakeBroker, gitlab: FakeGitLab, redis_url: str, tmp_path: Path
) -> None:
    a, _, _ = await portals(make_broker, gitlab, redis_url, tmp_path)
    reveals = a.services.redis
    waiting = a.app[REVEALS]
    nonce = await waiting.keep(7, "sk-" + "x" * 38)
    (name,) = [key async for key in reveals.scan_iter(match=PREFIX + "*")]
    assert name == (PREFIX + nonce).encode()
    sealed = await reveals.get(name)
    assert sealed is not None and b"sk-" not in sealed
    assert 0 < await reveals.ttl(name) <= 300
    assert await waiting.claim(nonce, 8) is None  # not someone else's (and now gone)
    assert await waiting.claim(nonce, 7) is None


async def start_pairing(broker: BrokerServer) -> aiohttp.ClientResponse:
    async with (
        aiohttp.ClientSession() as http,
        http.post(broker.base_url + "/pair/start", json={"name": "box"}) as response,
    ):
        await response.read()
        return response


async def test_pairing_starts_are_counted_for_the_whole_cluster(
    make_broker: MakeBroker, gitlab: FakeGitLab, redis_url: str, tmp_path: Path
) -> None:
    brokers = await portals(make_broker, gitlab, redis_url, tmp_path)
    started = [await start_pairing(brokers[n % 3]) for n in range(STARTS_PER_WINDOW)]
    assert [response.status for response in started] == [200] * STARTS_PER_WINDOW
    for broker in brokers:  # the address used its starts, whichever broker it reached
        refused = await start_pairing(broker)
        assert refused.status == 429 and 0 < int(refused.headers["Retry-After"]) <= 900


async def test_pairing_counts_on_each_broker_while_redis_is_away(
    make_broker: MakeBroker,
    gitlab: FakeGitLab,
    redis_server: RedisServer,
    redis_url: str,
    tmp_path: Path,
) -> None:
    a, _, _ = await portals(make_broker, gitlab, redis_url, tmp_path)
    redis_server.stop()
    try:
        started = [(await start_pairing(a)).status for _ in range(STARTS_PER_WINDOW + 1)]
    finally:
        redis_server.start()
    assert started == [200] * STARTS_PER_WINDOW + [429]


async def test_the_portal_and_admin_pages_of_one_broker_change_every_broker(
    stub: StubLLM,
    make_broker: MakeBroker,
    make_connector: MakeConnector,
    gitlab: FakeGitLab,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("broker.app.REVOCATION_CHECK", LONG)
    a, b, c = await portals(make_broker, gitlab, redis_url, tmp_path)
    for broker in (a, b, c):
        broker.services.accounts.ttl = LONG
        await listening(broker)
    store = a.services.store
    async with browser() as session:
        await sign_in(session, a, a)
        (first,) = set(KEY_PATTERN.findall(await page(session, a, "/portal")))
        alice = await store.find_user("alice")
        await store.set_role(alice.id, "admin")
        _, _, bob_key = await a_user_with_a_key(a, "bob")
        bob = await store.find_user("bob")
        raw, token = await store.create_connector_token("alice-box", alice.id)
        await make_connector(c, stub.url, broker_token=SecretStr(raw))
        await wait_models(c, {"stub-model"})
        # Both keys known, and cached for an hour, on B (which forwards to C's connector) and C.
        for broker in (b, c):
            assert await status(broker, first) == 200
            assert await status(broker, bob_key) == 200
        csrf = CSRF.search(await page(session, a, "/portal/keys"))
        assert csrf
        (key,) = await store.keys(alice.id)
        await post(session, a, f"/portal/keys/{key.id}/revoke", csrf.group(1))
        await refused_everywhere([b, c], first, 401)
        await post(session, a, f"/admin/users/{bob.id}/block", csrf.group(1))
        await refused_everywhere([b, c], bob_key, 403)
        await post(session, a, f"/connectors/{token.id}/revoke", csrf.group(1))

        async def shut_out() -> bool:
            return not c.services.relay.links

        await eventually(shut_out, "the connector on C is shut out")
