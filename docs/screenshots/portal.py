"""Screenshots of the portal for the docs: `uv run python docs/screenshots/portal.py`.

Starts a broker with a fake GitLab, a stub LLM and a connector on loopback (the tests'
own helpers), seeds a few days of usage, and saves each page at desktop and phone width
as `docs/screenshots/portal-<page>-<width>.png` (and `my-connectors-<width>.png`), using
Debian's chromium. It also says
when a page scrolls sideways on either width, which a page should never do.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(
    0, str(HERE.parents[1])
)  # the tests' helpers live in the repository, not the package

from playwright.async_api import Browser, Page, async_playwright  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from broker.accounts.access import AccessRule  # noqa: E402
from broker.accounts.records import UsageRow  # noqa: E402
from broker.accounts.schema import connector_tokens  # noqa: E402
from broker.accounts.store import Store  # noqa: E402
from broker.server import BrokerServer  # noqa: E402
from connector_app.core.backoff import Backoff  # noqa: E402
from connector_app.core.connector import Connector  # noqa: E402
from tests.broker.portal.test_portal import make_portal  # noqa: E402
from tests.conftest import broker_settings, connector_settings, wait_models  # noqa: E402
from tests.e2e.test_portal_browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.fake_gitlab import FakeGitLab, FakeUser  # noqa: E402
from tests.stub_llm import StubLLM  # noqa: E402

MODELS = ["llama3.1:8b", "qwen2.5-coder:14b"]
WIDTHS = {"desktop": (1200, 800), "phone": (390, 844)}
DAY = 86400.0


async def seed(store: Store, connector: str, connector_id: int | None = None) -> None:
    """Some keys and a few days of requests for alice, and a colleague who used it too."""
    alice = await store.find_user("alice")
    default = (await store.keys(alice.id))[0]
    _, laptop = await store.create_key(alice.id, "laptop")
    _, old = await store.create_key(alice.id, "old desktop")
    await store.revoke_key(old.id)
    bob = await store.create_user("bob", "Bob Builder")
    _, bobs = await store.create_key(bob.id, "default")
    now = time.time()
    rows = []
    plan = [
        (alice.id, default.id, 0, MODELS[0], 12, 420, 380),
        (alice.id, laptop.id, 0, MODELS[1], 5, 1900, 950),
        (alice.id, default.id, 1, MODELS[0], 30, 350, 410),
        (alice.id, default.id, 3, MODELS[1], 8, 2100, 700),
        (bob.id, bobs.id, 0, MODELS[0], 21, 300, 500),
        (bob.id, bobs.id, 2, MODELS[0], 3, 280, 260),
    ]
    for user_id, key_id, days_ago, model, count, prompt, completion in plan:
        for i in range(count):
            rows.append(
                UsageRow(
                    time=now - days_ago * DAY - i * 60,
                    request_id=f"req_{user_id}_{days_ago}_{model}_{i}",
                    endpoint="/v1/chat/completions",
                    status=429 if i == 0 and user_id == bob.id else 200,
                    duration_ms=800.0,
                    user_id=user_id,
                    key_id=key_id,
                    model=model,
                    connector=connector,
                    connector_id=connector_id,
                    prompt_tokens=prompt,
                    completion_tokens=completion,
                )
            )
    await store.usage.add(rows)


async def own_connectors(store: Store) -> int:
    """alice owns gpu-box (online) and studio-mac (offline since yesterday, a little usage);
    returns gpu-box's token id."""
    alice = await store.find_user("alice")
    (gpu,) = await store.connector_tokens()
    async with store.engine.begin() as conn:  # as if alice had paired it
        await conn.execute(
            connector_tokens.update()
            .where(connector_tokens.c.id == gpu.id)
            .values(owner_id=alice.id)
        )
    _, mac = await store.create_connector_token("studio-mac", alice.id)
    yesterday = time.time() - DAY
    await store.connector_seen(mac.id, yesterday)
    await store.usage.add(
        [
            UsageRow(
                time=yesterday - i * 300,
                request_id=f"req_mac_{i}",
                endpoint="/v1/chat/completions",
                status=200,
                duration_ms=2400.0,
                user_id=alice.id,
                model="mistral-small:24b",
                connector="studio-mac",
                connector_id=mac.id,
                prompt_tokens=900,
                completion_tokens=600,
            )
            for i in range(4)
        ]
    )
    return gpu.id


