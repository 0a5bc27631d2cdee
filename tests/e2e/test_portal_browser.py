"""The portal in a real headless Chromium: sign-in, copy buttons, keys and the keyboard.

Uses Debian's chromium (`/usr/bin/chromium`, which `.ci/run` installs); Playwright never
downloads a browser here. Every wait is Playwright's own auto-waiting or `expect`.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Error,
    Page,
    async_playwright,
    expect,
)

from tests.broker.portal.test_portal import KEY_PATTERN, Portal, make_portal
from tests.conftest import MakeBroker, MakeConnector, wait_models
from tests.fake_gitlab import FakeGitLab
from tests.stub_llm import StubLLM

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
HAVE_CHROMIUM = CHROMIUM.is_file()
WHOLE_KEY = re.compile(rf"^{KEY_PATTERN.pattern}$")


@pytest.fixture
async def chromium() -> AsyncIterator[Browser]:
    """Debian's chromium, headless, closed (with Playwright's driver) after the test."""
    # No skip: a missing browser is a broken machine, not a reason to test less.
    assert HAVE_CHROMIUM, "needs Debian's chromium at /usr/bin/chromium (.ci/run installs it)"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def gitlab() -> AsyncIterator[FakeGitLab]:
    fake = FakeGitLab()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def portal(make_broker: MakeBroker, gitlab: FakeGitLab) -> Portal:
    return await make_portal(make_broker, gitlab)


@dataclass
class Tab:
    """One browser page on the portal, with what went wrong in its console."""

    portal: Portal
    page: Page
    problems: list[str] = field(default_factory=list)

    async def sign_in(self) -> str:
        """Sign in through the fake GitLab from the landing page; the key shown once."""
        await self.page.goto(self.portal.url + "/")
        await self.page.get_by_role("link", name="Sign in with GitLab").click()
        await expect(self.page).to_have_url(self.portal.url + "/portal")
        key = self.page.locator("#api-key")
        await expect(key).to_have_text(WHOLE_KEY)
        return (await key.inner_text()).strip()

    async def clipboard(self) -> str:
        text = await self.page.evaluate("navigator.clipboard.readText()")
        assert isinstance(text, str)
        return text


@pytest.fixture
async def tab(chromium: Browser, portal: Portal) -> AsyncIterator[Tab]:
    context: BrowserContext = await chromium.new_context(viewport={"width": 1200, "height": 900})
    await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=portal.url)
    page = await context.new_page()
    opened = Tab(portal, page)

    def on_console(message: ConsoleMessage) -> None:
        # A CSP violation or a script error shows up here as an error.
        if message.type == "error":
            opened.problems.append(message.text)

    def on_page_error(error: Error) -> None:
        opened.problems.append(str(error))

    page.on("console", on_console)
    page.on("pageerror", on_page_error)
    yield opened
    await context.close()


async def status_of(url: str, key: str) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}) as response,
    ):
        return response.status


async def test_sign_in_lands_on_the_start_page_with_the_key_shown_once(
    tab: Tab, stub: StubLLM, make_connector: MakeConnector
) -> None:
    await make_connector(tab.portal.broker, stub.url)
    await wait_models(tab.portal.broker, {"stub-model"})
    key = await tab.sign_in()
    page = tab.page
    await expect(page.get_by_role("heading", level=1)).to_have_text("Hello, Alice Example")
    await expect(page.locator("#curl-example")).to_contain_text(f"Bearer {key}")
    await expect(page.locator("#python-example")).to_contain_text('model="stub-model"')
    await expect(page.get_by_role("list").get_by_text("stub-model")).to_be_visible()
    await page.reload()
    await expect(page.get_by_role("heading", name="How to connect")).to_be_visible()
    await expect(page.locator("#api-key")).to_have_count(0)
    assert KEY_PATTERN.search(await page.content()) is None
    assert await status_of(tab.portal.url, key) == 200
    assert tab.problems == []


async def test_copy_button_puts_the_key_on_the_clipboard(tab: Tab) -> None:
    key = await tab.sign_in()
    button = tab.page.locator("button[data-copy=api-key]")
    await expect(button).to_have_accessible_name("Copy key")
    await button.click()
    await expect(button).to_have_text("Copied")
    assert await tab.clipboard() == key
    # The curl example copies as one runnable command with the key in it.
    await tab.page.locator("button[data-copy=curl-example]").click()
    copied = await tab.clipboard()
    assert copied.startswith(f"curl {tab.portal.url}/v1/chat/completions")
    assert f"Bearer {key}" in copied
    assert tab.problems == []


async def test_my_keys_lists_creates_and_revokes(tab: Tab) -> None:
    first = await tab.sign_in()
    page = tab.page
    await page.get_by_role("navigation").get_by_role("link", name="My keys").click()
    await expect(page).to_have_url(tab.portal.url + "/portal/keys")
    rows = page.locator("tbody tr")
    await expect(rows).to_have_count(1)
    default = rows.filter(has_text="default")
    await expect(default).to_contain_text("active")
    prefix = (await default.locator("code").inner_text()).rstrip("…")
    assert first.startswith(prefix) and first != prefix
    await expect(page.locator("#api-key")).to_have_count(0)  # the first key is gone for good

    await page.get_by_label("Name (where you will use it)").fill("laptop")
    await page.get_by_role("button", name="Create key").click()
    await expect(page).to_have_url(tab.portal.url + "/portal/keys")
    await expect(page.locator("#api-key")).to_have_text(WHOLE_KEY)
    second = (await page.locator("#api-key").inner_text()).strip()
    assert second != first
    await expect(rows).to_have_count(2)
    laptop = rows.filter(has_text="laptop")
    await expect(laptop).to_contain_text("active")
    assert await status_of(tab.portal.url, second) == 200

    await page.get_by_role("button", name="Revoke key laptop").click()
    await expect(page).to_have_url(tab.portal.url + "/portal/keys")
    await expect(laptop).to_contain_text("revoked")
    await expect(laptop.get_by_role("button")).to_have_count(0)
    await expect(default).to_contain_text("active")
    await expect(page.locator("#api-key")).to_have_count(0)
    assert await status_of(tab.portal.url, second) == 401
    assert await status_of(tab.portal.url, first) == 200
    assert tab.problems == []


async def test_the_keyboard_reaches_and_works_the_copy_button(tab: Tab) -> None:
    key = await tab.sign_in()
    page = tab.page
    await page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to content")
    await expect(skip).to_be_focused()
    await expect(skip).to_be_in_viewport()  # off-screen until focused, then shown
    button = page.locator("button[data-copy=api-key]")
    for _ in range(15):
        await page.keyboard.press("Tab")
        if await button.evaluate("b => b === document.activeElement"):
            break
    await expect(button).to_be_focused()
    outline = await button.evaluate("b => getComputedStyle(b).outlineStyle")
    assert outline != "none"  # a visible focus ring
    await page.keyboard.press("Enter")
    await expect(button).to_have_text("Copied")
    await expect(button).to_be_focused()  # focus stays put for the next Tab
    assert await tab.clipboard() == key
    # Space works too, on the next copy button in tab order.
    await page.keyboard.press("Tab")
    curl = page.locator("button[data-copy=curl-example]")
    await expect(curl).to_be_focused()
    await page.keyboard.press("Space")
    await expect(curl).to_have_text("Copied")
    assert f"Bearer {key}" in await tab.clipboard()
    assert tab.problems == []


async def test_no_page_scrolls_sideways_on_a_phone(tab: Tab) -> None:
    await tab.page.set_viewport_size({"width": 390, "height": 844})
    await tab.sign_in()
    store = tab.portal.broker.services.store
    alice = await store.find_user("alice")
    await store.create_key(alice.id, "a key with a long name for the laptop at home")
    await store.set_role(alice.id, "admin")
    await store.create_user("bob", "Bob Builder")
    for path in ("/portal", "/portal/keys", "/portal/usage", "/admin"):
        await tab.page.goto(tab.portal.url + path)
        sideways = await tab.page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert sideways <= 0, f"{path} scrolls sideways by {sideways}px"
    assert tab.problems == []
