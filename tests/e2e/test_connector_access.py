"""Who may use a connector (issue 21): the owner's rule and the connector's block list, enforced
by the broker in routing.

A real broker with its store, real connectors (or ones speaking the protocol by hand, to act
as an older connector would) and stub LLMs on loopback. A request never reaches a connector
that does not admit its user; the model lists show only what a key can reach; a model only
refusing connectors serve is refused at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr
from websockets.asyncio.client import connect

from broker.accounts.access import AccessRule
from broker.accounts.store import Store
from broker.server import BrokerServer
from shared import protocol as p
from tests.conftest import (
    CONNECTOR_TOKEN,
    USER_KEY,
    MakeBroker,
    MakeConnector,
    RunningConnector,
    wait_models,
)
from tests.e2e.test_owner_controls import chat, user_key
from tests.fake_gitlab import CLIENT_ID, CLIENT_SECRET
from tests.stub_llm import StubLLM

# Long enough that a request that waited for it would hit the tests' guard first: a refusal
# that comes back under the guard came without that wait.
LONG_WAIT = 120.0
GUARD = 30.0


def store_of(broker: BrokerServer) -> Store:
    store = broker.services.store
    assert store is not None
    return store


async def owned_connector(
    broker: BrokerServer,
    make_connector: MakeConnector,
    llm_url: str,
    owner: str,
    rule: AccessRule,
    name: str = "owned",
) -> RunningConnector:
    """A connector paired by `owner` (a user id) under `rule`, connected and serving."""
    store = store_of(broker)
    token, record = await store.create_connector_token(name, int(owner))
    await store.access.set_rule(record.id, rule)
    running = await make_connector(broker, llm_url, broker_token=SecretStr(token), name=name)
    await wait_links(broker, name)
    return running


async def wait_links(broker: BrokerServer, *names: str) -> None:
    async with asyncio.timeout(10):
        while not set(names) <= {link.name for link in broker.hub.links}:
            await asyncio.sleep(0.01)


async def listed(broker: BrokerServer, key: str) -> tuple[list[str], list[str]]:
    """The model ids of /v1/models and the names of /api/tags for `key`."""
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.get(f"{broker.base_url}/v1/models") as resp:
            assert resp.status == 200
            models = [m["id"] for m in (await resp.json())["data"]]
        async with session.get(f"{broker.base_url}/api/tags") as resp:
            assert resp.status == 200
            tags = [m["name"] for m in (await resp.json())["models"]]
    return models, tags


async def one_model(broker: BrokerServer, key: str, model: str) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{broker.base_url}/v1/models/{model}", headers={"Authorization": f"Bearer {key}"}
        ) as resp,
    ):
        return resp.status


async def guarded_chat(broker: BrokerServer, key: str) -> tuple[int, Any]:
    async with asyncio.timeout(GUARD):
        return await chat(broker, key)


def code(answer: Any) -> str:
    assert isinstance(answer, dict), answer
    return str(answer["error"]["code"])


async def test_owner_only_serves_the_owner_and_refuses_others_at_once(
    stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector
) -> None:
    broker = await make_broker(connector_wait=LONG_WAIT, queue_timeout=LONG_WAIT)
    olga, olga_key = await user_key(broker, "olga")
    _, alice_key = await user_key(broker, "alice")
    await owned_connector(broker, make_connector, stub.url, olga, AccessRule("owner"))
    await wait_models(broker, {"stub-model"})
    status, answer = await guarded_chat(broker, alice_key)
    assert (status, code(answer)) == (403, "model_not_allowed")
    assert answer["error"]["type"] == "permission_error"
    assert stub.seen == []
    assert await listed(broker, alice_key) == ([], [])
    assert await one_model(broker, alice_key, "stub-model") == 404
    status, _ = await guarded_chat(broker, olga_key)
    assert status == 200 and len(stub.seen) == 1
    assert await listed(broker, olga_key) == (["stub-model"], ["stub-model"])
    assert await one_model(broker, olga_key, "stub-model") == 200


async def test_listed_users_are_served_and_others_are_not(
    stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector
) -> None:
    broker = await make_broker(connector_wait=LONG_WAIT)
    olga, _ = await user_key(broker, "olga")
    bob, bob_key = await user_key(broker, "bob")
    _, alice_key = await user_key(broker, "alice")
    await owned_connector(
        broker, make_connector, stub.url, olga, AccessRule("users", users=(int(bob),))
    )
    status, _ = await guarded_chat(broker, bob_key)
    assert status == 200
    status, answer = await guarded_chat(broker, alice_key)
    assert (status, code(answer)) == (403, "model_not_allowed")
    assert len(stub.seen) == 1


READS_GROUPS = {
    "gitlab_client_id": CLIENT_ID,
    "gitlab_client_secret": CLIENT_SECRET,
    "gitlab_read_groups": True,
}
"""A broker that reads users' GitLab groups at sign-in (the groups here are put in its store)."""


