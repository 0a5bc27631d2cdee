"""The "Connect to a broker…" dialog against a real broker and fake GitLab, on the qasync loop.

The browser is Qt's own: a URL handler registered with QDesktopServices receives the link
the dialog opens, and a signed-in aiohttp session approves or denies there as the portal
tests do. Sleeps move the broker's clock (and the dialog's) on instead of waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from keyring.backends import fail
from PySide6.QtCore import QObject, Qt, QUrl, Slot
from PySide6.QtGui import QDesktopServices, QGuiApplication
from pytestqt.qtbot import QtBot

from broker.api.pairing import PAIRING
from broker.server import BrokerServer
from connector_app.core.profile import Profile, ProfileStore
from connector_app.core.secrets import KeyringStore
from connector_app.qt.pair_dialog import PairDialog
from connector_app.qt.settings_dialog import SettingsDialog
from tests.broker.portal.test_portal import browser, csrf_of
from tests.conftest import broker_settings
from tests.connector_app.qt.conftest import QLoop, make_bridge, until
from tests.fake_gitlab import CLIENT_ID, CLIENT_SECRET, FakeGitLab
from tests.stub_llm import StubLLM

FORM, WAITING, OUTCOME = 0, 1, 2


class Browser(QObject):
    """Stands in for the desktop's browser: Qt hands it every http(s) URL it would open."""

    def __init__(self) -> None:
        super().__init__()
        self.opened: list[str] = []

    @Slot(QUrl)
    def open(self, url: QUrl) -> None:
        self.opened.append(url.toString())


@pytest.fixture
def stand_in_browser() -> Iterator[Browser]:
    handler = Browser()
    for scheme in ("http", "https"):
        QDesktopServices.setUrlHandler(scheme, handler, "open")
    yield handler
    for scheme in ("http", "https"):
        QDesktopServices.unsetUrlHandler(scheme)


@dataclass
class Clock:
    """One clock for the broker and the dialog; each sleep moves it on without waiting."""

    now: float = 1_000_000.0
    sleeps: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0.01)


@dataclass
class Services:
    broker: BrokerServer
    gitlab: FakeGitLab
    stub: StubLLM
    clock: Clock


@contextlib.asynccontextmanager
async def pairing_broker(**overrides: Any) -> AsyncIterator[Services]:
    """A broker with GitLab sign-in (fake GitLab), no static connector token, a stub LLM."""
    gitlab, stub = FakeGitLab(), StubLLM()
    await gitlab.start()
    await stub.start()
    settings = broker_settings(
        gitlab_url=gitlab.url,
        gitlab_client_id=CLIENT_ID,
        gitlab_client_secret=CLIENT_SECRET,
        connector_token=[],
        **overrides,
    )
    broker = BrokerServer(settings)
    await broker.start()
    clock = Clock()
    broker.app[PAIRING].clock = clock
    try:
        yield Services(broker, gitlab, stub, clock)
    finally:
        await broker.stop()
        await stub.stop()
        await gitlab.stop()


def dialog_for(qtbot: QtBot, store: ProfileStore, services: Services) -> PairDialog:
    profile = Profile({"llm_url": services.stub.url, "name": "studio"})
    bridge = make_bridge(store, profile)
    clock = services.clock
    dialog = PairDialog(bridge, sleep=clock.sleep, clock=clock)
    qtbot.addWidget(dialog)
    dialog.url.setText(services.broker.base_url)
    dialog.show()
    return dialog


async def shown_code(dialog: PairDialog, handler: Browser, count: int = 1) -> str:
    """Wait for the code on screen and the browser opened on its link; the link."""
    await until(lambda: len(handler.opened) >= count)
    link = handler.opened[-1]
    code = dialog.code.text()
    assert re.fullmatch(r"[A-Z0-9]{4}-[A-Z0-9]{4}", code)
    assert link.endswith(f"/pair?code={code}")
    assert dialog.pages.currentIndex() == WAITING
    assert "expires in" in dialog.countdown.text()
    return link


async def decide(broker_url: str, link: str, decision: str) -> None:
    """Sign in through fake GitLab at the link and press Approve or Deny."""
    async with browser() as session:
        async with session.get(link) as response:
            page = await response.text()
        code = link.rsplit("=", 1)[1]
        form = {"csrf": csrf_of(page), "code": code, "decision": decision}
        async with session.post(broker_url + "/pair/decide", data=form) as answer:
            assert answer.status == 200


