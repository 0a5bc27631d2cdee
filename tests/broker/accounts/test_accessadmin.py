"""`remotellm-broker connectors access`: show and set who may use a connector, and a running
broker applying what the command set."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp

from tests.broker.accounts.test_admin import admin, status_of
from tests.conftest import MakeBroker, MakeConnector, wait_models
from tests.stub_llm import StubLLM


async def test_show_and_set_each_rule(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for name in ("olga", "bob", "carol"):
        assert (await admin(data, "users", "create", name))[0] == 0
    code, _, _ = await admin(data, "connectors", "create", "gpu", "--owner", "olga")
    assert code == 0
    code, out, _ = await admin(data, "connectors", "access", "gpu")
    assert (code, out) == (
        0,
        "connector 'gpu' (owner olga) admits everyone signed in on this broker\n",
    )
    code, out, _ = await admin(data, "connectors", "access", "gpu", "--owner-only")
    assert (code, out) == (0, "connector 'gpu' (owner olga) now admits only its owner\n")
    code, out, _ = await admin(data, "connectors", "access", "gpu", "--users", "bob, carol,bob")
    assert out == "connector 'gpu' (owner olga) now admits its owner and the users bob, carol\n"
    code, out, _ = await admin(data, "connectors", "access", "gpu", "--groups", "org/gpu/, lab")
    assert out == (
        "connector 'gpu' (owner olga) now admits its owner and members of the GitLab groups"
        " org/gpu, lab\n"
    )
    code, out, _ = await admin(data, "connectors", "access", "gpu")
    assert "members of the GitLab groups org/gpu, lab" in out and "now" not in out
    code, out, _ = await admin(data, "connectors", "access", "gpu", "--everyone")
    assert out == "connector 'gpu' (owner olga) now admits everyone signed in on this broker\n"


async def test_access_errors_are_clear_and_change_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    await admin(data, "connectors", "create", "lab")
    code, _, err = await admin(data, "connectors", "access", "ghost", "--owner-only")
    assert code == 1 and "no live connector named 'ghost'" in err
    code, _, err = await admin(data, "connectors", "access", "lab", "--users", "nobody")
    assert code == 1 and "no user 'nobody'" in err
    code, _, err = await admin(data, "connectors", "access", "lab", "--groups", " , ")
    assert code == 1 and "at least one group" in err
    code, _, err = await admin(data, "connectors", "access", "lab", "--everyone", "--owner-only")
    assert code == 2 and "not allowed with" in err
    code, out, _ = await admin(data, "connectors", "access", "lab")
    assert out == "connector 'lab' (no owner) admits everyone signed in on this broker\n"


async def test_a_running_broker_applies_a_rule_the_command_set(
    stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    broker = await make_broker(data_dir=data, database_url=None, connector_token=[])
    await admin(data, "users", "create", "olga")
    _, out, _ = await admin(data, "connectors", "create", "gpu", "--owner", "olga")
    (token,) = re.findall(r"rlc-[0-9A-Za-z]{38}", out)
    await make_connector(broker, stub.url, broker_token=token)
    await wait_models(broker, {"stub-model"})
    await admin(data, "users", "create", "alice")
    _, out, _ = await admin(data, "keys", "create", "--user", "alice")
    (key,) = re.findall(r"sk-[0-9A-Za-z]{38}", out)
    async with aiohttp.ClientSession() as http:
        assert await status_of(http, broker, key) == 200
        assert (await admin(data, "connectors", "access", "gpu", "--owner-only"))[0] == 0
        # The broker reads the rules again every 5 s (REVOCATION_CHECK).
        async with asyncio.timeout(20):
            while await status_of(http, broker, key) != 403:
                await asyncio.sleep(0.2)
