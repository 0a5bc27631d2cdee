"""The GitLab sign-in portal over HTTP, against a fake GitLab on loopback."""

from __future__ import annotations

import ast
import asyncio
import html as html_lib
import json
import re
import shlex
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlparse

import aiohttp
import pytest
from openai import AsyncOpenAI
from pydantic import SecretStr

from broker.portal.reveals import Reveals
from broker.server import BrokerServer
from tests.conftest import MakeBroker, MakeConnector, wait_models
from tests.fake_gitlab import CLIENT_ID, CLIENT_SECRET, FakeGitLab, FakeUser
from tests.stub_llm import StubLLM

KEY_PATTERN = re.compile(r"sk-[0-9A-Za-z]{38}")


@pytest.fixture
async def gitlab() -> AsyncIterator[FakeGitLab]:
    fake = FakeGitLab()
    await fake.start()
    yield fake
    await fake.stop()


@dataclass
class Portal:
    broker: BrokerServer
    gitlab: FakeGitLab

    @property
    def url(self) -> str:
        return self.broker.base_url


def browser() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def make_portal(make_broker: MakeBroker, gitlab: FakeGitLab, **overrides: Any) -> Portal:
    broker = await make_broker(
        gitlab_url=gitlab.url,
        gitlab_client_id=CLIENT_ID,
        gitlab_client_secret=CLIENT_SECRET,
        **overrides,
    )
    return Portal(broker, gitlab)


@pytest.fixture
async def portal(make_broker: MakeBroker, gitlab: FakeGitLab) -> Portal:
    return await make_portal(make_broker, gitlab)


async def sign_in(session: aiohttp.ClientSession, portal: Portal) -> tuple[int, str]:
    async with session.get(portal.url + "/login") as response:
        return response.status, await response.text()


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


