"""bench.workers: both setups serve, every process is stopped, the table reads the results."""

from __future__ import annotations

from pathlib import Path

from bench.workers import Result, measure, table


async def test_one_broker_and_two_workers_both_serve_the_load(tmp_path: Path) -> None:
    results = await measure(seconds=0.5, concurrency=4, rounds=1, folder=tmp_path)
    assert [r.setup for r in results] == ["one", "workers=2"]
    for result in results:
        assert result.latencies and result.errors == 0


def test_the_table_gives_the_median_rate_per_setup() -> None:
    slow = Result("one", 2.0, [1_000_000] * 10)
    fast = Result("one", 1.0, [3_000_000] * 10)
    two = Result("workers=2", 1.0, [2_000_000] * 30, errors=1)
    rows = table([slow, fast, two]).splitlines()[2:]
    assert rows[0] == "| one | 8 | 3.00 | 3.00 | 0 |"
    assert rows[1] == "| workers=2 | 30 | 2.00 | 2.00 | 1 |"
