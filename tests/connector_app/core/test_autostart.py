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


def make(
    tmp_path: Path, platform: str, runner: Recorder, environ: dict[str, str] | None = None
) -> Autostart:
    return Autostart(
        tmp_path, platform=platform, runner=runner, command=COMMAND, uid=501, environ=environ or {}
    )


def test_macos_launch_agent_restarts_on_crash_only_and_is_bootstrapped(tmp_path: Path) -> None:
    runner = Recorder()
    auto = make(tmp_path, "darwin", runner)
    path = auto.enable()  # the command line: load it now
    assert path == tmp_path / "Library/LaunchAgents/org.remotellm.connector.plist"
    plist = plistlib.loads(path.read_bytes())
    assert plist["ProgramArguments"] == COMMAND
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["RunAtLoad"] is True
    assert runner.calls == [
        ["launchctl", "enable", "gui/501/org.remotellm.connector"],
        ["launchctl", "bootout", "gui/501", str(path)],
        ["launchctl", "bootstrap", "gui/501", str(path)],
    ]
    assert auto.is_enabled()
    runner.calls.clear()
    auto.disable()  # not run by launchd: unload it and keep it from loading at login
    assert runner.calls == [
        ["launchctl", "bootout", "gui/501", str(path)],
        ["launchctl", "disable", "gui/501/org.remotellm.connector"],
    ]
    assert not path.exists()
    assert not auto.is_enabled()


def test_macos_launch_agent_gives_launchd_time_to_drain(tmp_path: Path) -> None:
    path = make(tmp_path, "darwin", Recorder()).enable()
    # launchd's default is 20 s before SIGKILL, shorter than the 30 s shutdown grace.
    assert plistlib.loads(path.read_bytes())["ExitTimeOut"] == 40


def test_macos_enabling_from_the_running_app_starts_no_second_copy(tmp_path: Path) -> None:
    runner = Recorder()
    auto = make(tmp_path, "darwin", runner)
    path = auto.enable(start_now=False)
    assert path.is_file()
    # No bootstrap: with RunAtLoad it would start a second instance at once.
    assert runner.calls == [["launchctl", "enable", "gui/501/org.remotellm.connector"]]


def test_macos_disabling_from_the_launchd_job_itself_does_not_boot_it_out(
    tmp_path: Path,
) -> None:
    runner = Recorder()
    auto = make(tmp_path, "darwin", runner, {"XPC_SERVICE_NAME": "org.remotellm.connector"})
    path = auto.enable(start_now=False)
    runner.calls.clear()
    auto.disable()
    # bootout would SIGTERM this very process; disable keeps it from loading at next login.
    assert runner.calls == [["launchctl", "disable", "gui/501/org.remotellm.connector"]]
    assert not path.exists()


def test_desktop_exec_quotes_as_the_desktop_entry_spec_says(tmp_path: Path) -> None:
    command = ["/opt/My Apps/100%/remotellm-connector", "--flag", 'a"b$c\\d']
    auto = Autostart(tmp_path, platform="linux", runner=Recorder(), command=command)
    exec_line = next(
        line for line in auto.enable().read_text().splitlines() if line.startswith("Exec=")
    )
    # Double quotes only, % doubled, and a backslash written as four (string escape + quoting).
    assert exec_line == r'Exec="/opt/My Apps/100%%/remotellm-connector" --flag "a\\"b\\$c\\\\d"'
    assert "'" not in exec_line


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