async def test_sign_in_shows_a_key_once_that_works_through_the_relay(
    stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector, gitlab: FakeGitLab
) -> None:
    portal = await make_portal(make_broker, gitlab, user_api_key=[])
    await make_connector(portal.broker, stub.url)
    await wait_models(portal.broker, {"stub-model"})
    async with browser() as session:
        status, html = await sign_in(session, portal)
        assert status == 200
        keys = set(KEY_PATTERN.findall(html))
        assert len(keys) == 1
        key = keys.pop()
        assert f"{portal.url}/v1" in html  # base URL for clients
        assert "stub-model" in html  # models available right now
        assert f"curl {portal.url}/v1/chat/completions" in html
        assert '"model": "stub-model"' in html.replace("&#34;", '"')
        # Shown once: the next visit does not show it again.
        async with session.get(portal.url + "/portal") as again:
            assert KEY_PATTERN.search(await again.text()) is None
    params = gitlab.authorize_params[-1]
    assert params["code_challenge_method"] == "S256"
    assert params["redirect_uri"] == f"{portal.url}/auth/callback"
    assert params["scope"] == "read_user"
    client = AsyncOpenAI(base_url=f"{portal.url}/v1", api_key=key, max_retries=0)
    reply = await client.chat.completions.create(
        model="stub-model", messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.choices[0].message.content == "Hello from the stub."
    await client.close()
    # The raw key is not in the store: only its SHA-256.
    store = portal.broker.services.store
    user = await store.find_user("alice")
    assert user.gitlab_id == 4242
    (record,) = await store.keys(user.id)
    assert key.startswith(record.prefix) and len(record.prefix) < 16


async def test_second_sign_in_does_not_make_another_key(portal: Portal) -> None:
    async with browser() as session:
        _, first = await sign_in(session, portal)
        assert KEY_PATTERN.search(first)
    async with browser() as session:
        status, second = await sign_in(session, portal)
        assert status == 200 and KEY_PATTERN.search(second) is None
    user = await portal.broker.services.store.find_user("alice")
    assert len(await portal.broker.services.store.keys(user.id)) == 1


async def test_tampered_state_is_refused(portal: Portal) -> None:
    async with browser() as session:
        async with session.get(portal.url + "/login", allow_redirects=False) as start:
            authorize = start.headers["Location"]
        async with session.get(authorize, allow_redirects=False) as granted:
            callback = urlparse(granted.headers["Location"])
        code = parse_qs(callback.query)["code"][0]
        tampered = f"{portal.url}/auth/callback?code={code}&state=forged"
        async with session.get(tampered) as response:
            assert response.status == 400
            assert "not valid" in await response.text()
    assert gitlab_token_calls(portal) == 0  # nothing was exchanged


def gitlab_token_calls(portal: Portal) -> int:
    return portal.gitlab.token_requests


async def test_a_replayed_callback_is_refused(portal: Portal) -> None:
    async with browser() as session:
        async with session.get(portal.url + "/login", allow_redirects=False) as start:
            authorize = start.headers["Location"]
        async with session.get(authorize, allow_redirects=False) as granted:
            callback = granted.headers["Location"]
        async with session.get(callback) as first:
            assert first.status == 200
        # The same code and state again, in the same session: the state was single-use.
        async with session.get(callback) as replay:
            assert replay.status == 400
    # And in a new session that started its own sign-in, the old code is refused by GitLab.
    async with browser() as other:
        async with other.get(portal.url + "/login", allow_redirects=False) as start:
            state = parse_qs(urlparse(start.headers["Location"]).query)["state"][0]
        code = parse_qs(urlparse(callback).query)["code"][0]
        async with other.get(f"{portal.url}/auth/callback?code={code}&state={state}") as replay:
            assert replay.status == 400
            assert "refused" in await replay.text()


async def test_group_restriction(make_broker: MakeBroker, gitlab: FakeGitLab) -> None:
    portal = await make_portal(make_broker, gitlab, gitlab_allowed_group=["team"])
    gitlab.current = FakeUser(7, "mallory", "Mallory", {"other"})
    async with browser() as session:
        status, html = await sign_in(session, portal)
        assert status == 403
        assert "team" in html
    assert gitlab.authorize_params[-1]["scope"] == "read_user read_api"
    assert await portal.broker.services.store.list_users() == []
    gitlab.current = FakeUser(8, "bob", "Bob", {"team"})
    async with browser() as session:
        status, html = await sign_in(session, portal)
        assert status == 200 and KEY_PATTERN.search(html)


async def test_blocked_user_is_shown_the_blocked_page_and_their_key_stops(
    portal: Portal, stub: StubLLM, make_connector: MakeConnector
) -> None:
    await make_connector(portal.broker, stub.url)
    await wait_models(portal.broker, {"stub-model"})
    async with browser() as session:
        _, html = await sign_in(session, portal)
        key = KEY_PATTERN.findall(html)[0]
    store = portal.broker.services.store
    user = await store.find_user("alice")
    await store.set_status(user.id, "blocked")
    async with browser() as session:
        status, html = await sign_in(session, portal)
        assert status == 403 and "blocked" in html
    async with aiohttp.ClientSession() as http:
        # The block went straight to the store (as the admin CLI does): drop the cached key
        # rather than wait out the cache's second.
        portal.broker.services.accounts.forget()
        async with http.post(
            f"{portal.url}/v1/chat/completions",
            json={"model": "stub-model", "messages": []},
            headers={"Authorization": f"Bearer {key}"},
        ) as response:
            assert response.status == 403
            body = await response.json()
            assert body["error"]["code"] == "account_blocked"


async def test_gitlab_down_gives_a_clear_page(make_broker: MakeBroker, gitlab: FakeGitLab) -> None:
    portal = await make_portal(make_broker, gitlab)
    async with browser() as session:
        async with session.get(portal.url + "/login", allow_redirects=False) as start:
            authorize = start.headers["Location"]
        async with session.get(authorize, allow_redirects=False) as granted:
            callback = granted.headers["Location"]
        await gitlab.stop()  # GitLab goes away before the code is exchanged
        async with session.get(callback) as response:
            assert response.status == 502
            assert "GitLab is not answering" in await response.text()


async def test_denied_consent_says_so_but_only_for_a_sign_in_started_here(portal: Portal) -> None:
    async with browser() as session:
        async with session.get(portal.url + "/login", allow_redirects=False) as start:
            state = parse_qs(urlparse(start.headers["Location"]).query)["state"][0]
        denied = "error=access_denied&error_description=The+user+denied"
        async with session.get(f"{portal.url}/auth/callback?{denied}&state={state}") as response:
            assert response.status == 400
            assert "The user denied" in await response.text()
    async with browser() as session:
        # A crafted link cannot put its words on the portal's pages.
        forged = f"{portal.url}/auth/callback?error=x&error_description=Call+0900-SCAM&state=z"
        async with session.get(forged) as response:
            assert response.status == 400
            assert "SCAM" not in await response.text()


async def test_the_new_key_is_not_in_the_cookie_and_shows_only_once(portal: Portal) -> None:
    async with browser() as session:
        async with session.get(portal.url + "/login", allow_redirects=False) as start:
            authorize = start.headers["Location"]
        async with session.get(authorize, allow_redirects=False) as granted:
            callback = granted.headers["Location"]
        async with session.get(callback, allow_redirects=False) as signed_in:
            assert signed_in.headers["Location"] == "/portal"
        cookies = {c.key: c.value for c in session.cookie_jar}
        async with session.get(portal.url + "/portal") as first:
            key = KEY_PATTERN.findall(await first.text())[0]
    assert all(key not in value for value in cookies.values())
    # Someone who copied the cookie before the key was shown cannot see it again.
    async with (
        aiohttp.ClientSession(cookies=cookies) as thief,
        thief.get(portal.url + "/portal") as page,
    ):
        assert page.status == 200 and KEY_PATTERN.search(await page.text()) is None


async def test_examples_quote_any_model_name(
    make_broker: MakeBroker, make_connector: MakeConnector, gitlab: FakeGitLab
) -> None:
    evil = StubLLM(models=["a'; touch /tmp/pwned; echo '\"x"])
    await evil.start()
    try:
        portal = await make_portal(make_broker, gitlab)
        await make_connector(portal.broker, evil.url)
        await wait_models(portal.broker, set(evil.models))
        async with browser() as session:
            _, html = await sign_in(session, portal)
        curl = html_lib.unescape(re.search(r'id="curl-example"><code>(.*?)</code>', html, re.S)[1])
        args = shlex.split(curl.replace("\\\n", " "))
        assert args[0] == "curl" and len(args) == 8
        assert json.loads(args[-1])["model"] == evil.models[0]
        python = html_lib.unescape(
            re.search(r'id="python-example"><code>(.*?)</code>', html, re.S)[1]
        )
        tree = ast.parse(python)  # valid Python, and the name is one string constant
        strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)]
        assert evil.models[0] in strings
    finally:
        await evil.stop()


