"""Launch at login: a macOS LaunchAgent, a Linux XDG autostart entry, a systemd user unit.

Files are written under the given home directory and every command goes through an
injected runner, so tests check exactly what would be written and run.
"""

from __future__ import annotations

import os
import plistlib
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

LABEL: Final = "org.remotellm.connector"
UNIT: Final = "remotellm-connector.service"
DESKTOP: Final = "remotellm-connector.desktop"

Runner = Callable[[Sequence[str]], int]
"""Runs a command, returns its exit status."""


def run_command(argv: Sequence[str]) -> int:
    """The real runner: run quietly, report the exit status."""
    return subprocess.run(list(argv), capture_output=True, check=False).returncode


def connector_command() -> list[str]:
    """How to start this connector again: the console script if installed, else `python -m`."""
    script = shutil.which("remotellm-connector")
    if script:
        return [str(Path(script).resolve())]
    return [sys.executable, "-m", "connector_app.cli"]


class AutostartError(Exception):
    """Launch at login could not be changed; the message says why."""


@dataclass
class Autostart:
    """Enables, disables and reports launch at login for the tray app or headless mode."""

    home: Path
    platform: str = sys.platform
    runner: Runner = run_command
    command: Sequence[str] = ()
    uid: int = os.getuid() if hasattr(os, "getuid") else 0

    def _command(self, headless: bool) -> list[str]:
        base = list(self.command) or connector_command()
        return [*base, "--headless"] if headless else base

    def path(self, headless: bool) -> Path:
        """The file that means "enabled"."""
        if self.platform == "darwin":
            label = LABEL + (".headless" if headless else "")
            return self.home / "Library" / "LaunchAgents" / f"{label}.plist"
        if self.platform.startswith("linux"):
            config = self.home / ".config"
            if headless:
                return config / "systemd" / "user" / UNIT
            return config / "autostart" / DESKTOP
        raise AutostartError(f"launch at login is not supported on {self.platform} yet")

    def render(self, headless: bool) -> str:
        """The file's content."""
        command = self._command(headless)
        if self.platform == "darwin":
            label = LABEL + (".headless" if headless else "")
            logs = self.home / "Library" / "Logs" / "remotellm-connector.log"
            plist = {
                "Label": label,
                "ProgramArguments": command,
                "RunAtLoad": True,
                # Restart after a crash, not after the operator chose Quit (exit 0).
                "KeepAlive": {"SuccessfulExit": False},
                "ProcessType": "Interactive" if not headless else "Background",
                "StandardErrorPath": str(logs),
            }
            return plistlib.dumps(plist).decode()
        if headless:
            return (
                "[Unit]\n"
                "Description=RemoteLLM connector (headless)\n"
                "Wants=network-online.target\n"
                "After=network-online.target\n\n"
                "[Service]\n"
                "Type=exec\n"
                "EnvironmentFile=-%h/.config/remotellm/connector.env\n"
                f"ExecStart={shlex.join(command)}\n"
                "Restart=on-failure\n"
                "RestartSec=5\n"
                "TimeoutStopSec=40\n\n"
                "[Install]\n"
                "WantedBy=default.target\n"
            )
        return (
            "[Desktop Entry]\n"
            "Type=Application\n"
            "Name=RemoteLLM Connector\n"
            "Comment=Share this machine's LLM server through a RemoteLLM broker\n"
            f"Exec={shlex.join(command)}\n"
            "Icon=remotellm\n"
            "Terminal=false\n"
            "X-GNOME-Autostart-enabled=true\n"
            "X-GNOME-Autostart-Delay=5\n"
        )

    def is_enabled(self, headless: bool = False) -> bool:
        return self.path(headless).is_file()

    def enable(self, headless: bool = False) -> Path:
        """Write the file and tell the service manager; returns the file's path."""
        path = self.path(headless)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.render(headless))
        if self.platform == "darwin":
            domain = f"gui/{self.uid}"
            self.runner(["launchctl", "bootout", domain, str(path)])  # an older copy, if loaded
            self._must(["launchctl", "bootstrap", domain, str(path)])
        elif headless:
            self._must(["systemctl", "--user", "daemon-reload"])
            self._must(["systemctl", "--user", "enable", UNIT])
        return path

    def disable(self, headless: bool = False) -> Path:
        """Tell the service manager, then remove the file; returns the file's path."""
        path = self.path(headless)
        if self.platform == "darwin" and path.is_file():
            self.runner(["launchctl", "bootout", f"gui/{self.uid}", str(path)])
        elif headless and path.is_file():
            self.runner(["systemctl", "--user", "disable", UNIT])
        path.unlink(missing_ok=True)
        if headless and self.platform.startswith("linux"):
            self.runner(["systemctl", "--user", "daemon-reload"])
        return path

    def _must(self, argv: Sequence[str]) -> None:
        status = self.runner(argv)
        if status != 0:
            raise AutostartError(f"`{shlex.join(argv)}` failed with status {status}")
