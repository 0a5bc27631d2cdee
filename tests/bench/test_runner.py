"""The harness's command line refuses what it cannot measure, before starting anything."""

from __future__ import annotations

import pytest

from bench.runner import main


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--only", "W4"], "unknown workload(s) ['W4']"),
        (["--quick", "--only", "W1,W5"], "W5 not in the quick plan (W1, W3, W6, W8)"),
        (["--quick", "--only", "W7"], "W7 not in the quick plan"),
        (["--only", "W7", "--w7-connectors", "0"], "--w7-connectors must be at least 1"),
    ],
)
def test_a_workload_the_plan_cannot_run_is_refused_with_a_reason(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert says in capsys.readouterr().err
