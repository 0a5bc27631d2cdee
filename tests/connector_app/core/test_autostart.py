"""Launch at login: the files written and the commands run, with a recording runner."""

from __future__ import annotations

import plistlib
from collections.abc import Sequence
from pathlib import Path

import pytest

from connector_app.core.autostart import Autostart, AutostartError

COMMAND = ["/opt/remotellm/bin/remotellm-connector"]


class Recorder:
    def __init__(self, status: int = 0) -> None:
        self.calls: list[list[str]] = []
        self.status = status

    def __call__(self, argv: Sequence[str]) -> int:
        self.calls.append(list(argv))
        return self.status


def make(tmp_path: Path, platform: str, runner: Recorder) -> Autostart:
    return Autostart(tmp_path, platform=platform, runner=runner, command=COMMAND, uid=501)


def test_macos_launch_agent_restarts_on_crash_only_and_is_bootstrapped(tmp_path: Path) -> None:
    runner = Recorder()
    auto = make(tmp_path, "darwin", runner)
    path = auto.enable()
    assert path == tmp_path / "Library/LaunchAgents/org.remotellm.connector.plist"
    plist = plistlib.loads(path.read_bytes())
    assert plist["ProgramArguments"] == COMMAND
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["RunAtLoad"] is True
    assert runner.calls[-1] == ["launchctl", "bootstrap", "gui/501", str(path)]
    assert auto.is_enabled()
    auto.disable()
    assert runner.calls[-1] == ["launchctl", "bootout", "gui/501", str(path)]
    assert not path.exists()
    assert not auto.is_enabled()


def test_macos_headless_agent_passes_the_flag(tmp_path: Path) -> None:
    auto = make(tmp_path, "darwin", Recorder())
    path = auto.enable(headless=True)
    assert path.name == "org.remotellm.connector.headless.plist"
    assert plistlib.loads(path.read_bytes())["ProgramArguments"] == [*COMMAND, "--headless"]


def test_linux_tray_uses_an_xdg_autostart_entry_and_runs_nothing(tmp_path: Path) -> None:
    runner = Recorder()
    auto = make(tmp_path, "linux", runner)
    path = auto.enable()
    assert path == tmp_path / ".config/autostart/remotellm-connector.desktop"
    text = path.read_text()
    assert "[Desktop Entry]" in text
    assert f"Exec={COMMAND[0]}\n" in text
    assert runner.calls == []
    auto.disable()
    assert not path.exists()


def test_linux_headless_uses_a_systemd_user_unit(tmp_path: Path) -> None:
    runner = Recorder()
    auto = make(tmp_path, "linux", runner)
    path = auto.enable(headless=True)
    assert path == tmp_path / ".config/systemd/user/remotellm-connector.service"
    text = path.read_text()
    assert f"ExecStart={COMMAND[0]} --headless\n" in text
    assert "Restart=on-failure" in text
    assert "EnvironmentFile=-%h/.config/remotellm/connector.env" in text
    assert runner.calls == [
        ["systemctl", "--user", "daemon-reload"],
        ["systemctl", "--user", "enable", "remotellm-connector.service"],
    ]
    runner.calls.clear()
    auto.disable(headless=True)
    assert runner.calls == [
        ["systemctl", "--user", "disable", "remotellm-connector.service"],
        ["systemctl", "--user", "daemon-reload"],
    ]
    assert not path.exists()


def test_a_failing_service_manager_is_reported(tmp_path: Path) -> None:
    auto = make(tmp_path, "linux", Recorder(status=1))
    with pytest.raises(AutostartError, match="systemctl --user daemon-reload"):
        auto.enable(headless=True)


def test_unsupported_platforms_say_so(tmp_path: Path) -> None:
    with pytest.raises(AutostartError, match="not supported on win32"):
        make(tmp_path, "win32", Recorder()).enable()
