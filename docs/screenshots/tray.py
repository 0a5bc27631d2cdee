"""Take the tray app's screenshots under Xvfb: `uv run python docs/screenshots/tray.py`.

It starts its own Xvfb, runs a stub LLM, a broker and the tray app's core in-process on
loopback, sends a few requests, and saves the tray menu, the settings dialog, the requests
window and the "Connect to a broker…" dialog (showing its code; the broker signs in through
the tests' fake GitLab) as PNGs next to this file. Needs Xvfb (see .ci/run).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def main() -> int:
    if "--inner" in sys.argv:
        return inner()
    read_end, write_end = os.pipe()
    argv = ["Xvfb", "-displayfd", str(write_end), "-screen", "0", "1280x900x24"]
    xvfb = subprocess.Popen([*argv, "-nolisten", "tcp", "-noreset"], pass_fds=(write_end,))
    os.close(write_end)
    number = b""
    while not number.endswith(b"\n"):
        chunk = os.read(read_end, 32)
        if not chunk:
            break
        number += chunk
    os.close(read_end)
    env = {**os.environ, "DISPLAY": f":{number.decode().strip()}", "QT_QPA_PLATFORM": "xcb"}
    env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"
    try:
        return subprocess.run(
            [sys.executable, __file__, "--inner"], env=env, cwd=ROOT, check=False
        ).returncode
    finally:
        xvfb.terminate()
        xvfb.wait()


def inner() -> int:
    import tempfile

    import aiohttp
    import qasync
    from PySide6.QtCore import QObject, QPoint, QUrl, Slot
    from PySide6.QtGui import QDesktopServices
    from PySide6.QtWidgets import QApplication

    sys.path.insert(0, str(ROOT))
    from broker.server import BrokerServer
    from connector_app.core.autostart import Autostart
    from connector_app.core.profile import Profile, ProfileStore, TrayPrefs
    from connector_app.core.secrets import MemoryStore
    from connector_app.qt.bridge import Bridge
    from connector_app.qt.tray import TrayApp
    from tests.conftest import CONNECTOR_TOKEN, USER_KEY, broker_settings
    from tests.fake_gitlab import CLIENT_ID, CLIENT_SECRET, FakeGitLab
    from tests.stub_llm import StubLLM

    class NoBrowser(QObject):
        """Takes the links the pairing dialog opens, so no browser starts."""

        @Slot(QUrl)
        def open(self, url: QUrl) -> None:
            pass

    app = QApplication(sys.argv[:1])
    app.setQuitOnLastWindowClosed(False)
    app.setStyle("Fusion")
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    home = Path(tempfile.mkdtemp())

    async def until(condition: Callable[[], object]) -> None:
        async with asyncio.timeout(30):
            while not condition():  # noqa: ASYNC110 - polling state the app owns, bounded
                await asyncio.sleep(0.02)

    async def shoot() -> None:
        stub = StubLLM(models=["llama3.1:8b", "qwen2.5-coder:14b", "mistral-nemo"])
        await stub.start()
        gitlab = FakeGitLab()
        await gitlab.start()
        broker = BrokerServer(
            broker_settings(
                gitlab_url=gitlab.url,
                gitlab_client_id=CLIENT_ID,
                gitlab_client_secret=CLIENT_SECRET,
            )
        )
        await broker.start()
        store = ProfileStore(home / "connector.yaml", MemoryStore())
        profile = Profile(
            {"broker_url": f"ws://127.0.0.1:{broker.port}/relay", "llm_url": stub.url},
            TrayPrefs(disabled_models=["mistral-nemo"]),
            {"broker_token": CONNECTOR_TOKEN},
        )
        bridge = Bridge(store, profile)
        tray = TrayApp(bridge, Autostart(home, command=["remotellm-connector"]))
        tray.launch()
        await until(lambda: set(broker.hub.models()) == {"llama3.1:8b", "qwen2.5-coder:14b"})
        # Two users of the broker's store, so the Requests window's User column has names.
        keys = [USER_KEY]
        for username, name in (("ada", "Ada Lovelace"), ("grace", "Grace Hopper")):
            user = await broker.services.store.create_user(username, name)
            keys.append((await broker.services.store.create_key(user.id, "laptop"))[0])
        async with aiohttp.ClientSession() as session:
            for i, model in enumerate(["llama3.1:8b", "qwen2.5-coder:14b", "llama3.1:8b"] * 3):
                body = {"model": model, "messages": [{"role": "user", "content": "Hi"}]}
                key = keys[i % len(keys)]
                hdrs = {"Authorization": f"Bearer {key}", "X-Request-ID": f"req-demo-{i:02d}"}
                url = f"{broker.base_url}/v1/chat/completions"
                async with session.post(url, json=body, headers=hdrs) as resp:
                    await resp.read()
            gated = {
                "model": "qwen2.5-coder:14b",
                "stream": True,
                "x_stub": {"mode": "events", "events": 2, "gated": True},
            }
            hdrs = {"Authorization": f"Bearer {keys[1]}", "X-Request-ID": "req-streaming-now"}
            busy = asyncio.ensure_future(
                session.post(f"{broker.base_url}/v1/chat/completions", json=gated, headers=hdrs)
            )
            await until(lambda: bridge.status.in_flight == 1)

            tray.menu.popup(QPoint(700, 40))
            await asyncio.sleep(0.5)
            tray.menu.grab().save(str(HERE / "tray-menu.png"))
            tray.menu.hide()

            window = tray.show_requests()
            window.resize(900, 560)
            await asyncio.sleep(0.5)
            window.grab().save(str(HERE / "requests.png"))
            window.hide()

            dialog = tray.show_settings()
            await dialog.test_connection()
            await asyncio.sleep(0.3)
            dialog.grab().save(str(HERE / "settings.png"))

            no_browser = NoBrowser()
            QDesktopServices.setUrlHandler("http", no_browser, "open")
            pairing = dialog.show_pairing()
            pairing.url.setText(broker.base_url)
            pairing.name.setText("studio-gpu")
            pairing.begin()
            await until(lambda: pairing.code.text())
            await asyncio.sleep(0.3)
            pairing.grab().save(str(HERE / "pair-dialog.png"))
            pairing.cancel()
            pairing.close()
            QDesktopServices.unsetUrlHandler("http")
            dialog.close()

            stub.gate(0).set()
            response = await busy
            await response.read()
            response.release()
        await tray.shutdown(grace=5)
        await broker.stop()
        await gitlab.stop()
        await stub.stop()

    with loop:
        loop.run_until_complete(shoot())
    for name in ("tray-menu.png", "requests.png", "settings.png", "pair-dialog.png"):
        print(HERE / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
