"""The harness's child processes: what they inherit of its environment."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bench.procs import Children


def test_a_child_gets_the_environment_without_what_it_drops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The LiteLLM path drops DATABASE_URL this way, so a shell's database never reaches it.
    monkeypatch.setenv("DATABASE_URL", "postgresql://somewhere/db")
    monkeypatch.setenv("BENCH_KEPT", "kept")
    children = Children(tmp_path)
    show = "import os; e = os.environ; print(e.get('DATABASE_URL'), e['BENCH_KEPT'], e['X'])"
    child = children.start("env", [sys.executable, "-c", show], drop=("DATABASE_URL",), X="set")
    try:
        assert child.process.wait(timeout=30) == 0
    finally:
        children.stop_all()
    assert child.output().split() == ["None", "kept", "set"]
