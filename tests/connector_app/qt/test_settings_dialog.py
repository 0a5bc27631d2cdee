"""The Settings dialog: inline validation, keyring + yaml saving, env overrides, Test connection."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
import yaml
from keyring.backends import fail
from pytestqt.qtbot import QtBot

from connector_app.core.profile import Profile, ProfileStore
from connector_app.core.secrets import KeyringStore
from connector_app.qt.settings_dialog import SettingsDialog
from tests.conftest import CONNECTOR_TOKEN
from tests.connector_app.core.test_profile import MemoryKeyring
from tests.connector_app.qt.conftest import QLoop, live_services, make_bridge, until

SAVE = "Save"


def dialog_for(qtbot: QtBot, store: ProfileStore) -> SettingsDialog:
    bridge = make_bridge(store, store.load())
    dialog = SettingsDialog(bridge)
    qtbot.addWidget(dialog)
    return dialog


def save_enabled(dialog: SettingsDialog) -> bool:
    return bool(dialog.buttons.button(dialog.buttons.StandardButton.Save).isEnabled())


def test_inline_validation_names_each_problem_and_blocks_save(
    qtbot: QtBot, store: ProfileStore
) -> None:
    dialog = dialog_for(qtbot, store)
    assert not save_enabled(dialog)
    assert "Required" in dialog.errors["broker_url"].text()
    assert "Required" in dialog.errors["broker_token"].text()

    dialog.broker_url.setText("ftp://broker.example")
    assert "wss://" in dialog.errors["broker_url"].text()
    dialog.broker_url.setText("ws://broker.example/relay")
    assert "only allowed to this machine" in dialog.errors["broker_url"].text()
    dialog.broker_url.setText("https://broker.example")
    assert dialog.errors["broker_url"].isHidden()

    dialog.llm_url.setText("localhost:11434")
    assert "http://" in dialog.errors["llm_url"].text()
    dialog.llm_url.setText("http://127.0.0.1:11434/v1")
    dialog.broker_token.setText("ct-token")
    assert save_enabled(dialog)


def test_saving_puts_secrets_in_the_keyring_and_the_rest_in_the_file(
    qloop: QLoop, qtbot: QtBot, store: ProfileStore, keyring_backend: MemoryKeyring
) -> None:
    dialog = dialog_for(qtbot, store)
    dialog.broker_url.setText("https://broker.example")
    dialog.broker_token.setText("ct-very-secret")
    dialog.llm_api_key.setText("llm-very-secret")
    dialog.max_concurrency.setValue(6)
    dialog.serve_on_launch.setChecked(False)
    dialog.set_models(["a", "b"], [])
    dialog.models.item(1).setCheckState(dialog.models.item(1).checkState().Unchecked)
    saved: list[object] = []
    dialog.saved.connect(saved.append)
    dialog.buttons.button(dialog.buttons.StandardButton.Save).click()
    assert not save_enabled(dialog)  # until the keyring and the file are written
    qloop.run(until(lambda: saved))
    text = store.path.read_text()
    assert "very-secret" not in text
    saved = yaml.safe_load(text)
    assert saved["broker_url"] == "https://broker.example"
    assert saved["max_concurrency"] == 6
    assert saved["serve_on_launch"] is False
    assert saved["disabled_models"] == ["b"]
    assert keyring_backend.store[("remotellm", "broker_token")] == "ct-very-secret"
    assert keyring_backend.store[("remotellm", "llm_api_key")] == "llm-very-secret"
    assert store.is_complete(store.load())
    assert not dialog.isVisible()


def test_environment_overrides_are_shown_read_only(
    qloop: QLoop, qtbot: QtBot, store: ProfileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REMOTELLM_CONNECTOR_BROKER_TOKEN", "from-env")
    monkeypatch.setenv("REMOTELLM_CONNECTOR_BROKER_URL", "wss://env.example")
    dialog = dialog_for(qtbot, store)
    assert not dialog.broker_token.isEnabled()
    assert "REMOTELLM_CONNECTOR_BROKER_TOKEN" in dialog.errors["broker_token"].text()
    assert save_enabled(dialog)  # the environment supplies what is missing
    qloop.run(dialog.commit(dialog.profile()))
    assert "env.example" not in store.path.read_text()
    assert dialog.bridge.broker_url == "wss://env.example/relay"


def test_without_a_keyring_the_dialog_says_so_and_keeps_secrets_for_the_session(
    qloop: QLoop, qtbot: QtBot, tmp_path: Path
) -> None:
    store = ProfileStore(tmp_path / "connector.yaml", KeyringStore(fail.Keyring()))
    dialog = dialog_for(qtbot, store)
    dialog.show()
    assert dialog.keyring_warning.isVisible()
    assert "PYTHON_KEYRING_BACKEND" in dialog.keyring_warning.text()
    dialog.broker_url.setText("wss://broker.example")
    dialog.broker_token.setText("ct-session-only")
    qloop.run(dialog.commit(dialog.profile()))
    assert dialog.isVisible()  # stays open to say what happened
    assert "this session only" in dialog.keyring_warning.text()
    assert dialog.bridge.is_complete()  # the bridge can serve with the in-memory secret
    assert "ct-session-only" not in store.path.read_text()


class ThreadKeyring(MemoryKeyring):
    """Records which thread writes: the keyring's IPC must not block the Qt thread."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[int] = []

    def set_password(self, service: str, username: str, password: str) -> None:
        self.threads.append(threading.get_ident())
        super().set_password(service, username, password)