def test_approving_in_the_browser_stores_the_token_and_links_to_the_broker(
    qtbot: QtBot, qloop: QLoop, store: ProfileStore, stand_in_browser: Browser
) -> None:
    async def scenario() -> None:
        async with pairing_broker() as services:
            dialog = dialog_for(qtbot, store, services)
            assert dialog.name.text() == "studio"
            qtbot.keyClick(dialog.url, Qt.Key.Key_Return)  # Return in the URL field connects
            link = await shown_code(dialog, stand_in_browser)
            assert dialog.countdown.text().endswith("expires in 15:00.")
            dialog.copy_button.click()
            assert QGuiApplication.clipboard().text() == link
            await decide(services.broker.base_url, link, "approve")
            await until(lambda: dialog.pages.currentIndex() == OUTCOME)
            assert dialog.outcome.text().startswith("Connected to")
            assert dialog.retry_button.isHidden()
            token = store.secrets.get("broker_token")
            assert token is not None and token.startswith("rlc-")
            saved = yaml.safe_load(store.path.read_text())
            assert saved["broker_url"] == f"ws://127.0.0.1:{services.broker.port}/relay"
            assert saved["name"] == "studio"
            # The app links to the new broker with the new token and serves its models.
            await until(lambda: bool(services.broker.hub.models()))
            assert set(services.broker.hub.models()) == {"stub-model"}
            await dialog.bridge.shutdown(1.0)

    qloop.run(scenario())


def test_a_denied_pairing_says_so_stores_nothing_and_offers_to_try_again(
    qtbot: QtBot, qloop: QLoop, store: ProfileStore, stand_in_browser: Browser
) -> None:
    async def scenario() -> None:
        async with pairing_broker() as services:
            dialog = dialog_for(qtbot, store, services)
            dialog.connect_button.click()
            await decide(
                services.broker.base_url, await shown_code(dialog, stand_in_browser), "deny"
            )
            await until(lambda: dialog.pages.currentIndex() == OUTCOME)
            assert dialog.outcome.text() == (
                "The pairing was denied in the browser, so nothing was stored."
            )
            assert not dialog.retry_button.isHidden()
            assert store.secrets.get("broker_token") is None
            assert not store.path.exists()

    qloop.run(scenario())


def test_an_expired_code_says_so_and_try_again_shows_a_new_code(
    qtbot: QtBot, qloop: QLoop, store: ProfileStore, stand_in_browser: Browser
) -> None:
    async def scenario() -> None:
        async with pairing_broker() as services:
            dialog = dialog_for(qtbot, store, services)
            dialog.connect_button.click()
            await shown_code(dialog, stand_in_browser)
            first = dialog.code.text()
            await until(lambda: dialog.pages.currentIndex() == OUTCOME, timeout=30)
            assert "expired" in dialog.outcome.text()
            assert services.clock.now - 1_000_000.0 >= 900  # 15 minutes on the broker's clock
            dialog.retry_button.click()
            await shown_code(dialog, stand_in_browser, count=2)
            assert dialog.code.text() != first
            dialog.cancel_button.click()

    qloop.run(scenario())


def test_cancel_stops_polling_at_once(
    qtbot: QtBot, qloop: QLoop, store: ProfileStore, stand_in_browser: Browser
) -> None:
    async def scenario() -> None:
        async with pairing_broker() as services:
            dialog = dialog_for(qtbot, store, services)
            task = dialog.begin()
            assert task is not None
            await shown_code(dialog, stand_in_browser)
            await until(lambda: len(services.clock.sleeps) >= 2)
            dialog.cancel_button.click()
            assert dialog.pages.currentIndex() == FORM
            await asyncio.wait([task], timeout=5)
            assert task.cancelled()
            polled = len(services.clock.sleeps)
            await asyncio.sleep(0.2)
            assert len(services.clock.sleeps) == polled
            assert store.secrets.get("broker_token") is None

    qloop.run(scenario())


def test_closing_the_window_while_the_token_is_saved_lets_the_save_and_link_finish(
    qtbot: QtBot, qloop: QLoop, store: ProfileStore, stand_in_browser: Browser
) -> None:
    async def scenario() -> None:
        async with pairing_broker() as services:
            dialog = dialog_for(qtbot, store, services)
            bridge = dialog.bridge
            release = asyncio.Event()
            original = bridge.apply

            async def slow_apply(profile: Profile) -> str | None:
                await release.wait()
                return await original(profile)

            bridge.apply = slow_apply  # type: ignore[method-assign]
            paired: list[object] = []
            dialog.paired.connect(paired.append)
            dialog.begin()
            link = await shown_code(dialog, stand_in_browser)
            await decide(services.broker.base_url, link, "approve")
            await until(lambda: dialog.saving)
            dialog.reject()  # Esc or the window's X, mid-save
            release.set()
            await until(lambda: bool(paired))
            assert store.secrets.get("broker_token") is not None
            await until(lambda: bool(services.broker.hub.models()))
            await bridge.shutdown(1.0)

    qloop.run(scenario())


