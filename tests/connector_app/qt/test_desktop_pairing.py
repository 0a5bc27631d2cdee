"""Pairing from the real tray app on a real X desktop, into a real keyring.

Xvfb, Debian's `trayer` as the tray and xdotool as the hand, as in `test_desktop`; a private
Secret Service (gnome-keyring, `tests.secretservice`) as the keyring. The app starts without
settings, so Settings opens; Alt+B presses "Connect to a broker…", the broker's URL is typed
and Return pressed. The desktop's browser is a stand-in `xdg-open` on PATH (Qt opens links
with it) that writes the link down; the test signs in there through fake GitLab and approves.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from tests.conftest import MakeBroker, wait_models
from tests.connector_app.qt.test_desktop import (
    ROOT,
    display_ready,
    poll,
    process,
    read,
    require_tools,
    start_display,
    xdotool,
)
from tests.connector_app.qt.test_pair_dialog import decide
from tests.fake_gitlab import CLIENT_ID, CLIENT_SECRET, FakeGitLab
from tests.secretservice import SecretService
from tests.stub_llm import StubLLM

XDG_OPEN = """#!/bin/sh
# Stands in for the desktop's browser: write the link down for the test.
printf '%s\\n' "$1" >> "$REMOTELLM_TEST_OPENED"
"""


async def focus(env: dict[str, str], title: str) -> None:
    """Give the keyboard to the visible window whose title ends with `title`."""

    async def found() -> bool:
        return bool(await xdotool(env, "search", "--onlyvisible", "--name", f"{title}$"))

    await poll(found, f"the window {title!r}")
    wid = (await xdotool(env, "search", "--onlyvisible", "--name", f"{title}$")).split()[0]
    await xdotool(env, "windowfocus", "--sync", wid)


async def test_connect_to_a_broker_from_settings_puts_the_token_in_the_keyring(
    tmp_path: Path, stub: StubLLM, make_broker: MakeBroker, secret_service: SecretService
) -> None:
    require_tools()
    gitlab = FakeGitLab()
    await gitlab.start()
    broker = await make_broker(
        gitlab_url=gitlab.url,
        gitlab_client_id=CLIENT_ID,
        gitlab_client_secret=CLIENT_SECRET,
        connector_token=[],
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "xdg-open").write_text(XDG_OPEN)
    (bin_dir / "xdg-open").chmod(0o755)
    opened = tmp_path / "opened.txt"
    xvfb, display = await start_display(tmp_path)
    env = secret_service.child_env(
        {
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "TMPDIR": str(tmp_path),  # the single-instance socket: no clash with a real app
            "DISPLAY": display,
            "QT_QPA_PLATFORM": "xcb",
            "REMOTELLM_CONNECTOR_LLM_URL": stub.url,
            "REMOTELLM_TEST_OPENED": str(opened),
        }
    )
    config = Path(env["XDG_CONFIG_HOME"]) / "remotellm" / "connector.yaml"
    app_log = tmp_path / "app.log"
    trayer = ["trayer", "--edge", "top", "--align", "right", "--widthtype", "request",
              "--height", "32", "--SetDockType", "true"]  # fmt: skip
    app_argv = [sys.executable, "-m", "connector_app.cli", "--log-format", "json"]
    try:
        await poll(lambda: display_ready(env), f"the X server on {display}")
        async with (
            process(trayer, env, tmp_path / "trayer.log"),
            process(app_argv, env, app_log, cwd=str(ROOT)) as app,
        ):
            await focus(env, "Settings")  # no settings yet: the app opens them
            await xdotool(env, "key", "alt+b")
            await focus(env, "Connect to a broker")
            await xdotool(env, "type", "--delay", "20", broker.base_url)
            await xdotool(env, "key", "Return")

            async def link_opened() -> bool:
                return opened.exists() and "/pair?code=" in opened.read_text()

            await poll(link_opened, "the app to open the browser on the pairing link")
            link = opened.read_text().split()[0]
            await decide(broker.base_url, link, "approve")

            async def stored() -> bool:
                token = await asyncio.to_thread(secret_service.lookup, "broker_token")
                return bool(token and token.startswith("rlc-"))

            await poll(stored, "the token in the keyring (the app polls every 5 s)")
            assert f"ws://127.0.0.1:{broker.port}/relay" in config.read_text()
            assert "rlc-" not in config.read_text() and "rlc-" not in read(app_log)
            await wait_models(broker, {"stub-model"}, timeout=30)  # linked with the new token
            app.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(app.wait(), 30) == 0
    finally:
        xvfb.terminate()
        await xvfb.wait()
        await gitlab.stop()
