"""The admin commands against the store of a running broker.

Most run in-process through the CLI's own parser (fast); a few run as real processes
to prove the command line and a second process sharing the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import sys
from pathlib import Path

import aiohttp

from broker.accounts.admin import run as run_admin
from broker.cli import _settings_from, build_parser
from broker.server import BrokerServer
from tests.conftest import MakeBroker, MakeConnector, wait_models
from tests.stub_llm import StubLLM


async def admin(data_dir: Path, *args: str) -> tuple[int, str, str]:
    """`remotellm-broker ARGS --data-dir DATA_DIR`, in this process."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            parsed = build_parser().parse_args([*args, f"--data-dir={data_dir}"])
    except SystemExit as exc:
        return int(exc.code or 0), "", err.getvalue()
    code = await run_admin(parsed, _settings_from(parsed), out, err)
    return code, out.getvalue(), err.getvalue()


async def admin_process(data_dir: Path, *args: str) -> tuple[int, str, str]:
    """The same as a separate process."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "broker.cli",
        *args,
        f"--data-dir={data_dir}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def status_of(http: aiohttp.ClientSession, broker: BrokerServer, key: str) -> int:
    async with http.post(
        f"{broker.base_url}/v1/chat/completions",
        json={"model": "stub-model", "messages": []},
        headers={"Authorization": f"Bearer {key}"},
    ) as response:
        await response.read()
        return response.status


async def eventually(
    http: aiohttp.ClientSession, broker: BrokerServer, key: str, want: int
) -> None:
    async with asyncio.timeout(10):  # the broker's key cache holds an answer for 1 s
        while await status_of(http, broker, key) != want:
            await asyncio.sleep(0.1)


async def test_admin_commands_against_a_running_broker(
    stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    broker = await make_broker(data_dir=data, database_url=None, connector_token=[])

    code, out, _ = await admin_process(data, "connectors", "create", "gpu-box")
    assert code == 0
    (token,) = re.findall(r"rlc-[0-9A-Za-z]{38}", out)
    await make_connector(broker, stub.url, broker_token=token)
    await wait_models(broker, {"stub-model"})

    code, out, _ = await admin(data, "users", "create", "erin", "--name", "Erin")
    assert code == 0 and "erin" in out
    code, out, _ = await admin(data, "keys", "create", "--user", "erin", "--name", "cli")
    assert code == 0
    (key,) = re.findall(r"sk-[0-9A-Za-z]{38}", out)

    async with aiohttp.ClientSession() as http:
        assert await status_of(http, broker, key) == 200
        code, out, _ = await admin(data, "keys", "list")
        assert code == 0 and "erin" in out and "cli" in out and key not in out
        code, out, _ = await admin(data, "connectors", "list")
        assert "gpu-box" in out and token not in out
        code, _, _ = await admin(data, "connectors", "create", "erins-box", "--owner", "erin")
        code, out, _ = await admin(data, "connectors", "list")
        header, *rows = out.splitlines()
        assert "OWNER" in header.split()
        owners = {row.split()[1]: row.split()[2] for row in rows}
        assert owners == {"gpu-box": "-", "erins-box": "erin"}

        code, _, _ = await admin_process(data, "users", "block", "erin")
        assert code == 0
        await eventually(http, broker, key, 403)
        code, _, _ = await admin(data, "users", "unblock", "erin")
        await eventually(http, broker, key, 200)

        code, out, _ = await admin(data, "users", "set-limits", "erin", "--rpm", "1")
        assert code == 0 and "rpm 1" in out
        await eventually(http, broker, key, 429)
        code, out, _ = await admin(data, "users", "set-limits", "erin", "--models", "other")
        assert "models other" in out and "rpm 1" in out  # other limits are kept
        code, out, _ = await admin(data, "users", "list")
        assert re.search(r"erin\s+Erin\s+active\s+user\s+1\s+default\s+default\s+other", out)
        code, out, _ = await admin(data, "users", "set-limits", "erin", "--reset")
        assert code == 0
        await eventually(http, broker, key, 200)

        code, out, _ = await admin(data, "keys", "list", "--user", "erin")
        key_id = re.search(r"^(\d+)\s+erin", out, re.MULTILINE)
        assert key_id is not None
        code, _, _ = await admin(data, "keys", "revoke", key_id.group(1))
        assert code == 0
        await eventually(http, broker, key, 401)

    await broker.services.ledger.flush()
    code, out, _ = await admin(data, "usage", "--by", "model")
    assert code == 0
    row = re.search(r"^stub-model\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", out, re.MULTILINE)
    assert row is not None and int(row.group(1)) >= 4 and int(row.group(3)) >= 4 * 3
    code, out, _ = await admin(data, "usage", "--by", "user", "--since", "2000-01-01")
    assert "erin" in out
    code, out, _ = await admin(data, "usage", "--since", "2999-01-01")
    assert "erin" not in out

    code, out, _ = await admin(data, "users", "promote", "erin")
    assert code == 0 and "admin" in out


async def test_admin_errors_are_clear_and_change_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    code, _, err = await admin(data, "users", "block", "nobody")
    assert code == 1 and "no user 'nobody'" in err
    code, _, err = await admin(data, "keys", "create", "--user", "nobody")
    assert code == 1 and "no user" in err
    code, _, err = await admin(data, "usage", "--since", "last tuesday")
    assert code == 1 and "--since must be a date" in err
    code, _, err = await admin(data, "keys", "revoke", "42")
    assert code == 1 and "no live key" in err
    code, _, err = await admin(data, "connectors", "revoke", "ghost")
    assert code == 1 and "no live connector token" in err
    code, _, _ = await admin(data, "users", "create", "fay")
    code, _, err = await admin(data, "users", "create", "fay")
    assert code == 1 and "already exists" in err
    code, _, err = await admin(data, "users", "set-limits", "fay", "--rpm", "-3")
    assert code == 1 and "--rpm must be 0" in err
    code, out, _ = await admin(data, "users", "list")
    assert out.count("fay") == 1 and "-3" not in out
    code, _, err = await admin(data, "connectors", "create", "x" * 300)
    assert code == 1 and "1 to 255 characters" in err
    code, _, err = await admin(data, "connectors", "create", "7")
    assert code == 1 and "only digits" in err
    code, _, err = await admin(data, "users", "frobnicate")
    assert code == 2 and "invalid choice" in err