async def test_group_members_are_served_subgroups_included_and_others_are_not(
    stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector
) -> None:
    broker = await make_broker(connector_wait=LONG_WAIT, **READS_GROUPS)
    store = store_of(broker)
    olga, _ = await user_key(broker, "olga")
    bob, bob_key = await user_key(broker, "bob")
    carol, carol_key = await user_key(broker, "carol")
    _, alice_key = await user_key(broker, "alice")
    await store.access.set_groups(int(bob), ["Org"])  # a member of a group is one of its subgroups
    await store.access.set_groups(int(carol), ["org/other"])  # a sibling subgroup is not
    rule = AccessRule("groups", groups=("org/gpu",))
    await owned_connector(broker, make_connector, stub.url, olga, rule)
    status, _ = await guarded_chat(broker, bob_key)
    assert status == 200
    for key in (carol_key, alice_key):
        status, answer = await guarded_chat(broker, key)
        assert (status, code(answer)) == (403, "model_not_allowed")
    # Carol joins the group: the next refresh (the broker's 5 s check, or a sign-in) applies it.
    await store.access.set_groups(int(carol), ["org/gpu"])
    await broker.services.relay.refresh_gates()
    status, _ = await guarded_chat(broker, carol_key)
    assert status == 200
    assert len(stub.seen) == 2


async def test_without_reading_groups_a_group_rule_admits_the_owner_only(
    stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector
) -> None:
    broker = await make_broker(connector_wait=LONG_WAIT)  # no --gitlab-read-groups
    olga, olga_key = await user_key(broker, "olga")
    bob, bob_key = await user_key(broker, "bob")
    await store_of(broker).access.set_groups(int(bob), ["org"])  # recorded once, not now
    rule = AccessRule("groups", groups=("org",))
    await owned_connector(broker, make_connector, stub.url, olga, rule)
    status, answer = await guarded_chat(broker, bob_key)
    assert (status, code(answer)) == (403, "model_not_allowed")
    status, _ = await guarded_chat(broker, olga_key)
    assert status == 200


async def test_a_refused_user_is_served_by_a_connector_that_admits_them(
    stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector
) -> None:
    other = StubLLM()
    await other.start()
    try:
        broker = await make_broker()
        olga, _ = await user_key(broker, "olga")
        _, alice_key = await user_key(broker, "alice")
        await owned_connector(broker, make_connector, stub.url, olga, AccessRule("owner"))
        await make_connector(broker, other.url, name="for-everyone")
        await wait_links(broker, "owned", "for-everyone")
        for _ in range(4):
            status, _ = await guarded_chat(broker, alice_key)
            assert status == 200
        assert stub.seen == [] and len(other.seen) == 4
    finally:
        await other.stop()


async def test_a_rule_changed_while_connected_applies_to_the_next_request(
    stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector
) -> None:
    broker = await make_broker(connector_wait=LONG_WAIT)
    olga, _ = await user_key(broker, "olga")
    _, alice_key = await user_key(broker, "alice")
    await owned_connector(broker, make_connector, stub.url, olga, AccessRule())
    status, _ = await guarded_chat(broker, alice_key)
    assert status == 200
    token = next(t for t in await store_of(broker).connector_tokens() if t.name == "owned")
    await store_of(broker).access.set_rule(token.id, AccessRule("owner"))
    await broker.services.relay.refresh_gates()
    status, answer = await guarded_chat(broker, alice_key)
    assert (status, code(answer)) == (403, "model_not_allowed")
    assert len(stub.seen) == 1


async def test_keys_from_the_settings_reach_only_connectors_open_to_everyone(
    stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector
) -> None:
    broker = await make_broker(connector_wait=LONG_WAIT)
    olga, _ = await user_key(broker, "olga")
    await owned_connector(broker, make_connector, stub.url, olga, AccessRule("owner"))
    status, answer = await guarded_chat(broker, USER_KEY)
    assert (status, code(answer)) == (403, "model_not_allowed")


async def test_the_connector_tells_the_broker_whom_it_blocks(
    stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector
) -> None:
    broker = await make_broker(connector_wait=LONG_WAIT)
    alice, alice_key = await user_key(broker, "alice")
    _, bob_key = await user_key(broker, "bob")
    running = await make_connector(broker, stub.url)
    await wait_models(broker, {"stub-model"})
    status, _ = await guarded_chat(broker, alice_key)
    assert status == 200
    running.connector.client.set_blocked(frozenset({alice}))  # the tray's "Block"
    async with asyncio.timeout(10):
        while (await listed(broker, alice_key))[0]:
            await asyncio.sleep(0.01)
    status, answer = await guarded_chat(broker, alice_key)
    assert (status, code(answer)) == (403, "user_blocked")
    assert len(stub.seen) == 1  # the broker did not send it: it knew
    assert (await listed(broker, bob_key))[0] == ["stub-model"]
    running.connector.client.set_blocked(frozenset())
    async with asyncio.timeout(10):
        while not (await listed(broker, alice_key))[0]:
            await asyncio.sleep(0.01)
    status, _ = await guarded_chat(broker, alice_key)
    assert status == 200


