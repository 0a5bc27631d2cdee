"""My connectors: what an owner sees of their connectors, who else may not, and revoking one.

A real broker with the fake GitLab, a real connector on loopback and the stub LLM."""

from __future__ import annotations

import asyncio
import html as html_lib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest

from broker.accounts.access import AccessRule
from broker.accounts.records import User
from connector_app.core.status import LinkState
from tests.broker.portal.test_portal import Portal, browser, csrf_of, make_portal, sign_in
from tests.conftest import MakeBroker, MakeConnector, RunningConnector, wait_models
from tests.fake_gitlab import FakeGitLab, FakeUser
from tests.stub_llm import StubLLM


@pytest.fixture
async def gitlab() -> AsyncIterator[FakeGitLab]:
    fake = FakeGitLab()
    await fake.start()
    yield fake
    await fake.stop()


@dataclass
class Shared:
    portal: Portal
    owner: User
    connector: RunningConnector
    token_id: int


async def chat(portal: Portal, key: str) -> int:
    payload = {"model": "stub-model", "messages": [{"role": "user", "content": "hi"}]}
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            portal.url + "/v1/chat/completions",
            json=payload,
            headers={"Authorization": f"Bearer {key}"},
        ) as response,
    ):
        await response.read()
        return response.status


@pytest.fixture
async def shared(
    make_broker: MakeBroker, make_connector: MakeConnector, gitlab: FakeGitLab, stub: StubLLM
) -> Shared:
    """alice owns `gpu-box`, online and serving; she and bob each sent requests through it."""
    portal = await make_portal(make_broker, gitlab, connector_token=[])
    store = portal.broker.services.store
    async with browser() as session:
        assert (await sign_in(session, portal))[0] == 200
    owner = await store.find_user("alice")
    raw, token = await store.create_connector_token("gpu-box", owner.id)
    connector = await make_connector(portal.broker, stub.url, broker_token=raw, name="gpu-box")
    await wait_models(portal.broker, {"stub-model"})
    bob = await store.create_user("bob")
    for user, times in ((owner, 1), (bob, 2)):
        key, _ = await store.create_key(user.id, "test")
        for _ in range(times):
            assert await chat(portal, key) == 200
    await portal.broker.services.ledger.flush()
    return Shared(portal, owner, connector, token.id)


async def page(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as response:
        return response.status, html_lib.unescape(await response.text())


async def test_the_owner_sees_each_connector_and_whom_it_served(shared: Shared) -> None:
    portal = shared.portal
    async with browser() as session:
        _, start = await sign_in(session, portal)
        assert 'href="/connectors"' in start  # in the navigation
        status, listing = await page(session, portal.url + "/connectors")
        assert status == 200
        assert "gpu-box" in listing and "stub-model" in listing and "online" in listing
        assert f'href="/connectors/{shared.token_id}/access">Everyone signed in<' in listing
        assert f'href="/connectors/{shared.token_id}/revoke"' in listing
        # 3 requests of 3 + 4 tokens each, bob's 2 first.
        assert ">3<" in listing and ">21<" in listing
        whom = listing[listing.index("Who they served") :]
        assert whom.index("bob") < whom.index("alice")
        status, detail = await page(session, f"{portal.url}/connectors/{shared.token_id}")
        assert status == 200 and "online" in detail and "bob" in detail
    await shared.connector.stop()
    await wait_models(portal.broker, set())
    async with browser() as session:
        await sign_in(session, portal)
        _, listing = await page(session, portal.url + "/connectors")
        assert "offline" in listing and "UTC" in listing  # last seen, to the minute
    store = portal.broker.services.store
    await store.access.set_rule(shared.token_id, AccessRule("owner"))
    async with browser() as session:
        await sign_in(session, portal)
        _, listing = await page(session, portal.url + "/connectors")
        assert f'href="/connectors/{shared.token_id}/access">Only you<' in listing
        await store.access.set_rule(shared.token_id, AccessRule("groups", groups=("ml/gpu",)))
        _, listing = await page(session, portal.url + "/connectors")
        assert ">Groups: ml/gpu<" in listing


async def test_nobody_else_sees_or_revokes_a_connector(shared: Shared, gitlab: FakeGitLab) -> None:
    portal = shared.portal
    store = portal.broker.services.store
    gitlab.current = FakeUser(7, "carol", "Carol")
    url = f"{portal.url}/connectors/{shared.token_id}"
    async with browser() as session:
        await sign_in(session, portal)
        _, listing = await page(session, portal.url + "/connectors")
        assert "gpu-box" not in listing and "You own no connector yet" in listing
        assert (await page(session, url))[0] == 404
        assert (await page(session, url + "/revoke"))[0] == 404
        async with session.post(url + "/revoke", data={"csrf": csrf_of(listing)}) as response:
            assert response.status == 404
        assert (await page(session, f"{portal.url}/connectors/999"))[0] == 404
        # An admin may see it (the admin page links each connector token here).
        carol = await store.find_user("carol")
        await store.set_role(carol.id, "admin")
        assert (await page(session, url))[0] == 200
        _, admin = await page(session, portal.url + "/admin")
        assert f'href="/connectors/{shared.token_id}"' in admin and "alice" in admin
    assert await store.live_connector_ids([shared.token_id]) == {shared.token_id}


async def test_revoking_asks_first_then_shuts_the_connector_out_for_good(shared: Shared) -> None:
    portal = shared.portal
    url = f"{portal.url}/connectors/{shared.token_id}/revoke"
    async with browser() as session:
        await sign_in(session, portal)
        status, confirm = await page(session, url)
        assert status == 200 and "Revoke gpu-box?" in confirm
        assert shared.connector.connector.status.state is LinkState.CONNECTED  # asking did nothing
        async with session.post(url, data={"csrf": "forged"}) as forged:
            assert forged.status == 403
        async with session.post(url, data={"csrf": csrf_of(confirm)}) as response:
            assert response.status == 200 and response.url.path == "/connectors"
            after = await response.text()
            assert "gpu-box was revoked and disconnected" in after
            assert 'href="/connectors/' not in after  # no longer listed
        # Gone from routing at once, not after the next revocation sweep.
        assert portal.broker.hub.links == []
        assert (await page(session, f"{portal.url}/connectors/{shared.token_id}"))[0] == 200
    await asyncio.wait_for(shared.connector.task, 10)  # it stopped dialing
    status = shared.connector.connector.status
    assert status.state is LinkState.DISCONNECTED and status.fatal
    assert "revoked" in (status.last_error or "")
    assert await portal.broker.services.store.live_connector_ids([shared.token_id]) == set()
