"""The "Connect to a broker…" dialog: pair this connector by signing in on the broker in a browser.

The person types the broker's URL (and may change the connector's name); the dialog shows
the code large, opens the browser on the link that carries it, counts down to its expiry and
waits. Approved, the token goes to the keyring and the relay URL and name to connector.yaml
through the bridge, which then links to the new broker. The flow itself is
`connector_app.core.pairing.pair_connector`, as for `remotellm-connector pair`.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Final

import structlog
from PySide6.QtCore import Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QDesktopServices, QFont, QFontMetrics, QGuiApplication
from PySide6.QtWidgets import (
    QDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from connector_app.core.pairing import (
    Clock,
    Paired,
    PairingFailed,
    Sleep,
    Started,
    broker_base,
    pair_connector,
)
from connector_app.core.profile import ENV_PREFIX
from connector_app.core.trust import client_context
from connector_app.qt.bridge import Bridge

log = structlog.get_logger("remotellm.tray")

ERROR_STYLE: Final = "color: #b91c1c;"

FAILURES: Final[dict[str, str]] = {
    "unreachable": "Could not reach a broker at {url}; check the address and your network, "
    "then try again.",
    "not_broker": "{url} did not answer as a RemoteLLM broker; check the address (the one "
    "you open the broker's portal with).",
    "denied": "The pairing was denied in the browser, so nothing was stored.",
    "expired": "The code expired before anyone approved it; try again for a new code.",
}


def failure_text(reason: str, message: str, url: str) -> str:
    """One sentence for the person: what happened and what to do."""
    if reason in FAILURES:
        return FAILURES[reason].format(url=url)
    text = message[:1].upper() + message[1:]
    if reason == "not_allowed":
        return f"This broker does not allow pairing here: {text}"
    return text if text.endswith(".") else text + "."


def default_broker(bridge: Bridge) -> str:
    """The broker already set up, as the https:// address a person knows it by."""
    stored = str(bridge.profile.values.get("broker_url") or "")
    try:
        return broker_base(stored, insecure=True) if stored else ""
    except ValueError:
        return stored


