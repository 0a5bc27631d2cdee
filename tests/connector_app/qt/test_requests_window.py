"""The Requests window follows the core's events, stays bounded, filters and copies ids."""

from __future__ import annotations

import asyncio
import sys

import aiohttp
from PySide6.QtCore import QItemSelectionModel, Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QTableView
from pytestqt.qtbot import QtBot

from connector_app.core.activity import Activity, RequestEvent, RequestFinished, RequestStarted
from connector_app.core.profile import ProfileStore
from connector_app.core.status import LinkState, Status
from connector_app.qt.icons import TrayState
from connector_app.qt.requests_window import COLUMNS, RequestsWindow
from connector_app.qt.tray import TrayApp
from tests.conftest import USER_KEY
from tests.connector_app.qt.conftest import (
    QLoop,
    complete_profile,
    live_services,
    make_bridge,
    until,
)
from tests.connector_app.qt.test_tray import autostart


def finished(i: int, model: str = "llama") -> RequestFinished:
    return RequestFinished(f"req-{i}", model, "/v1/chat/completions", 200, "ok", 0.25, 3, 4, 0.0)


def window_for(qtbot: QtBot, store: ProfileStore, limit: int = 500) -> RequestsWindow:
    bridge = make_bridge(store)
    bridge.activity = Activity(limit=limit, events_limit=3)
    window = RequestsWindow(bridge, clock=lambda: 100.0)
    qtbot.addWidget(window)
    return window


def cell(window: RequestsWindow, row: int, column: str) -> str:
    return str(window.proxy.index(row, COLUMNS.index(column)).data())


def test_rows_follow_request_events_newest_first_and_stay_bounded(
    qtbot: QtBot, store: ProfileStore
) -> None:
    window = window_for(qtbot, store, limit=5)
    for i in range(8):
        window.bridge.events.publish(finished(i))
    assert window.model.rowCount() == 5
    assert [cell(window, r, "Request ID") for r in range(5)] == [
        f"req-{i}" for i in (7, 6, 5, 4, 3)
    ]
    assert len(window.bridge.activity.recent) == 5
    assert cell(window, 0, "Status") == "200"
    assert cell(window, 0, "Duration") == "250 ms"
    assert cell(window, 0, "Tokens") == "3 → 4"


def test_in_flight_requests_show_model_and_age(qtbot: QtBot, store: ProfileStore) -> None:
    window = window_for(qtbot, store)
    assert window.in_flight_label.text() == "In flight now: none (GPU idle)"
    window.bridge.events.publish(RequestStarted("req-busy", "qwen", "/v1/chat/completions", 88.0))
    assert window.in_flight_label.text() == "In flight now: 1"
    model = window.in_flight_model
    row = [model.index(0, c).data() for c in range(4)]
    assert row == ["req-busy", "", "qwen", "12 s"]  # an older broker names no user
    window.bridge.events.publish(finished(0))
    window.bridge.events.publish(
        RequestFinished("req-busy", "qwen", "/v1/x", None, "failed", 1.0, None, None, 0.0)
    )
    assert window.in_flight_model.rowCount() == 0
    assert cell(window, 0, "Status") == "failed"
    assert cell(window, 0, "Tokens") == ""


def select_first(table: QTableView) -> None:
    table.selectionModel().select(
        table.model().index(0, 0),
        QItemSelectionModel.SelectionFlag.ClearAndSelect | QItemSelectionModel.SelectionFlag.Rows,
    )


def test_the_user_is_shown_and_blocked_from_a_right_click_on_either_table(
    qtbot: QtBot, store: ProfileStore, qloop: QLoop
) -> None:
    async def scenario() -> None:
        window = window_for(qtbot, store)
        bridge = window.bridge
        bridge.events.publish(
            RequestStarted("req-now", "qwen", "/v1/chat/completions", 90.0, "42", "Ada")
        )
        flight = window.in_flight_model
        assert flight.index(0, 1).data() == "Ada"
        assert flight.index(0, 1).data(Qt.ItemDataRole.ToolTipRole) == "user id 42"
        assert not window.block_in_flight.isEnabled()  # nothing selected yet
        select_first(window.in_flight)
        assert window.block_in_flight.text() == "Block Ada on this connector"
        assert window.block_in_flight in window.in_flight.actions()  # the right-click menu
        window.block_in_flight.trigger()
        assert bridge.blocked_users == {"42"}
        await until(lambda: not bridge._background)
        assert "42" in store.path.read_text()  # kept in connector.yaml
        assert store.load().values["blocked_users"] == ["42"]

        bridge.events.publish(
            RequestFinished("req-now", "qwen", "/v1/x", 200, "ok", 1.0, 1, 2, 0.0, "42", "Ada")
        )
        assert cell(window, 0, "User") == "Ada"
        select_first(window.table)
        assert window.block_recent.text() == "Unblock Ada on this connector"
        window.block_recent.trigger()
        assert bridge.blocked_users == frozenset()
        assert window.block_recent.text() == "Block Ada on this connector"
        await until(lambda: not bridge._background)
        assert "blocked_users" not in store.load().values

    qloop.run(scenario())