async def test_a_connector_blocking_at_start_says_so_in_its_hello(
    stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector
) -> None:
    broker = await make_broker(connector_wait=LONG_WAIT)
    alice, alice_key = await user_key(broker, "alice")
    await make_connector(broker, stub.url, blocked_users=[alice])
    await wait_models(broker, {"stub-model"})
    assert await listed(broker, alice_key) == ([], [])
    status, answer = await guarded_chat(broker, alice_key)
    assert (status, code(answer)) == (403, "user_blocked")
    assert stub.seen == []


# -- connectors that do not tell (an older connector): the broker learns at the request ------


class OldConnector:
    """A connector of before BLOCKED, by hand: it refuses `refuse` users with `user_blocked`,
    serves nothing else and holds what it does not refuse."""

    def __init__(self, ws: Any, refuse: set[str]) -> None:
        self.ws = ws
        self.refuse = refuse
        self.held: list[p.RequestHead] = []
        self.refused: list[p.RequestHead] = []
        self.task = asyncio.create_task(self._serve())

    @classmethod
    async def attach(
        cls, broker: BrokerServer, refuse: set[str], max_concurrency: int = 8
    ) -> OldConnector:
        ws = await connect(
            f"ws://127.0.0.1:{broker.port}/relay",
            additional_headers={"Authorization": f"Bearer {CONNECTOR_TOKEN}"},
            close_timeout=1,
        )
        await ws.send(
            p.encode(p.Hello(p.PROTOCOL_VERSION, "old", ("stub-model",), max_concurrency))
        )
        assert isinstance(p.decode(await ws.recv())[0], p.Welcome)
        return cls(ws, refuse)

    async def _serve(self) -> None:
        while True:
            for frame in p.decode(await self.ws.recv()):
                if isinstance(frame, p.RequestHead):
                    if frame.user_id in self.refuse:
                        self.refused.append(frame)
                        error = p.Error(frame.stream_id, "user_blocked", "Not you.")
                        await self.ws.send(p.encode(error))
                    else:
                        self.held.append(frame)

    async def close(self) -> None:
        self.task.cancel()
        await self.ws.close()


@pytest.fixture
async def olds() -> AsyncIterator[list[OldConnector]]:
    made: list[OldConnector] = []
    yield made
    for old in made:
        await old.close()


async def test_a_block_learnt_at_the_request_is_answered_at_once(
    make_broker: MakeBroker, olds: list[OldConnector]
) -> None:
    # The plain request the express lane serves from callbacks, refused there: its retry must
    # not wait --connector-wait for a connector that will never come.
    broker = await make_broker(connector_wait=LONG_WAIT, queue_timeout=LONG_WAIT)
    alice, alice_key = await user_key(broker, "alice")
    olds.append(await OldConnector.attach(broker, {alice}))
    await wait_models(broker, {"stub-model"})
    status, answer = await guarded_chat(broker, alice_key)
    assert (status, answer["error"]) == (
        403,
        {"message": "Not you.", "type": "permission_error", "param": None, "code": "user_blocked"},
    )
    assert len(olds[0].refused) == 1


async def test_after_a_block_a_busy_connector_that_admits_the_user_is_the_usual_503(
    make_broker: MakeBroker, olds: list[OldConnector]
) -> None:
    broker = await make_broker()  # short waits: the 503 comes after queue_timeout
    alice, alice_key = await user_key(broker, "alice")
    bob, bob_key = await user_key(broker, "bob")
    # The first refuses both; Bob's request goes on to the second and takes its only slot.
    olds.append(await OldConnector.attach(broker, {alice, bob}))
    busy = await OldConnector.attach(broker, set(), max_concurrency=1)
    olds.append(busy)
    async with asyncio.timeout(10):
        while len(broker.hub.links) < 2:
            await asyncio.sleep(0.01)
    bobs = asyncio.create_task(chat(broker, bob_key))
    try:
        async with asyncio.timeout(10):
            while not busy.held:
                await asyncio.sleep(0.01)
        status, answer = await guarded_chat(broker, alice_key)
        assert (status, code(answer)) == (503, "no_connector_available")
        assert [h.user_id for h in busy.held] == [bob]
        assert [h.user_id for h in olds[0].refused] == [bob, alice]
    finally:
        bobs.cancel()
        with pytest.raises(asyncio.CancelledError):
            await bobs


async def test_a_broker_names_the_blocked_feature_and_bounds_the_frame(
    make_broker: MakeBroker,
) -> None:
    broker = await make_broker()
    async with connect(
        f"ws://127.0.0.1:{broker.port}/relay",
        additional_headers={"Authorization": f"Bearer {CONNECTOR_TOKEN}"},
        close_timeout=1,
    ) as ws:
        await ws.send(p.encode(p.Hello(p.PROTOCOL_VERSION, "raw", ("m",), 1)))
        (welcome,) = p.decode(await ws.recv())  # type: ignore[arg-type]
        assert isinstance(welcome, p.Welcome) and p.FEATURE_BLOCKED in welcome.features
        await ws.send(p.encode(p.Blocked(tuple(str(i) for i in range(10_001)))))
        async with asyncio.timeout(GUARD):
            await ws.wait_closed()
        assert ws.close_code == p.CLOSE_POLICY_VIOLATION
        assert "blocks 10001 users" in (ws.close_reason or "")
