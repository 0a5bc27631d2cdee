"""`remotellm-connector pair` end to end: a real broker and fake GitLab, a signed-in client
approving or denying, and the connector then linking with the token it stored."""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import re
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from pydantic import SecretStr

from broker.api.pairing import PAIRING
from connector_app.core.pairing import PairingFailed, Sleep, broker_base
from connector_app.core.secrets import MemoryStore
from connector_app.paircli import ENV_NAME, main, pair
from tests.broker.portal.test_portal import Portal, browser, csrf_of, make_portal
from tests.conftest import MakeBroker, MakeConnector, wait_models
from tests.fake_gitlab import FakeGitLab
from tests.stub_llm import StubLLM

NO_KEYRING = "keyring.backends.fail.Keyring"


@pytest.fixture
async def gitlab() -> AsyncIterator[FakeGitLab]:
    fake = FakeGitLab()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def portal(make_broker: MakeBroker, gitlab: FakeGitLab) -> Portal:
    return await make_portal(make_broker, gitlab, connector_token=[])


@pytest.fixture
def sleep(portal: Portal) -> Sleep:
    """The command's sleep: the broker's clock moves on by as much, and nothing sleeps."""
    clock = [1_000_000.0]
    portal.broker.app[PAIRING].clock = lambda: clock[0]

    async def passing(seconds: float) -> None:
        clock[0] += seconds
        await asyncio.sleep(0.01)

    return passing


async def decide_in_browser(portal: Portal, out: io.StringIO, decision: str) -> None:
    """Wait for the printed link, then sign in there and press the button."""
    async with asyncio.timeout(10):
        while not (found := re.search(r"Open (\S+)", out.getvalue())):
            await asyncio.sleep(0.01)
    async with browser() as session:
        async with session.get(found.group(1)) as response:
            page = await response.text()
        code = re.search(r"<code>([A-Z0-9]{4}-[A-Z0-9]{4})</code>", page)
        assert code, page
        form = {"csrf": csrf_of(page), "code": code.group(1), "decision": decision}
        async with session.post(portal.url + "/pair/decide", data=form) as response:
            assert response.status == 200


def arguments(portal: Portal, tmp_path: Path, to_file: bool = False) -> argparse.Namespace:
    return argparse.Namespace(
        broker_url=portal.url,
        name="gpu-box",
        ca_file=None,
        config=tmp_path / "connector.yaml",
        to_file=to_file,
        insecure=False,
    )


async def test_pair_stores_a_token_the_connector_then_links_with(
    portal: Portal, tmp_path: Path, sleep: Sleep, stub: StubLLM, make_connector: MakeConnector
) -> None:
    out, secrets = io.StringIO(), MemoryStore()
    command = asyncio.create_task(pair(arguments(portal, tmp_path), out, secrets, sleep))
    await decide_in_browser(portal, out, "approve")
    assert await command == 0
    token = secrets.get("broker_token")
    assert token is not None and token.startswith("rlc-")
    saved = yaml.safe_load((tmp_path / "connector.yaml").read_text())
    assert saved["broker_url"] == portal.url.replace("http", "ws") + "/relay"
    assert saved["name"] == "gpu-box"
    assert "Paired as" in out.getvalue()
    await make_connector(portal.broker, stub.url, broker_token=SecretStr(token))
    await wait_models(portal.broker, {"stub-model"})


async def test_pair_to_file_writes_an_env_file_only_the_user_reads(
    portal: Portal, tmp_path: Path, sleep: Sleep
) -> None:
    out = io.StringIO()
    command = asyncio.create_task(
        pair(arguments(portal, tmp_path, to_file=True), out, MemoryStore(), sleep)
    )
    await decide_in_browser(portal, out, "approve")
    assert await command == 0
    env = tmp_path / ENV_NAME
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    values = sourced(env)
    assert values["REMOTELLM_CONNECTOR_BROKER_TOKEN"].startswith("rlc-")
    assert values["REMOTELLM_CONNECTOR_BROKER_URL"].endswith("/relay")
    assert values["REMOTELLM_CONNECTOR_NAME"] == "gpu-box"


def sourced(env: Path) -> dict[str, str]:
    """The REMOTELLM_ variables a POSIX shell sees after `. env` (as a wrapper script would)."""
    script = 'set -a; . "$1"; env -0'
    shown = subprocess.run(
        ["sh", "-c", script, "sh", str(env)], capture_output=True, check=True, env={}
    ).stdout.decode()
    pairs = (item.partition("=") for item in shown.split("\0") if item)
    return {k: v for k, _, v in pairs if k.startswith("REMOTELLM_")}


async def test_a_denied_pairing_fails_in_words_and_stores_nothing(
    portal: Portal, tmp_path: Path, sleep: Sleep
) -> None:
    out, secrets = io.StringIO(), MemoryStore()
    command = asyncio.create_task(pair(arguments(portal, tmp_path), out, secrets, sleep))
    await decide_in_browser(portal, out, "deny")
    with pytest.raises(PairingFailed, match="denied in the browser"):
        await command
    assert secrets.values == {} and not (tmp_path / "connector.yaml").exists()


def test_broker_urls_as_people_type_them() -> None:
    assert broker_base("llm.example.com") == "https://llm.example.com"
    assert broker_base("wss://llm.example.com/relay") == "https://llm.example.com"
    assert broker_base("http://127.0.0.1:8080/") == "http://127.0.0.1:8080"
    with pytest.raises(ValueError):
        broker_base("ftp://x")


def test_an_unreachable_broker_exits_1_in_words(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]  # bound, never listening: connections are refused
        code = main(
            "remotellm-connector",
            ["--broker-url", f"http://127.0.0.1:{port}"],
            secrets=MemoryStore(),
        )
    assert code == 1
    assert "cannot reach the broker" in capsys.readouterr().err


async def test_ctrl_c_cancels_cleanly_and_stores_nothing(portal: Portal, tmp_path: Path) -> None:
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path), "PYTHON_KEYRING_BACKEND": NO_KEYRING}
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "connector_app.cli",
        "pair",
        "--broker-url",
        portal.url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert child.stdout is not None
        async with asyncio.timeout(30):
            line = await child.stdout.readline()
        assert line.startswith(b"Open " + portal.url.encode() + b"/pair?code=")
        child.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            _, err = await child.communicate()
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    assert child.returncode == 130
    assert b"cancelled; nothing was stored" in err and b"Traceback" not in err
    assert not (tmp_path / "remotellm").exists()  # no connector.yaml nor connector.env
