"""Start the paths, run the workloads, write the results, stop everything."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import bare, floor, litellm, profile
from bench.cancel import w8
from bench.client import Target, get_json, wait_until
from bench.context import FULL, QUICK, Context, Plan
from bench.latency import w1, w2
from bench.machine import machine, python_speed_ms, source
from bench.memory import w7
from bench.procs import (
    MODEL,
    USER_KEY,
    Children,
    cpu_times,
    machine_busy_seconds,
    start_broker,
    start_connector,
    start_stub,
)
from bench.report import LOWER_BOUNDS, WorkloadResult, markdown
from bench.streams import w3, w5, w6
from bench.stub import run as run_loop

RESULTS = Path(__file__).resolve().parent / "results"

WORKLOADS: dict[str, Callable[[Context], Awaitable[WorkloadResult]]] = {
    "W1": w1,
    "W2": w2,
    "W3": w3,
    "W5": w5,
    "W6": w6,
    "W7": w7,
    "W8": w8,
}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def _start_paths(
    children: Children,
    want_litellm: bool,
    notes: list[str],
    want_floor: bool = False,
    want_bare: bool = False,
    want_duties: bool = False,
) -> tuple[dict[str, Any], dict[str, Target], str, str]:
    stub, stub_port = await start_stub(children)
    broker, broker_port = await start_broker(children)
    connector = start_connector(children, broker_port, stub_port)
    broker_url = f"http://127.0.0.1:{broker_port}"

    async def registered() -> bool:
        listed = await get_json(broker_url + "/v1/models", Authorization=f"Bearer {USER_KEY}")
        return any(m.get("id") == MODEL for m in listed.get("data", []))

    await wait_until(registered, 30, "the connector registering its model at the broker")
    processes: dict[str, Any] = {"stub": stub, "broker": broker, "connector": connector}
    targets = {
        "direct": Target("direct", f"http://127.0.0.1:{stub_port}/v1"),
        "remotellm": Target("remotellm", f"{broker_url}/v1"),
    }
    if want_floor:
        forwarders, targets["floor"] = await floor.start_floor(children, stub_port)
        for child in forwarders:
            processes[child.name] = child
    for wanted, duties in ((want_bare, False), (want_duties, True)):
        if wanted:
            bare_procs, target = await bare.start_bare(children, stub_port, duties=duties)
            targets[target.name] = target
            for child in bare_procs:
                processes[child.name] = child
    if want_litellm:
        try:
            child, target = await litellm.start(children, stub_port)
            processes["litellm"], targets["litellm"] = child, target
        except litellm.Unavailable as exc:
            note = f"LiteLLM path skipped: {exc}"
            _log(note)
            notes.append(note)
    return processes, targets, f"http://127.0.0.1:{stub_port}", broker_url


async def run(
    plan: Plan,
    want_litellm: bool,
    want_profile: bool = False,
    want_floor: bool = False,
    want_bare: bool = False,
    want_duties: bool = False,
    notes: list[str] | None = None,
) -> tuple[dict[str, Any], str]:
    """Run the plan; the results document and its Markdown table."""
    started = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    children = Children(RESULTS / "logs" / stamp)
    targets: dict[str, Target] = {}
    notes = [] if notes is None else notes
    results: list[WorkloadResult] = []
    profiles: dict[str, Path] = {}
    measured = source()  # before the processes start: the code they load
    speed = {"start": python_speed_ms()}
    busy0, own0, wall0 = machine_busy_seconds(), sum(cpu_times(os.getpid())), time.monotonic()
    background = 0.0
    try:
        processes, targets, stub_url, broker_url = await _start_paths(
            children, want_litellm, notes, want_floor, want_bare, want_duties
        )
        ctx = Context(plan, targets, processes, children, stub_url, broker_url, notes)
        idle_rss = {name: round(child.rss() / 2**20, 1) for name, child in processes.items()}
        _log(f"paths: {', '.join(targets)}; logs in {children.log_dir}")
        if want_profile:
            exe = profile.find_py_spy()
            if exe is None:
                notes.append("no profile: py-spy is not on PATH (uv tool install py-spy)")
            else:
                profiles = profile.start(children, processes, exe)
        await _workloads(plan, ctx, results)
        speed["end"] = python_speed_ms()
        _log(f"python speed loop: {speed['start']} ms before the workloads, {speed['end']} after")
        # CPU that neither the harness nor its children used: other work on the machine.
        own = sum(cpu_times(os.getpid())) - own0 + children.cpu_seconds()
        background = (machine_busy_seconds() - busy0 - own) / (time.monotonic() - wall0)
        if background > 0.1:
            notes.append(
                f"other processes kept {background:.2f} cores busy during the run;"
                " these numbers are perturbed"
            )
    finally:
        for target in targets.values():
            await target.close()
        children.stop_all()
    measured_run = _Measured(started, measured, background, speed, idle_rss, results, profiles)
    return _document(plan, measured_run, list(targets), notes)


async def _workloads(plan: Plan, ctx: Context, results: list[WorkloadResult]) -> None:
    """Run the plan's workloads in order, appending each result as it completes."""
    for name in plan.workloads:
        _log(f"{name} ...")
        t0 = time.monotonic()
        result = await WORKLOADS[name](ctx)
        result.seconds = round(time.monotonic() - t0, 1)
        results.append(result)
        _log(f"{name} done in {result.seconds:g} s")


