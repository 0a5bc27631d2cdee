"""The portal's "Who may use this connector" page, and groups read at sign-in, against a fake
GitLab on loopback."""

from __future__ import annotations

import html as html_lib

import aiohttp
from pydantic import SecretStr

from broker.accounts.access import AccessRule
from broker.accounts.records import ConnectorToken
from tests.broker.portal.test_portal import (
    KEY_PATTERN,
    Portal,
    browser,
    csrf_of,
    gitlab,
    make_portal,
    portal,
    sign_in,
)
from tests.conftest import MakeBroker, MakeConnector, wait_models
from tests.fake_gitlab import FakeGitLab, FakeUser
from tests.stub_llm import StubLLM

__all__ = ["gitlab", "portal"]  # fixtures, used by name

ALICE = FakeUser(4242, "alice", "Alice Example", {"team"})
BOB = FakeUser(77, "bob", "Bob", {"other"})


async def connector_of(portal: Portal, username: str, name: str = "gpu") -> ConnectorToken:
    store = portal.broker.services.store
    owner = await store.find_user(username)
    _, token = await store.create_connector_token(name, owner.id)
    return token


async def page(
    session: aiohttp.ClientSession, portal: Portal, token: ConnectorToken
) -> tuple[int, str]:
    async with session.get(f"{portal.url}/connectors/{token.id}/access") as response:
        return response.status, await response.text()


async def post(
    session: aiohttp.ClientSession, portal: Portal, token: ConnectorToken, **form: str
) -> tuple[int, str]:
    url = f"{portal.url}/connectors/{token.id}/access"
    async with session.post(url, data=form) as response:
        return response.status, await response.text()


async def test_the_owner_sees_and_changes_the_rule(portal: Portal) -> None:
    store = portal.broker.services.store
    async with browser() as alice:
        await sign_in(alice, portal)
        token = await connector_of(portal, "alice")
        status, html = await page(alice, portal, token)
        assert status == 200
        assert 'value="everyone" checked' in html and "gpu" in html
        assert "does not read GitLab groups" in html  # no --gitlab-read-groups here
        assert f'href="/connectors/{token.id}">Back to gpu' in html
        csrf = csrf_of(html)
        status, html = await post(alice, portal, token, csrf=csrf, mode="owner")
        assert status == 200 and "Saved." in html and 'value="owner" checked' in html
        assert await store.access.rule(token.id) == AccessRule("owner")
        await store.create_user("carol")
        status, html = await post(
            alice, portal, token, csrf=csrf, mode="users", users="carol, alice"
        )
        assert status == 200 and 'value="carol, alice"' in html
        status, html = await post(alice, portal, token, csrf=csrf, mode="groups", groups="team/ ,x")
        assert status == 200 and 'value="team, x"' in html
        assert await store.access.rule(token.id) == AccessRule("groups", groups=("team", "x"))
        status, html = await post(alice, portal, token, csrf=csrf, mode="everyone")
        assert status == 200 and await store.access.rule(token.id) == AccessRule()


async def test_a_form_without_its_csrf_token_or_with_a_bad_rule_changes_nothing(
    portal: Portal,
) -> None:
    store = portal.broker.services.store
    async with browser() as alice:
        await sign_in(alice, portal)
        token = await connector_of(portal, "alice")
        _, html = await page(alice, portal, token)
        status, _ = await post(alice, portal, token, mode="owner")
        assert status == 403
        status, _ = await post(alice, portal, token, csrf="forged", mode="owner")
        assert status == 403
        csrf = csrf_of(html)
        status, html = await post(alice, portal, token, csrf=csrf, mode="users", users="nobody")
        assert status == 400 and "No user &#39;nobody&#39;" in html
        status, html = await post(alice, portal, token, csrf=csrf, mode="groups", groups=" ")
        assert status == 400 and "A groups rule needs at least one group" in html
        status, html = await post(alice, portal, token, csrf=csrf, mode="friends")
        assert status == 400 and "Unknown access mode" in html_lib.unescape(html)
    assert await store.access.rule(token.id) == AccessRule()


async def test_someone_else_gets_404_and_an_admin_may_change_it(
    portal: Portal, gitlab: FakeGitLab
) -> None:
    store = portal.broker.services.store
    async with browser() as alice:
        await sign_in(alice, portal)
    token = await connector_of(portal, "alice")
    gitlab.current = BOB
    async with browser() as bob:
        await sign_in(bob, portal)
        status, html = await page(bob, portal, token)
        assert status == 404 and "No such connector" in html
        async with bob.get(f"{portal.url}/portal/keys") as keys:
            csrf = csrf_of(await keys.text())
        status, _ = await post(bob, portal, token, csrf=csrf, mode="owner")
        assert status == 404
        status, _ = await page(bob, portal, await connector_of(portal, "alice", "unknown"))
        assert status == 404
        assert await store.access.rule(token.id) == AccessRule()
        revoked = await connector_of(portal, "bob", "old")
        await store.revoke_connector_token("old")
        status, _ = await page(bob, portal, revoked)  # his own, but revoked
        assert status == 404
        await store.set_role((await store.find_user("bob")).id, "admin")
        status, html = await page(bob, portal, token)
        assert status == 200 and "alice" in html
        status, _ = await post(bob, portal, token, csrf=csrf, mode="owner")
        assert status == 200 and await store.access.rule(token.id) == AccessRule("owner")


