"""Changes propagate: three brokers on one Redis and one store; a change made on (or next to)
one of them is followed by all of them at once, not at their periodic checks.

The periodic fallbacks are made long here (the key cache's lifetime and the 5 s check of
connectors), so what the tests see can only come from the published change.
"""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from pydantic import SecretStr

from broker.accounts.admin import run as run_admin
from broker.accounts.change import AccessChanged, ConnectorRevoked, KeyRevoked, UserChanged
from broker.cli import _settings_from, build_parser
from broker.cluster.events import CHANNEL, Events, decode, encode
from broker.server import BrokerServer
from tests.conftest import MakeBroker, MakeConnector, wait_models
from tests.redisserver import RedisServer
from tests.stub_llm import StubLLM

SECRET = "c" * 32
LONG = 3600.0
DEADLINE = 5.0
"""Seconds a change may take to reach every broker in these tests (it takes milliseconds;
the key cache and connector checks it must beat are made an hour long here)."""


def store_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'cluster.db'}"


def events_of(broker: BrokerServer) -> Events:
    events = broker.services.changes.publisher
    assert isinstance(events, Events)
    return events


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    async with asyncio.timeout(DEADLINE):
        while not await check():
            await asyncio.sleep(0.02)
    assert await check(), what


async def make_cluster(
    make_broker: MakeBroker, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> list[BrokerServer]:
    monkeypatch.setattr("broker.app.REVOCATION_CHECK", LONG)
    brokers = [
        await make_broker(
            database_url=store_url(tmp_path),
            redis_url=SecretStr(redis_url),
            cluster_secret=SecretStr(SECRET),
        )
        for _ in range(3)
    ]
    for broker in brokers:
        broker.services.accounts.ttl = LONG
    for broker in brokers:
        await listening(broker)
    return brokers


async def listening(broker: BrokerServer) -> None:
    async def subscribed() -> bool:
        return events_of(broker).listening

    await eventually(subscribed, "the broker listens to the cluster's channel")


async def status(broker: BrokerServer, key: str, model: str = "stub-model") -> int:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            broker.base_url + "/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
        ) as response,
    ):
        return response.status


async def admin(redis_url: str, tmp_path: Path, *argv: str) -> str:
    """An admin command as `remotellm-broker` runs it, told of the cluster's Redis."""
    out, err = await admin_says(redis_url, tmp_path, *argv)
    assert err == ""  # the cluster was told
    return out


async def admin_says(redis_url: str, tmp_path: Path, *argv: str) -> tuple[str, str]:
    cluster = ["--redis-url", redis_url, "--cluster-secret", SECRET]
    args = build_parser().parse_args([*argv, "--database-url", store_url(tmp_path), *cluster])
    out, err = io.StringIO(), io.StringIO()
    assert await run_admin(args, _settings_from(args), out, err) == 0, err.getvalue()
    return out.getvalue(), err.getvalue()


async def readyz(broker: BrokerServer) -> tuple[int, dict[str, str]]:
    """/readyz's status and its `status` and `changes` fields (`limits` is test_limits')."""
    async with aiohttp.ClientSession() as http, http.get(broker.base_url + "/readyz") as response:
        body = await response.json()
        return response.status, {k: v for k, v in body.items() if k in ("status", "changes")}


async def refused_everywhere(brokers: list[BrokerServer], key: str, code: int) -> None:
    for broker in brokers:

        async def refused(broker: BrokerServer = broker) -> bool:
            return await status(broker, key) == code

        await eventually(refused, f"the broker on port {broker.port} refuses the key")


async def a_user_with_a_key(broker: BrokerServer, name: str = "bob") -> tuple[int, int, str]:
    store = broker.services.store
    user = await store.create_user(name, "", "user")
    raw, key = await store.create_key(user.id, "laptop")
    return user.id, key.id, raw


