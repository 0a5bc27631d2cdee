"""The broker's own socket code runs under both event loops it meets: asyncio's and uvloop's."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest

BOTH_LOOPS = (
    "test_listener.py",
    "test_socket.py",
    "test_deadline.py",
    "test_inbox.py",
    "test_handover.py",
)


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    factories: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
        "asyncio": asyncio.new_event_loop
    }
    if item.path.name in BOTH_LOOPS:
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
            pass
        else:
            factories["uvloop"] = uvloop.new_event_loop
    return factories
