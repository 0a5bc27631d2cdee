"""Pairing in a real headless Chromium: sign in, the consent page, approve.

Uses Debian's chromium as `test_portal_browser` does. The consent page's screenshot goes to
the test's temporary directory, or to $REMOTELLM_SCREENSHOT_DIR when set (how
docs/screenshots/pair-consent.png is made).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Browser, async_playwright, expect

from tests.broker.portal.test_portal import Portal, make_portal
from tests.conftest import MakeBroker
from tests.e2e.test_portal_browser import CHROMIUM, CHROMIUM_ARGS, HAVE_CHROMIUM
from tests.fake_gitlab import FakeGitLab


@pytest.fixture
async def chromium() -> AsyncIterator[Browser]:
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
async def portal(make_broker: MakeBroker) -> AsyncIterator[Portal]:
    gitlab = FakeGitLab()
    await gitlab.start()
    yield await make_portal(make_broker, gitlab)
    await gitlab.stop()


async def test_sign_in_then_approve_on_the_consent_page(
    chromium: Browser, portal: Portal, tmp_path: Path
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(portal.url + "/pair/start", json={"name": "studio-gpu"}) as response,
    ):
        started = await response.json()
    context = await chromium.new_context(viewport={"width": 1200, "height": 900})
    page = await context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    try:
        await page.goto(started["verification_uri_complete"])  # GitLab first, then back here
        await expect(page).to_have_url(started["verification_uri_complete"])
        heading = page.get_by_role("heading", name="Let this connector share through your account?")
        await expect(heading).to_be_visible()
        await expect(page.get_by_text("studio-gpu")).to_be_visible()
        await expect(page.get_by_text(started["user_code"])).to_be_visible()
        shots = Path(os.environ.get("REMOTELLM_SCREENSHOT_DIR") or tmp_path)
        await page.screenshot(path=str(shots / "pair-consent.png"), full_page=True)
        assert (shots / "pair-consent.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        await page.get_by_role("button", name="Approve").click()
        await expect(page.get_by_role("heading", name="Connector approved")).to_be_visible()
    finally:
        await context.close()
    assert problems == []
    async with (
        aiohttp.ClientSession() as http,
        http.post(portal.url + "/pair/poll", json={"device_code": started["device_code"]}) as got,
    ):
        # Polled at once after starting: the broker's clock is real here, so no slow_down
        # applies to this first poll.
        assert got.status == 200
        assert (await got.json())["name"] == "studio-gpu"
