"""The service files in packaging/: systemd units and launchd plists start the installed
commands with flags those commands accept, restart after a crash (not after a clean stop)
within 10 s, and hold no secret."""

from __future__ import annotations

import argparse
import configparser
import os
import plistlib
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from broker.cli import build_parser as broker_parser
from broker.settings import BrokerSettings
from connector_app.cli import build_parser as connector_parser
from connector_app.core.autostart import LABEL as TRAY_LABEL
from connector_app.core.settings import ConnectorSettings

PACKAGING = Path(__file__).parents[1] / "packaging"
UNITS = sorted((PACKAGING / "systemd").glob("*.service"))
PLISTS = sorted((PACKAGING / "launchd").glob("*.plist"))
HOME = "__HOME__"
"""The placeholder the user agent's paths start with (launchd expands neither ~ nor $HOME)."""

# Every key the units may use, per section: a misspelt key or section fails here even where
# systemd-analyze is missing (systemd itself only warns and ignores it).
UNIT_KEYS = {
    "Unit": {"Description", "Documentation", "After", "Wants"},
    "Service": {
        "Type",
        "DynamicUser",
        "StateDirectory",
        "StateDirectoryMode",
        "Environment",
        "EnvironmentFile",
        "ExecStart",
        "ExecStartPost",
        "KillSignal",
        "TimeoutStartSec",
        "TimeoutStopSec",
        "Restart",
        "RestartSec",
        "NoNewPrivileges",
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
    },
    "Install": {"WantedBy"},
}
SECRET_WORDS = ("TOKEN", "KEY", "SECRET", "PASSWORD")

# What each file starts: the entry point, the arguments before the flags, its parser, and
# the settings whose shutdown grace the stop timeout must outlast.
COMMANDS: dict[str, tuple[str, list[str], argparse.ArgumentParser, float]] = {
    "broker": (
        "remotellm-broker",
        ["serve"],
        broker_parser(),
        BrokerSettings.model_fields["shutdown_grace"].default,
    ),
    "connector": (
        "remotellm-connector",
        ["--headless"],
        connector_parser(),
        ConnectorSettings.model_fields["shutdown_grace"].default,
    ),
}


def which_command(name: str) -> str:
    return "broker" if "broker" in name else "connector"


def check_command(kind: str, argv: list[str]) -> None:
    """argv runs the installed entry point with flags it accepts and no secret on it."""
    script, head, parser, _ = COMMANDS[kind]
    assert Path(argv[0]).name == script
    assert argv[1 : 1 + len(head)] == head
    parser.allow_abbrev = False  # `--headles` would otherwise pass as `--headless`
    parser.parse_args(argv[1:])  # exits (SystemExit) on a misspelt flag
    for arg in argv[1:]:
        assert not any(word.lower() in arg.lower() for word in SECRET_WORDS), arg


def read_unit(path: Path) -> configparser.RawConfigParser:
    # strict: a repeated section or key is an error; no interpolation (systemd's % is its own).
    unit = configparser.RawConfigParser(strict=True, interpolation=None, delimiters=("=",))
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    unit.read_string(path.read_text(), source=str(path))
    return unit


def test_the_service_files_are_there() -> None:
    assert [p.name for p in UNITS] == ["remotellm-broker.service", "remotellm-connector.service"]
    assert [p.name for p in PLISTS] == [
        "org.remotellm.broker.plist",
        "org.remotellm.connector.headless.plist",
    ]
    assert not (PACKAGING / "__init__.py").exists()  # would shadow the `packaging` library


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_unit_uses_known_sections_and_keys(path: Path) -> None:
    unit = read_unit(path)
    assert set(unit.sections()) == set(UNIT_KEYS)
    for section in unit.sections():
        assert set(unit[section]) <= UNIT_KEYS[section], section


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_unit_starts_the_entry_point_and_restarts_on_a_crash_only(path: Path) -> None:
    service = read_unit(path)["Service"]
    kind = which_command(path.name)
    check_command(kind, shlex.split(service["ExecStart"]))
    assert service["Restart"] == "on-failure"  # not `always`: a clean stop stays stopped
    assert 0 < float(service["RestartSec"]) <= 10
    assert float(service["TimeoutStopSec"]) > COMMANDS[kind][3]
    assert service["KillSignal"] == "SIGTERM"


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_unit_reads_secrets_from_an_environment_file_only(path: Path) -> None:
    service = read_unit(path)["Service"]
    assert service["EnvironmentFile"].endswith(".env")
    names = [word.split("=")[0] for word in shlex.split(service.get("Environment", ""))]
    for name in names:
        assert not any(word in name for word in SECRET_WORDS), name


