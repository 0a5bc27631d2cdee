"""`remotellm-connector` without `--headless`: the tray app on the Qt event loop (qasync)."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Literal

import qasync
import structlog
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication

from connector_app.core.autostart import Autostart
from connector_app.core.profile import Profile, ProfileStore, default_config_path
from connector_app.core.secrets import KeyringStore
from connector_app.qt.bridge import Bridge
from connector_app.qt.icons import assets_dir
from connector_app.qt.single_instance import SingleInstance
from connector_app.qt.tray import TrayApp
from shared.logging import configure_logging
from shared.settings import ConfigError

log = structlog.get_logger("remotellm.tray")

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def application() -> QApplication:
    """The QApplication, set up so that closing a window never quits."""
    existing = QApplication.instance()
    app = existing if isinstance(existing, QApplication) else QApplication(sys.argv[:1])
    app.setApplicationName("RemoteLLM Connector")
    app.setDesktopFileName("remotellm-connector")
    app.setQuitOnLastWindowClosed(False)
    app.setWindowIcon(QIcon(str(assets_dir() / "remotellm.svg")))
    return app


async def serve(tray: TrayApp, instance: SingleInstance) -> None:
    """Run until Quit or SIGTERM/SIGINT; both drain in-flight requests first."""
    loop = asyncio.get_running_loop()
    instance.activated.connect(tray.bring_forward)
    for sig in SIGNALS:
        loop.add_signal_handler(sig, tray.quit)
    try:
        tray.launch()
        await tray.finished.wait()
    finally:
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)
            # The process is about to exit 0; a late signal must not kill it halfway.
            signal.signal(sig, signal.SIG_IGN)


def load_profile(store: ProfileStore) -> tuple[Profile, str | None]:
    """The saved profile, or a blank one and the reason when `connector.yaml` is broken.

    A broken file opens Settings with the error instead of exiting: under launchd an exit
    would be restarted every few seconds, each time with a dialog.
    """
    try:
        return store.load(), None
    except ConfigError as exc:
        log.error("bad configuration", error=str(exc))
        return store.blank(), f"the configuration cannot be used: {exc}; Save here replaces it"


def run_tray(
    config: Path | None = None,
    log_level: str = "info",
    log_format: Literal["json", "console"] = "console",
) -> int:
    """Start the tray app; returns the process exit status."""
    app = application()
    instance = SingleInstance()
    if not instance.acquire():
        print("remotellm-connector: already running; brought its window forward", file=sys.stderr)
        return 0
    configure_logging(log_level, log_format)
    store = ProfileStore(config or default_config_path(), KeyringStore())
    first_run = not store.path.exists()
    profile, config_error = load_profile(store)
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    try:
        with loop:
            bridge = Bridge(store, profile)
            tray = TrayApp(
                bridge, Autostart(Path.home()), first_run=first_run, config_error=config_error
            )
            loop.run_until_complete(serve(tray, instance))
    finally:
        asyncio.set_event_loop(None)
        instance.release()
    log.info("stopped")
    return 0
