"""The tray icon, its menu, and what each entry does."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

import structlog
from PySide6.QtCore import QObject, QTimer
from PySide6.QtGui import QAction, QCursor, QIcon
from PySide6.QtWidgets import QMenu, QMessageBox, QSystemTrayIcon

from connector_app.core.autostart import Autostart, AutostartError
from connector_app.core.status import Status
from connector_app.qt.bridge import Bridge
from connector_app.qt.icons import TrayState, icon_for, status_line, tooltip, tray_state
from connector_app.qt.main_window import NO_TRAY_REASON, MainWindow
from connector_app.qt.notifier import Notifier
from connector_app.qt.requests_window import RequestsWindow
from connector_app.qt.settings_dialog import SettingsDialog

log = structlog.get_logger("remotellm.tray")

TRAY_WAIT = 5.0
"""Seconds to keep looking for a tray that appears late at login before showing the window."""


class TrayApp(QObject):
    """Shows the connector's state and forwards the operator's intent to the Bridge."""

    def __init__(
        self,
        bridge: Bridge,
        autostart: Autostart,
        *,
        tray_available: Callable[[], bool] = QSystemTrayIcon.isSystemTrayAvailable,
        tray_wait: float = TRAY_WAIT,
        first_run: bool = False,
        config_error: str | None = None,
    ) -> None:
        super().__init__()
        self.bridge = bridge
        self.autostart = autostart
        self.tray_available = tray_available
        self.tray_wait = tray_wait
        self.first_run = first_run
        self.config_error = config_error
        self.finished = asyncio.Event()
        self.quitting = False
        self.state = TrayState.STOPPED
        self.settings_dialog: SettingsDialog | None = None
        self.requests_window: RequestsWindow | None = None
        self.window: MainWindow | None = None

        self._build_menu()
        self.tray = QSystemTrayIcon(icon_for(TrayState.STOPPED))
        self._shown: tuple[TrayState, str] | None = None  # what the icon and tooltip show now
        self.tray.setContextMenu(self.menu)
        self.menu.aboutToShow.connect(lambda: log.info("tray menu opened"))
        self.tray.activated.connect(self._on_activated)
        self.notifier = Notifier(self.notify, enabled=bridge.profile.prefs.notifications)
        self._waited = 0.0
        self._tray_timer = QTimer(self, interval=500)
        self._tray_timer.timeout.connect(self._look_for_tray)

        bridge.status_changed.connect(self.on_status)
        bridge.serving_changed.connect(lambda _serving: self.refresh())
        bridge.problem_changed.connect(lambda _problem: self.refresh())
        bridge.paused_changed.connect(lambda _paused: self.refresh())
        self._sync_login()
        self.refresh()

    def _build_menu(self) -> None:
        """The tray menu: state, start/stop, the models' toggles, the windows, login, quit."""
        self.menu = QMenu()
        self.status_action = self.menu.addAction("Stopped")
        self.status_action.setEnabled(False)
        self.start_action = self.menu.addAction("Start serving", self.start)
        self.stop_action = self.menu.addAction("Stop serving", self.stop)
        self.pause_action = self.menu.addAction("Pause sharing", self.toggle_pause)
        self.menu.addSeparator()
        self.models_header = self.menu.addAction("Models")
        self.models_header.setEnabled(False)
        self.models_end = self.menu.addSeparator()
        self.model_actions: dict[str, QAction] = {}
        self.models_menu = QMenu("Models")  # the same toggles, for the fallback window
        self.requests_action = self.menu.addAction("Requests…", self.show_requests)
        self.settings_action = self.menu.addAction("Settings…", self.show_settings)
        self.login_action = self.menu.addAction("Launch at login")
        self.login_action.setCheckable(True)
        self.login_action.toggled.connect(self.set_launch_at_login)
        self.menu.addSeparator()
        self.quit_action = self.menu.addAction("Quit", self.quit)

    # -- start-up --------------------------------------------------------------

    def launch(self) -> None:
        """Show the tray (or the window), then serve or ask for settings."""
        if self.tray_available():
            self.tray.show()
            log.info("tray icon shown")
        else:
            self._tray_timer.start()
        if self.config_error:
            # A broken connector.yaml: say what is wrong in Settings instead of exiting
            # (under launchd an exit would only be restarted, with a dialog every time).
            self.bridge.report_problem(self.config_error)
            self.show_settings()
        elif self.bridge.is_complete():
            if self.bridge.profile.prefs.serve_on_launch:
                self.start()
        else:
            dialog = self.show_settings()
            if self.first_run and not self.bridge.profile.values.get("llm_url"):
                self.bridge.spawn(self._detect(dialog))

    async def _detect(self, dialog: SettingsDialog) -> None:
        await dialog.detect()

    def _look_for_tray(self) -> None:
        """A tray that appears late at login gets a few seconds before the window shows."""
        self._waited += self._tray_timer.interval() / 1000
        if self.tray_available():
            self._tray_timer.stop()
            self.tray.show()
            log.info("system tray appeared", after_s=self._waited)
        elif self._waited >= self.tray_wait:
            self._tray_timer.stop()
            log.warning("no system tray; showing a window instead")
            self.show_window(NO_TRAY_REASON)

    def show_window(self, reason: str = NO_TRAY_REASON) -> MainWindow:
        if self.window is None:
            actions = [
                self.start_action,
                self.stop_action,
                self.requests_action,
                self.settings_action,
                self.login_action,
                self.quit_action,
            ]
            self.window = MainWindow(actions, self.models_menu, reason)
            self.window.setWindowIcon(icon_for(self.state))
            self.refresh()
        self.window.show()
        self.window.raise_()
        self.window.activateWindow()
        return self.window

    def bring_forward(self) -> None:
        """A second launch: show the window or the settings so the operator sees us."""
        log.info("brought forward by a second launch")
        if self.window is not None or not self.tray.isVisible():
            self.show_window()
        elif self.settings_dialog is not None and self.settings_dialog.isVisible():
            self.settings_dialog.raise_()
            self.settings_dialog.activateWindow()
        else:
            self.show_requests()

    # -- showing state ---------------------------------------------------------

    def on_status(self, status: Status) -> None:
        self.notifier.on_status(status)
        self.refresh()

    def refresh(self) -> None:
        """Bring icon, tooltip, menu and window in line with the bridge."""
        bridge = self.bridge
        status = bridge.status
        self.state = tray_state(bridge.serving, status, bridge.problem, bridge.paused)
        icon: QIcon = icon_for(self.state)
        line = status_line(self.state, status, bridge.problem)
        tip = tooltip(self.state, status, bridge.broker_url)
        # Requests start and finish many times a second; only touch the tray when it changes.
        shown = self._shown
        if shown is None or shown[0] is not self.state:
            self.tray.setIcon(icon)
        if shown is None or shown[1] != tip:
            self.tray.setToolTip(tip)
        self._shown = (self.state, tip)
        self.status_action.setText(line)
        self.start_action.setVisible(not bridge.serving)
        self.stop_action.setVisible(bridge.serving)
        self.pause_action.setVisible(bridge.serving)
        self.pause_action.setText("Resume sharing" if bridge.paused else "Pause sharing")
        self._sync_models(status)
        if self.window is not None:
            self.window.set_status(line)
            self.window.setWindowIcon(icon)

    def _sync_models(self, status: Status) -> None:
        disabled = set(self.bridge.profile.prefs.disabled_models)
        names = sorted(set(status.available) | disabled)
        if list(self.model_actions) != names:
            for action in self.model_actions.values():
                self.menu.removeAction(action)
                self.models_menu.removeAction(action)
                action.deleteLater()
            self.model_actions = {}
            for name in names:
                action = QAction(name, self.menu)
                action.setCheckable(True)
                action.toggled.connect(lambda on, n=name: self.bridge.set_model_enabled(n, on))
                self.menu.insertAction(self.models_end, action)
                self.models_menu.addAction(action)
                self.model_actions[name] = action
        for name, action in self.model_actions.items():
            action.blockSignals(True)
            action.setChecked(name not in disabled)
            action.blockSignals(False)
        served = len(status.models)
        self.models_header.setText(
            f"Models ({served} served)" if names else "Models: none found yet"
        )

    def notify(self, title: str, message: str) -> None:
        log.info("notification", title=title, message=message)
        if self.tray.isVisible():
            self.tray.showMessage(title, message, icon_for(self.state), 8000)
        elif self.window is not None:
            self.window.set_notice(f"{title}: {message}")

    # -- intent ----------------------------------------------------------------

    def start(self) -> None:
        if not self.bridge.start():
            self.show_settings()

    def stop(self) -> None:
        self.bridge.spawn(self.bridge.stop())

    def toggle_pause(self) -> None:
        """Pause sharing (new requests go elsewhere, running ones finish) or resume it."""
        self.bridge.set_paused(not self.bridge.paused)

    def show_requests(self) -> RequestsWindow:
        if self.requests_window is None:
            self.requests_window = RequestsWindow(self.bridge)
        self.requests_window.show()
        self.requests_window.raise_()
        self.requests_window.activateWindow()
        return self.requests_window

    def show_settings(self) -> SettingsDialog:
        if self.settings_dialog is None or not self.settings_dialog.isVisible():
            self.settings_dialog = SettingsDialog(self.bridge)
            self.settings_dialog.saved.connect(self._on_saved)
            log.info("settings opened")
        self.settings_dialog.show()
        self.settings_dialog.raise_()
        self.settings_dialog.activateWindow()
        return self.settings_dialog

    def _on_saved(self, _profile: object) -> None:
        self.first_run = False
        self.notifier.enabled = self.bridge.profile.prefs.notifications
        if not self.bridge.serving and self.bridge.is_complete():
            self.bridge.start()
        self.refresh()

    def _sync_login(self) -> None:
        self.login_action.blockSignals(True)
        try:
            self.login_action.setChecked(self.autostart.is_enabled())
            self.login_action.setEnabled(True)
        except AutostartError:
            self.login_action.setEnabled(False)
        self.login_action.blockSignals(False)

    def set_launch_at_login(self, on: bool) -> asyncio.Task[None]:
        """Change launch at login in a thread (launchctl and systemctl can be slow)."""
        self.login_action.setEnabled(False)  # until this change is done
        return self.bridge.spawn(self._change_login(on))

    async def _change_login(self, on: bool) -> None:
        try:
            # From the running app: never start a second copy now, never stop this one.
            if on:
                await asyncio.to_thread(self.autostart.enable, start_now=False)
            else:
                await asyncio.to_thread(self.autostart.disable)
        except AutostartError as exc:
            QMessageBox.warning(None, "RemoteLLM", f"Launch at login: {exc}")
        finally:
            self._sync_login()

    def _on_activated(self, reason: QSystemTrayIcon.ActivationReason) -> None:
        """A left click: Settings when something needs fixing (a problem or a fatal status such as
        a rejected token), else the menu (as a right click).

        macOS already opens the menu on any click, so only other platforms pop it up here.
        """
        if reason != QSystemTrayIcon.ActivationReason.Trigger:
            return
        if self.bridge.problem or self.state is TrayState.ERROR:
            self.show_settings()
        elif sys.platform != "darwin":
            self.menu.popup(QCursor.pos())

    def quit(self) -> None:
        self.bridge.spawn(self.shutdown())

    async def shutdown(self, grace: float | None = None) -> None:
        """Drain in-flight requests (bounded), disconnect, and end the app's main coroutine."""
        if self.quitting:
            return
        self.quitting = True
        log.info("quitting", in_flight=self.bridge.status.in_flight)
        await self.bridge.shutdown(grace)
        self.tray.hide()
        for widget in (self.window, self.requests_window, self.settings_dialog):
            if widget is not None:
                widget.close()
        self.finished.set()
