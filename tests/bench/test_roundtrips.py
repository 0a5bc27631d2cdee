"""bench.roundtrips: Redis's own counts of what each request costs in cluster mode."""

from __future__ import annotations

import argparse

from bench.roundtrips import main_async, report


async def test_limited_keys_cost_one_admission_and_one_release_and_unlimited_keys_none(
    redis_url: str,
) -> None:
    phases = await main_async(argparse.Namespace(requests=20, redis_url=redis_url))
    by = {(p.broker, p.key): p for p in phases}
    assert by["cluster", "unlimited"].commands == {}
    # Requests per minute alone: the admission, nothing to give back.
    assert by["cluster", "rpm"].sent.get("evalsha") == 20
    # With a concurrency limit, the lease's release too (sent in the background); the
    # keeper's refresh of held leases (every 5 s) may add one.
    assert by["cluster", "rpm+concurrency+daily"].sent.get("evalsha") in (40, 41)
    assert {p.key for p in phases if p.broker == "single"} == {
        "unlimited",
        "rpm",
        "rpm+concurrency+daily",
    }
    assert "| cluster | rpm | 20 |" in report(phases)
