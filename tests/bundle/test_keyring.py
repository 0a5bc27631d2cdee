"""The bundle finds the Secret Service: it stores the connector token in a real GNOME Keyring
and its tray app reads it back from there to connect.

keyring discovers its backends through entry points, which a frozen app loses unless the
build keeps the metadata; without them the bundle would fall back to "no keyring".
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from connector_app.core.secrets import NO_KEYRING_HELP
from tests.bundle.conftest import Bundle, desktop, figures, rss_mb
from tests.conftest import CONNECTOR_TOKEN, MakeBroker, wait_models
from tests.connector_app.qt.test_desktop import process
from tests.secretservice import SecretService
from tests.stub_llm import StubLLM


async def run(
    bundle: Bundle, env: dict[str, str], *args: str, stdin: bytes = b"", status: int = 0
) -> str:
    proc = await asyncio.create_subprocess_exec(
        str(bundle.exe),
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(stdin), 60)
    assert proc.returncode == status, out.decode()
    return out.decode()


async def test_without_any_keyring_the_bundle_says_so_in_the_plain_message(
    bundle: Bundle, tmp_path: Path
) -> None:
    # No D-Bus session (a server, a bare container): keyring finds no backend that works,
    # and the plain-text file backend the bundle also carries is never picked on its own.
    said = await run(bundle, bundle.env(tmp_path), "secrets", "status", status=1)
    assert NO_KEYRING_HELP in said
    said = await run(bundle, bundle.env(tmp_path), "secrets", "set", "broker-token",
                     stdin=b"some-token\n", status=1)  # fmt: skip
    assert NO_KEYRING_HELP in said and "some-token" not in said
    assert not list(tmp_path.rglob("*keyring*"))  # noqa: ASYNC240 (a few files, in a test)


async def test_the_bundle_stores_the_token_in_gnome_keyring_and_its_tray_app_reads_it_back(
    bundle: Bundle,
    tmp_path: Path,
    stub: StubLLM,
    make_broker: MakeBroker,
    secret_service: SecretService,
    pytestconfig: pytest.Config,
) -> None:
    env = {**bundle.env(tmp_path), **secret_service.env}
    said = await run(
        bundle, env, "secrets", "set", "broker-token", stdin=f"{CONNECTOR_TOKEN}\n".encode()
    )
    assert CONNECTOR_TOKEN not in said
    assert secret_service.lookup("broker_token") == CONNECTOR_TOKEN
    status = await run(bundle, env, "secrets", "status")
    assert "keyring: SecretService Keyring" in status
    assert "broker-token: stored" in status and CONNECTOR_TOKEN not in status

    broker = await make_broker()
    async with desktop(tmp_path) as screen:
        app_env = {
            **env,
            "DISPLAY": screen["DISPLAY"],
            "QT_QPA_PLATFORM": "xcb",
            # No token here: only the keyring has it.
            "REMOTELLM_CONNECTOR_BROKER_URL": f"ws://127.0.0.1:{broker.port}/relay",
            "REMOTELLM_CONNECTOR_LLM_URL": stub.url,
        }
        log = tmp_path / "app.log"
        started = time.monotonic()
        async with process([str(bundle.exe), "--log-format", "json"], app_env, log) as app:
            await wait_models(broker, {"stub-model"}, timeout=30)
            serving = time.monotonic() - started
            rss = rss_mb(app.pid)
            figures(pytestconfig).update(
                {
                    "tray app, launch to serving": f"{serving:.2f} s (budget 1.5 s)",
                    "tray app, resident memory when it began serving": f"{rss:.0f} MB",
                }
            )
            app.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(app.wait(), 30) == 0
        assert CONNECTOR_TOKEN not in log.read_text()
