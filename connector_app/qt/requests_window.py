"""The Requests window: recent requests, who is using the GPU now, connection events."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

from PySide6.QtCore import (
    QAbstractTableModel,
    QModelIndex,
    QPersistentModelIndex,
    QSortFilterProxyModel,
    Qt,
    QTimer,
)
from PySide6.QtGui import QAction, QGuiApplication, QHideEvent, QKeySequence, QShowEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from connector_app.core.activity import (
    Activity,
    LinkEvent,
    RequestEvent,
    RequestFinished,
    RequestStarted,
)
from connector_app.qt.bridge import Bridge

COLUMNS: Final = ("Time", "Request ID", "User", "Model", "Status", "Duration", "Tokens")
ID_COLUMN: Final = 1
USER_ID_ROLE: Final = Qt.ItemDataRole.UserRole
"""The role under which every cell of a row holds its user id (the blocking menu reads it)."""
USER_NAME_ROLE: Final = Qt.ItemDataRole.UserRole + 1

AnyIndex = QModelIndex | QPersistentModelIndex


def clock_time(at: float) -> str:
    return datetime.fromtimestamp(at).strftime("%H:%M:%S")


def tokens_text(event: RequestFinished) -> str:
    if event.prompt_tokens is None and event.completion_tokens is None:
        return ""
    return f"{event.prompt_tokens or 0} → {event.completion_tokens or 0}"


def duration_text(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.1f} ms" if ms < 10 else f"{ms:.0f} ms"


def user_text(event: RequestStarted | RequestFinished) -> str:
    """The user's display name, else their id; empty when the broker did not say."""
    return event.user_name or event.user_id


def user_data(event: RequestStarted | RequestFinished, role: int) -> Any:
    """The user cell's hover text (the id) and the id for the menu."""
    if role == Qt.ItemDataRole.ToolTipRole:
        return f"user id {event.user_id}" if event.user_id else None
    if role == USER_ID_ROLE:
        return event.user_id
    if role == USER_NAME_ROLE:
        return user_text(event)
    return None


def status_text(event: RequestFinished) -> str:
    if event.status is None:
        return event.outcome
    return str(event.status) if event.outcome == "ok" else f"{event.status} ({event.outcome})"


