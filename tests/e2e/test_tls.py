"""The broker serving HTTPS/WSS itself, and a connector trusting a private CA."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import aiohttp

from connector_app.core.status import LinkState
from tests.conftest import MakeBroker, MakeConnector, wait_models
from tests.e2e.test_relay import AUTH, CHAT
from tests.stub_llm import StubLLM


def self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_tls_end_to_end_with_a_private_ca(
    tmp_path: Path, stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector
) -> None:
    cert, key = self_signed(tmp_path)
    broker = await make_broker(tls_cert=cert, tls_key=key)
    assert broker.base_url.startswith("https://")
    url = f"wss://127.0.0.1:{broker.port}/relay"
    await make_connector(broker, stub.url, broker_url=url, ca_file=cert)
    await wait_models(broker, {"stub-model"})
    trust = ssl.create_default_context(cafile=str(cert))
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{broker.base_url}/v1/chat/completions", json=CHAT, headers=AUTH, ssl=trust
        ) as resp,
    ):
        assert resp.status == 200


async def test_connector_refuses_an_untrusted_certificate_and_says_why(
    tmp_path: Path, stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector
) -> None:
    cert, key = self_signed(tmp_path)
    broker = await make_broker(tls_cert=cert, tls_key=key)
    url = f"wss://127.0.0.1:{broker.port}/relay"
    connector = await make_connector(broker, stub.url, broker_url=url)
    await connector.wait_state(LinkState.RECONNECTING)
    assert "TLS" in (connector.connector.status.last_error or "")
    assert broker.hub.links == []