def load_plist(path: Path) -> dict[str, Any]:
    with path.open("rb") as file:
        return plistlib.load(file)  # type: ignore[no-any-return]


@pytest.mark.parametrize("path", PLISTS, ids=lambda p: p.name)
def test_plist_starts_the_entry_point_and_restarts_on_a_crash_only(path: Path) -> None:
    job = load_plist(path)
    kind = which_command(path.name)
    assert job["Label"] == path.stem
    check_command(kind, job["ProgramArguments"])
    assert job["RunAtLoad"] is True
    # Restart when the job exits non-zero or is killed by a signal, never after exit 0.
    assert job["KeepAlive"] == {"SuccessfulExit": False}
    assert 0 < job["ThrottleInterval"] <= 10
    assert job["ExitTimeOut"] > COMMANDS[kind][3]


def test_connector_agent_is_the_one_autostart_writes_for_headless_mode() -> None:
    job = load_plist(PACKAGING / "launchd" / "org.remotellm.connector.headless.plist")
    assert job["Label"] == TRAY_LABEL + ".headless"
    assert "UserName" not in job  # a user agent runs as its user
    assert job["ProgramArguments"][0] == f"{HOME}/.local/bin/remotellm-connector"
    for key in ("StandardOutPath", "StandardErrorPath"):
        assert job[key].startswith(f"{HOME}/Library/Logs/"), key


def test_broker_daemon_runs_unprivileged_and_logs_under_usr_local_var_log() -> None:
    job = load_plist(PACKAGING / "launchd" / "org.remotellm.broker.plist")
    assert job["UserName"] == job["GroupName"] == "_remotellm"
    assert job["ProgramArguments"][0] == "/usr/local/bin/remotellm-broker"
    assert job["Umask"] == 0o077  # the store and session secret are the user's alone
    for key in ("StandardOutPath", "StandardErrorPath"):
        assert job[key].startswith("/usr/local/var/log/remotellm/"), key


@pytest.mark.parametrize("path", PLISTS, ids=lambda p: p.name)
def test_plist_paths_are_absolute_and_hold_no_secret(path: Path) -> None:
    job = load_plist(path)
    paths = [
        job["ProgramArguments"][0],
        job["ProgramArguments"][job["ProgramArguments"].index("--config") + 1],
        job["StandardOutPath"],
        job["StandardErrorPath"],
    ]
    for value in paths:
        assert value.removeprefix(HOME).startswith("/"), value
    for name in job.get("EnvironmentVariables", {}):
        assert not any(word in name for word in SECRET_WORDS), name


def run_verify(unit: Path, user: bool, runtime: Path) -> str:
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}  # the user manager wants one
    scope = ["--user"] if user else []
    done = subprocess.run(
        ["systemd-analyze", *scope, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_systemd_analyze_verifies_the_unit(path: Path, tmp_path: Path) -> None:
    # verify refuses an ExecStart binary that does not exist, and the entry point is not
    # installed where the unit says: check a copy that runs /bin/true instead.
    argv0 = shlex.split(read_unit(path)["Service"]["ExecStart"])[0]
    unit = tmp_path / path.name
    unit.write_text(path.read_text().replace(argv0, "/bin/true"))
    output = run_verify(unit, user="connector" in path.name, runtime=tmp_path)
    # Unknown keys and sections are only warnings (status 0), naming the file.
    assert path.name not in output, output


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_systemd_analyze_warns_about_a_misspelt_key(tmp_path: Path) -> None:
    unit = tmp_path / "remotellm-typo.service"
    unit.write_text("[Service]\nExecStart=/bin/true\nRestrt=on-failure\n")
    assert unit.name in run_verify(unit, user=False, runtime=tmp_path)