class RequestsModel(QAbstractTableModel):
    """Finished requests, newest first, at most `limit` rows."""

    def __init__(self, limit: int, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.limit = limit
        self.rows: list[RequestFinished] = []

    def rowCount(self, parent: AnyIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent: AnyIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return COLUMNS[section]
        return None

    def data(self, index: AnyIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        event = self.rows[index.row()]
        if role != Qt.ItemDataRole.DisplayRole:
            return user_data(event, role)
        return (
            clock_time(event.at),
            event.request_id,
            user_text(event),
            event.model,
            status_text(event),
            duration_text(event.duration),
            tokens_text(event),
        )[index.column()]

    def add(self, event: RequestFinished) -> None:
        self.beginInsertRows(QModelIndex(), 0, 0)
        self.rows.insert(0, event)
        self.endInsertRows()
        if len(self.rows) > self.limit:
            self.beginRemoveRows(QModelIndex(), self.limit, len(self.rows) - 1)
            del self.rows[self.limit :]
            self.endRemoveRows()


class InFlightModel(QAbstractTableModel):
    """Requests being served right now, oldest first, with their age."""

    HEADERS: Final = ("Request ID", "User", "Model", "Age")

    def __init__(self, clock: Callable[[], float], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.clock = clock
        self.rows: list[RequestStarted] = []

    def rowCount(self, parent: AnyIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent: AnyIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.HEADERS)

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return self.HEADERS[section]
        return None

    def data(self, index: AnyIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        event = self.rows[index.row()]
        if role != Qt.ItemDataRole.DisplayRole:
            return user_data(event, role)
        age = f"{max(0.0, self.clock() - event.at):.0f} s"
        return (event.request_id, user_text(event), event.model, age)[index.column()]

    def set_rows(self, rows: list[RequestStarted]) -> None:
        if rows == self.rows:
            # Only the ages moved on.
            if rows:
                last = self.index(len(rows) - 1, len(self.HEADERS) - 1)
                self.dataChanged.emit(self.index(0, len(self.HEADERS) - 1), last)
            return
        self.beginResetModel()
        self.rows = rows
        self.endResetModel()


class RequestsWindow(QWidget):
    """Live view of the connector's traffic; closing it only hides it."""

    def __init__(
        self, bridge: Bridge, clock: Callable[[], float] = time.time, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("RemoteLLM — Requests")
        self.resize(820, 560)
        self.bridge = bridge
        self.clock = clock
        activity: Activity = bridge.activity
        self.model = RequestsModel(activity.limit, self)
        for event in activity.recent:
            self.model.add(event)
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setFilterKeyColumn(-1)
        self.proxy.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)

        self._build_recent()
        self._build_in_flight()
        self.events = QPlainTextEdit(readOnly=True)
        self.events.setMaximumBlockCount(activity.events_limit)
        for link_event in activity.link_events:
            self.add_link_event(link_event)
        self._lay_out()

        bridge.request_event.connect(self.on_request)
        bridge.link_event.connect(self.add_link_event)
        self.ages = QTimer(self, interval=1000)
        self.ages.timeout.connect(self.refresh_in_flight)
        self.refresh_in_flight()

    def _build_recent(self) -> None:
        """The table of finished requests, its filter and its copy action."""
        self.filter = QLineEdit(placeholderText="Filter by request id, model or status")
        self.filter.setClearButtonEnabled(True)
        self.filter.textChanged.connect(self.proxy.setFilterFixedString)
        self.copy_button = QPushButton("Copy request id")
        self.copy_button.clicked.connect(self.copy_request_id)

        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().hide()
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(ID_COLUMN, QHeaderView.ResizeMode.Stretch)
        self.table.setContextMenuPolicy(Qt.ContextMenuPolicy.ActionsContextMenu)
        copy = QAction("Copy request id", self.table)
        copy.setShortcut(QKeySequence.StandardKey.Copy)
        copy.triggered.connect(self.copy_request_id)
        self.table.addAction(copy)
        self.block_recent = self._block_action(self.table)

    def _build_in_flight(self) -> None:
        """The table of requests being served right now."""
        self.in_flight_label = QLabel()
        self.in_flight_model = InFlightModel(self.clock, self)
        self.in_flight = QTableView()
        self.in_flight.setModel(self.in_flight_model)
        self.in_flight.verticalHeader().hide()
        flight_header = self.in_flight.horizontalHeader()
        flight_header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        flight_header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.in_flight.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.in_flight.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.in_flight.setContextMenuPolicy(Qt.ContextMenuPolicy.ActionsContextMenu)
        self.block_in_flight = self._block_action(self.in_flight)

    def _block_action(self, table: QTableView) -> QAction:
        """A right-click entry that blocks (or unblocks) the selected row's user; its text
        names them, and it is off for a row without one."""
        action = QAction("Block this user on this connector", table)
        action.setEnabled(False)
        action.triggered.connect(lambda: self.toggle_block(table))
        table.addAction(action)

        def name_it() -> None:
            user = self.selected_user(table)
            action.setEnabled(user is not None)
            if user is not None:
                verb = "Unblock" if user[0] in self.bridge.blocked_users else "Block"
                action.setText(f"{verb} {user[1]} on this connector")

        table.selectionModel().selectionChanged.connect(name_it)
        self.bridge.blocked_changed.connect(name_it)
        return action

    def selected_user(self, table: QTableView) -> tuple[str, str] | None:
        """The (id, shown name) of the selected row's user; None without one."""
        rows = table.selectionModel().selectedRows()
        if not rows:
            return None
        user_id = str(rows[0].data(USER_ID_ROLE) or "")
        return (user_id, str(rows[0].data(USER_NAME_ROLE))) if user_id else None

    def toggle_block(self, table: QTableView) -> None:
        """Block the selected row's user on this connector, or unblock a blocked one."""
        user = self.selected_user(table)
        if user is not None:
            self.bridge.set_user_blocked(user[0], user[0] not in self.bridge.blocked_users)

    def _lay_out(self) -> None:
        """Recent requests, requests in flight and connection events, one above the other."""
        top = QHBoxLayout()
        top.addWidget(self.filter)
        top.addWidget(self.copy_button)
        recent = QWidget()
        recent_layout = QVBoxLayout(recent)
        recent_layout.setContentsMargins(0, 0, 0, 0)
        recent_layout.addLayout(top)
        recent_layout.addWidget(self.table)
        now = QWidget()
        now_layout = QVBoxLayout(now)
        now_layout.setContentsMargins(0, 0, 0, 0)
        now_layout.addWidget(self.in_flight_label)
        now_layout.addWidget(self.in_flight)
        log = QWidget()
        log_layout = QVBoxLayout(log)
        log_layout.setContentsMargins(0, 0, 0, 0)
        log_layout.addWidget(QLabel("Connection events"))
        log_layout.addWidget(self.events)
        splitter = QSplitter(Qt.Orientation.Vertical)
        for part in (recent, now, log):
            splitter.addWidget(part)
        splitter.setSizes([300, 120, 120])
        layout = QVBoxLayout(self)
        layout.addWidget(splitter)

    # The ages only tick while someone can see them.
    def showEvent(self, event: QShowEvent) -> None:
        self.refresh_in_flight()
        self.ages.start()
        super().showEvent(event)

    def hideEvent(self, event: QHideEvent) -> None:
        self.ages.stop()
        super().hideEvent(event)

    def on_request(self, event: RequestEvent) -> None:
        if isinstance(event, RequestFinished):
            self.model.add(event)
        self.refresh_in_flight()

    def add_link_event(self, event: LinkEvent) -> None:
        self.events.appendPlainText(f"{clock_time(event.at)}  {event.text}")

    def refresh_in_flight(self) -> None:
        """Who is using the GPU right now: each request in flight, its model and age."""
        running = sorted(self.bridge.activity.in_flight.values(), key=lambda e: e.at)
        self.in_flight_label.setText(
            f"In flight now: {len(running)}" if running else "In flight now: none (GPU idle)"
        )
        self.in_flight_model.set_rows(running)

    def selected_request_id(self) -> str | None:
        rows = self.table.selectionModel().selectedRows(ID_COLUMN)
        if not rows:
            return None
        return str(self.proxy.data(rows[0]))

    def copy_request_id(self) -> None:
        request_id = self.selected_request_id()
        if request_id:
            QGuiApplication.clipboard().setText(request_id)
