"""The small window shown where there is no system tray: same status, same actions."""

from __future__ import annotations

from PySide6.QtGui import QAction
from PySide6.QtWidgets import QLabel, QMenu, QPushButton, QToolButton, QVBoxLayout, QWidget

NO_TRAY_REASON = (
    "No system tray was found on this desktop, so RemoteLLM shows this window instead. "
    "On GNOME, install the AppIndicator and KStatusNotifierItem extension to get the tray "
    "icon. Closing this window keeps the connector running; use Quit to stop it."
)


class MainWindow(QWidget):
    """Status line, reason, and buttons bound to the tray menu's own actions."""

    def __init__(self, actions: list[QAction], models_menu: QMenu, reason: str) -> None:
        super().__init__()
        self.setWindowTitle("RemoteLLM Connector")
        self.status = QLabel()
        self.status.setWordWrap(True)
        font = self.status.font()
        font.setBold(True)
        self.status.setFont(font)
        self.reason = QLabel(reason)
        self.reason.setWordWrap(True)
        self.notice = QLabel()  # the last notification: without a tray there is no bubble
        self.notice.setWordWrap(True)
        self.notice.hide()
        layout = QVBoxLayout(self)
        layout.addWidget(self.status)
        layout.addWidget(self.notice)
        layout.addWidget(self.reason)
        self.buttons: dict[str, QPushButton] = {}
        models = QToolButton()
        models.setText("Models…")
        models.setMenu(models_menu)
        models.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        layout.addWidget(models)
        for action in actions:
            button = QPushButton(action.text())
            button.setCheckable(action.isCheckable())
            button.clicked.connect(action.trigger)

            def sync(button: QPushButton = button, action: QAction = action) -> None:
                button.setText(action.text())
                button.setVisible(action.isVisible())
                button.setEnabled(action.isEnabled())
                button.setChecked(action.isChecked())

            action.changed.connect(sync)
            sync()
            self.buttons[action.text()] = button
            layout.addWidget(button)
        self.resize(420, 300)

    def set_status(self, text: str) -> None:
        self.status.setText(text)

    def set_notice(self, text: str) -> None:
        self.notice.setText(text)
        self.notice.show()
