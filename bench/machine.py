"""What a run measured on: the machine, the code (commit and uncommitted files), and a
yardstick of the host's Python speed for comparing runs made on different days."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp


def source() -> dict[str, Any]:
    """Which code was measured: the commit, and the files changed on top of it."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.rstrip()  # keep the leading space of a porcelain status line

    changed = [
        line[3:]
        for line in git("status", "--porcelain").splitlines()
        if not line[3:].startswith("bench/")
    ]
    return {"commit": git("rev-parse", "--short", "HEAD").strip(), "uncommitted_changes": changed}


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        memory = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "memory_mib": memory,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "aiohttp": aiohttp.__version__,
        "websockets": importlib.metadata.version("websockets"),
        "event_loop": type(asyncio.get_running_loop()).__module__,
        "uvloop": _version("uvloop"),
    }


SPEED_LOOP = 1_000_000


def python_speed_ms() -> float:
    """Milliseconds this machine's Python takes for a fixed loop, best of five.

    A yardstick for runs made on different days: the host may run every process at
    half speed one day, which moves every absolute figure but no ratio within a run.
    """
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        total = 0
        for i in range(SPEED_LOOP):
            total += i & 7
        best = min(best, time.perf_counter() - start)
    return round(best * 1000, 1)