async def test_signed_out_the_page_sends_to_sign_in(portal: Portal) -> None:
    async with browser() as alice:
        await sign_in(alice, portal)
    token = await connector_of(portal, "alice")
    async with (
        browser() as anonymous,
        anonymous.get(
            f"{portal.url}/connectors/{token.id}/access", allow_redirects=False
        ) as response,
    ):
        assert response.status == 302 and response.headers["Location"] == "/"


async def test_groups_read_at_sign_in_open_a_group_shared_connector_at_once(
    make_broker: MakeBroker,
    gitlab: FakeGitLab,
    stub: StubLLM,
    make_connector: MakeConnector,
) -> None:
    portal = await make_portal(make_broker, gitlab, gitlab_read_groups=True, user_api_key=[])
    store = portal.broker.services.store
    olga = await store.create_user("olga")
    raw, token = await store.create_connector_token("team-gpu", olga.id)
    await store.access.set_rule(token.id, AccessRule("groups", groups=("team",)))
    await make_connector(portal.broker, stub.url, broker_token=SecretStr(raw), name="team-gpu")
    await wait_models(portal.broker, {"stub-model"})
    gitlab.current = FakeUser(4242, "alice", "Alice", {"team", "team/sub", "elsewhere"})
    async with browser() as alice:
        status, html = await sign_in(alice, portal)
        assert status == 200
        assert "stub-model" in html  # the portal lists it: she may reach it
        key = KEY_PATTERN.findall(html)[0]
    assert gitlab.authorize_params[-1]["scope"] == "read_user read_api"
    user = await store.find_user("alice")
    assert await store.access.groups(user.id) == ("elsewhere", "team", "team/sub")
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{portal.url}/v1/chat/completions",
            json={"model": "stub-model", "messages": []},
            headers={"Authorization": f"Bearer {key}"},
        ) as response,
    ):
        assert response.status == 200
    # Left the group: the next sign-in records it, and the connector refuses her at once.
    gitlab.current = FakeUser(4242, "alice", "Alice", {"elsewhere"})
    async with browser() as alice:
        status, html = await sign_in(alice, portal)
        assert status == 200 and "stub-model" not in html
    assert await store.access.groups(user.id) == ("elsewhere",)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{portal.url}/v1/chat/completions",
            json={"model": "stub-model", "messages": []},
            headers={"Authorization": f"Bearer {key}"},
        ) as response,
    ):
        assert response.status == 403
        assert (await response.json())["error"]["code"] == "model_not_allowed"


async def test_with_groups_read_the_page_says_so(
    make_broker: MakeBroker, gitlab: FakeGitLab
) -> None:
    portal = await make_portal(make_broker, gitlab, gitlab_read_groups=True)
    async with browser() as alice:
        await sign_in(alice, portal)
        token = await connector_of(portal, "alice")
        status, html = await page(alice, portal, token)
        assert status == 200 and "Groups are read when a person signs in." in html
        assert "does not read GitLab groups" not in html


async def test_the_page_shows_whom_the_connected_connector_blocks_itself(
    portal: Portal, stub: StubLLM, make_connector: MakeConnector
) -> None:
    store = portal.broker.services.store
    async with browser() as alice:
        await sign_in(alice, portal)
        owner = await store.find_user("alice")
        bob = await store.create_user("bob")
        raw, token = await store.create_connector_token("gpu", owner.id)
        status, html = await page(alice, portal, token)
        assert status == 200 and "not connected now" in html and "itself blocks" not in html
        await make_connector(
            portal.broker,
            stub.url,
            broker_token=SecretStr(raw),
            name="gpu",
            blocked_users=[str(bob.id), "configured"],
        )
        await wait_models(portal.broker, {"stub-model"})
        status, html = await page(alice, portal, token)
        assert "online now" in html
        assert "the connector itself blocks: bob, configured" in html


async def test_a_rule_saved_on_the_page_routes_the_next_request(
    make_broker: MakeBroker,
    gitlab: FakeGitLab,
    stub: StubLLM,
    make_connector: MakeConnector,
) -> None:
    """The page promises the new rule from the next request: no periodic refresh between."""
    portal = await make_portal(make_broker, gitlab, user_api_key=[])
    store = portal.broker.services.store
    gitlab.current = ALICE
    async with browser() as alice:
        assert (await sign_in(alice, portal))[0] == 200
        owner = await store.find_user("alice")
        raw, token = await store.create_connector_token("gpu", owner.id)
        await make_connector(portal.broker, stub.url, broker_token=SecretStr(raw), name="gpu")
        await wait_models(portal.broker, {"stub-model"})
        bob = await store.create_user("bob")
        bob_key, _ = await store.create_key(bob.id, "test")

        async def bob_asks() -> int:
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    f"{portal.url}/v1/chat/completions",
                    json={"model": "stub-model", "messages": []},
                    headers={"Authorization": f"Bearer {bob_key}"},
                ) as response,
            ):
                await response.read()
                return response.status

        assert await bob_asks() == 200
        _, html = await page(alice, portal, token)
        status, _ = await post(alice, portal, token, csrf=csrf_of(html), mode="owner")
        assert status == 200
        assert await bob_asks() == 403
        _, html = await page(alice, portal, token)
        await post(alice, portal, token, csrf=csrf_of(html), mode="users", users="bob")
        assert await bob_asks() == 200
    assert len(stub.seen) == 2
