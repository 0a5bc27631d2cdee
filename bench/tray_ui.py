"""How responsive the tray app's UI stays under load: `uv run python -m bench.tray_ui`.

Runs a stub LLM, a broker and the tray app (offscreen, Requests window open) in one
process on loopback, sends N concurrent streamed requests through it, and reports how
late a 10 ms Qt timer fired meanwhile (the UI's event-loop lag).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--events", type=int, default=50)
    args = parser.parse_args()
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

    import aiohttp
    import qasync
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from connector_app.core.autostart import Autostart
    from connector_app.core.profile import ProfileStore
    from connector_app.core.secrets import MemoryStore
    from connector_app.qt.tray import TrayApp
    from tests.conftest import USER_KEY
    from tests.connector_app.qt.conftest import complete_profile, live_services, make_bridge

    app = QApplication([])
    app.setQuitOnLastWindowClosed(False)
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    gaps: list[float] = []
    last = [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    timer = QTimer(interval=10)
    timer.timeout.connect(tick)

    async def run() -> None:
        async with live_services() as (stub, broker):
            home = Path(tempfile.mkdtemp())
            profile = complete_profile(broker.port, stub.url)
            profile.values["max_concurrency"] = max(args.requests, 1)
            bridge = make_bridge(ProfileStore(home / "connector.yaml", MemoryStore()), profile)
            tray = TrayApp(bridge, Autostart(home), tray_available=lambda: True)
            tray.show_requests()
            tray.launch()
            while set(broker.hub.models()) != {"stub-model"}:  # noqa: ASYNC110 - no event to wait on
                await asyncio.sleep(0.01)
            body = {
                "model": "stub-model",
                "stream": True,
                "x_stub": {"mode": "events", "events": args.events, "interval": 0.002},
            }
            headers = {"Authorization": f"Bearer {USER_KEY}"}
            url = f"{broker.base_url}/v1/chat/completions"
            async with aiohttp.ClientSession() as session:

                async def one() -> int:
                    async with session.post(url, json=body, headers=headers) as resp:
                        await resp.read()
                        return resp.status

                timer.start()
                last[0] = started = time.perf_counter()
                statuses = await asyncio.gather(*(one() for _ in range(args.requests)))
                elapsed = time.perf_counter() - started
                timer.stop()
            await tray.shutdown()
        ordered = [gap * 1000 for gap in sorted(gaps)]
        median, p99 = ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.99)]
        print(
            f"{statuses.count(200)}/{args.requests} streamed requests ({args.events} events each) "
            f"in {elapsed:.1f} s; 10 ms UI timer: median {median:.1f} ms, p99 {p99:.1f} ms, "
            f"max {ordered[-1]:.1f} ms"
        )

    with loop:
        loop.run_until_complete(run())


if __name__ == "__main__":
    main()
