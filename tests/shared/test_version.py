"""Both commands print the installed package's version (`shared.version`, one source of truth)."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

import pytest


@pytest.mark.parametrize(
    ("module", "command"),
    [("broker.cli", "remotellm-broker"), ("connector_app.cli", "remotellm-connector")],
)
def test_version_prints_the_installed_package_version(module: str, command: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{command} {version('remotellm')}"
