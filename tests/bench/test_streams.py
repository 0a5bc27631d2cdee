"""W5's bulk loop: a failed request is counted, and the run goes on."""

from __future__ import annotations

from pathlib import Path

from bench.client import Target
from bench.context import QUICK, Context
from bench.procs import Children
from bench.streams import _w5_round
from tests.broker.api.test_errors import free_port


async def test_a_bulk_request_that_fails_is_counted_and_the_round_completes(
    tmp_path: Path,
) -> None:
    target = Target("nowhere", f"http://127.0.0.1:{free_port()}/v1")  # nothing listens there
    ctx = Context(QUICK, {"nowhere": target}, {}, Children(tmp_path), "", "")
    try:
        results, moved, failed = await _w5_round(ctx, target, bulk=True)
    finally:
        await target.close()
    assert moved == 0
    assert failed >= 1
    assert results and not any(result.ok for result in results)
