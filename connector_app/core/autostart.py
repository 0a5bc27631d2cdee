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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
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
    """How to start this connector again.

    A bundle (PyInstaller's one-folder build, or the executable inside RemoteLLM.app) is
    started as itself, never through a Python interpreter; an installed package by its
    console script; a source tree with `python -m`.
    """
    if getattr(sys, "frozen", False):
        return [sys.executable]
    script = shutil.which("remotellm-connector")
    if script:
        return [str(Path(script).resolve())]
    return [sys.executable, "-m", "connector_app.cli"]


# Characters that make the Desktop Entry spec require an argument to be quoted.
_DESKTOP_RESERVED: Final = frozenset(" \t\n\"'\\><~|&;$*?#()`")


def desktop_exec(argv: Sequence[str]) -> str:
    """A Desktop Entry `Exec=` value: double quotes only, `%` doubled, backslashes escaped.

    The spec applies the string escape (`\\` for a backslash) before its quoting rule, so a
    backslash inside a quoted argument is written as four.
    """
    parts = []
    for arg in argv:
        if arg and not _DESKTOP_RESERVED & set(arg):
            part = arg
        else:
            quoted = "".join("\\" + c if c in '"`$\\' else c for c in arg)
            part = f'"{quoted}"'
        parts.append(part.replace("\\", "\\\\").replace("%", "%%"))
    return " ".join(parts)


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
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    """Where XPC_SERVICE_NAME tells whether this process is the LaunchAgent's own job."""

    def _command(self, headless: bool) -> list[str]:
        base = list(self.command) or connector_command()
        return [*base, "--headless"] if headless else base

    def path(self, headless: bool) -> Path:
        """The file that means "enabled"."""
        if self.platform == "darwin":
            label = self._label(headless)
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
            label = self._label(headless)
            logs = self.home / "Library" / "Logs" / "remotellm-connector.log"
            plist = {
                "Label": label,
                "ProgramArguments": command,
                "RunAtLoad": True,
                # Restart after a crash, not after the operator chose Quit (exit 0).
                "KeepAlive": {"SuccessfulExit": False},
                # launchd's default of 20 s before SIGKILL would cut the 30 s drain short.
                "ExitTimeOut": 40,
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
            f"Exec={desktop_exec(command)}\n"
            "Icon=remotellm\n"
            "Terminal=false\n"
            "X-GNOME-Autostart-enabled=true\n"
            "X-GNOME-Autostart-Delay=5\n"
        )

    def is_enabled(self, headless: bool = False) -> bool:
        return self.path(headless).is_file()

    def _label(self, headless: bool) -> str:
        return LABEL + (".headless" if headless else "")

    def enable(self, headless: bool = False, *, start_now: bool = True) -> Path:
        """Write the file and tell the service manager; returns the file's path.

        On macOS, `start_now=False` (the running tray app's menu) only writes the agent and
        clears a `launchctl disable`, so launchd loads it at the next login: bootstrapping it
        would start a second copy at once (RunAtLoad). The command line bootstraps it now.
        """
        path = self.path(headless)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.render(headless))
        if self.platform == "darwin":
            domain = f"gui/{self.uid}"
            self._must(["launchctl", "enable", f"{domain}/{self._label(headless)}"])
            if start_now and not self._is_own_job(headless):
                self.runner(["launchctl", "bootout", domain, str(path)])  # an older copy
                self._must(["launchctl", "bootstrap", domain, str(path)])
        elif headless:
            self._must(["systemctl", "--user", "daemon-reload"])
            self._must(["systemctl", "--user", "enable", UNIT])
        return path

    def disable(self, headless: bool = False) -> Path:
        """Tell the service manager, then remove the file; returns the file's path.

        On macOS the job is disabled (not loaded at the next login) but only booted out when
        it is not the process doing this: bootout would SIGTERM the running app itself.
        """
        path = self.path(headless)
        if self.platform == "darwin":
            domain = f"gui/{self.uid}"
            if path.is_file() and not self._is_own_job(headless):
                self.runner(["launchctl", "bootout", domain, str(path)])
            self.runner(["launchctl", "disable", f"{domain}/{self._label(headless)}"])
        elif headless and path.is_file():
            self.runner(["systemctl", "--user", "disable", UNIT])
        path.unlink(missing_ok=True)
        if headless and self.platform.startswith("linux"):
            self.runner(["systemctl", "--user", "daemon-reload"])
        return path

    def _is_own_job(self, headless: bool) -> bool:
        """Whether this process runs as the LaunchAgent's job (launchd sets XPC_SERVICE_NAME)."""
        return self.environ.get("XPC_SERVICE_NAME") == self._label(headless)

    def _must(self, argv: Sequence[str]) -> None:
        status = self.runner(argv)
        if status != 0:
            raise AutostartError(f"`{shlex.join(argv)}` failed with status {status}")
