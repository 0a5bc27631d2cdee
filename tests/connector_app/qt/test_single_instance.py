"""One instance per user: a second launch brings the first forward and gives up."""

from __future__ import annotations

import uuid
from pathlib import Path

from PySide6.QtCore import QLockFile
from pytestqt.qtbot import QtBot

from connector_app.qt.single_instance import SingleInstance, server_name


def test_a_second_instance_signals_the_first_and_steps_aside(qtbot: QtBot, tmp_path: Path) -> None:
    name = f"remotellm-test-{uuid.uuid4().hex[:12]}"
    first = SingleInstance(name, directory=tmp_path)
    assert first.acquire()
    second = SingleInstance(name, directory=tmp_path)
    with qtbot.waitSignal(first.activated, timeout=10000):
        assert not second.acquire()
    first.release()
    third = SingleInstance(name, directory=tmp_path)
    assert third.acquire()  # the name is free again once the first one is gone
    third.release()


def test_the_socket_name_is_per_user() -> None:
    assert server_name("alice") != server_name("bob")
    assert server_name("alice") == server_name("alice")
    assert server_name("a/b c").startswith("remotellm-connector-")


def test_the_lock_file_decides_even_when_the_socket_cannot_listen(
    qtbot: QtBot, tmp_path: Path
) -> None:
    # A socket path in a directory that does not exist: listen fails, the app still runs.
    name = str(tmp_path / "missing" / "socket")
    first = SingleInstance(name, directory=tmp_path)
    first.lock = QLockFile(str(tmp_path / "app.lock"))
    assert first.acquire()  # no RuntimeError
    assert first.server is None
    second = SingleInstance(name, directory=tmp_path)
    second.lock = QLockFile(str(tmp_path / "app.lock"))
    assert not second.acquire(timeout_ms=100)  # the lock, not the socket, says who is first
    first.release()
    assert second.acquire(timeout_ms=100)
    second.release()


def test_the_lock_lives_in_the_given_private_directory(tmp_path: Path) -> None:
    instance = SingleInstance("remotellm-test-lock", directory=tmp_path)
    assert instance.acquire()
    assert (tmp_path / "remotellm-test-lock.lock").is_file()
    instance.release()
    assert not (tmp_path / "remotellm-test-lock.lock").exists()


def test_the_default_socket_is_in_the_private_directory(tmp_path: Path) -> None:
    instance = SingleInstance(directory=tmp_path)
    assert instance.name == str(tmp_path / server_name())
    assert instance.acquire()
    instance.release()
