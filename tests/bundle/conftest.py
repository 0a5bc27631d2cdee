"""The Linux bundle, built once per test run from this checkout and unpacked from its archive.

Every test here runs what users download: the `.tar.gz` that `packaging/build_bundle.py`
makes, unpacked into a fresh folder, started with an environment that has no Python on
PATH and no virtual environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import runpy
import subprocess
import sys
import tarfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.connector_app.qt.test_desktop import (
    display_ready,
    poll,
    process,
    require_tools,
    start_display,
    xdotool,
)

ROOT = Path(__file__).parents[2]
BUILD = ROOT / "packaging" / "build_bundle.py"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The first bundle test pays for the build (about 30 s, more on a loaded machine), which
    the default 120 s timeout would count against it."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.timeout(900))


@dataclass(frozen=True)
class Bundle:
    archive: Path
    folder: Path  # the unpacked top-level folder
    build_seconds: float
    build_output: str

    @property
    def exe(self) -> Path:
        return self.folder / "remotellm-connector"

    def env(self, home: Path, **extra: str) -> dict[str, str]:
        """A user's environment without Python: an empty PATH folder, HOME and XDG in `home`."""
        bare = home / "bin"
        bare.mkdir(parents=True, exist_ok=True)
        runtime = home / "run"
        runtime.mkdir(mode=0o700, exist_ok=True)
        return {
            "PATH": str(bare),
            "HOME": str(home),
            "TMPDIR": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_DATA_HOME": str(home / ".local" / "share"),
            "XDG_RUNTIME_DIR": str(runtime),
            "LANG": "C.UTF-8",
            **extra,
        }


FIGURES = pytest.StashKey[dict[str, str]]()


def figures(config: pytest.Config) -> dict[str, str]:
    """The bundle's size and start-up figures, printed at the end of the run (never asserted:
    the budgets are measured by `python -m bench.bundle`)."""
    return config.stash.setdefault(FIGURES, {})


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if found := config.stash.get(FIGURES, None):
        terminalreporter.section("connector bundle")
        for name, value in found.items():
            terminalreporter.write_line(f"{name}: {value}")


def build_and_unpack(work: Path, unpacked: Path) -> Bundle:
    """Build the bundle in `work` with the documented command, then unpack its archive into
    `unpacked` (what a user downloads and unpacks)."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(BUILD), "--dist", str(work / "dist"), "--work", str(work / "work")],
        capture_output=True,
        text=True,
        timeout=840,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    (archive,) = (work / "dist").glob("remotellm-connector-*-linux-*.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(unpacked, filter="tar")
    (folder,) = unpacked.iterdir()
    return Bundle(archive, folder, seconds, done.stdout)


@pytest.fixture(scope="session")
def bundle(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[Bundle]:
    """The bundle, built once per run and unpacked from its archive."""
    built = build_and_unpack(
        tmp_path_factory.mktemp("bundle-build"), tmp_path_factory.mktemp("bundle-unpacked")
    )
    size = runpy.run_path(str(BUILD))["tree_size"](built.folder)
    figures(pytestconfig).update(
        {
            "build": f"{built.build_seconds:.0f} s",
            "unpacked": f"{size / 1e6:.1f} MB (budget 100 MB)",
            "archive": f"{built.archive.stat().st_size / 1e6:.1f} MB (budget 45 MB)",
        }
    )
    yield built


TRAYER = ["trayer", "--edge", "top", "--align", "right", "--widthtype", "request",
          "--height", "32", "--SetDockType", "true"]  # fmt: skip


@contextlib.asynccontextmanager
async def desktop(work: Path) -> AsyncIterator[dict[str, str]]:
    """An X desktop (Xvfb) with a system tray (trayer); yields the environment to reach it
    (`DISPLAY`, and a PATH with xdotool for the test's hand). Both stop on the way out."""
    require_tools()
    xvfb, display = await start_display(work)
    env = {"PATH": "/usr/bin:/bin", "DISPLAY": display, "QT_QPA_PLATFORM": "xcb"}
    try:
        await poll(lambda: display_ready(env), f"the X server on {display}")
        async with process(TRAYER, env, work / "trayer.log"):

            async def tray_up() -> bool:
                return bool(await xdotool(env, "search", "--name", "^panel$"))

            await poll(tray_up, "trayer's panel")
            yield env
    finally:
        xvfb.terminate()
        await asyncio.wait_for(xvfb.wait(), 30)


def rss_mb(pid: int) -> float:
    """A running process's resident memory, in MB (MiB, as the kernel counts)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def mapped_files(pid: int) -> set[str]:
    """The files a running process has mapped: its libraries and extension modules."""
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {parts[5] for parts in (line.split(None, 5) for line in lines) if len(parts) == 6}
