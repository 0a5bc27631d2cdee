"""W1 (non-streamed latency, one request at a time) and W2 (throughput frontier)."""

from __future__ import annotations

import asyncio
from typing import Any

from bench.client import fetch, open_loop, timed_fetch
from bench.context import Context, cpu_per_unit
from bench.report import (
    Row,
    WorkloadResult,
    added_versus_litellm,
    at_least,
    at_most,
    frontier_versus_litellm,
)
from bench.stats import summary_ms

W1_BLOCK = 25
W1_WARMUP = 40
W2_P99_LIMIT_MS = 10.0
STALL_MS = 10.0
"""A harness loop this late at a low rate means the machine, not a path, stalled."""
STALL_RATE = 1000
"""Rates up to this leave the client idle most of the time: its own lag is the machine's."""
STALLS = 3
"""Late steps at those rates that make a run suspect."""


def stall_note(steps: dict[str, list[dict[str, Any]]]) -> str | None:
    """A warning when the harness's own event loop stalled again and again at low rates.

    At a thousand requests a second or fewer the client is idle most of the time; when
    its loop still runs `STALL_MS` late in `STALLS` steps or more, the host kept pausing
    this machine and every path's frontier in that run is suspect (docs/performance.md,
    "The machine"). One late step is noise every run can have.
    """
    lags = [
        step.get("client_lag_max_ms", 0.0)
        for path_steps in steps.values()
        for step in path_steps
        if step["rate"] <= STALL_RATE
    ]
    late = [lag for lag in lags if lag > STALL_MS]
    if len(late) < STALLS:
        return None
    return (
        f"the harness's own loop stalled in {len(late)} steps at ≤ {STALL_RATE:,} req/s"
        f" (up to {max(late):.0f} ms): the machine was disturbed; rerun before trusting this row"
    )


def _size_label(size: int) -> str:
    return f"{size // 1024} KB" if size >= 1024 else f"{size} B"


async def w1(ctx: Context) -> WorkloadResult:
    """Non-streamed requests one at a time, paths interleaved in blocks; added p50/p99."""
    result = WorkloadResult("W1")
    for size in ctx.plan.w1_sizes:
        spec = f"bench size={size}"
        for _, target in ctx.rotation(0):
            for _ in range(W1_WARMUP):
                await timed_fetch(target, spec)
        meter = ctx.meter()
        samples: dict[str, list[int]] = {name: [] for name in ctx.targets}
        errors: dict[str, int] = dict.fromkeys(ctx.targets, 0)
        blocks = max(ctx.plan.w1_requests // W1_BLOCK, 1)
        for turn in range(blocks):
            for name, target in ctx.rotation(turn):
                with meter.segment(name):
                    for _ in range(W1_BLOCK):
                        ok, latency = await timed_fetch(target, spec)
                        if ok:
                            samples[name].append(latency)
                        else:
                            errors[name] += 1
        stats = {name: summary_ms(values) for name, values in samples.items()}
        cpu = meter.report()
        label = f"W1 {_size_label(size)}"
        p50 = Row(label, "p50 latency (ms)", {n: s["p50"] for n, s in stats.items()})
        p99 = Row(label, "p99 latency (ms)", {n: s["p99"] for n, s in stats.items()})
        p50.check("added ≤ 0.25 ms", at_most(p50.added(), 0.25))
        p99.check("added ≤ 0.5 ms", at_most(p99.added(), 0.5))
        if any(errors.values()):
            p50.note = f"errors {errors}"
        result.rows += [p50, p99]
        result.rows += [r for r in (added_versus_litellm(x, 0.1) for x in (p50, p99)) if r]
        result.detail[label] = {
            "latency_ms": stats,
            "errors": errors,
            "cpu_s": cpu,
            "cpu_us_per_request": cpu_per_unit(cpu, {n: len(v) for n, v in samples.items()}),
        }
    return result


async def _step(ctx: Context, name: str, rate: int, spec: str) -> dict[str, Any]:
    target = ctx.targets[name]

    async def send() -> bool:
        status, _ = await fetch(target, spec)
        return status == 200

    meter = ctx.meter()
    with meter.segment(name):
        run = await open_loop(rate, ctx.plan.w2_step_s, send)
    stats = summary_ms(run.latencies_ns)
    lag = summary_ms(run.client_lag_ns)
    cpu = meter.report()[name]
    wall = max(cpu.get("wall_s", 0.0), 1e-9)
    return {
        "rate": rate,
        "offered": run.offered,
        "errors": run.errors,
        "dropped": run.dropped,
        "p50_ms": stats["p50"],
        "p99_ms": stats["p99"],
        "achieved_per_s": round(len(run.latencies_ns) / run.duration_s, 1),
        "client_lag_p99_ms": lag["p99"],
        "client_lag_max_ms": lag["max"],
        "cpu_cores": {k: round(v / wall, 3) for k, v in cpu.items() if k != "wall_s"},
        "ok": run.errors == 0 and stats["p99"] <= W2_P99_LIMIT_MS,
    }


async def w2(ctx: Context) -> WorkloadResult:
    """Step the open-loop rate up per path; the frontier is the last rate with 0 errors
    and p99 <= 10 ms (in one of two tries). Paths take turns at each rate; a path
    stops at its first failed rate."""
    result = WorkloadResult("W2")
    spec = "bench size=1024"
    frontier: dict[str, float | None] = dict.fromkeys(ctx.targets, None)
    steps: dict[str, list[dict[str, Any]]] = {name: [] for name in ctx.targets}
    running = set(ctx.targets)
    for turn, rate in enumerate(ctx.plan.w2_rates):
        for name, _ in ctx.rotation(turn):
            if name not in running:
                continue
            step = await _step(ctx, name, rate, spec)
            steps[name].append(step)
            if not step["ok"]:
                # One stall of a few tens of ms anywhere on a two-core machine fails a
                # 3 s step; a rate counts as sustained if either of two tries passes.
                await asyncio.sleep(0.2)
                step = await _step(ctx, name, rate, spec)
                step["retry"] = True
                steps[name].append(step)
            if step["ok"]:
                frontier[name] = float(rate)
            else:
                running.discard(name)
            await asyncio.sleep(0.2)  # let sockets in TIME_WAIT and stragglers settle between steps
        if not running:
            break
    ceiling = ctx.plan.w2_rates[-1] if ctx.plan.w2_rates else None
    row = Row("W2 1 KB", "frontier (req/s)", dict(frontier), compare="ratio")
    row.check("≥ 0.5x direct", at_least(row.ratio(), 0.5))
    notes: list[str] = []
    if frontier.get("direct") == ceiling:
        notes.append("direct reached the top of the ladder; its frontier is higher")
    first = ctx.plan.w2_rates[0] if ctx.plan.w2_rates else None
    stalled = stall_note(steps)
    if stalled is not None:
        notes.append(stalled)
    for name, reached in frontier.items():
        if reached is None and steps[name]:
            failed = steps[name][0]
            notes.append(
                f"{name} failed the first step ({first}/s: p99 {failed['p99_ms']:.1f} ms,"
                f" {failed['errors']} errors)"
            )
    row.note = "; ".join(notes)
    result.rows.append(row)
    versus = frontier_versus_litellm(row, first, 10.0)
    if versus is not None:
        result.rows.append(versus)
    result.detail = {"steps": steps, "frontier": frontier, "p99_limit_ms": W2_P99_LIMIT_MS}
    return result
