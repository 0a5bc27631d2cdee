"""W8: a client hangs up mid-stream; how long until the LLM server sees its connection close?"""

from __future__ import annotations

import asyncio
import time
import uuid

from bench.client import Target, stream
from bench.context import Context
from bench.report import Row, WorkloadResult, at_most
from bench.stats import summary_ms

EVENTS = 300
INTERVAL_MS = 10
"""A stream nobody cancels ends by itself after EVENTS * INTERVAL_MS = 3 s."""
STOP_AFTER = 3
WAIT_S = 3.5
LITELLM_CANCELS = 5
"""LiteLLM may not propagate the hang-up; a miss costs WAIT_S, so it gets fewer tries."""


async def _seen_closed(stats: Target, stub_url: str, stream_id: str) -> int | None:
    """When the stub saw the connection of `stream_id` close (monotonic ns), or None."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        async with stats.session.get(stub_url + "/_stats") as resp:
            disconnects = (await resp.json())["disconnects"]
        if stream_id in disconnects:
            return int(disconnects[stream_id])
        await asyncio.sleep(0.01)
    return None


async def _one(ctx: Context, target: Target, stream_id: str) -> int | None:
    closed_at = 0

    def hang_up() -> None:
        nonlocal closed_at
        closed_at = time.monotonic_ns()

    spec = f"bench events={EVENTS} interval_ms={INTERVAL_MS} ttft_ms=0 id={stream_id}"
    result = await stream(target, spec, time.monotonic_ns(), stop_after=STOP_AFTER, on_stop=hang_up)
    if not closed_at:
        raise RuntimeError(f"W8 stream on {target.name} ended early: {result.error or 'no error'}")
    seen = await _seen_closed(ctx.targets["direct"], ctx.stub_url, stream_id)
    return None if seen is None else seen - closed_at


async def w8(ctx: Context) -> WorkloadResult:
    """Cancel latency per path: hang up after 3 events, read the stub's record of the close."""
    result = WorkloadResult("W8")
    delays: dict[str, list[int]] = {name: [] for name in ctx.targets}
    missed: dict[str, int] = dict.fromkeys(ctx.targets, 0)
    run = uuid.uuid4().hex[:8]
    meter = ctx.meter()
    for i in range(ctx.plan.w8_cancels):
        for name, target in ctx.rotation(i):
            if name == "litellm" and i >= LITELLM_CANCELS:
                continue
            # The segment holds the stream and the wait for the stub's record of its close.
            with meter.segment(name):
                delay = await _one(ctx, target, f"w8-{run}-{name}-{i}")
            if delay is None:
                missed[name] += 1
            else:
                delays[name].append(delay)
            await asyncio.sleep(0.05)
    stats = {name: summary_ms(values) for name, values in delays.items()}
    values: dict[str, float | None] = {}
    for name, s in stats.items():
        # A hang-up the server never saw is worse than any measured delay.
        values[name] = None if missed[name] and not s["n"] else s["p99"]
    p50 = Row(
        "W8 cancel", "hang-up → stub sees close p50 (ms)", {n: s["p50"] for n, s in stats.items()}
    )
    p99 = Row("W8 cancel", "hang-up → stub sees close p99 (ms)", values, compare="none")
    relay_missed = missed.get("remotellm", 0)
    p99.check("RemoteLLM ≤ 20 ms", at_most(values.get("remotellm"), 20.0) and not relay_missed)
    misses = {name: n for name, n in missed.items() if n}
    if misses:
        p99.note = f"never seen within {WAIT_S:g} s: {misses}"
    result.rows += [p50, p99]
    result.detail = {"delay_ms": stats, "missed": missed, "cpu_s": meter.report()}
    return result
