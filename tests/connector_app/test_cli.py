"""`remotellm-connector` configuration errors and the TLS rule."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from connector_app.cli import main
from tests.conftest import logged_events

ROOT = Path(__file__).parents[2]

BASE = ["--headless", "--broker-token", "tok"]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "mentions"),
    [
        (["--headless", "--broker-token", "tok"], "broker_url"),
        (["--headless", "--broker-url", "wss://b.example/relay"], "broker_token"),
        ([*BASE, "--broker-url", "ws://broker.example/relay"], "wss://"),
        ([*BASE, "--broker-url", "ftp://broker.example"], "broker_url"),
        ([*BASE, "--broker-url", "wss://b.example", "--llm-url", "localhost:11434"], "llm_url"),
        ([*BASE, "--broker-url", "wss://b.example", "--max-concurrency", "0"], "max_concurrency"),
    ],
)
def test_bad_config_exits_2_with_one_clear_line(
    argv: list[str], mentions: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run(argv, capsys)
    assert code == 2
    assert mentions in err
    assert len(err.strip().splitlines()) == 1
    assert "tok" not in err.replace("broker_token", "")


def test_connection_flags_without_headless_point_to_settings_and_env(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, err = run(["--broker-url", "wss://b.example", "--broker-token", "secret-tok"], capsys)
    assert code == 2
    assert "--broker-url, --broker-token only apply with --headless" in err
    assert "REMOTELLM_CONNECTOR_" in err
    assert "secret-tok" not in err


def test_autostart_command_writes_and_removes_the_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    entry = tmp_path / ".config" / "autostart" / "remotellm-connector.desktop"
    assert main(["autostart", "status"]) == 0
    assert "launch at login disabled for the tray app" in capsys.readouterr().out
    assert main(["autostart", "enable"]) == 0
    assert entry.is_file()
    assert "Exec=" in entry.read_text()
    assert main(["autostart", "status"]) == 0
    assert "launch at login enabled for the tray app" in capsys.readouterr().out
    assert main(["autostart", "disable"]) == 0
    assert not entry.exists()


def test_demo_command_takes_its_token_from_the_environment_only(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("REMOTELLM_CONNECTOR_BROKER_TOKEN", raising=False)
    code, err = run(["demo", "--broker-url", "ws://127.0.0.1:1/relay"], capsys)
    assert code == 2
    assert "set REMOTELLM_CONNECTOR_BROKER_TOKEN" in err
    code, err = run(
        ["demo", "--broker-url", "ws://127.0.0.1:1/relay", "--broker-token", "t"], capsys
    )
    assert code == 2
    assert "unrecognized arguments: --broker-token" in err


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_no_flags_starts_the_tray_app_one_instance_per_user_and_a_signal_exits_0(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    """The real command: an incomplete configuration opens Settings; a second launch brings
    the first forward and exits 0; SIGTERM or SIGINT ends the first with status 0."""
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "TMPDIR": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_RUNTIME_DIR": str(tmp_path),
        "QT_QPA_PLATFORM": "offscreen",
        "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",
    }
    argv = [sys.executable, "-m", "connector_app.cli", "--log-format", "json"]
    log = tmp_path / "first.log"
    with log.open("wb") as out:
        first = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_for_line(log, "settings opened")
        second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert second.returncode == 0
        assert "already running" in second.stderr
        wait_for_line(log, "brought forward by a second launch")
        first.send_signal(stop_signal)
        assert first.wait(timeout=60) == 0
        assert "stopped" in [e["event"] for e in logged_events(log.read_text())]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()


def wait_for_line(log: Path, text: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert time.monotonic() < deadline, f"no {text!r} in {log.read_text()[-2000:]}"
        time.sleep(0.05)


def test_the_tray_app_without_a_display_says_so_and_exits_2(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")
    }
    env["HOME"] = str(tmp_path)  # whatever happens, no real config is touched
    result = subprocess.run(
        [sys.executable, "-m", "connector_app.cli"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2  # not -6 (SIGABRT from Qt)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "no display" in lines[0] and "--headless" in lines[0]


def test_block_user_is_repeatable_and_the_variable_comma_separated(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from connector_app.cli import build_parser
    from connector_app.core.settings import ConnectorSettings
    from shared.settings import load

    base = ["--broker-url", "ws://127.0.0.1:1", "--broker-token", "t"]
    args = build_parser().parse_args([*base, "--block-user", "42", "--block-user", "configured"])
    assert args.blocked_users == ["42", "configured"]
    cli = {k: v for k, v in vars(args).items() if k in ConnectorSettings.model_fields}
    assert load(ConnectorSettings, cli, None).blocked_users == ["42", "configured"]
    monkeypatch.setenv("REMOTELLM_CONNECTOR_BLOCKED_USERS", "7,8")
    args = build_parser().parse_args(base)
    cli = {k: v for k, v in vars(args).items() if k in ConnectorSettings.model_fields}
    assert load(ConnectorSettings, cli, None).blocked_users == ["7", "8"]
    config = tmp_path / "connector.yaml"
    config.write_text("blocked_users: [9, '10']\n")
    monkeypatch.delenv("REMOTELLM_CONNECTOR_BLOCKED_USERS")
    assert load(ConnectorSettings, cli, config).blocked_users == ["9", "10"]
