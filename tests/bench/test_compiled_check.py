"""The pieces of `python -m bench.compiled` that need no compiled build.

The command itself builds the compiled copy of the hot path and runs the suites on it (minutes),
so it stays out of the test run, which tests only what users receive; these check its arguments,
the child pytest it starts, and that its probe tells a compiled copy from the checkout.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench import compiled


def test_no_paths_run_the_hot_path_suites() -> None:
    assert compiled.parse([]) == list(compiled.SUITES)
    assert compiled.parse(["tests/e2e", "tests/shared/test_protocol.py::test_x"]) == [
        "tests/e2e",
        "tests/shared/test_protocol.py::test_x",
    ]


def test_a_path_that_does_not_exist_is_refused_before_anything_is_built(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        compiled.main(["tests/nowhere"])
    assert exited.value.code == 2
    assert "no such test path" in capsys.readouterr().err


def test_the_child_pytest_leaves_out_source_only_tests_and_the_checkout(tmp_path: Path) -> None:
    argv = compiled.suite_command(["tests/e2e"])
    assert argv[argv.index("not source_only and not compiled_crash") - 1] == "-m"
    assert argv[1] == "-P" and "--import-mode=append" in argv and argv[-1] == "tests/e2e"
    path = compiled.suite_env(tmp_path)["PYTHONPATH"].split(os.pathsep)
    assert path == [str(tmp_path), str(compiled.ROOT)]  # the copy before the checkout


def test_the_probe_reports_modules_that_did_not_come_from_the_copy(tmp_path: Path) -> None:
    # An empty folder as the copy: the processes import the checkout's sources, and it says so.
    wrong = compiled.not_loaded(tmp_path)
    assert len(wrong) == 4 and all(f.endswith(".py") for f in wrong), wrong
