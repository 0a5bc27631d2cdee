"""One instance per user: a second launch brings the first forward and gives up."""

from __future__ import annotations

import uuid

from pytestqt.qtbot import QtBot

from connector_app.qt.single_instance import SingleInstance, server_name


def test_a_second_instance_signals_the_first_and_steps_aside(qtbot: QtBot) -> None:
    name = f"remotellm-test-{uuid.uuid4().hex[:12]}"
    first = SingleInstance(name)
    assert first.acquire()
    second = SingleInstance(name)
    with qtbot.waitSignal(first.activated, timeout=10000):
        assert not second.acquire()
    first.release()
    third = SingleInstance(name)
    assert third.acquire()  # the name is free again once the first one is gone
    third.release()


def test_the_socket_name_is_per_user() -> None:
    assert server_name("alice") != server_name("bob")
    assert server_name("alice") == server_name("alice")
    assert server_name("a/b c").startswith("remotellm-connector-")