def test_saving_writes_the_keyring_and_the_file_off_the_qt_thread(
    qloop: QLoop, qtbot: QtBot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = ThreadKeyring()
    store = ProfileStore(tmp_path / "connector.yaml", KeyringStore(backend))
    dialog = dialog_for(qtbot, store)
    dialog.broker_url.setText("wss://broker.example")
    dialog.broker_token.setText("ct-token")
    writers: list[int] = []
    real_save = store.save

    def save(profile: Profile, *, with_secrets: bool = True) -> None:
        writers.append(threading.get_ident())
        real_save(profile, with_secrets=with_secrets)

    monkeypatch.setattr(store, "save", save)
    qloop.run(dialog.commit(dialog.profile()))
    main = threading.get_ident()
    assert writers and main not in writers
    assert backend.threads and main not in backend.threads
    assert save_enabled(dialog)  # enabled again once done


def test_test_connection_reports_each_side_with_a_busy_indicator(
    qloop: QLoop, qtbot: QtBot, store: ProfileStore
) -> None:
    async def scenario() -> None:
        async with live_services() as (stub, broker):
            dialog = dialog_for(qtbot, store)
            dialog.llm_url.setText(stub.url)
            dialog.broker_url.setText(f"ws://127.0.0.1:{broker.port}/relay")
            dialog.broker_token.setText("wrong-token")
            dialog.show()
            dialog.test_button.click()
            await asyncio.sleep(0)  # the check has started and awaits the network
            assert dialog.busy.isVisible()
            assert not dialog.test_button.isEnabled()
            await until(lambda: not dialog.busy.isVisible())
            assert dialog.test_button.isEnabled()
            text = dialog.outcome.text()
            assert "✔ The local LLM server lists 1 model(s)." in text
            assert "✘ The broker rejected the connector token" in text
            assert dialog.model_states() == {"stub-model": True}

            dialog.broker_token.setText(CONNECTOR_TOKEN)
            local, remote = await dialog.test_connection()
            assert local.ok and remote.ok
            assert "✔ The broker accepted the connector token." in dialog.outcome.text()
            dialog.close()

    qloop.run(scenario())


def test_first_run_detects_a_local_server_and_prefills(
    qloop: QLoop, qtbot: QtBot, store: ProfileStore
) -> None:
    async def scenario() -> None:
        async with live_services() as (stub, _broker):
            port = int(stub.url.rsplit(":", 1)[1])
            dialog = dialog_for(qtbot, store)
            found = await dialog.detect(servers=(("vLLM", port),))
            assert found == ("vLLM", stub.url)
            assert dialog.llm_url.text() == stub.url
            assert dialog.model_states() == {"stub-model": True}
            assert f"Found vLLM at {stub.url}" in dialog.outcome.text()

    qloop.run(scenario())
