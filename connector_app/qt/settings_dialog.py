"""The Settings dialog: edit, validate inline, test the connection, save to yaml + keyring."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import structlog
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from connector_app.core.discovery import KNOWN_SERVERS, detect_local_server
from connector_app.core.pairing import Paired
from connector_app.core.probe import Check, check_broker, check_local
from connector_app.core.profile import ENV_PREFIX, Profile, TrayPrefs
from connector_app.core.settings import is_loopback, normalise_broker_url, normalise_llm_url
from connector_app.qt.bridge import Bridge
from connector_app.qt.pair_dialog import PairDialog

log = structlog.get_logger("remotellm.tray")

ERROR_STYLE: Final = "color: #b91c1c;"
FIELDS: Final = ("broker_url", "broker_token", "llm_url", "llm_api_key", "max_concurrency")


def broker_url_error(text: str, insecure: bool = False) -> str | None:
    if not text.strip():
        return "Required: the broker's URL, e.g. wss://llm.example.com/relay."
    try:
        url = normalise_broker_url(text)
    except ValueError:
        return "Use a wss://, ws://, https:// or http:// URL with a host."
    host = urlsplit(url).hostname or ""
    if url.startswith("ws://") and not insecure and not is_loopback(host):
        return "Unencrypted ws:// is only allowed to this machine; use wss://."
    return None


def llm_url_error(text: str) -> str | None:
    try:
        normalise_llm_url(text)
    except ValueError:
        return "Use an http:// or https:// URL with a host, e.g. http://127.0.0.1:11434."
    return None


async def _discard(coro: Coroutine[Any, Any, object]) -> None:
    await coro


def token_error(text: str) -> str | None:
    return None if text.strip() else "Required: the connector token from the broker's operator."


class SettingsDialog(QDialog):
    """Edits a copy of the bridge's profile; `saved` carries the new Profile."""

    saved = Signal(object)

    def __init__(self, bridge: Bridge, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("RemoteLLM — Settings")
        self.setMinimumWidth(560)
        self.bridge = bridge
        profile = bridge.profile
        self.overridden = bridge.store.overridden()
        self._tasks: set[asyncio.Task[None]] = set()
        self.saving = False

        self._build_fields(profile)
        form = self._build_form()
        self._build_messages(profile.secrets_error, bridge.problem)
        test_row = self._build_test_row()
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel
        )
        self.buttons.accepted.connect(self.save)
        self.buttons.rejected.connect(self.reject)

        layout = QVBoxLayout(self)
        layout.addWidget(self.problem)
        layout.addWidget(self.keyring_warning)
        layout.addLayout(form)
        layout.addLayout(test_row)
        layout.addWidget(self.outcome)
        layout.addWidget(self.buttons)

        for edit in (self.broker_url, self.broker_token, self.llm_url):
            edit.textChanged.connect(self.validate)
        self._apply_overrides()
        self.validate()

    def _build_fields(self, profile: Profile) -> None:
        """The editable fields, filled from the profile."""
        values = profile.values
        self.broker_url = QLineEdit(str(values.get("broker_url") or ""))
        self.broker_url.setPlaceholderText("wss://llm.example.com/relay")
        self.broker_token = QLineEdit(profile.secrets.get("broker_token") or "")
        self.broker_token.setEchoMode(QLineEdit.EchoMode.Password)
        self.llm_url = QLineEdit(str(values.get("llm_url") or "http://127.0.0.1:11434"))
        self.llm_api_key = QLineEdit(profile.secrets.get("llm_api_key") or "")
        self.llm_api_key.setEchoMode(QLineEdit.EchoMode.Password)
        self.llm_api_key.setPlaceholderText("only if the local server wants one")
        self.max_concurrency = QSpinBox(minimum=1, maximum=1024)
        self.max_concurrency.setValue(int(values.get("max_concurrency") or 4))
        self.serve_on_launch = QCheckBox("Start serving when the app starts")
        self.serve_on_launch.setChecked(profile.prefs.serve_on_launch)
        self.notifications = QCheckBox("Notify me when the link drops or comes back")
        self.notifications.setChecked(profile.prefs.notifications)
        self.models = QListWidget()
        self.models.setMaximumHeight(130)
        self.set_models(self.bridge.status.available or (), profile.prefs.disabled_models)

    def _build_form(self) -> QFormLayout:
        """The fields in a form, each with its error label."""
        self.errors: dict[str, QLabel] = {}
        form = QFormLayout()
        self.pair_button = QPushButton("Connect to a &broker…")
        self.pair_button.setToolTip("Pair by signing in on the broker: no token to paste.")
        self.pair_button.clicked.connect(self.show_pairing)
        self.pair_dialog: PairDialog | None = None
        pair_row = QHBoxLayout()
        pair_row.addWidget(self.pair_button)
        pair_row.addWidget(QLabel("or enter the broker URL and a token below"), 1)
        form.addRow("", pair_row)
        for name, label, widget in (
            ("broker_url", "Broker URL", self.broker_url),
            ("broker_token", "Connector token", self.broker_token),
            ("llm_url", "Local LLM URL", self.llm_url),
            ("llm_api_key", "Local LLM API key", self.llm_api_key),
            ("max_concurrency", "Max concurrency", self.max_concurrency),
        ):
            form.addRow(label, self._with_error(name, widget))
        form.addRow("Models", self.models)
        form.addRow("", self.serve_on_launch)
        form.addRow("", self.notifications)
        return form

    def _build_messages(self, secrets_error: str | None, problem: str | None) -> None:
        """What is wrong before anything is edited: the keyring, or why serving cannot start."""
        self.keyring_warning = QLabel(secrets_error or "")
        self.keyring_warning.setWordWrap(True)
        self.keyring_warning.setStyleSheet(ERROR_STYLE)
        self.keyring_warning.setVisible(bool(secrets_error))
        # Why the connector cannot serve (a broken connector.yaml, a bad CA file, ...).
        self.problem = QLabel(problem or "")
        self.problem.setWordWrap(True)
        self.problem.setStyleSheet(ERROR_STYLE)
        self.problem.setVisible(bool(problem))

    def _build_test_row(self) -> QHBoxLayout:
        """The "Test connection" button, its busy bar and its outcome."""
        self.busy = QProgressBar()
        self.busy.setRange(0, 0)  # indeterminate: a busy indicator
        self.busy.setMaximumHeight(12)
        self.busy.hide()
        self.test_button = QPushButton("Test connection")
        self.test_button.clicked.connect(lambda: self._spawn(self.test_connection()))
        self.outcome = QLabel()
        self.outcome.setWordWrap(True)
        self.outcome.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        test_row = QHBoxLayout()
        test_row.addWidget(self.test_button)
        test_row.addWidget(self.busy, 1)
        return test_row

    # -- layout helpers --------------------------------------------------------

    def _with_error(self, name: str, widget: QWidget) -> QWidget:
        box = QWidget()
        column = QVBoxLayout(box)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(2)
        column.addWidget(widget)
        error = QLabel()
        error.setStyleSheet(ERROR_STYLE)
        error.setWordWrap(True)
        error.hide()
        column.addWidget(error)
        self.errors[name] = error
        return box

    def _apply_overrides(self) -> None:
        """A setting decided by an environment variable is shown read-only, and why."""
        for name in FIELDS:
            if name in self.overridden:
                widget = getattr(self, name)
                widget.setEnabled(False)
                widget.setToolTip(f"Set by {ENV_PREFIX}{name.upper()} in the environment.")
                note = self.errors[name]
                note.setStyleSheet("")
                note.setText(f"Set by {ENV_PREFIX}{name.upper()}; the environment wins.")
                note.show()

    def _spawn(self, coro: Coroutine[Any, Any, object]) -> asyncio.Task[None]:
        task = self.bridge.spawn(_discard(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- pairing ---------------------------------------------------------------

    def show_pairing(self) -> PairDialog:
        """Open "Connect to a broker…"; a pairing fills in the broker URL and token here."""
        if self.pair_dialog is None:
            self.pair_dialog = PairDialog(self.bridge, self)
            self.pair_dialog.paired.connect(self._on_paired)
        log.info("pairing dialog opened")
        self.pair_dialog.show()
        self.pair_dialog.raise_()
        return self.pair_dialog

    def _on_paired(self, paired: Paired) -> None:
        # Already saved by the pairing; shown here so that Save keeps them.
        self.broker_url.setText(paired.relay_url)
        self.broker_token.setText(paired.token)

    # -- models ----------------------------------------------------------------

    def set_models(self, available: Iterable[str], disabled: Iterable[str]) -> None:
        off = set(disabled)
        names = sorted(set(available) | off | set(self.model_states()))
        previous = self.model_states()
        self.models.clear()
        for name in names:
            item = QListWidgetItem(name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            on = previous.get(name, name not in off)
            item.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)
            self.models.addItem(item)
        if not names:
            hint = QListWidgetItem("(none found yet: press Test connection)")
            hint.setFlags(Qt.ItemFlag.NoItemFlags)
            self.models.addItem(hint)

    def model_states(self) -> dict[str, bool]:
        states = {}
        for row in range(self.models.count()):
            item = self.models.item(row)
            if item.flags() & Qt.ItemFlag.ItemIsUserCheckable:
                states[item.text()] = item.checkState() == Qt.CheckState.Checked
        return states

    # -- validation ------------------------------------------------------------

    def field_errors(self) -> dict[str, str]:
        insecure = bool(self.bridge.profile.values.get("insecure"))
        checks = {
            "broker_url": broker_url_error(self.broker_url.text(), insecure),
            "broker_token": token_error(self.broker_token.text()),
            "llm_url": llm_url_error(self.llm_url.text()),
        }
        return {k: v for k, v in checks.items() if v and k not in self.overridden}

    def validate(self) -> bool:
        """Show each field's problem under it; Save is enabled only when there is none."""
        problems = self.field_errors()
        for name in ("broker_url", "broker_token", "llm_url"):
            if name in self.overridden:
                continue
            label = self.errors[name]
            label.setText(problems.get(name, ""))
            label.setVisible(name in problems)
        save = self.buttons.button(QDialogButtonBox.StandardButton.Save)
        save.setEnabled(not problems and not self.saving)
        return not problems

    # -- actions ---------------------------------------------------------------

    def effective(self, name: str) -> str:
        """The value a check should use: the environment's if it overrides the field."""
        if name in self.overridden:
            return os.environ.get(ENV_PREFIX + name.upper(), "")
        return str(getattr(self, name).text()).strip()

    async def test_connection(self) -> list[Check]:
        """Check the local server and the broker at once; say exactly what is wrong."""
        self.busy.show()
        self.test_button.setEnabled(False)
        self.outcome.setText("Testing the local LLM server and the broker…")
        ca = self.bridge.profile.values.get("ca_file")
        try:
            local, broker = await asyncio.gather(
                check_local(self.effective("llm_url"), self.effective("llm_api_key") or None),
                check_broker(
                    self.effective("broker_url"),
                    self.effective("broker_token"),
                    Path(ca) if ca else None,
                ),
            )
        finally:
            self.busy.hide()
            self.test_button.setEnabled(True)
        if local.models:
            self.set_models(local.models, self.bridge.profile.prefs.disabled_models)
        self.outcome.setText(
            "\n".join(f"{'✔' if c.ok else '✘'} {c.message}" for c in (local, broker))
        )
        self.outcome.setStyleSheet("" if local.ok and broker.ok else ERROR_STYLE)
        return [local, broker]

    async def detect(
        self, servers: Sequence[tuple[str, int]] = KNOWN_SERVERS
    ) -> tuple[str, str] | None:
        """First run: find a local server on the usual ports and pre-fill its URL and models."""
        self.busy.show()
        self.outcome.setText("Looking for a local LLM server (Ollama, llama.cpp, LM Studio, vLLM)…")
        try:
            found = await detect_local_server(servers=servers)
            if found is not None:
                kind, url = found
                self.llm_url.setText(url)
                local = await check_local(url, None)
                self.set_models(local.models, self.bridge.profile.prefs.disabled_models)
                self.outcome.setText(f"Found {kind} at {url}.")
            else:
                self.outcome.setText(
                    "No local LLM server answered on the usual ports; enter its URL."
                )
        finally:
            self.busy.hide()
        return found

    def profile(self) -> Profile:
        """The dialog's content as a Profile (overridden fields keep their stored values)."""
        old = self.bridge.profile
        values = dict(old.values)
        secrets = dict(old.secrets)
        for name in ("broker_url", "llm_url"):
            if name not in self.overridden:
                values[name] = self.effective(name)
        if "max_concurrency" not in self.overridden:
            values["max_concurrency"] = self.max_concurrency.value()
        for name in ("broker_token", "llm_api_key"):
            if name not in self.overridden:
                secrets[name] = self.effective(name) or None
        disabled = sorted(name for name, on in self.model_states().items() if not on)
        prefs = TrayPrefs(
            serve_on_launch=self.serve_on_launch.isChecked(),
            notifications=self.notifications.isChecked(),
            disabled_models=disabled,
        )
        return Profile(values, prefs, secrets, old.secrets_error)

    def save(self) -> asyncio.Task[None] | None:
        """Save in the background (keyring and file IO stay off the Qt thread)."""
        if self.saving or not self.validate():
            return None
        self.saving = True  # Save stays disabled until the write is done
        self.validate()
        return self._spawn(self.commit(self.profile()))

    async def commit(self, profile: Profile) -> None:
        """Write the profile through the bridge with Save disabled, then close (or warn)."""
        self.saving = True
        self.validate()
        try:
            warning = await self.bridge.apply(profile)
        except OSError as exc:
            self.problem.setText(
                f"Could not save {self.bridge.store.path} ({exc.strerror or exc}); "
                "check that the folder is writable."
            )
            self.problem.show()
            return
        finally:
            self.saving = False
            self.validate()
        self.saved.emit(profile)
        if warning:
            # Saved to the file, but the secrets only live in memory: say so, stay open.
            self.keyring_warning.setText(
                "Saved, but the token and key are kept for this session only. " + warning
            )
            self.keyring_warning.show()
            return
        self.accept()