def test_a_pairing_whose_settings_cannot_serve_yet_says_what_is_missing(
    qtbot: QtBot, qloop: QLoop, store: ProfileStore, stand_in_browser: Browser
) -> None:
    async def scenario() -> None:
        async with pairing_broker() as services:
            # A local LLM URL that is no URL: the settings cannot make a connector.
            bridge = make_bridge(store, Profile({"name": "studio", "llm_url": "not a url"}))
            dialog = PairDialog(bridge, sleep=services.clock.sleep, clock=services.clock)
            qtbot.addWidget(dialog)
            dialog.url.setText(services.broker.base_url)
            dialog.show()
            dialog.begin()
            link = await shown_code(dialog, stand_in_browser)
            await decide(services.broker.base_url, link, "approve")
            await until(lambda: dialog.pages.currentIndex() == OUTCOME)
            assert "not serving yet" in dialog.outcome.text()
            assert "Settings" in dialog.outcome.text()
            assert store.secrets.get("broker_token") is not None
            assert not bridge.serving
            await bridge.shutdown(1.0)

    qloop.run(scenario())


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ftp://llm.example.com", "is not a broker URL"),
        ("http://192.0.2.7:8080", "only allowed to this machine"),
        ("http://llm.example.com", "use the broker's https:// URL"),
    ],
)
def test_a_bad_or_unencrypted_url_is_refused_before_any_request(
    qtbot: QtBot, store: ProfileStore, url: str, says: str
) -> None:
    dialog = PairDialog(make_bridge(store))
    qtbot.addWidget(dialog)
    dialog.url.setText(url)
    assert dialog.begin() is None
    assert dialog.task is None
    assert says in dialog.url_error.text()
    assert dialog.pages.currentIndex() == FORM


def test_an_unreachable_broker_and_a_server_that_is_no_broker_are_told_apart(
    qtbot: QtBot, qloop: QLoop, store: ProfileStore
) -> None:
    async def scenario() -> None:
        dialog = PairDialog(make_bridge(store))
        qtbot.addWidget(dialog)
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))  # bound, never listening: refused
            dialog.url.setText(f"http://127.0.0.1:{free.getsockname()[1]}")
            task = dialog.begin()
            assert task is not None
            await task
        assert dialog.outcome.text().startswith("Could not reach a broker at http://127.0.0.1:")
        assert not dialog.retry_button.isHidden()
        stub = StubLLM()
        await stub.start()
        try:
            dialog.url.setText(stub.url)
            task = dialog.begin()
            assert task is not None
            await task
        finally:
            await stub.stop()
        assert "did not answer as a RemoteLLM broker" in dialog.outcome.text()
        dialog.back_button.click()  # back to the address, to fix it
        assert dialog.pages.currentIndex() == FORM
        assert dialog.url.text() == stub.url

    qloop.run(scenario())


def test_a_broker_that_does_not_pair_by_sign_in_says_so(
    qtbot: QtBot, qloop: QLoop, store: ProfileStore
) -> None:
    async def scenario() -> None:
        async with pairing_broker(pairing="off") as services:
            dialog = dialog_for(qtbot, store, services)
            task = dialog.begin()
            assert task is not None
            await task
            assert dialog.outcome.text().startswith("This broker does not allow pairing here:")
            assert "ask its admin for a connector token" in dialog.outcome.text()

    qloop.run(scenario())


def test_settings_opens_the_pairing_and_takes_its_result(
    qtbot: QtBot,
    qloop: QLoop,
    store: ProfileStore,
    stand_in_browser: Browser,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REMOTELLM_CONNECTOR_NAME", "from-the-environment")

    async def scenario() -> None:
        async with pairing_broker() as services:
            bridge = make_bridge(store, Profile({"llm_url": services.stub.url}))
            settings = SettingsDialog(bridge)
            qtbot.addWidget(settings)
            assert settings.pair_button.text() == "Connect to a &broker…"
            settings.pair_button.click()
            dialog = settings.pair_dialog
            assert dialog is not None and dialog.isVisible()
            dialog.sleep, dialog.clock = services.clock.sleep, services.clock
            dialog.url.setText(services.broker.base_url)
            dialog.connect_button.click()
            await decide(
                services.broker.base_url, await shown_code(dialog, stand_in_browser), "approve"
            )
            await until(lambda: settings.broker_token.text().startswith("rlc-"))
            assert settings.broker_url.text().endswith("/relay")
            assert settings.validate()  # Save would keep what the pairing stored
            assert dialog.outcome.text().endswith(
                "REMOTELLM_CONNECTOR_NAME in the environment still wins: unset it."
            )
            await bridge.shutdown(1.0)

    qloop.run(scenario())


def test_without_a_keyring_the_pairing_lasts_for_the_session_and_says_so(
    qtbot: QtBot, qloop: QLoop, tmp_path: Path, stand_in_browser: Browser
) -> None:
    store = ProfileStore(tmp_path / "connector.yaml", KeyringStore(fail.Keyring()))

    async def scenario() -> None:
        async with pairing_broker() as services:
            dialog = dialog_for(qtbot, store, services)
            dialog.begin()
            await decide(
                services.broker.base_url, await shown_code(dialog, stand_in_browser), "approve"
            )
            await until(lambda: dialog.pages.currentIndex() == OUTCOME)
            assert "the keyring refused the token, so it is kept for this session only" in (
                dialog.outcome.text()
            )
            # Linked all the same, with the token held in memory.
            await until(lambda: bool(services.broker.hub.models()))
            assert "rlc-" not in store.path.read_text()
            await dialog.bridge.shutdown(1.0)

    qloop.run(scenario())