def test_a_change_is_named_by_ids_only() -> None:
    for change in (KeyRevoked(12), UserChanged(3), ConnectorRevoked(7), AccessChanged(None)):
        message = encode(change, "node-a")
        assert decode(message) == (change, "node-a")
    for bad in (b"", b"[]", b'{"kind":"key_revoked","id":"12","from":"x"}', b'{"kind":"x"}'):
        with pytest.raises(ValueError):
            decode(bad)


async def test_a_key_revoked_on_one_broker_is_refused_by_all(
    make_broker: MakeBroker, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    brokers = await make_cluster(make_broker, redis_url, tmp_path, monkeypatch)
    a = brokers[0]
    _, key_id, raw = await a_user_with_a_key(a)
    for broker in brokers:  # known, and cached for an hour, by every broker
        assert await status(broker, raw) == 503  # no connector: past the key's checks
    await a.services.store.revoke_key(key_id)
    await a.services.changes.made(KeyRevoked(key_id))
    await refused_everywhere(brokers, raw, 401)


async def test_admin_commands_reach_every_broker(
    make_broker: MakeBroker, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    brokers = await make_cluster(make_broker, redis_url, tmp_path, monkeypatch)
    _, key_id, raw = await a_user_with_a_key(brokers[0])
    _, _, other = await a_user_with_a_key(brokers[0], "carol")
    for broker in brokers:
        assert await status(broker, raw) == 503 and await status(broker, other) == 503
    # A model allow-list: the key may no longer ask for stub-model.
    await admin(redis_url, tmp_path, "users", "set-limits", "bob", "--models", "other-model")
    await refused_everywhere(brokers, raw, 403)
    # A block.
    await admin(redis_url, tmp_path, "users", "block", "carol")
    await refused_everywhere(brokers, other, 403)
    # A revoked key.
    await admin(redis_url, tmp_path, "users", "set-limits", "bob", "--all-models")
    await refused_everywhere(brokers, raw, 503)
    assert "revoked key" in await admin(redis_url, tmp_path, "keys", "revoke", str(key_id))
    await refused_everywhere(brokers, raw, 401)


async def test_a_revoked_connector_token_shuts_its_link_out_on_another_broker(
    stub: StubLLM,
    make_broker: MakeBroker,
    make_connector: MakeConnector,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b, _ = await make_cluster(make_broker, redis_url, tmp_path, monkeypatch)
    store = a.services.store
    owner = await store.create_user("olga", "", "user")
    raw, token = await store.create_connector_token("olga-box", owner.id)
    await make_connector(b, stub.url, broker_token=SecretStr(raw))
    await wait_models(b, {"stub-model"})
    # The portal's page on A: revoked there, shut out on B.
    await store.revoke_connector_token(token.id)
    await a.services.changes.made(ConnectorRevoked(token.id))

    async def gone() -> bool:
        return not b.services.relay.links

    await eventually(gone, "the connector's link on B is shut out")


async def test_a_changed_access_rule_reaches_the_broker_holding_the_connector(
    stub: StubLLM,
    make_broker: MakeBroker,
    make_connector: MakeConnector,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, b, _ = await make_cluster(make_broker, redis_url, tmp_path, monkeypatch)
    store = b.services.store
    owner = await store.create_user("olga", "", "user")
    guest = await store.create_user("gus", "", "user")
    raw, _ = await store.create_connector_token("olga-box", owner.id)
    await make_connector(b, stub.url, broker_token=SecretStr(raw))
    await wait_models(b, {"stub-model"})
    assert "stub-model" in b.services.hub.models_for(guest.id)
    said = await admin(redis_url, tmp_path, "connectors", "access", "olga-box", "--owner-only")
    assert "now admits" in said

    async def owner_only() -> bool:
        return "stub-model" not in b.services.hub.models_for(guest.id)

    await eventually(owner_only, "the guest is no longer routed to the connector")
    assert "stub-model" in b.services.hub.models_for(owner.id)


async def test_a_broker_that_lost_redis_reads_everything_again(
    make_broker: MakeBroker,
    redis_server: RedisServer,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b, _ = await make_cluster(make_broker, redis_url, tmp_path, monkeypatch)
    _, key_id, raw = await a_user_with_a_key(a)
    _, _, dave = await a_user_with_a_key(a, "dave")
    assert await status(b, raw) == 503 and await status(b, dave) == 503  # cached for an hour
    assert await readyz(b) == (200, {"status": "ready", "changes": "live"})
    redis_server.stop()
    try:

        async def deaf() -> bool:
            return not events_of(b).listening

        await eventually(deaf, "B notices Redis is gone")
        assert await readyz(b) == (200, {"status": "ready", "changes": "polling"})
        # An admin command still makes its change, and says when the brokers apply it.
        out, err = await admin_says(redis_server.url, tmp_path, "users", "block", "dave")
        assert out.startswith("blocked dave") and "within 5 seconds" in err
        # Revoked while nobody can hear of it (publishing fails, and says so in the log).
        await a.services.store.revoke_key(key_id)
        await a.services.changes.made(KeyRevoked(key_id))
        assert await status(a, raw) == 401  # applied where it was made
        assert await status(b, raw) == 503  # missed: B still has it cached
    finally:
        redis_server.start()
    await listening(b)
    assert await readyz(b) == (200, {"status": "ready", "changes": "live"})
    await refused_everywhere([b], raw, 401)  # B read everything again on reconnecting
    await refused_everywhere([b], dave, 403)
    assert events_of(b).resyncs >= 1
    # And hears of changes again.
    _, other_id, other = await a_user_with_a_key(a, "carol")
    assert await status(b, other) == 503
    await a.services.store.revoke_key(other_id)
    await a.services.changes.made(KeyRevoked(other_id))
    await refused_everywhere([b], other, 401)


async def test_a_broker_ignores_what_is_not_a_change(
    make_broker: MakeBroker, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, _ = await make_cluster(make_broker, redis_url, tmp_path, monkeypatch)
    _, key_id, raw = await a_user_with_a_key(a)
    assert await status(b, raw) == 503
    redis = a.services.redis
    await redis.publish(CHANNEL, b"not json")
    await redis.publish(CHANNEL, b'{"kind":"key_revoked","id":"x","from":"y"}')
    await a.services.store.revoke_key(key_id)
    await a.services.changes.made(KeyRevoked(key_id))
    await refused_everywhere([b], raw, 401)  # still listening after the noise


async def test_a_broker_whose_subscription_was_cut_reads_everything_again(
    make_broker: MakeBroker, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis closes the subscribers' connections (a failover, a proxy's idle timeout): redis-py
    may reconnect by itself, and whatever was published meanwhile is lost either way."""
    a, b, _ = await make_cluster(make_broker, redis_url, tmp_path, monkeypatch)
    _, key_id, raw = await a_user_with_a_key(a)
    assert await status(b, raw) == 503
    before = events_of(b).resyncs
    await a.services.store.revoke_key(key_id)  # and nobody told
    assert await a.services.redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub") >= 3

    async def resynced() -> bool:
        return events_of(b).resyncs > before

    await eventually(resynced, "B read everything again")
    await refused_everywhere([b], raw, 401)


SINGLE_BROKER = """
import asyncio, sys
from aiohttp import web
from broker.app import create_app
from broker.settings import BrokerSettings

async def main():
    app = create_app(BrokerSettings(database_url="sqlite+aiosqlite:///:memory:"))
    runner = web.AppRunner(app)
    await runner.setup()
    await runner.cleanup()

asyncio.run(main())
print(sorted(m for m in sys.modules if m == "redis" or m.startswith("broker.cluster.")))
"""


def test_a_single_broker_loads_nothing_of_the_cluster(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SINGLE_BROKER],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parents[3],
        env={"XDG_DATA_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
