"""bench.forwarding: one small run measures both paths through real processes."""

from __future__ import annotations

from pathlib import Path

from bench.forwarding import measure, table


async def test_a_small_run_times_the_direct_and_the_forwarded_path(tmp_path: Path) -> None:
    result = await measure(requests=20, warmup=5, log_dir=tmp_path)
    assert result["direct"]["n"] == result["internal"]["n"] == result["forwarded"]["n"] == 20
    assert result["forwarded"]["p50"] > 0 and result["direct"]["p50"] > 0
    assert "added by the hop" in table(result)