async def shoot(page: Page, name: str, prefix: str = "portal-") -> None:
    """Save the page as it is now at each width; say if it scrolls sideways at one."""
    for width_name, (width, height) in WIDTHS.items():
        await page.set_viewport_size({"width": width, "height": height})
        out = HERE / f"{prefix}{name}-{width_name}.png"
        await page.screenshot(path=str(out), full_page=True)
        sideways = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        note = f"  (scrolls sideways by {sideways}px)" if sideways > 0 else ""
        print(f"{out.relative_to(HERE.parents[1])}{note}")


async def shoot_access(page: Page, base: str, store: Store) -> None:
    """The owner's "Who may use" page of a connector of alice's, shared with two groups."""
    alice = await store.find_user("alice")
    _, token = await store.create_connector_token("studio-gpu", alice.id)
    await store.access.set_rule(token.id, AccessRule("groups", groups=("team", "lab/vision")))
    await page.set_viewport_size({"width": 1000, "height": 700})
    await page.goto(f"{base}/connectors/{token.id}/access")
    out = HERE / "connector-access.png"
    await page.screenshot(path=str(out), full_page=True)
    print(out.relative_to(HERE.parents[1]))


async def screenshots(browser: Browser, base: str, store: Store, gitlab: FakeGitLab) -> None:
    page = await browser.new_page()
    await page.goto(base + "/")
    await shoot(page, "landing")
    await page.get_by_role("link", name="Sign in with GitLab").click()
    await page.wait_for_url(base + "/portal")
    await shoot(page, "first-sign-in")  # the key is shown once: both widths from one load
    await seed(store, "gpu-box", await own_connectors(store))
    await page.goto(base + "/portal/keys")
    await shoot(page, "keys")
    await page.goto(base + "/portal/usage")
    await shoot(page, "usage")
    await page.goto(base + "/connectors")
    await shoot(page, "my-connectors", prefix="")
    await store.set_role((await store.find_user("alice")).id, "admin")
    await page.goto(base + "/admin")
    await shoot(page, "admin")
    await shoot_access(page, base, store)
    await page.close()
    gitlab.current = FakeUser(7, "mallory", "Mallory", {"contractors"})
    stranger = await browser.new_page()
    await stranger.goto(base + "/login")
    await shoot(stranger, "error-not-in-group")
    await stranger.close()


async def main() -> int:
    """Run everything on loopback, take the screenshots, stop everything."""
    gitlab, stub = FakeGitLab(), StubLLM(models=list(MODELS))
    await gitlab.start()
    await stub.start()
    servers: list[BrokerServer] = []

    async def make_broker(**overrides: object) -> BrokerServer:
        server = BrokerServer(broker_settings(**overrides))
        await server.start()
        servers.append(server)
        return server

    connector: Connector | None = None
    task: asyncio.Task[None] | None = None
    try:
        portal = await make_portal(
            make_broker,
            gitlab,
            user_api_key=[],
            gitlab_allowed_group=["team"],
            gitlab_read_groups=True,
        )
        store = portal.broker.services.store
        raw, _ = await store.create_connector_token("gpu-box")
        connector = Connector(
            connector_settings(
                portal.broker.port, stub.url, name="gpu-box", broker_token=SecretStr(raw)
            ),
            backoff=Backoff(base=0.05, cap=0.2),
        )
        task = asyncio.create_task(connector.run())
        await wait_models(portal.broker, set(MODELS))
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
            )
            try:
                await screenshots(browser, portal.url, store, gitlab)
            finally:
                await browser.close()
    finally:
        if connector is not None and task is not None:
            await connector.stop(1.0)
            await task
        for server in servers:
            await server.stop()
        await stub.stop()
        await gitlab.stop()
    return 0


if __name__ == "__main__":
    if not CHROMIUM.exists():
        sys.exit("Needs Debian's chromium at /usr/bin/chromium: apt-get install chromium")
    sys.exit(asyncio.run(main()))
