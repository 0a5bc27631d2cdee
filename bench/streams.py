"""Streaming workloads: W3 paced streams, W5 head-of-line blocking, W6 flush probe."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

import aiohttp

from bench.client import StreamResult, Target, at, fetch, stream
from bench.context import Context, cpu_per_unit
from bench.report import Row, WorkloadResult, added_at_most, at_most
from bench.stats import summary_ms

ROUND_TIMEOUT = 180.0
W5_SMALL_STREAMS = 99
W5_BULK_SIZE = 1024 * 1024
W6_INTERVAL_MS = 500
W6_WITHIN_MS = 5.0
LITELLM_MAX_STREAMS = 100
"""Above this LiteLLM is left out to bound the run time: on two cores it is already
hundreds of milliseconds behind at 10 streams."""


async def paced_round(target: Target, n: int, spec: str, spread_ns: int) -> list[StreamResult]:
    """`n` concurrent streams whose starts are spread evenly over `spread_ns`.

    Real streams do not tick in step, so starting them all at once would test a
    burst, not n concurrent streams.
    """
    start = time.monotonic_ns() + 10_000_000

    async def one(k: int) -> StreamResult:
        origin = await at(start + k * spread_ns // n)
        return await stream(target, spec, origin)

    return await _all(*(one(k) for k in range(n)))


async def _all(*work: Coroutine[Any, Any, StreamResult]) -> list[StreamResult]:
    """Run `work` concurrently within ROUND_TIMEOUT; a cancel reaches every one of them."""
    async with asyncio.timeout(ROUND_TIMEOUT), asyncio.TaskGroup() as group:
        tasks = [group.create_task(w) for w in work]
    return [t.result() for t in tasks]


def aggregate(results: list[StreamResult], events: int) -> dict[str, Any]:
    """Latency summaries and delivery counts of a set of streams."""
    delays = [d for r in results for d in r.delays_ns]
    ttfts = [r.ttft_ns for r in results if r.ttft_ns is not None]
    offered = len(results) * events
    delivered = sum(r.received for r in results)
    errors = [r.error for r in results if r.error]
    return {
        "streams": len(results),
        "ttft_ms": summary_ms(ttfts),
        "event_delay_ms": summary_ms(delays),
        "offered": offered,
        "delivered": delivered,
        "lost": offered - delivered,
        "delivered_ratio": delivered / offered if offered else 0.0,
        "out_of_order": sum(r.out_of_order for r in results),
        "errors": len(errors),
        "first_errors": errors[:3],
    }


def _row(label: str, agg: dict[str, dict[str, Any]], metric: str, key: str, stat: str) -> Row:
    return Row(label, metric, {name: a[key][stat] for name, a in agg.items()})


async def warm_up(ctx: Context, n: int, paths: list[str] | None = None) -> None:
    """One short unmeasured round of `n` streams per path: opens the connection pools
    (client -> server, connector -> stub) that the measured rounds then reuse."""
    for _, target in ctx.rotation(0, paths):
        await paced_round(target, n, "bench events=4 interval_ms=20 ttft_ms=0", 20_000_000)
    await asyncio.sleep(0.2)


def _paced_spec(ctx: Context) -> str:
    return f"bench events={ctx.plan.w3_events} interval_ms={ctx.plan.w3_interval_ms} ttft_ms=0"


async def w3(ctx: Context) -> WorkloadResult:
    """Paced streams at each concurrency; paths take turns round by round."""
    result = WorkloadResult("W3")
    plan = ctx.plan
    spec = _paced_spec(ctx)
    spread = plan.w3_interval_ms * 1_000_000
    for n, rounds in zip(plan.w3_streams, plan.w3_rounds, strict=True):
        paths = [p for p in ctx.targets if p != "litellm" or n <= LITELLM_MAX_STREAMS]
        await warm_up(ctx, n, paths)
        meter = ctx.meter()
        collected: dict[str, list[StreamResult]] = {name: [] for name in paths}
        for turn in range(rounds):
            for name, target in ctx.rotation(turn, paths):
                with meter.segment(name):
                    collected[name] += await paced_round(target, n, spec, spread)
                await asyncio.sleep(0.1)
        agg = {name: aggregate(res, plan.w3_events) for name, res in collected.items()}
        label = f"W3 {n} stream{'s' if n > 1 else ''}"
        limit = 1.0 if n <= 100 else 10.0

        p99 = _row(label, agg, "event delay p99 (ms)", "event_delay_ms", "p99")
        added_at_most(p99, limit)
        delivered = Row(
            label,
            "delivered/offered",
            {name: a["delivered_ratio"] for name, a in agg.items()},
            compare="none",
        )
        relay = agg.get("remotellm", {})
        delivered.check("= 1.000", relay.get("delivered_ratio") == 1.0 if relay else None)
        ordered = Row(
            label,
            "out-of-order events",
            {name: float(a["out_of_order"]) for name, a in agg.items()},
            compare="none",
        )
        ordered.check("0", relay.get("out_of_order") == 0 if relay else None)
        result.rows += [
            _row(label, agg, "TTFT p50 (ms)", "ttft_ms", "p50"),
            _row(label, agg, "TTFT p99 (ms)", "ttft_ms", "p99"),
            _row(label, agg, "event delay p50 (ms)", "event_delay_ms", "p50"),
            p99,
            _row(label, agg, "event delay p99.9 (ms)", "event_delay_ms", "p99.9"),
            delivered,
            ordered,
        ]
        cpu = meter.report()
        result.detail[label] = {
            "paths": agg,
            "cpu_s": cpu,
            "cpu_us_per_event": cpu_per_unit(cpu, {n: a["delivered"] for n, a in agg.items()}),
        }
    return result


async def _w5_round(
    ctx: Context, target: Target, bulk: bool
) -> tuple[list[StreamResult], int, int]:
    """99 paced streams, with or without one client pulling 1 MB bodies back to back.

    Returns the streams' results, the bulk bytes moved and the bulk requests that failed
    (a server may drop a kept-alive connection between rounds as the client reuses it:
    counted, not fatal to the run).
    """
    stop = asyncio.Event()
    moved = failed = 0

    async def bulk_loop() -> None:
        nonlocal moved, failed
        while not stop.is_set():
            try:
                status, size = await fetch(target, f"bench size={W5_BULK_SIZE}")
            except (aiohttp.ClientError, OSError):
                failed += 1
                await asyncio.sleep(0.05)  # no busy loop against a path that is down
                continue
            if status == 200:
                moved += size

    task = asyncio.create_task(bulk_loop()) if bulk else None
    try:
        if task is not None:
            await asyncio.sleep(0.2)
        spread = ctx.plan.w3_interval_ms * 1_000_000
        results = await paced_round(target, W5_SMALL_STREAMS, _paced_spec(ctx), spread)
    finally:
        stop.set()
        if task is not None:
            await task
    return results, moved, failed


async def w5(ctx: Context) -> WorkloadResult:
    """Head-of-line: the rise of small streams' p99 when a bulk transfer shares the path.

    Rounds alternate alone/beside-bulk and the paths take turns; each p99 is over
    every event of every round of its kind.
    """
    result = WorkloadResult("W5")
    await warm_up(ctx, W5_SMALL_STREAMS)
    kinds = ("alone", "beside bulk")
    runs = {name: {kind: list[StreamResult]() for kind in kinds} for name in ctx.targets}
    moved: dict[str, float] = dict.fromkeys(ctx.targets, 0.0)
    seconds: dict[str, float] = dict.fromkeys(ctx.targets, 0.0)
    failed: dict[str, int] = dict.fromkeys(ctx.targets, 0)
    meter = ctx.meter()
    for turn in range(ctx.plan.w5_rounds):
        for name, target in ctx.rotation(turn):
            order = (False, True) if turn % 2 == 0 else (True, False)
            for bulk in order:
                started = time.monotonic()
                with meter.segment(name):
                    results, size, failures = await _w5_round(ctx, target, bulk)
                runs[name][kinds[bulk]] += results
                failed[name] += failures
                if bulk:
                    moved[name] += size
                    seconds[name] += time.monotonic() - started
                await asyncio.sleep(0.1)
    agg = {
        name: {kind: aggregate(res, ctx.plan.w3_events) for kind, res in per.items()}
        for name, per in runs.items()
    }
    p99 = {
        kind: {name: a[kind]["event_delay_ms"]["p99"] for name, a in agg.items()} for kind in kinds
    }
    rise: dict[str, float | None] = {
        name: p99["beside bulk"][name] - p99["alone"][name] for name in agg
    }
    label = "W5 99+bulk"
    rise_row = Row(label, "rise of small p99 (ms)", rise, compare="none")
    rise_row.check("RemoteLLM rise ≤ 1 ms", at_most(rise.get("remotellm"), 1.0))
    mb_per_s = {n: moved[n] / seconds[n] / 1e6 if seconds[n] else None for n in agg}
    bulk_row = Row(label, "bulk throughput (MB/s)", mb_per_s, compare="ratio")
    if any(failed.values()):
        bulk_row.note = "bulk requests failed: " + ", ".join(
            f"{name} {count}" for name, count in failed.items() if count
        )
    result.rows += [
        Row(label, "small p99 alone (ms)", dict(p99["alone"])),
        Row(label, "small p99 beside bulk (ms)", dict(p99["beside bulk"])),
        rise_row,
        bulk_row,
    ]
    result.detail = {
        "paths": agg,
        "p99_rise_ms": rise,
        "bulk_mb_per_s": mb_per_s,
        "bulk_failures": failed,
        "cpu_s": meter.report(),
    }
    return result


async def w6(ctx: Context) -> WorkloadResult:
    """One event every 500 ms on every path at once: is each one flushed at once?"""
    result = WorkloadResult("W6")
    spec = f"bench events={ctx.plan.w6_events} interval_ms={W6_INTERVAL_MS} ttft_ms=0"
    names = list(ctx.targets)
    meter = ctx.meter()
    now = time.monotonic_ns()
    with meter.segment("all"):  # every path at once: CPU per process, not per path
        results = await _all(*(stream(ctx.targets[n], spec, now) for n in names))
    result.detail["cpu_s"] = meter.report().get("all", {})
    within: dict[str, float | None] = {}
    worst: dict[str, float | None] = {}
    for name, res in zip(names, results, strict=True):
        if not res.delays_ns:
            within[name] = worst[name] = None
            continue
        ok = sum(1 for d in res.delays_ns if d <= W6_WITHIN_MS * 1e6)
        within[name] = 100.0 * ok / ctx.plan.w6_events
        worst[name] = max(res.delays_ns) / 1e6
        result.detail[name] = {
            "received": res.received,
            "delays_ms": [round(d / 1e6, 3) for d in res.delays_ns],
            "error": res.error or None,
        }
    row = Row("W6 1 ev/500 ms", "events within 5 ms (%)", within, compare="none")
    row.check("100%", None if within.get("remotellm") is None else within["remotellm"] == 100.0)
    result.rows += [row, Row("W6 1 ev/500 ms", "worst event delay (ms)", worst)]
    return result
