"""Notifications: a drop and a recovery, rate-limited, switchable off."""

from __future__ import annotations

from connector_app.core.status import LinkState, Status
from connector_app.qt.notifier import Notifier

UP = Status(state=LinkState.CONNECTED)
DOWN = Status(state=LinkState.RECONNECTING, last_error="the connection was lost", retry_in=1.0)
RETRYING = Status(state=LinkState.RECONNECTING, last_error="cannot reach", retry_in=2.0)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_drop_and_recovery_notify_once_each() -> None:
    shown: list[tuple[str, str]] = []
    clock = Clock()
    notifier = Notifier(lambda t, m: shown.append((t, m)), min_interval=60, clock=clock)
    for status in (Status(state=LinkState.CONNECTING), UP):
        notifier.on_status(status)
    assert shown == []  # coming up the first time is not news
    notifier.on_status(DOWN)
    notifier.on_status(RETRYING)  # still down: no second notification
    assert shown == [("RemoteLLM link dropped", "the connection was lost; reconnecting.")]
    clock.now = 61
    notifier.on_status(UP)
    assert shown[-1] == ("RemoteLLM link restored", "Connected to the broker again.")
    assert len(shown) == 2


def test_flapping_is_rate_limited_but_a_shown_drop_always_gets_its_restore() -> None:
    shown: list[tuple[str, str]] = []
    clock = Clock()
    notifier = Notifier(lambda t, m: shown.append((t, m)), min_interval=60, clock=clock)
    notifier.on_status(UP)
    for second in range(10):
        clock.now = second
        notifier.on_status(DOWN)
        notifier.on_status(UP)
    # The first drop and its restore are shown; the flaps after them are not.
    assert [title for title, _ in shown] == ["RemoteLLM link dropped", "RemoteLLM link restored"]
    clock.now = 100
    notifier.on_status(DOWN)
    assert len(shown) == 3


def test_a_restore_within_the_interval_after_a_shown_drop_is_shown() -> None:
    shown: list[str] = []
    clock = Clock()
    notifier = Notifier(lambda t, m: shown.append(t), min_interval=60, clock=clock)
    notifier.on_status(UP)
    notifier.on_status(DOWN)
    clock.now = 5
    notifier.on_status(UP)  # the desktop must not keep saying "dropped"
    assert shown == ["RemoteLLM link dropped", "RemoteLLM link restored"]


def test_a_restore_whose_drop_was_suppressed_is_suppressed_too() -> None:
    shown: list[str] = []
    clock = Clock()
    notifier = Notifier(lambda t, m: shown.append(t), min_interval=60, clock=clock)
    notifier.on_status(UP)
    notifier.on_status(DOWN)
    notifier.on_status(UP)
    clock.now = 10
    notifier.on_status(DOWN)  # rate-limited away
    clock.now = 70
    notifier.on_status(UP)
    assert shown == ["RemoteLLM link dropped", "RemoteLLM link restored"]


def test_switched_off_shows_nothing() -> None:
    shown: list[tuple[str, str]] = []
    notifier = Notifier(lambda t, m: shown.append((t, m)), enabled=False)
    for status in (UP, DOWN, UP):
        notifier.on_status(status)
    assert shown == []