class PairDialog(QDialog):
    """Pairs with one broker; `paired` carries the Paired once it is stored."""

    paired = Signal(object)

    def __init__(
        self,
        bridge: Bridge,
        parent: QWidget | None = None,
        *,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("RemoteLLM — Connect to a broker")
        self.setMinimumWidth(520)
        self.bridge = bridge
        self.sleep, self.clock = sleep, clock
        self.task: asyncio.Task[None] | None = None
        self.saving = False
        self.started: Started | None = None
        self.expires = 0.0
        self.pages = QStackedWidget()
        self.pages.currentChanged.connect(self._fit)
        self.pages.addWidget(self._form_page())
        self.pages.addWidget(self._waiting_page())
        self.pages.addWidget(self._outcome_page())
        self.ticker = QTimer(self)
        self.ticker.setInterval(1000)
        self.ticker.timeout.connect(self.tick)
        layout = QVBoxLayout(self)
        layout.addWidget(self.pages)
        # Return in the URL field connects. Set once the button is in this dialog: set
        # earlier, QDialog never learns of it and Return would press Close instead.
        self.connect_button.setDefault(True)
        self.url.setFocus()  # the one thing to type

    # -- pages -------------------------------------------------------------------------

    def _form_page(self) -> QWidget:
        page = QWidget()
        intro = QLabel(
            "Type the broker's address. Your browser opens its page: sign in there and "
            "approve this connector. No token to copy."
        )
        intro.setWordWrap(True)
        values = self.bridge.profile.values
        self.url = QLineEdit(default_broker(self.bridge))
        self.url.setPlaceholderText("https://llm.example.com")
        self.name = QLineEdit(str(values.get("name") or socket.gethostname()))
        self.url_error = QLabel()
        self.url_error.setStyleSheet(ERROR_STYLE)
        self.url_error.setWordWrap(True)
        self.url_error.hide()
        form = QFormLayout()
        form.addRow("Broker URL", self.url)
        form.addRow("", self.url_error)
        form.addRow("Connector name", self.name)
        self.connect_button = QPushButton("&Connect")
        self.connect_button.clicked.connect(self.begin)
        close = QPushButton("Close")
        close.clicked.connect(self.reject)
        column = QVBoxLayout(page)
        column.addWidget(intro)
        column.addLayout(form)
        column.addStretch(1)
        column.addLayout(_row(close, self.connect_button))
        return page

    def _waiting_page(self) -> QWidget:
        page = QWidget()
        self.heading = QLabel()
        self.heading.setWordWrap(True)
        self.code = QLabel()
        self.code.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.code.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        font = QFont("monospace")
        font.setStyleHint(QFont.StyleHint.Monospace)
        font.setPointSize(30)
        font.setBold(True)
        self.code.setFont(font)
        self.code.setMinimumHeight(QFontMetrics(font).height() + 16)
        self.hint = QLabel()
        self.hint.setWordWrap(True)
        self.busy = QProgressBar()
        self.busy.setRange(0, 0)  # indeterminate: waiting for a person
        self.busy.setMaximumHeight(12)
        self.countdown = QLabel()
        self.copy_button = QPushButton("Copy &link")
        self.copy_button.clicked.connect(self.copy_link)
        self.open_button = QPushButton("&Open the browser again")
        self.open_button.clicked.connect(self.open_browser)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        column = QVBoxLayout(page)
        for widget in (self.heading, self.code, self.hint, self.busy, self.countdown):
            column.addWidget(widget)
        column.addStretch(1)
        column.addLayout(_row(self.copy_button, self.open_button, self.cancel_button))
        return page

    def _outcome_page(self) -> QWidget:
        page = QWidget()
        self.outcome = QLabel()
        self.outcome.setWordWrap(True)
        self.outcome.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.retry_button = QPushButton("&Try again")
        self.retry_button.clicked.connect(self.begin)
        self.back_button = QPushButton("Change the &address")
        self.back_button.clicked.connect(lambda: self.pages.setCurrentIndex(0))
        self.done_button = QPushButton("Close")
        self.done_button.clicked.connect(self.accept)
        column = QVBoxLayout(page)
        column.addWidget(self.outcome)
        column.addStretch(1)
        column.addLayout(_row(self.back_button, self.retry_button, self.done_button))
        return page

    # -- the flow ----------------------------------------------------------------------

    @property
    def waiting(self) -> bool:
        return self.task is not None and not self.task.done()

    def begin(self) -> asyncio.Task[None] | None:
        """Check the URL, then pair in the background; None (and why, inline) if it is bad."""
        if self.waiting:
            return self.task
        try:
            # No override here: the tray never sends a token over plain http to another host.
            base = broker_base(self.url.text())
        except ValueError as exc:
            self.url_error.setText(str(exc)[:1].upper() + str(exc)[1:] + ".")
            self.url_error.show()
            self.pages.setCurrentIndex(0)
            return None
        self.url_error.hide()
        log.info("pairing", broker=base)
        self.started = None
        self.heading.setText(f"Asking {base} for a code…")
        self.code.setText("")
        self.hint.setText("")
        self.countdown.setText("")
        self.copy_button.setText("Copy &link")
        self.copy_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.open_button.setEnabled(False)
        self.pages.setCurrentIndex(1)
        self.task = self.bridge.spawn(self.run(base, self.name.text().strip() or "connector"))
        return self.task

    async def run(self, base: str, name: str) -> None:
        """Pair, store, reconnect; or say why not."""
        try:
            ca = self.bridge.profile.values.get("ca_file")
            paired = await pair_connector(
                base,
                name,
                tls=client_context(Path(ca) if ca else None),
                on_started=self.show_code,
                sleep=self.sleep,
                clock=self.clock,
            )
        except PairingFailed as exc:
            log.info("pairing failed", reason=exc.reason)
            self.finish(failure_text(exc.reason, str(exc), base), failed=True)
            return
        except (OSError, ValueError) as exc:
            self.finish(failure_text("error", str(exc), base), failed=True)
            return
        finally:
            self.ticker.stop()
        log.info("paired", connector=paired.name, broker_url=paired.relay_url)
        self.cancel_button.setEnabled(False)  # storing: a half-cancelled save helps nobody
        self.saving = True  # closing the window now lets the save and the new link finish
        try:
            warning = await self.store(paired)
        finally:
            self.saving = False
        text = f'Connected to {base} as "{paired.name}"; the token is in the keyring.'
        if warning:
            text = f'Connected to {base} as "{paired.name}", but {warning}'
        self.finish(text + self._env_note(), failed=False)
        self.paired.emit(paired)

    async def store(self, paired: Paired) -> str | None:
        """Token to the keyring, relay URL and name to connector.yaml, then link; a warning
        when the keyring refused (the token is then kept for this session only)."""
        profile = self.bridge.profile.copy()
        profile.values.update(broker_url=paired.relay_url, name=paired.name)
        profile.secrets["broker_token"] = paired.token
        warning: str | None = None
        problem: str | None = None
        try:
            warning = await self.bridge.apply(profile)
        except OSError as exc:  # the profile still applies for this session
            problem = f"{self.bridge.store.path} could not be saved ({exc.strerror or exc})"
        if not self.bridge.serving and not self.bridge.start():
            return (
                "it is not serving yet: "
                + (self.bridge.problem or "the settings are incomplete")
                + ". Complete them in Settings."
            )
        if problem:
            return problem + ", so the pairing lasts for this session only."
        if warning:
            return "the keyring refused the token, so it is kept for this session only. " + warning
        return None

    def _env_note(self) -> str:
        """Which of the settings just stored an environment variable still overrides."""
        overridden = sorted(
            ENV_PREFIX + name.upper()
            for name in self.bridge.store.overridden() & {"broker_url", "broker_token", "name"}
        )
        if not overridden:
            return ""
        verb, them = ("wins", "it") if len(overridden) == 1 else ("win", "them")
        return f" {' and '.join(overridden)} in the environment still {verb}: unset {them}."

    def show_code(self, started: Started) -> None:
        """The broker gave a code: show it, open the browser, start the countdown."""
        self.started = started
        self.expires = self.clock() + started.expires_in
        self.heading.setText(
            "Your browser is opening the broker's page. Sign in, check that it shows this "
            "code, and approve the connector:"
        )
        self.code.setText(started.user_code)
        self.hint.setText(
            f"No browser? Copy the link, or go to {started.verification_uri} and type the code."
        )
        self.copy_button.setEnabled(True)
        self.open_button.setEnabled(True)
        self._fit()
        self.tick()
        self.ticker.start()
        log.info("pairing code shown", opened=self.open_browser())

    def tick(self) -> None:
        left = max(0, round(self.expires - self.clock()))
        self.countdown.setText(
            f"Waiting for approval… the code expires in {left // 60}:{left % 60:02d}."
        )

    def open_browser(self) -> bool:
        if self.started is None:
            return False
        opened = QDesktopServices.openUrl(QUrl(self.started.verification_uri_complete))
        if not opened:
            self.hint.setText("No browser could be opened: copy the link and open it in a browser.")
        return bool(opened)

    def copy_link(self) -> None:
        if self.started is not None:
            QGuiApplication.clipboard().setText(self.started.verification_uri_complete)
            self.copy_button.setText("Link copied")

    def cancel(self) -> None:
        """Stop polling at once and go back to the URL (not while the token is being saved)."""
        if self.saving:
            return
        if self.task is not None:
            self.task.cancel()
        self.ticker.stop()
        self.pages.setCurrentIndex(0)

    def finish(self, text: str, *, failed: bool) -> None:
        self.outcome.setText(text)
        self.outcome.setStyleSheet(ERROR_STYLE if failed else "")
        self.retry_button.setVisible(failed)
        self.back_button.setVisible(failed)
        self.pages.setCurrentIndex(2)
        self._fit()

    def _fit(self, *_: object) -> None:
        """Size the window to the page shown (a stack sizes itself for its largest page,
        and wrapped labels need their height asked for their width)."""
        page = self.pages.currentWidget()
        if page is None:
            return
        page.adjustSize()
        self.pages.setMinimumHeight(page.sizeHint().height())
        self.adjustSize()

    def reject(self) -> None:
        """Closing (Esc, the window's X) cancels a pairing in progress."""
        self.cancel()
        super().reject()


def _row(*buttons: QPushButton) -> QHBoxLayout:
    row = QHBoxLayout()
    row.addStretch(1)
    for button in buttons:
        row.addWidget(button)
    return row
