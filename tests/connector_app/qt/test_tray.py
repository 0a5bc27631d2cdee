"""The tray: state -> icon, tooltip and menu; menu actions drive the real core."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PySide6.QtCore import QCoreApplication, QEvent
from PySide6.QtWidgets import QSystemTrayIcon
from pytestqt.qtbot import QtBot

from connector_app.core.autostart import Autostart
from connector_app.core.profile import ProfileStore
from connector_app.core.status import LinkState, Status
from connector_app.qt.icons import TrayState, icon_for, status_line, tooltip, tray_state
from connector_app.qt.main_window import NO_TRAY_REASON
from connector_app.qt.tray import TrayApp
from tests.conftest import USER_KEY
from tests.connector_app.qt.conftest import (
    QLoop,
    complete_profile,
    live_services,
    make_bridge,
    until,
)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str]) -> int:
        self.calls.append(list(argv))
        return 0


def autostart(home: Path, runner: Recorder | None = None) -> Autostart:
    return Autostart(home, platform="linux", runner=runner or Recorder(), command=["rllm"])


@pytest.mark.parametrize(
    ("serving", "status", "problem", "expected"),
    [
        (False, Status(), None, TrayState.STOPPED),
        (False, Status(), "the settings are incomplete", TrayState.ERROR),
        (True, Status(state=LinkState.DISCONNECTED), None, TrayState.CONNECTING),
        (True, Status(state=LinkState.CONNECTING), None, TrayState.CONNECTING),
        (True, Status(state=LinkState.CONNECTED), None, TrayState.CONNECTED),
        (True, Status(state=LinkState.RECONNECTING, retry_in=2.0), None, TrayState.RECONNECTING),
        (True, Status(state=LinkState.RECONNECTING, fatal=True), None, TrayState.ERROR),
    ],
)
def test_state_maps_to_one_of_the_tray_states(
    serving: bool, status: Status, problem: str | None, expected: TrayState
) -> None:
    assert tray_state(serving, status, problem) is expected


def test_paused_shows_while_connected_and_a_link_problem_shows_over_it() -> None:
    connected = Status(state=LinkState.CONNECTED, in_flight=1)
    assert tray_state(True, connected, None, paused=True) is TrayState.PAUSED
    assert (
        status_line(TrayState.PAUSED, connected)
        == "Sharing paused: no new requests; 1 still finishing"
    )
    reconnecting = Status(state=LinkState.RECONNECTING)
    assert tray_state(True, reconnecting, None, paused=True) is TrayState.RECONNECTING
    assert tray_state(False, Status(), None, paused=True) is TrayState.STOPPED


@pytest.mark.parametrize("state", list(TrayState))
@pytest.mark.parametrize("size", [16, 22, 32, 64])
def test_every_state_has_an_icon_that_renders_at_tray_sizes(
    qapp: object, state: TrayState, size: int
) -> None:
    image = icon_for(state).pixmap(size, size).toImage()
    assert (image.width(), image.height()) == (size, size)
    # Opaque in the middle (the badge), transparent in the very corner (rounded square).
    assert image.pixelColor(size // 2, size // 2).alpha() == 255
    assert image.pixelColor(0, 0).alpha() < 255


def test_tooltip_and_status_line_say_host_state_and_models() -> None:
    status = Status(state=LinkState.CONNECTED, models=("a", "b"), in_flight=1)
    text = tooltip(TrayState.CONNECTED, status, "wss://llm.example.com/relay")
    assert "llm.example.com" in text
    assert "2 models served" in text
    assert status_line(TrayState.CONNECTED, status) == "Connected, serving 2 model(s), 1 in flight"
    dropped = Status(state=LinkState.RECONNECTING, retry_in=4.0, last_error="link lost")
    assert status_line(TrayState.RECONNECTING, dropped) == "Reconnecting in 4 s: link lost"


def test_menu_actions_drive_the_real_core(
    qloop: QLoop, qtbot: QtBot, store: ProfileStore, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with live_services() as (stub, broker):
            stub.models = ["stub-model", "other-model"]
            bridge = make_bridge(store, complete_profile(broker.port, stub.url))
            tray = TrayApp(bridge, autostart(tmp_path), tray_available=lambda: True)
            tray.launch()  # complete settings + serve on launch: serving at once
            await until(lambda: tray.state is TrayState.CONNECTED)
            await until(lambda: set(broker.hub.models()) == {"stub-model", "other-model"})
            assert tray.tray.isVisible()
            assert tray.status_action.text() == "Connected, serving 2 model(s)"
            assert "127.0.0.1" in tray.tray.toolTip()
            assert "2 models served" in tray.tray.toolTip()
            assert tray.stop_action.isVisible() and not tray.start_action.isVisible()
            assert sorted(tray.model_actions) == ["other-model", "stub-model"]
            assert all(a.isChecked() for a in tray.model_actions.values())

            tray.model_actions["other-model"].trigger()  # switch a model off
            await until(lambda: set(broker.hub.models()) == {"stub-model"})
            # Remembered as disabled (written in a thread, off the Qt thread).
            await until(lambda: store.path.is_file() and "other-model" in store.path.read_text())
            assert not tray.model_actions["other-model"].isChecked()

            tray.stop_action.trigger()
            await until(lambda: tray.state is TrayState.STOPPED)
            await until(lambda: broker.hub.models() == [] or not broker.hub.models())
            assert tray.start_action.isVisible()
            assert tray.status_action.text() == "Stopped"

            tray.start_action.trigger()
            await until(lambda: tray.state is TrayState.CONNECTED)
            tray.quit_action.trigger()
            await until(lambda: tray.finished.is_set())
            assert not bridge.serving

    qloop.run(scenario())


def test_a_rejected_token_shows_the_error_state(
    qloop: QLoop, store: ProfileStore, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with live_services() as (stub, broker):
            profile = complete_profile(broker.port, stub.url)
            profile.secrets["broker_token"] = "not-the-token"
            bridge = make_bridge(store, profile)
            tray = TrayApp(bridge, autostart(tmp_path), tray_available=lambda: True)
            tray.launch()
            await until(lambda: tray.state is TrayState.ERROR)
            assert "rejected the connector token" in tray.status_action.text()
            await tray.shutdown()

    qloop.run(scenario())


def test_a_revoked_token_stops_serving_and_shows_why(
    qloop: QLoop, store: ProfileStore, tmp_path: Path
) -> None:
    """Revoked while connected (as My connectors does it): the link is shut out, the next dial
    is refused as revoked, and the app stops serving with the reason in its menu."""

    async def scenario() -> None:
        async with live_services() as (stub, broker):
            raw, token = await broker.services.store.create_connector_token("qt")
            profile = complete_profile(broker.port, stub.url)
            profile.secrets["broker_token"] = raw
            bridge = make_bridge(store, profile)
            tray = TrayApp(bridge, autostart(tmp_path), tray_available=lambda: True)
            tray.launch()
            await until(lambda: tray.state is TrayState.CONNECTED)
            assert await broker.services.store.revoke_connector_token(token.id)
            for link in list(broker.services.relay.links):
                link.shut_out("connector token revoked by alice")
            await until(lambda: not bridge.serving)
            assert tray.state is TrayState.ERROR
            assert "revoked this connector's token" in tray.status_action.text()
            assert tray.start_action.isVisible()
            await tray.shutdown()

    qloop.run(scenario())


def test_incomplete_settings_open_the_settings_dialog(
    qtbot: QtBot, store: ProfileStore, tmp_path: Path
) -> None:
    tray = TrayApp(make_bridge(store), autostart(tmp_path), tray_available=lambda: True)
    tray.launch()
    assert tray.settings_dialog is not None and tray.settings_dialog.isVisible()
    assert not tray.bridge.serving
    tray.start_action.trigger()  # still incomplete: says why, asks again
    assert tray.state is TrayState.ERROR
    assert "incomplete" in tray.status_action.text()
    tray.settings_dialog.close()


def test_launch_at_login_toggles_the_autostart_entry(
    qloop: QLoop, qtbot: QtBot, store: ProfileStore, tmp_path: Path
) -> None:
    tray = TrayApp(make_bridge(store), autostart(tmp_path), tray_available=lambda: True)
    entry = tmp_path / ".config" / "autostart" / "remotellm-connector.desktop"
    assert not tray.login_action.isChecked()
    tray.login_action.trigger()
    assert not tray.login_action.isEnabled()  # busy in a thread until the file is written
    qloop.run(until(tray.login_action.isEnabled))
    assert entry.is_file() and "Exec=rllm" in entry.read_text()
    assert tray.login_action.isChecked()
    tray.login_action.trigger()
    qloop.run(until(tray.login_action.isEnabled))
    assert not entry.exists()
    assert not tray.login_action.isChecked()


def test_launch_at_login_from_the_menu_never_starts_or_stops_a_macos_job(
    qloop: QLoop, qtbot: QtBot, store: ProfileStore, tmp_path: Path
) -> None:
    runner = Recorder()
    auto = Autostart(
        tmp_path,
        platform="darwin",
        runner=runner,
        command=["rllm"],
        uid=501,
        environ={"XPC_SERVICE_NAME": "org.remotellm.connector"},
    )
    tray = TrayApp(make_bridge(store), auto, tray_available=lambda: True)
    tray.login_action.trigger()
    qloop.run(until(tray.login_action.isEnabled))
    tray.login_action.trigger()
    qloop.run(until(tray.login_action.isEnabled))
    verbs = [call[1] for call in runner.calls]
    assert verbs == ["enable", "disable"]  # no bootstrap (second copy), no bootout (SIGTERM)


def test_without_a_tray_a_window_shows_the_same_status_and_actions(
    qtbot: QtBot, store: ProfileStore, tmp_path: Path
) -> None:
    tray = TrayApp(
        make_bridge(store), autostart(tmp_path), tray_available=lambda: False, tray_wait=1.0
    )
    tray.launch()
    assert tray.window is None  # not yet: a tray may still appear
    qtbot.waitUntil(lambda: tray.window is not None and tray.window.isVisible(), timeout=10000)
    window = tray.window
    assert window is not None
    assert window.reason.text() == NO_TRAY_REASON
    assert window.status.text() == tray.status_action.text()
    assert {"Start serving", "Requests…", "Settings…", "Launch at login", "Quit"} <= set(
        window.buttons
    )
    assert not tray.tray.isVisible()
    window.buttons["Requests…"].click()
    assert tray.requests_window is not None and tray.requests_window.isVisible()
    window.close()  # closing a window never quits
    assert not tray.finished.is_set()
    tray.requests_window.close()
    assert tray.settings_dialog is not None  # the settings are incomplete
    tray.settings_dialog.close()


def test_a_tray_that_appears_late_is_used_instead_of_the_window(
    qtbot: QtBot, store: ProfileStore, tmp_path: Path
) -> None:
    answers = iter([False, False, True])
    tray = TrayApp(
        make_bridge(store),
        autostart(tmp_path),
        tray_available=lambda: next(answers, True),
        tray_wait=10.0,
    )
    tray.bridge.profile.prefs.serve_on_launch = False
    tray.launch()
    qtbot.waitUntil(tray.tray.isVisible, timeout=10000)
    assert tray.window is None
    assert tray.settings_dialog is not None
    tray.settings_dialog.close()


def test_quit_drains_an_in_flight_request_before_disconnecting(
    qloop: QLoop, store: ProfileStore, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with live_services() as (stub, broker):
            bridge = make_bridge(store, complete_profile(broker.port, stub.url))
            tray = TrayApp(bridge, autostart(tmp_path), tray_available=lambda: True)
            tray.launch()
            await until(lambda: set(broker.hub.models()) == {"stub-model"})
            body = {
                "model": "stub-model",
                "stream": True,
                "x_stub": {"mode": "events", "events": 3, "gated": True},
            }

            async def request() -> tuple[int, bytes]:
                headers = {"Authorization": f"Bearer {USER_KEY}"}
                async with (
                    aiohttp.ClientSession() as session,
                    session.post(
                        f"{broker.base_url}/v1/chat/completions", json=body, headers=headers
                    ) as resp,
                ):
                    return resp.status, await resp.read()

            client = asyncio.ensure_future(request())
            await until(lambda: stub.written == [0])
            assert "1 in flight" in tray.status_action.text()
            tray.quit_action.trigger()
            await asyncio.sleep(0.2)  # give a wrong implementation the chance to cut it
            assert not tray.finished.is_set()
            assert bridge.serving
            stub.gate(0).set()
            stub.gate(1).set()
            status, streamed = await client
            assert status == 200
            assert streamed.endswith(b"data: [DONE]\n\n")  # the whole stream, not a cut one
            await until(lambda: tray.finished.is_set())
            assert not bridge.serving

    qloop.run(scenario())


def test_pause_sharing_finishes_the_running_request_and_takes_no_new_one(
    qloop: QLoop, store: ProfileStore, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with live_services() as (stub, broker):
            bridge = make_bridge(store, complete_profile(broker.port, stub.url))
            tray = TrayApp(bridge, autostart(tmp_path), tray_available=lambda: True)
            tray.launch()
            await until(lambda: tray.state is TrayState.CONNECTED)
            gated = {
                "model": "stub-model",
                "stream": True,
                "x_stub": {"mode": "events", "events": 3, "gated": True},
            }

            async def request(body: dict[str, Any]) -> tuple[int, bytes]:
                headers = {"Authorization": f"Bearer {USER_KEY}"}
                async with (
                    aiohttp.ClientSession() as session,
                    session.post(
                        f"{broker.base_url}/v1/chat/completions", json=body, headers=headers
                    ) as resp,
                ):
                    return resp.status, await resp.read()

            client = asyncio.ensure_future(request(gated))
            await until(lambda: stub.written == [0])
            assert tray.pause_action.isVisible() and tray.pause_action.text() == "Pause sharing"
            tray.pause_action.trigger()
            assert tray.state is TrayState.PAUSED
            assert tray.pause_action.text() == "Resume sharing"
            assert tray.status_action.text() == "Sharing paused: no new requests; 1 still finishing"
            status, _ = await request({"model": "stub-model"})  # no other connector: 503
            assert status == 503 and len(stub.seen) == 1
            stub.gate(0).set()
            stub.gate(1).set()
            status, streamed = await client
            assert status == 200 and streamed.endswith(b"data: [DONE]\n\n")
            tray.pause_action.trigger()
            assert tray.state is TrayState.CONNECTED
            status, _ = await request({"model": "stub-model"})
            assert status == 200
            await bridge.shutdown()

    qloop.run(scenario())


def test_the_application_never_quits_when_a_window_closes(qapp: object) -> None:
    from connector_app.qt.app import application

    app = application()
    assert app is qapp
    assert not app.quitOnLastWindowClosed()


def test_stop_during_a_settings_restart_keeps_serving_off(
    qloop: QLoop, store: ProfileStore, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with live_services() as (stub, broker):
            profile = complete_profile(broker.port, stub.url)
            bridge = make_bridge(store, profile)
            tray = TrayApp(bridge, autostart(tmp_path), tray_available=lambda: True)
            tray.launch()
            await until(lambda: tray.state is TrayState.CONNECTED)
            changed = profile.copy()
            changed.values["max_concurrency"] = 2  # a link setting: a restart
            await bridge.apply(changed)
            tray.stop_action.trigger()  # while the restart drains
            await until(lambda: not bridge._background)
            assert not bridge.serving
            assert tray.state is TrayState.STOPPED
            await tray.shutdown()

    qloop.run(scenario())


def test_quit_during_a_settings_restart_leaves_no_connector_behind(
    qloop: QLoop, store: ProfileStore, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with live_services() as (stub, broker):
            profile = complete_profile(broker.port, stub.url)
            bridge = make_bridge(store, profile)
            tray = TrayApp(bridge, autostart(tmp_path), tray_available=lambda: True)
            tray.launch()
            await until(lambda: tray.state is TrayState.CONNECTED)
            changed = profile.copy()
            changed.values["max_concurrency"] = 2
            await bridge.apply(changed)
            tray.quit_action.trigger()
            await until(lambda: tray.finished.is_set())
            await until(lambda: not bridge._background)
            assert not bridge.serving
            assert bridge.connector is None
            assert not bridge.start()  # after Quit nothing serves again

    qloop.run(scenario())


def test_saving_only_tray_preferences_or_models_does_not_reconnect(
    qloop: QLoop, store: ProfileStore, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with live_services() as (stub, broker):
            stub.models = ["stub-model", "other-model"]
            profile = complete_profile(broker.port, stub.url)
            bridge = make_bridge(store, profile)
            assert bridge.start()
            await until(lambda: set(broker.hub.models()) == {"stub-model", "other-model"})
            connector = bridge.connector
            changed = profile.copy()
            changed.prefs.notifications = False
            changed.prefs.disabled_models = ["other-model"]
            assert await bridge.apply(changed) is None
            await until(lambda: set(broker.hub.models()) == {"stub-model"})
            assert bridge.connector is connector  # same link: no drain, no reconnect
            assert bridge.status.state is LinkState.CONNECTED
            assert not bridge._background

            moved = changed.copy()
            moved.values["max_concurrency"] = 3  # a link setting: this one reconnects
            await bridge.apply(moved)
            await until(lambda: bridge.connector not in (None, connector))
            await bridge.shutdown()

    qloop.run(scenario())


def test_a_connector_that_cannot_be_built_is_reported_not_fatal(
    qtbot: QtBot, store: ProfileStore, tmp_path: Path
) -> None:
    bad_ca = tmp_path / "ca.pem"
    bad_ca.write_text("not a certificate\n")
    profile = complete_profile(8443, "http://127.0.0.1:1")
    profile.values["broker_url"] = "wss://broker.example/relay"
    profile.values["ca_file"] = str(bad_ca)
    tray = TrayApp(make_bridge(store, profile), autostart(tmp_path), tray_available=lambda: True)
    tray.start_action.trigger()  # raised ssl.SSLError out of the slot before
    assert not tray.bridge.serving
    assert tray.state is TrayState.ERROR
    assert "cannot start" in tray.status_action.text()
    assert tray.settings_dialog is not None
    tray.settings_dialog.close()


def test_a_broken_config_file_opens_settings_with_the_error(
    qtbot: QtBot, store: ProfileStore, tmp_path: Path
) -> None:
    from connector_app.qt.app import load_profile

    store.path.parent.mkdir(parents=True)
    store.path.write_text("broker_url: [unclosed\n")
    profile, error = load_profile(store)
    assert error is not None and "not valid YAML" in error
    tray = TrayApp(
        make_bridge(store, profile),
        autostart(tmp_path),
        tray_available=lambda: True,
        config_error=error,
    )
    tray.launch()
    dialog = tray.settings_dialog
    assert dialog is not None and dialog.isVisible()
    assert dialog.problem.isVisible() and "not valid YAML" in dialog.problem.text()
    assert tray.state is TrayState.ERROR
    assert not tray.bridge.serving
    dialog.close()


def test_the_icon_and_tooltip_are_set_only_when_they_change(
    qtbot: QtBot, store: ProfileStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tray = TrayApp(make_bridge(store), autostart(tmp_path), tray_available=lambda: True)
    calls: list[str] = []
    monkeypatch.setattr(tray.tray, "setIcon", lambda icon: calls.append("icon"))
    monkeypatch.setattr(tray.tray, "setToolTip", lambda text: calls.append("tip"))
    for _ in range(5):
        tray.refresh()  # as on every request start and finish
    assert calls == []
    tray.bridge._set_problem("the settings are incomplete")
    assert calls == ["icon", "tip"]


def test_a_left_click_on_a_fatal_status_opens_settings(
    qtbot: QtBot, store: ProfileStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tray = TrayApp(make_bridge(store), autostart(tmp_path), tray_available=lambda: True)
    popped: list[object] = []
    monkeypatch.setattr(tray.menu, "popup", popped.append)
    monkeypatch.setattr(type(tray.bridge), "serving", property(lambda self: True))
    tray.bridge._on_status(Status(state=LinkState.RECONNECTING, fatal=True, last_error="401"))
    assert tray.state is TrayState.ERROR and tray.bridge.problem is None
    tray._on_activated(QSystemTrayIcon.ActivationReason.Trigger)
    assert tray.settings_dialog is not None and tray.settings_dialog.isVisible()
    assert popped == []
    tray.settings_dialog.close()


def test_without_a_tray_notifications_show_in_the_window(
    qtbot: QtBot, store: ProfileStore, tmp_path: Path
) -> None:
    tray = TrayApp(make_bridge(store), autostart(tmp_path), tray_available=lambda: False)
    window = tray.show_window()
    tray.notify("RemoteLLM link dropped", "cannot reach; reconnecting.")
    assert window.notice.isVisible()
    assert "link dropped" in window.notice.text()
    window.close()


def test_removed_model_entries_are_deleted(
    qtbot: QtBot, store: ProfileStore, tmp_path: Path
) -> None:
    tray = TrayApp(make_bridge(store), autostart(tmp_path), tray_available=lambda: True)
    tray._sync_models(Status(available=("a", "b")))
    old = tray.model_actions["a"]
    destroyed: list[object] = []
    old.destroyed.connect(lambda *_: destroyed.append(old))
    tray._sync_models(Status(available=("b",)))
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    assert destroyed
    assert list(tray.model_actions) == ["b"]


def test_a_model_switch_that_cannot_be_saved_still_applies(
    qloop: QLoop, store: ProfileStore, tmp_path: Path
) -> None:
    async def scenario() -> None:
        store.path.parent.mkdir(parents=True)
        store.path.mkdir()  # a directory where the file should be: the write fails
        bridge = make_bridge(store)
        bridge.set_model_enabled("m", False)
        await until(lambda: not bridge._background)
        assert bridge.profile.prefs.disabled_models == ["m"]

    qloop.run(scenario())
