"""Pairing a connector by signing in: the endpoints and the consent page, against a real
broker and the fake GitLab. Time is the desk's injected clock; nothing sleeps."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from broker.accounts.pairingcode import USER_CODE_ALPHABET
from broker.api.pairing import PAIRING, STARTS_PER_WINDOW
from tests.broker.portal.test_portal import Portal, browser, csrf_of, make_portal
from tests.conftest import MakeBroker
from tests.fake_gitlab import FakeGitLab, FakeUser

TOKEN = re.compile(r"^rlc-[0-9A-Za-z]{38}$")


@pytest.fixture
async def gitlab() -> AsyncIterator[FakeGitLab]:
    fake = FakeGitLab()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def portal(make_broker: MakeBroker, gitlab: FakeGitLab) -> Portal:
    return await make_portal(make_broker, gitlab)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(portal: Portal) -> Clock:
    fake = Clock()
    portal.broker.app[PAIRING].clock = fake
    return fake


async def start(portal: Portal, name: str = "gpu-box") -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(portal.url + "/pair/start", json={"name": name}) as response,
    ):
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body


async def poll(portal: Portal, device_code: str) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(portal.url + "/pair/poll", json={"device_code": device_code}) as response,
    ):
        return response.status, await response.json()


async def consent(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as response:
        return response.status, await response.text()


async def decide(
    session: aiohttp.ClientSession, portal: Portal, page: str, code: str, decision: str
) -> tuple[int, str]:
    form = {"csrf": csrf_of(page), "code": code, "decision": decision}
    async with session.post(portal.url + "/pair/decide", data=form) as response:
        return response.status, await response.text()


async def test_start_gives_codes_as_rfc_8628_says(portal: Portal, clock: Clock) -> None:
    body = await start(portal)
    assert re.fullmatch(
        rf"[{USER_CODE_ALPHABET}]{{4}}-[{USER_CODE_ALPHABET}]{{4}}", body["user_code"]
    )
    assert body["verification_uri"] == portal.url + "/pair"
    assert body["verification_uri_complete"] == f"{portal.url}/pair?code={body['user_code']}"
    assert (body["interval"], body["expires_in"]) == (5, 900)
    status, answer = await poll(portal, body["device_code"])
    assert (status, answer["error"]) == (400, "authorization_pending")


async def test_approve_gives_one_token_owned_by_the_approver(portal: Portal, clock: Clock) -> None:
    body = await start(portal)
    async with browser() as session:
        # Not signed in: through GitLab and back to the consent page.
        status, page = await consent(session, body["verification_uri_complete"])
        assert status == 200
        assert "gpu-box" in page and "127.0.0.1" in page and body["user_code"] in page
        status, done = await decide(session, portal, page, body["user_code"], "approve")
        assert status == 200 and "Connector approved" in done
    clock.now += 5
    status, answer = await poll(portal, body["device_code"])
    assert status == 200
    assert TOKEN.match(answer["connector_token"])
    assert answer["relay_url"] == portal.url.replace("http", "ws") + "/relay"
    store = portal.broker.services.store
    (token,) = await store.connector_tokens()
    alice = await store.find_user("alice")
    assert (token.name, token.owner_id) == ("gpu-box", alice.id)
    assert answer["connector_token"].startswith(token.prefix)
    # Single use: the device code gives nothing more.
    clock.now += 5
    status, again = await poll(portal, body["device_code"])
    assert (status, again["error"]) == (400, "expired_token")
    assert len(await store.connector_tokens()) == 1


async def test_deny_leaves_nothing_usable(portal: Portal, clock: Clock) -> None:
    body = await start(portal)
    async with browser() as session:
        _, page = await consent(session, body["verification_uri_complete"])
        status, done = await decide(session, portal, page, body["user_code"], "deny")
        assert status == 200 and "Connector denied" in done
        # The used code shows a clear page, not the consent again.
        status, replay = await consent(session, body["verification_uri_complete"])
        assert status == 410 and "already used" in replay
    status, answer = await poll(portal, body["device_code"])
    assert (status, answer["error"]) == (400, "access_denied")
    assert await portal.broker.services.store.connector_tokens() == []


async def test_expiry_refuses_the_page_and_the_poll(portal: Portal, clock: Clock) -> None:
    body = await start(portal)
    async with browser() as session:
        _, page = await consent(session, body["verification_uri_complete"])
        clock.now += 900
        status, done = await decide(session, portal, page, body["user_code"], "approve")
        assert status == 410 and "expired" in done
    status, answer = await poll(portal, body["device_code"])
    assert (status, answer["error"]) == (400, "expired_token")
    assert await portal.broker.services.store.connector_tokens() == []


async def test_polling_too_fast_slows_the_poller_down(portal: Portal, clock: Clock) -> None:
    body = await start(portal)
    assert (await poll(portal, body["device_code"]))[1]["error"] == "authorization_pending"
    clock.now += 2
    status, answer = await poll(portal, body["device_code"])
    assert (status, answer["error"], answer["interval"]) == (400, "slow_down", 10)
    clock.now += 6  # the old interval is not enough any more
    assert (await poll(portal, body["device_code"]))[1]["error"] == "slow_down"
    clock.now += 16
    assert (await poll(portal, body["device_code"]))[1]["error"] == "authorization_pending"


async def test_unknown_codes(portal: Portal, clock: Clock) -> None:
    status, answer = await poll(portal, "not-a-device-code")
    assert (status, answer["error"]) == (400, "invalid_grant")
    async with browser() as session:
        status, page = await consent(session, portal.url + "/pair?code=BCDF-2345")
        assert status == 404 and "No connector has this code" in page
        status, form = await consent(session, portal.url + "/pair")
        assert status == 200 and 'name="code"' in form


async def test_starting_is_rate_limited_per_address(portal: Portal, clock: Clock) -> None:
    for _ in range(STARTS_PER_WINDOW):
        await start(portal)
    async with (
        aiohttp.ClientSession() as http,
        http.post(portal.url + "/pair/start", json={"name": "x"}) as response,
    ):
        assert response.status == 429
        assert int(response.headers["Retry-After"]) > 0
        assert (await response.json())["error"]["code"] == "rate_limited"
    clock.now += 901
    await start(portal)


async def test_code_entry_is_rate_limited_per_signed_in_user(
    portal: Portal, clock: Clock, gitlab: FakeGitLab
) -> None:
    """Each consent page opened with a code and each decision posted counts one, for the
    signed-in user: behind a proxy every person has the proxy's address, and another user
    there is not locked out."""
    async with browser() as session:
        _, page = await consent(session, portal.url + "/pair")
        opened = [
            (await consent(session, portal.url + "/pair?code=BCDF-2345"))[0] for _ in range(20)
        ]
        posted = [
            (await decide(session, portal, page, "BCDF-2345", "approve"))[0] for _ in range(10)
        ]
        assert opened == [404] * 20 and posted == [404] * 10
        status, limited = await consent(session, portal.url + "/pair?code=BCDF-2345")
        assert status == 429 and "too many codes" in limited
        assert (await decide(session, portal, page, "BCDF-2345", "approve"))[0] == 429
    gitlab.current = FakeUser(99, "bob", "Bob")
    async with browser() as other:  # same address, another user
        assert (await consent(other, portal.url + "/pair?code=BCDF-2345"))[0] == 404
    clock.now += 901
    async with browser() as session:
        gitlab.current = FakeUser(4242, "alice", "Alice Example")
        assert (await consent(session, portal.url + "/pair?code=BCDF-2345"))[0] == 404


async def test_pending_pairings_are_capped_broker_wide(portal: Portal, clock: Clock) -> None:
    portal.broker.app[PAIRING].max_pending = 2
    first = await start(portal)
    await start(portal)
    async with (
        aiohttp.ClientSession() as http,
        http.post(portal.url + "/pair/start", json={"name": "x"}) as response,
    ):
        assert response.status == 503
        assert int(response.headers["Retry-After"]) > 0
        assert (await response.json())["error"]["code"] == "pairing_busy"
    async with browser() as session:  # one is decided: room for another
        _, page = await consent(session, first["verification_uri_complete"])
        assert (await decide(session, portal, page, first["user_code"], "deny"))[0] == 200
    await start(portal)
    clock.now += 901  # and expired ones do not count
    await start(portal)
    await start(portal)


async def test_admins_only_and_off(make_broker: MakeBroker, gitlab: FakeGitLab) -> None:
    portal = await make_portal(make_broker, gitlab, pairing="admins")
    body = await start(portal)
    async with browser() as session:
        status, page = await consent(session, body["verification_uri_complete"])
        assert status == 403 and "Only admins" in page
    store = portal.broker.services.store
    await store.set_role((await store.find_user("alice")).id, "admin")
    async with browser() as session:
        status, page = await consent(session, body["verification_uri_complete"])
        assert status == 200 and "Approve" in page
    off = await make_portal(make_broker, gitlab, pairing="off")
    async with (
        aiohttp.ClientSession() as http,
        http.post(off.url + "/pair/start", json={"name": "x"}) as response,
    ):
        assert response.status == 403
        assert (await response.json())["error"]["code"] == "pairing_off"


async def test_a_taken_name_gets_a_number(portal: Portal, clock: Clock) -> None:
    await portal.broker.services.store.create_connector_token("gpu-box")
    body = await start(portal)
    async with browser() as session:
        _, page = await consent(session, body["verification_uri_complete"])
        await decide(session, portal, page, body["user_code"], "approve")
    status, answer = await poll(portal, body["device_code"])
    assert (status, answer["name"]) == (200, "gpu-box-2")


@pytest.mark.parametrize(
    "body", [{}, {"name": ""}, {"name": "a\nb"}, {"name": "x" * 65}, {"name": " 42 "}]
)
async def test_a_connector_name_must_be_clean(
    portal: Portal, clock: Clock, body: dict[str, str]
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(portal.url + "/pair/start", json=body) as response,
    ):
        assert response.status == 400
        assert (await response.json())["error"]["param"] == "name"
