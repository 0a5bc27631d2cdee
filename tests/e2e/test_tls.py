"""The broker serving HTTPS/WSS itself, and a connector trusting a private CA."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp
import trustme

from connector_app.core.status import LinkState
from tests.conftest import MakeBroker, MakeConnector, wait_models
from tests.e2e.test_relay import AUTH, CHAT
from tests.stub_llm import StubLLM


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A throwaway CA-issued certificate for 127.0.0.1; returns (CA cert, chain+key file)."""
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    ca_file, chain = directory / "ca.pem", directory / "server.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server.private_key_and_cert_chain_pem.write_to_path(str(chain))
    return ca_file, chain


async def test_tls_end_to_end_with_a_private_ca(
    tmp_path: Path, stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector
) -> None:
    ca_file, chain = self_signed(tmp_path)
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


async def test_connector_refuses_an_untrusted_certificate_and_says_why(
    tmp_path: Path, stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector
) -> None:
    _, chain = self_signed(tmp_path)
    broker = await make_broker(tls_cert=chain, tls_key=chain)
    url = f"wss://127.0.0.1:{broker.port}/relay"
    connector = await make_connector(broker, stub.url, broker_url=url)
    await connector.wait_state(LinkState.RECONNECTING)
    assert "TLS" in (connector.connector.status.last_error or "")
    assert broker.hub.links == []