def test_filter_and_copy_request_id(qtbot: QtBot, store: ProfileStore) -> None:
    window = window_for(qtbot, store)
    window.bridge.events.publish(finished(1, "llama"))
    window.bridge.events.publish(finished(2, "qwen"))
    window.filter.setText("QWEN")
    assert window.proxy.rowCount() == 1
    assert cell(window, 0, "Request ID") == "req-2"
    window.table.selectionModel().select(
        window.proxy.index(0, 0),
        QItemSelectionModel.SelectionFlag.Select | QItemSelectionModel.SelectionFlag.Rows,
    )
    window.copy_button.click()
    assert QGuiApplication.clipboard().text() == "req-2"
    window.filter.clear()
    assert window.proxy.rowCount() == 2


def test_connection_events_are_logged_and_bounded(qtbot: QtBot, store: ProfileStore) -> None:
    window = window_for(qtbot, store)
    bridge = window.bridge
    states = [
        Status(state=LinkState.CONNECTING),
        Status(state=LinkState.CONNECTED, models=("a",)),
        Status(state=LinkState.RECONNECTING, models=("a",), last_error="lost", retry_in=1.5),
        Status(state=LinkState.CONNECTED, models=("a",)),
    ]
    for status in states:
        bridge._on_status(status)
    lines = window.events.toPlainText().splitlines()
    assert len(lines) == 3  # bounded to events_limit
    assert lines[-2].endswith("link dropped; reconnecting in 1.5 s: lost")
    assert lines[-1].endswith("connected to the broker")


def test_a_request_served_by_the_app_shows_in_the_requests_window(
    qloop: QLoop, qtbot: QtBot, store: ProfileStore
) -> None:
    """Integration: the core started from the Qt layer, a real broker, a stub LLM."""

    async def scenario() -> None:
        async with live_services() as (stub, broker):
            bridge = make_bridge(store, complete_profile(broker.port, stub.url))
            tray = TrayApp(bridge, autostart(store.path.parent), tray_available=lambda: True)
            window = tray.show_requests()
            tray.launch()
            await until(lambda: set(broker.hub.models()) == {"stub-model"})
            headers = {"Authorization": f"Bearer {USER_KEY}", "X-Request-ID": "req-through-tray"}
            body = {"model": "stub-model", "messages": [{"role": "user", "content": "Hi"}]}
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    f"{broker.base_url}/v1/chat/completions", json=body, headers=headers
                ) as resp,
            ):
                assert resp.status == 200
                assert (await resp.json())["choices"][0]["message"]["content"]
            await until(lambda: window.model.rowCount() == 1)
            assert cell(window, 0, "Request ID") == "req-through-tray"
            assert cell(window, 0, "Model") == "stub-model"
            assert cell(window, 0, "Status") == "200"
            assert cell(window, 0, "Tokens") == "3 → 4"
            assert "connected to the broker" in window.events.toPlainText()
            await tray.shutdown()
            assert not bridge.serving

    qloop.run(scenario())


def test_model_lookups_through_qt_do_not_leak_references_to_none(
    qtbot: QtBot, store: ProfileStore
) -> None:
    """PySide6 6.12.0 decremented None's refcount on every data() call returning None through
    C++, which crashed the app under load ("deallocating None"); this pins that down."""
    window = window_for(qtbot, store)
    window.bridge.events.publish(finished(1))
    index = window.proxy.index(0, 0)
    before = sys.getrefcount(None)
    for _ in range(5000):
        window.proxy.data(index, Qt.ItemDataRole.DecorationRole)
        window.proxy.headerData(0, Qt.Orientation.Vertical, Qt.ItemDataRole.DisplayRole)
    assert sys.getrefcount(None) >= before - 100


def test_the_window_stays_bounded_under_many_concurrent_streams(
    qloop: QLoop, qtbot: QtBot, store: ProfileStore
) -> None:
    """300 streamed requests through the app with the window open: 50 rows kept, none lost
    from the count, nothing left in flight, and the app still serving afterwards."""

    async def scenario() -> None:
        async with live_services() as (stub, broker):
            profile = complete_profile(broker.port, stub.url)
            profile.values["max_concurrency"] = 512
            bridge = make_bridge(store, profile)
            bridge.activity = Activity(limit=50)
            tray = TrayApp(bridge, autostart(store.path.parent), tray_available=lambda: True)
            window = tray.show_requests()
            seen: list[RequestEvent] = []
            bridge.request_event.connect(seen.append)
            tray.launch()
            await until(lambda: set(broker.hub.models()) == {"stub-model"})
            body = {"model": "stub-model", "stream": True, "x_stub": {"mode": "events"}}
            headers = {"Authorization": f"Bearer {USER_KEY}"}
            url = f"{broker.base_url}/v1/chat/completions"
            async with aiohttp.ClientSession() as session:

                async def one() -> int:
                    async with session.post(url, json=body, headers=headers) as resp:
                        await resp.read()
                        return resp.status

                statuses = await asyncio.gather(*(one() for _ in range(300)))
            assert statuses == [200] * 300
            await until(lambda: len(seen) == 600)  # a start and a finish for each
            assert window.model.rowCount() == 50
            assert len(bridge.activity.recent) == 50
            assert bridge.activity.in_flight == {}
            assert window.in_flight_model.rowCount() == 0
            assert tray.state is TrayState.CONNECTED
            await tray.shutdown()

    qloop.run(scenario(), timeout=120)


def test_the_age_timer_runs_only_while_the_window_is_shown(
    qtbot: QtBot, store: ProfileStore
) -> None:
    window = RequestsWindow(make_bridge(store))
    qtbot.addWidget(window)
    assert not window.ages.isActive()
    window.show()
    assert window.ages.isActive()
    window.hide()
    assert not window.ages.isActive()