async def test_keys_page_creates_and_revokes_with_csrf(
    portal: Portal, stub: StubLLM, make_connector: MakeConnector
) -> None:
    await make_connector(portal.broker, stub.url)
    await wait_models(portal.broker, {"stub-model"})
    async with browser() as session:
        await sign_in(session, portal)
        async with session.get(portal.url + "/portal/keys") as page:
            html = await page.text()
        token = csrf_of(html)
        # Without the CSRF token nothing changes.
        async with session.post(portal.url + "/portal/keys", data={"name": "laptop"}) as bad:
            assert bad.status == 403
        async with session.post(
            portal.url + "/portal/keys", data={"name": "laptop", "csrf": token}
        ) as made:
            html = await made.text()
            new_key = KEY_PATTERN.findall(html)[0]
            assert "laptop" in html
        store = portal.broker.services.store
        user = await store.find_user("alice")
        laptop = next(k for k in await store.keys(user.id) if k.name == "laptop")
        async with aiohttp.ClientSession() as http:
            call = {
                "url": f"{portal.url}/v1/chat/completions",
                "json": {"model": "stub-model", "messages": []},
                "headers": {"Authorization": f"Bearer {new_key}"},
            }
            async with http.post(**call) as ok:
                assert ok.status == 200
            async with session.post(
                f"{portal.url}/portal/keys/{laptop.id}/revoke", data={"csrf": token}
            ) as revoked:
                assert revoked.status == 200
                assert "revoked" in await revoked.text()
            async with http.post(**call) as refused:  # at once, no restart
                assert refused.status == 401


async def test_someone_elses_key_cannot_be_revoked(portal: Portal) -> None:
    store = portal.broker.services.store
    other = await store.create_user("carol")
    _, carol_key = await store.create_key(other.id, "carol's")
    async with browser() as session:
        _, html = await sign_in(session, portal)
        token = csrf_of(html)
        async with session.post(
            f"{portal.url}/portal/keys/{carol_key.id}/revoke", data={"csrf": token}
        ) as response:
            assert response.status == 404
    (still,) = await store.keys(other.id)
    assert still.revoked is None


