"""The house rules that tools check: ruff (lint and format), mypy --strict and the hot path's
source rule, in every test run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench import compiled

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", "."],
        ["ruff", "format", "--check", "."],
        ["mypy"],
    ],
    ids=["ruff-check", "ruff-format", "mypy-strict"],
)
def test_tool_passes(command: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_no_hot_path_coroutine_awaits_in_a_finally_after_handling_an_exception() -> None:
    # Compiled to C (bench/README.md, "The compiled build"), such a coroutine raises the handled
    # exception again when the awaited call does not suspend; the suites catch it only where
    # they go, so the shape is forbidden in every module of the hot path (bench/build.py).
    assert compiled.awaits_in_finally_after_except() == []


def test_the_hot_path_rule_finds_an_await_in_a_finally_after_an_except(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text(
        "async def f(g):\n"
        "    try:\n        await g()\n    except OSError:\n        pass\n"
        "    finally:\n        await g()\n"
        "    try:\n        pass\n    finally:\n        await g()\n"  # no except: allowed
    )
    assert compiled.awaits_in_finally_after_except(tmp_path, ["m.py"]) == ["m.py:2"]
