"""bench.reconnect: a kill and restart brings every connector back, and the table reads it."""

from __future__ import annotations

from pathlib import Path

from bench.procs import Children
from bench.reconnect import Outcome, one_restart, summary


async def test_every_connector_returns_after_a_kill_and_restart(tmp_path: Path) -> None:
    children = Children(tmp_path)
    try:
        outcome = await one_restart(children, "window", 3)
        brokers = list(children.started)
        # The killed broker and the one started in its place, both stopped by now.
        assert len(brokers) == 2
        assert not any(broker.alive for broker in brokers)
    finally:
        children.stop_all()
    assert outcome.connectors == 3
    assert 0 <= outcome.first <= outcome.median <= outcome.last
    assert 1 <= outcome.peak_tenth <= 3


def outcome(schedule: str, last: float, dials: int) -> Outcome:
    return Outcome(schedule, 10, 2.0, 0.1, 1.0, 2.0, last, dials, 2)


def test_the_table_gives_the_median_and_the_worst_last_per_schedule() -> None:
    table = summary(
        [outcome("main", 20.0, 40), outcome("window", 6.0, 40), outcome("main", 10.0, 30)]
    )
    rows = table.splitlines()[2:]
    assert rows[0].startswith("| main | 10 | 2 |")
    assert "| 15.00 | 20.00 |" in rows[0]
    assert rows[0].endswith("| 2 | 3.5 |")
    assert rows[1].startswith("| window | 10 | 1 |")
