"""The broker serving HTTPS/WSS itself, and a connector trusting a private CA.

The connector trusts it through `--ca-file`, or through the system's store when the CA is
in it (on Linux, the bundle `SSL_CERT_FILE` names), and refuses it otherwise.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from broker.server import BrokerServer
from connector_app.core.status import LinkState
from tests.conftest import MakeBroker, MakeConnector, RunningConnector, wait_models
from tests.e2e.test_relay import AUTH, CHAT
from tests.stub_llm import StubLLM
from tests.tlsca import use_system_store, write_private_ca


async def test_tls_end_to_end_with_a_private_ca(
    tmp_path: Path, stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector
) -> None:
    ca_file, chain = write_private_ca(tmp_path)
    broker = await make_broker(tls_cert=chain, tls_key=chain)
    assert broker.base_url.startswith("https://")
    url = f"wss://127.0.0.1:{broker.port}/relay"
    await make_connector(broker, stub.url, broker_url=url, ca_file=ca_file)
    await wait_models(broker, {"stub-model"})
    trust = ssl.create_default_context(cafile=str(ca_file))
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{broker.base_url}/v1/chat/completions", json=CHAT, headers=AUTH, ssl=trust
        ) as resp,
    ):
        assert resp.status == 200
    assert broker.express is not None and broker.express.served == 1  # TLS takes it too


SystemStoreLink = Callable[[bool], Awaitable[tuple[BrokerServer, RunningConnector]]]


@pytest.fixture
def through_the_system_store(
    tmp_path: Path,
    stub: StubLLM,
    make_broker: MakeBroker,
    make_connector: MakeConnector,
    monkeypatch: pytest.MonkeyPatch,
) -> SystemStoreLink:
    """Makes a broker with a private CA's certificate, and a connector without `ca_file` whose
    system store holds that CA (trusted) or only the distribution's CAs."""

    async def make(trusted: bool) -> tuple[BrokerServer, RunningConnector]:
        ca_file, chain = write_private_ca(tmp_path)
        use_system_store(monkeypatch, ca_file if trusted else None)
        broker = await make_broker(tls_cert=chain, tls_key=chain)
        url = f"wss://127.0.0.1:{broker.port}/relay"
        connector = await make_connector(broker, stub.url, broker_url=url)
        assert connector.connector.settings.ca_file is None
        return broker, connector

    return make


async def test_a_connector_trusts_a_ca_in_the_system_store(
    through_the_system_store: SystemStoreLink,
) -> None:
    broker, connector = await through_the_system_store(True)
    await wait_models(broker, {"stub-model"})
    await connector.wait_state(LinkState.CONNECTED)


async def test_connector_refuses_an_untrusted_certificate_and_says_why(
    through_the_system_store: SystemStoreLink,
) -> None:
    broker, connector = await through_the_system_store(False)
    await connector.wait_state(LinkState.RECONNECTING)
    error = connector.connector.status.last_error or ""
    assert "the broker's certificate is not trusted" in error
    assert "--ca-file" in error
    assert broker.hub.links == []
