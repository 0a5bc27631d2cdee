"""`uv build --wheel` gives a wheel that installs in a clean environment and runs both commands."""

from __future__ import annotations

import os
import shutil
import subprocess
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
UV = shutil.which("uv")


def uv(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run uv offline: every package comes from its cache, never the network."""
    assert UV is not None
    full_env = {**os.environ, "UV_OFFLINE": "1", **(env or {})}
    full_env.pop("VIRTUAL_ENV", None)  # `uv run pytest` sets it; it would redirect uv sync
    done = subprocess.run([UV, *args], capture_output=True, text=True, timeout=300, env=full_env)
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.timeout(600)
def test_the_wheel_installs_and_runs_both_commands(tmp_path: Path) -> None:
    assert UV is not None, "uv is not on PATH"
    uv("build", "--wheel", "--out-dir", str(tmp_path / "dist"), str(ROOT))
    (wheel,) = (tmp_path / "dist").glob("remotellm-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        requires = archive.read(metadata).decode().splitlines()
    # `pip install 'remotellm[postgres]'` brings the PostgreSQL driver.
    assert "Provides-Extra: postgres" in requires
    assert any(
        r.startswith("Requires-Dist: asyncpg") and "extra == 'postgres'" in r for r in requires
    )
    # A fresh environment gets the lock file's dependencies from uv's cache (`uv sync` filled
    # it; an offline `uv pip install` would need the index pages, which the cache lacks), then
    # the wheel alone; `uv pip check` then proves the wheel's own requirements are met.
    venv = tmp_path / "venv"
    uv(
        "sync",
        "--project",
        str(ROOT),
        "--frozen",
        "--no-dev",
        "--no-install-project",
        env={"UV_PROJECT_ENVIRONMENT": str(venv)},
    )
    python = str(venv / "bin" / "python")
    uv("pip", "install", "--offline", "--no-deps", "--python", python, str(wheel))
    uv("pip", "check", "--python", python)
    for command in ("remotellm-broker", "remotellm-connector"):
        done = subprocess.run(
            [str(venv / "bin" / command), "--version"], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"{command} {version('remotellm')}"