@dataclass
class _Measured:
    """What one run measured, for its results document."""

    started: float
    source: dict[str, Any]
    background: float
    speed: dict[str, float]
    idle_rss: dict[str, float]
    results: list[WorkloadResult]
    profiles: dict[str, Path]


def _document(
    plan: Plan, run: _Measured, paths: list[str], notes: list[str]
) -> tuple[dict[str, Any], str]:
    """The results document of a run and its Markdown table."""
    rows = [row for r in run.results for row in r.rows]
    summaries = {
        name: {"folded": str(path), **profile.summarise(path)}
        for name, path in run.profiles.items()
        if path.exists()
    }
    table = markdown(rows, "litellm" in paths, tuple(p for p in LOWER_BOUNDS if p in paths))
    document = {
        "mode": plan.mode,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(run.started)),
        "duration_s": round(time.time() - run.started, 1),
        "machine": {
            **machine(),
            "background_cpu_cores": round(run.background, 3),
            "python_loop_ms": run.speed,
            **({"litellm": litellm.version()} if "litellm" in paths else {}),
        },
        "source": run.source,
        "paths": paths,
        "notes": notes,
        "rss_mib_at_start": run.idle_rss,
        "rows": [row.to_json() for row in rows],
        "workloads": {r.name: {"seconds": r.seconds, "detail": r.detail} for r in run.results},
        "profile": summaries,
        "passed": sum(1 for row in rows if row.passed is True),
        "failed": sum(1 for row in rows if row.passed is False),
    }
    return document, table


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark RemoteLLM against a direct connection (and LiteLLM) on loopback.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="W1, W3 (1, 10), W6, W8; < 1 min")
    mode.add_argument("--full", action="store_true", help="every workload (the default)")
    parser.add_argument("--out", type=Path, help="JSON file to write (default bench/results/...)")
    lite = parser.add_mutually_exclusive_group()
    lite.add_argument("--litellm", action="store_true", help="also measure LiteLLM (quick too)")
    lite.add_argument("--no-litellm", action="store_true", help="skip LiteLLM in full mode")
    parser.add_argument(
        "--profile", action="store_true", help="sample the broker and connector with py-spy"
    )
    parser.add_argument("--only", help="comma-separated workloads to run, e.g. W1,W3")
    parser.add_argument(
        "--w7-connectors",
        type=int,
        metavar="N",
        help="idle connectors W7 attaches (default 1000 in full mode); e.g. 10000",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also measure two do-nothing forwarders in place of the broker and connector",
    )
    parser.add_argument(
        "--bare",
        action="store_true",
        help="also measure the bare relay: the wire protocol alone, none of the product",
    )
    parser.add_argument(
        "--duties",
        action="store_true",
        help="also measure the bare relay keeping the broker's per-request books",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.only:
        chosen = tuple(w.strip().upper() for w in args.only.split(",") if w.strip())
        unknown = [w for w in chosen if w not in WORKLOADS]
        if unknown:
            print(f"python -m bench: error: unknown workload(s) {unknown}", file=sys.stderr)
            return 2
        outside = [w for w in chosen if w not in plan.workloads]
        if outside:
            # The quick plan has no sizes for them (no W2 ladder, no W5 rounds, no W7
            # connectors): refused, instead of a row that measured nothing.
            print(
                f"python -m bench: error: {', '.join(outside)} not in the {plan.mode} plan"
                f" ({', '.join(plan.workloads)}); run it without --quick",
                file=sys.stderr,
            )
            return 2
        plan = Plan(**{**plan.__dict__, "workloads": chosen})
    if args.w7_connectors is not None:
        if args.w7_connectors < 1:
            print("python -m bench: error: --w7-connectors must be at least 1", file=sys.stderr)
            return 2
        plan = Plan(**{**plan.__dict__, "w7_connectors": args.w7_connectors})
    want_litellm = args.litellm or (plan.mode == "full" and not args.no_litellm)
    notes: list[str] = []
    out = args.out or RESULTS / f"bench-{plan.mode}-{time.strftime('%Y%m%d-%H%M%S')}.json"

    async def main_task() -> tuple[dict[str, Any], str]:
        task = asyncio.current_task()
        assert task is not None
        # SIGTERM cancels the run like Ctrl-C does, so every child is still stopped.
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await run(
            plan,
            want_litellm,
            args.profile,
            args.floor,
            args.bare,
            args.duties,
            notes,
        )

    try:
        document, table = run_loop(main_task())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("python -m bench: interrupted; every process it started was stopped", file=sys.stderr)
        return 130
    write(document, table, out)
    return 0


def write(document: dict[str, Any], table: str, out: Path) -> None:
    """Save the JSON (and the table beside it, as .md) and print the table."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2, default=str) + "\n")
    out.with_suffix(".md").write_text(table + "\n")
    print(table)
    print()
    for note in document["notes"]:
        print(f"- {note}")
    for name, prof in document["profile"].items():
        print(f"\n{name} profile ({prof['samples']} samples, {prof['folded']}), top self time:")
        for function, pct in prof["self_pct"][:10]:
            print(f"  {pct:5.1f}%  {function}")
    print(
        f"{document['passed']} targets passed, {document['failed']} failed;"
        f" {document['mode']} run took {document['duration_s']:g} s"
    )
    print(f"results: {out}")
