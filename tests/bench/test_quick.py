"""The benchmark's quick mode runs end to end, as a smoke test (no speed is asserted here:
speed targets live in the benchmark's own report, see docs/performance.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


# The quick run with its three extra paths takes about a minute here; the suite's 120 s
# default would cut it short on a slow host before its own 240 s limit.
@pytest.mark.timeout(300)
def test_quick_benchmark_runs_and_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "quick.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--floor",
            "--bare",
            "--duties",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["mode"] == "quick"
    # The host's speed, before and after, for comparing runs made on different days.
    assert set(report["machine"]["python_loop_ms"]) == {"start", "end"}
    assert all(ms > 0 for ms in report["machine"]["python_loop_ms"].values())
    workloads = {row["workload"].split()[0] for row in report["rows"]}
    assert {"W1", "W3", "W6", "W8"} <= workloads
    # Correctness rows hold whatever the machine's speed: every event arrives, in order.
    for row in report["rows"]:
        if row["metric"] in ("delivered/offered", "out-of-order events"):
            assert row["passed"], row
    # The floor (two do-nothing forwarders), the bare relay (the wire protocol alone) and
    # the bare relay keeping the broker's books are measured beside the others, and the
    # bare relays deliver every event too.
    assert report["paths"] == ["direct", "remotellm", "floor", "bare", "duties"]
    w1 = next(row for row in report["rows"] if row["workload"] == "W1 1 KB")
    assert w1["floor"] is not None and w1["floor_added_vs_direct"] is not None
    assert w1["bare"] is not None and w1["bare_added_vs_direct"] is not None
    delivered = [row for row in report["rows"] if row["metric"] == "delivered/offered"]
    assert delivered and all(row["bare"] == row["duties"] == 1.0 for row in delivered)
    assert "| Workload |" in done.stdout and "| Floor |" in done.stdout
    assert "| Bare | Bare+duties |" in done.stdout
