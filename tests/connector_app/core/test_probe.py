""" "Test connection": each check says exactly what is wrong, against real servers on loopback."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from connector_app.core.probe import check_broker, check_local
from tests.conftest import CONNECTOR_TOKEN, MakeBroker
from tests.connector_app.core.wsserver import ConnectProxy
from tests.stub_llm import StubLLM
from tests.tlsca import use_system_store, write_private_ca


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_local_server_with_models(stub: StubLLM) -> None:
    check = await check_local(stub.url + "/v1", None)
    assert check.ok
    assert check.models == ("stub-model",)


async def test_local_server_without_models(stub: StubLLM) -> None:
    stub.models = []
    check = await check_local(stub.url, None)
    assert not check.ok
    assert "lists no models" in check.message


async def test_local_server_unreachable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    check = await check_local(url, None)
    assert not check.ok
    assert check.message.startswith(f"Cannot reach the local LLM server at {url}")


async def test_local_url_that_is_not_a_url() -> None:
    check = await check_local("localhost:11434", None)
    assert not check.ok
    assert "http://" in check.message


async def test_broker_accepts_the_token(make_broker: MakeBroker) -> None:
    broker = await make_broker()
    check = await check_broker(f"ws://127.0.0.1:{broker.port}/relay", CONNECTOR_TOKEN)
    assert check.ok, check.message


async def test_broker_rejects_a_bad_token(make_broker: MakeBroker) -> None:
    broker = await make_broker()
    check = await check_broker(f"ws://127.0.0.1:{broker.port}/relay", "wrong-token")
    assert not check.ok
    assert "rejected the connector token" in check.message
    assert "wrong-token" not in check.message


async def test_broker_unreachable() -> None:
    check = await check_broker(f"ws://127.0.0.1:{free_port()}/relay", "t")
    assert not check.ok
    assert check.message.startswith("Cannot reach the broker")


async def test_broker_with_an_untrusted_certificate_is_a_tls_problem(
    tmp_path: Path, make_broker: MakeBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca_file, chain = write_private_ca(tmp_path)
    broker = await make_broker(tls_cert=chain, tls_key=chain)
    url = f"wss://127.0.0.1:{broker.port}/relay"
    use_system_store(monkeypatch, None)
    untrusted = await check_broker(url, CONNECTOR_TOKEN)
    assert not untrusted.ok
    assert untrusted.message.startswith("TLS problem: the broker's certificate is not trusted")
    trusted = await check_broker(url, CONNECTOR_TOKEN, ca_file=ca_file)
    assert trusted.ok, trusted.message
    use_system_store(monkeypatch, ca_file)
    in_the_store = await check_broker(url, CONNECTOR_TOKEN)
    assert in_the_store.ok, in_the_store.message


async def test_wss_to_a_plain_broker_is_a_tls_problem(make_broker: MakeBroker) -> None:
    broker = await make_broker()
    check = await check_broker(f"wss://127.0.0.1:{broker.port}/relay", CONNECTOR_TOKEN)
    assert not check.ok
    assert check.message.startswith("TLS problem")


async def test_local_server_failing_after_the_first_answer_is_a_failed_check() -> None:
    """The model list answers once, then the server fails: a result, not an exception."""
    from aiohttp import web

    calls: list[str] = []

    async def models(request: web.Request) -> web.Response:
        calls.append(request.path)
        if len(calls) == 1:
            return web.json_response({"data": [{"id": "m"}]})
        return web.Response(status=500)

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_get("/api/tags", models)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        check = await check_local(url, None)
    finally:
        await runner.cleanup()
    assert not check.ok
    assert len(calls) > 1
    assert url in check.message


async def test_broker_through_the_environments_proxy(
    make_broker: MakeBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = await make_broker()
    proxy = ConnectProxy()
    await proxy.start()
    try:
        monkeypatch.setenv("http_proxy", proxy.url)
        check = await check_broker(f"ws://127.0.0.1:{broker.port}/relay", CONNECTOR_TOKEN)
        assert check.ok, check.message
        assert len(proxy.requests) == 1
        proxy.status = 403
        refused = await check_broker(f"ws://127.0.0.1:{broker.port}/relay", CONNECTOR_TOKEN)
    finally:
        await proxy.stop()
    assert not refused.ok
    assert refused.message.startswith("Cannot reach the broker through the proxy")
    assert "HTTP 403" in refused.message