async def test_pages_need_a_session_and_admin_pages_need_an_admin(portal: Portal) -> None:
    async with browser() as session:
        async with session.get(portal.url + "/portal/keys", allow_redirects=False) as anonymous:
            assert anonymous.status == 302 and anonymous.headers["Location"] == "/"
        await sign_in(session, portal)
        async with session.get(portal.url + "/admin") as not_admin:
            assert not_admin.status == 403
        store = portal.broker.services.store
        alice = await store.find_user("alice")
        await store.set_role(alice.id, "admin")
        bob = await store.create_user("bob")
        async with session.get(portal.url + "/admin") as admin:
            html = await admin.text()
            assert admin.status == 200 and "bob" in html
        async with session.post(
            f"{portal.url}/admin/users/{bob.id}/block", data={"csrf": csrf_of(html)}
        ) as blocked:
            assert blocked.status == 200
        assert (await store.find_user("bob")).blocked


async def test_session_cookie_flags(portal: Portal) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.get(portal.url + "/login", allow_redirects=False) as response,
    ):
        cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # the public URL is plain http here


async def test_secure_cookie_when_the_public_url_is_https(
    make_broker: MakeBroker, gitlab: FakeGitLab
) -> None:
    portal = await make_portal(make_broker, gitlab, public_url="https://llm.example.org")
    async with (
        aiohttp.ClientSession() as http,
        http.get(portal.url + "/login", allow_redirects=False) as response,
    ):
        assert "Secure" in response.headers["Set-Cookie"]
        redirect = parse_qs(urlparse(response.headers["Location"]).query)
    assert redirect["redirect_uri"] == ["https://llm.example.org/auth/callback"]


async def test_portal_without_gitlab_says_to_ask_the_operator(make_broker: MakeBroker) -> None:
    broker = await make_broker()
    async with aiohttp.ClientSession() as http:
        async with http.get(broker.base_url + "/") as landing:
            assert "Ask its operator for an API key" in await landing.text()
        async with http.get(broker.base_url + "/login") as login:
            assert login.status == 404


async def test_a_user_cannot_make_more_than_ten_live_keys(portal: Portal) -> None:
    async with browser() as session:
        _, html = await sign_in(session, portal)
        token = csrf_of(html)
        for i in range(9):
            async with session.post(
                portal.url + "/portal/keys", data={"name": f"k{i}", "csrf": token}
            ) as made:
                assert made.status == 200
        async with session.post(
            portal.url + "/portal/keys", data={"name": "one too many", "csrf": token}
        ) as refused:
            assert refused.status == 400 and "revoke one" in await refused.text()
    user = await portal.broker.services.store.find_user("alice")
    assert len(await portal.broker.services.store.keys(user.id)) == 10


async def test_a_short_session_secret_is_refused(make_broker: MakeBroker) -> None:
    with pytest.raises(ValueError, match="at least 16"):
        await make_broker(session_secret=SecretStr("short"))


def test_a_revealed_key_is_given_once_to_its_owner_only() -> None:
    reveals = Reveals()
    nonce = reveals.put(1, "sk-secret")
    assert reveals.take(nonce, 2) is None  # not someone else's
    nonce = reveals.put(1, "sk-secret")
    assert reveals.take(nonce, 1) == "sk-secret"
    assert reveals.take(nonce, 1) is None


async def test_a_form_that_stops_midway_is_closed(
    make_broker: MakeBroker, gitlab: FakeGitLab
) -> None:
    portal = await make_portal(make_broker, gitlab, body_timeout=0.3)
    async with browser() as session:
        await sign_in(session, portal)
        cookies = "; ".join(f"{c.key}={c.value}" for c in session.cookie_jar)
    reader, writer = await asyncio.open_connection("127.0.0.1", portal.broker.port)
    try:
        head = (
            "POST /portal/keys HTTP/1.1\r\nHost: b\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Cookie: {cookies}\r\nContent-Length: 100\r\n\r\nname=half"
        )
        writer.write(head.encode())  # 9 of the 100 bytes, then nothing
        assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        writer.close()
