"""Fixtures that run real brokers, connectors and a stub LLM on loopback, in-process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog
from pydantic import SecretStr

from broker.server import BrokerServer
from broker.settings import BrokerSettings
from connector_app.core.backoff import Backoff
from connector_app.core.connector import Connector
from connector_app.core.settings import ConnectorSettings
from connector_app.core.status import LinkState
from tests.redisserver import RedisServer
from tests.secretservice import SecretService, running_secret_service
from tests.stub_llm import StubLLM

USER_KEY = "sk-test-user-key-0123456789"
CONNECTOR_TOKEN = "test-connector-token-abcdef"
MEMORY_STORE = "sqlite+aiosqlite:///:memory:"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One throwaway Redis for the test run, started when a test first asks for it."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The test run's Redis, running and empty at the start of each test that asks."""
    import redis as redis_py

    if not redis_server.running:  # a test before may have stopped it
        redis_server.start()
    with redis_py.Redis.from_url(redis_server.url) as client:
        client.flushall()
    yield redis_server.url


@pytest.fixture(autouse=True)
def _logging_as_found() -> Iterator[None]:
    """Leave structlog configured as the test found it. A test that configures logging (to a
    StringIO of its own) must not leave the tests after it writing there, where the log lines
    they look for in their captured output never arrive; that only showed when the suites ran
    in another order (tests/shared before tests/broker)."""
    configured, saved = structlog.is_configured(), structlog.get_config()
    yield
    if configured:
        structlog.configure(**saved)
    else:
        structlog.reset_defaults()


def logged_events(text: str) -> list[dict[str, Any]]:
    """The JSON lines of a process's log output, parsed (other lines left out)."""
    events = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict):
                events.append(event)
    return events


def broker_settings(**overrides: Any) -> BrokerSettings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "user_api_key": [SecretStr(USER_KEY)],
        "connector_token": [SecretStr(CONNECTOR_TOKEN)],
        "connector_wait": 0.3,
        "queue_timeout": 0.3,
        "shutdown_grace": 5.0,
        "database_url": MEMORY_STORE,
        "session_secret": SecretStr("test-session-secret"),
    }
    values.update(overrides)
    return BrokerSettings(**values)


def connector_settings(broker_port: int, llm_url: str, **overrides: Any) -> ConnectorSettings:
    values: dict[str, Any] = {
        "broker_url": f"ws://127.0.0.1:{broker_port}/relay",
        "broker_token": SecretStr(CONNECTOR_TOKEN),
        "llm_url": llm_url,
        "name": "test-connector",
        "max_concurrency": 8,
        "model": [],
        "llm_api_key": None,
        "shutdown_grace": 5.0,
    }
    values.update(overrides)
    return ConnectorSettings(**values)


@dataclass
class RunningConnector:
    connector: Connector
    task: asyncio.Task[None]

    async def stop(self, grace: float = 5.0) -> None:
        if not self.task.done():
            await self.connector.stop(grace)
            # A test may have cancelled the task itself (a link dropped without a goodbye),
            # and it may still be unwinding: wait for it to end either way.
            await asyncio.wait([self.task], timeout=10)
            assert self.task.done(), "the connector did not stop within 10 s"
            if not self.task.cancelled():
                self.task.result()

    async def wait_state(self, state: LinkState, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while self.connector.status.state is not state:
                await asyncio.sleep(0.01)


async def wait_models(server: BrokerServer, expected: set[str], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while set(server.hub.models()) != expected:
            await asyncio.sleep(0.01)


@pytest.fixture(autouse=True, scope="session")
def _private_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No test (nor a process it starts) writes to the real per-user data directory."""
    saved = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = str(tmp_path_factory.mktemp("xdg-data"))
    yield
    if saved is None:
        os.environ.pop("XDG_DATA_HOME", None)
    else:
        os.environ["XDG_DATA_HOME"] = saved


@pytest.fixture
def secret_service(tmp_path: Path) -> Iterator[SecretService]:
    """A private D-Bus bus with an unlocked gnome-keyring-daemon, stopped after the test.
    Run a child with `secret_service.child_env()` to give it this keyring and no other."""
    root = tmp_path / "secret-service"
    root.mkdir()
    with running_secret_service(root) as service:
        yield service


@pytest.fixture
async def stub() -> AsyncIterator[StubLLM]:
    llm = StubLLM()
    await llm.start()
    yield llm
    # Release handlers parked on gates so the stub can stop.
    for gate in llm.gates.values():
        gate.set()
    await llm.stop()


MakeBroker = Callable[..., Awaitable[BrokerServer]]
MakeConnector = Callable[..., Awaitable[RunningConnector]]


@pytest.fixture
async def make_broker() -> AsyncIterator[MakeBroker]:
    servers: list[BrokerServer] = []

    async def make(**overrides: Any) -> BrokerServer:
        server = BrokerServer(broker_settings(**overrides))
        await server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        with contextlib.suppress(RuntimeError):
            await server.stop()


@pytest.fixture
async def make_connector() -> AsyncIterator[MakeConnector]:
    running: list[RunningConnector] = []

    async def make(broker: BrokerServer | int, llm_url: str, **overrides: Any) -> RunningConnector:
        port = broker if isinstance(broker, int) else broker.port
        connector = Connector(
            connector_settings(port, llm_url, **overrides), backoff=Backoff(base=0.05, cap=0.2)
        )
        item = RunningConnector(connector, asyncio.create_task(connector.run()))
        running.append(item)
        return item

    yield make
    for item in running:
        await item.stop(grace=1.0)


@dataclass
class Relay:
    stub: StubLLM
    broker: BrokerServer
    connector: RunningConnector

    @property
    def base_url(self) -> str:
        return f"{self.broker.base_url}/v1"


@pytest.fixture
async def relay(stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector) -> Relay:
    broker = await make_broker()
    connector = await make_connector(broker, stub.url)
    await wait_models(broker, {"stub-model"})
    return Relay(stub, broker, connector)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the tray app's Qt tests last.

    pytest-qt keeps one QApplication for the session and processes its pending events
    around every later test. Twice (once in each of two sessions) a segfault came from
    that processing in a network test run after the Qt tests (never inside one), from
    Qt state the closed qasync loops of those tests left behind. The app runs one loop
    for its whole life, so this is about test isolation; with the Qt tests last, no
    other test runs after that state exists. The order within each group is unchanged.
    """
    items.sort(key=lambda item: "tests/connector_app/qt/" in item.nodeid)
