"""Qt tests run on the offscreen platform, with the core on a qasync loop.

Async scenarios run inside `qloop.run_until_complete(...)`: the broker, the stub LLM
and the connector all live on the Qt event loop, exactly as in the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import qasync
from PySide6.QtWidgets import QApplication

from broker.server import BrokerServer
from connector_app.core.backoff import Backoff
from connector_app.core.profile import Profile, ProfileStore, TrayPrefs
from connector_app.core.secrets import KeyringStore
from connector_app.qt.bridge import Bridge
from tests.conftest import CONNECTOR_TOKEN, broker_settings
from tests.connector_app.core.test_profile import MemoryKeyring
from tests.stub_llm import StubLLM

# Set before any QApplication exists; the real-desktop test passes its own environment.
os.environ["QT_QPA_PLATFORM"] = "offscreen"

T = TypeVar("T")


class QLoop:
    """Runs coroutines on a qasync loop bound to the test's QApplication."""

    def __init__(self, app: QApplication) -> None:
        # As in the app: a window closing must not end the event loop under the test.
        app.setQuitOnLastWindowClosed(False)
        self.loop = qasync.QEventLoop(app)
        asyncio.set_event_loop(self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    def close(self) -> None:
        self.loop.close()
        asyncio.set_event_loop(None)


@pytest.fixture
def qloop(qapp: QApplication) -> Iterator[QLoop]:
    loop = QLoop(qapp)
    yield loop
    loop.close()


async def until(condition: Callable[[], object], timeout: float = 10.0) -> None:
    """Wait for a condition while the loop (and Qt) keep running."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


@pytest.fixture
def keyring_backend() -> MemoryKeyring:
    return MemoryKeyring()


@pytest.fixture
def store(tmp_path: Path, keyring_backend: MemoryKeyring) -> ProfileStore:
    return ProfileStore(tmp_path / "config" / "connector.yaml", KeyringStore(keyring_backend))


def complete_profile(broker_port: int, llm_url: str, **prefs: Any) -> Profile:
    return Profile(
        {"broker_url": f"ws://127.0.0.1:{broker_port}/relay", "llm_url": llm_url, "name": "qt"},
        TrayPrefs(**prefs),
        {"broker_token": CONNECTOR_TOKEN, "llm_api_key": None},
    )


def make_bridge(store: ProfileStore, profile: Profile | None = None) -> Bridge:
    return Bridge(store, profile or Profile(), backoff=Backoff(base=0.05, cap=0.2))


Scenario = Callable[[], Awaitable[None]]


@contextlib.asynccontextmanager
async def live_services() -> AsyncIterator[tuple[StubLLM, BrokerServer]]:
    """A stub LLM and a real broker on loopback, on the running (qasync) loop."""
    stub = StubLLM()
    await stub.start()
    broker = BrokerServer(broker_settings())
    await broker.start()
    try:
        yield stub, broker
    finally:
        for gate in stub.gates.values():
            gate.set()
        await broker.stop()
        await stub.stop()
