"""The bundle's executable as the headless connector: version, serving, certificates."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from importlib.metadata import version
from pathlib import Path

import aiohttp
import pytest

from broker.server import BrokerServer
from tests.bundle.conftest import Bundle, mapped_files
from tests.conftest import CONNECTOR_TOKEN, MakeBroker, logged_events, wait_models
from tests.connector_app.qt.test_desktop import poll, process, read
from tests.e2e.test_relay import AUTH, CHAT
from tests.stub_llm import CHAT_BODY, SSE_DONE, StubLLM, sse_event
from tests.tlsca import system_store_env, write_private_ca


async def test_version_runs_without_python_on_path(bundle: Bundle, tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        str(bundle.exe), "--version", env=bundle.env(tmp_path), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0
    assert out.decode().strip() == f"remotellm-connector {version('remotellm')}"


@contextlib.asynccontextmanager
async def headless(
    bundle: Bundle, tmp_path: Path, broker_url: str, stub: StubLLM, *flags: str, **env: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, Path]]:
    argv = [str(bundle.exe), "--headless", "--broker-url", broker_url, "--broker-token",
            CONNECTOR_TOKEN, "--llm-url", stub.url, "--name", "bundle", "--log-format", "json",
            *flags]  # fmt: skip
    log = tmp_path / "connector.log"
    async with process(argv, bundle.env(tmp_path, **env), log) as proc:
        yield proc, log


async def post(url: str, body: dict[str, object], headers: dict[str, str]) -> bytes:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=body, headers=headers) as resp,
    ):
        assert resp.status == 200
        return await resp.read()


async def test_headless_serves_byte_identical_answers_from_the_bundle_alone(
    bundle: Bundle, tmp_path: Path, stub: StubLLM, make_broker: MakeBroker
) -> None:
    broker = await make_broker()
    url = f"ws://127.0.0.1:{broker.port}/relay"
    async with headless(bundle, tmp_path, url, stub) as (proc, log):
        await wait_models(broker, {"stub-model"}, timeout=30)
        relayed = await post(f"{broker.base_url}/v1/chat/completions", CHAT, AUTH)
        direct = await post(f"{stub.url}/v1/chat/completions", CHAT, {})
        assert relayed == direct == CHAT_BODY
        streamed = {**CHAT, "stream": True, "x_stub": {"mode": "events", "events": 6}}
        relayed = await post(f"{broker.base_url}/v1/chat/completions", streamed, AUTH)
        direct = await post(f"{stub.url}/v1/chat/completions", streamed, {})
        assert relayed == direct == b"".join(sse_event(i) for i in range(6)) + SSE_DONE
        # Everything it runs comes from the bundle: nothing from this test's Python.
        outside = {
            path
            for path in mapped_files(proc.pid)
            if path.startswith("/") and not path.startswith(str(bundle.folder))
        }
        assert not {p for p in outside if p.startswith((sys.prefix, sys.base_prefix))}
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    assert logged_events(read(log))[-1]["event"] == "stopped"


@pytest.mark.parametrize("trust", ["ca-file", "SSL_CERT_FILE", "nothing"])
async def test_a_private_ca_is_trusted_through_ca_file_or_the_system_store(
    bundle: Bundle, tmp_path: Path, stub: StubLLM, make_broker: MakeBroker, trust: str
) -> None:
    ca_file, chain = write_private_ca(tmp_path)
    broker: BrokerServer = await make_broker(tls_cert=chain, tls_key=chain)
    url = f"wss://127.0.0.1:{broker.port}/relay"
    flags = ["--ca-file", str(ca_file)] if trust == "ca-file" else []
    env = system_store_env(ca_file if trust == "SSL_CERT_FILE" else None, {})
    async with headless(bundle, tmp_path, url, stub, *flags, **env) as (_, log):
        if trust == "nothing":
            await poll(
                lambda: _logged(log, "certificate is not trusted"),
                "the connector to report the untrusted certificate",
            )
            await poll(lambda: _logged_twice(log, "certificate is not trusted"), "a second try")
            assert not broker.hub.models() and not broker.hub.links
        else:
            await wait_models(broker, {"stub-model"}, timeout=30)


async def _logged(log: Path, text: str) -> bool:
    return text in read(log)


async def _logged_twice(log: Path, text: str) -> bool:
    return read(log).count(text) >= 2


async def test_autostart_from_the_bundle_starts_the_bundle_itself(
    bundle: Bundle, tmp_path: Path
) -> None:
    env = bundle.env(tmp_path)

    async def autostart(*args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            str(bundle.exe), "autostart", *args, env=env, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0
        return out.decode()

    assert "enabled" in await autostart("enable")
    entry = tmp_path / ".config" / "autostart" / "remotellm-connector.desktop"
    exec_lines = [line for line in entry.read_text().splitlines() if line.startswith("Exec=")]
    assert exec_lines == [f"Exec={bundle.exe}"]
    assert "launch at login enabled" in await autostart("status")
    await autostart("disable")
    assert not entry.exists()
