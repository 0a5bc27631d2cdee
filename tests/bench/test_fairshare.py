"""bench.fairshare: both orders serve every request of the flood and the steady user."""

from __future__ import annotations

import argparse

import pytest

from bench.fairshare import one_run
from broker.relay.fairqueue import Policy


@pytest.mark.parametrize("order", ["fifo", "fair"])
async def test_a_run_serves_every_request_and_times_each_wait(order: Policy) -> None:
    args = argparse.Namespace(slots=1, service_ms=1.0, flood=10, steady=3, every_ms=1.0)
    run = await one_run(order, args)
    assert run.served == 13
    assert (len(run.waits["A"]), len(run.waits["B"])) == (10, 3)
    assert run.seconds > 0
