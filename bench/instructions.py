"""Instructions per request and per streamed event, counted by valgrind's callgrind.

    uv run python -m bench.instructions [--requests N] [--events N] [--only broker|connector]
        [--path remotellm|bare|duties]

CPU seconds on a shared two-core VM move by ±15% between identical runs; instruction
counts do not (the same total for the same code and inputs, whatever else the machine
is doing). This starts the bench stub, a broker and a connector with their real command
lines, one of the two relay processes under `valgrind --tool=callgrind`, warms the path
up, zeroes the counters (`callgrind_control -z`), sends W1's 1 KB request N times one
at a time (or 10 streams of N events each, 5 ms apart), dumps the counters
(`callgrind_control -d`) and divides. Start-up and shutdown are not counted; per event,
the streams' ten starts are taken off at the cost of ten requests. `--path bare` or
`--path duties` counts the bare relay's processes instead (`bench.bare`), the floor of
this design's work in Python with or without the broker's books.

It takes about a minute per process (valgrind runs Python some 50 times slower); it
needs valgrind (Debian's `valgrind` package) and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.bare import start_bare
from bench.client import Target, stream, timed_fetch
from bench.procs import (
    Child,
    Children,
    broker_argv,
    broker_port_of,
    connector_argv,
    start_stub,
)

STREAMS = 10


async def _control(option: str, pid: int) -> None:
    """Zero (-z) or dump (-d) the counters of the process under callgrind."""
    process = await asyncio.create_subprocess_exec(
        "callgrind_control", option, str(pid), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    if await process.wait() != 0:
        raise RuntimeError(f"callgrind_control {option} {pid} failed")


def _latest_dump(work_dir: Path, which: str) -> Path:
    return max(work_dir.glob(f"{which}.*"), key=lambda path: path.stat().st_mtime)


def _instructions(dump: Path) -> int:
    for line in dump.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no instruction total in {dump}")


async def _count(
    which: str,
    requests: int,
    events: int,
    work_dir: Path,
    path: str = "remotellm",
) -> dict[str, float]:
    out = work_dir / which
    valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p"]
    children = Children(work_dir / "logs")
    try:
        _, stub_port = await start_stub(children)
        if path == "remotellm":
            broker, connector, target = await _start_remotellm(children, stub_port, which, valgrind)
        else:
            (broker, connector), target = await start_bare(
                children, stub_port, duties=path == "duties", wrap={which: valgrind}, timeout=300
            )
        try:
            deadline = time.monotonic() + 300
            while not (await timed_fetch(target, "bench size=1024"))[0]:
                if time.monotonic() > deadline:
                    raise RuntimeError("the relay did not answer within 300 s")
                await asyncio.sleep(0.2)
            measured: Child = broker if which == "broker" else connector
            result: dict[str, float] = {}
            for unit, count in (("request", requests), ("event", events)):
                await _run(target, unit, max(count // 10, 3))  # warm this path up
                await _control("-z", measured.pid)
                await _run(target, unit, count)
                await _control("-d", measured.pid)
                total = _instructions(_latest_dump(work_dir, which))
                if unit == "request":
                    result[unit] = total / count
                else:
                    # Each stream also starts and ends once: about one request's worth each.
                    starts = STREAMS * result["request"]
                    result[unit] = (total - starts) / (count * STREAMS)
            return result
        finally:
            await target.close()
    finally:
        children.stop_all(30)


async def _start_remotellm(
    children: Children, stub_port: int, which: str, valgrind: list[str]
) -> tuple[Child, Child, Target]:
    broker = children.start("broker", [*(valgrind if which == "broker" else []), *broker_argv()])
    broker_port = int(await broker.wait_for(broker_port_of, timeout=300))
    connector = children.start(
        "connector",
        [
            *(valgrind if which == "connector" else []),
            *connector_argv(broker_port, stub_port, max_concurrency=64),
        ],
    )
    return broker, connector, Target("relay", f"http://127.0.0.1:{broker_port}/v1")


async def _run(target: Target, unit: str, count: int) -> None:
    if unit == "request":
        for _ in range(count):
            ok, _ = await timed_fetch(target, "bench size=1024")
            if not ok:
                raise RuntimeError("a request through the relay failed")
        return
    spec = f"bench events={count} interval_ms=5"
    await asyncio.gather(*(stream(target, spec, time.monotonic_ns()) for _ in range(STREAMS)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument("--requests", type=int, default=300, help="W1 1 KB requests counted")
    parser.add_argument("--events", type=int, default=100, help="events per stream counted")
    parser.add_argument("--only", choices=("broker", "connector"), help="count one process")
    parser.add_argument(
        "--path",
        choices=("remotellm", "bare", "duties"),
        default="remotellm",
        help="whose broker and connector: RemoteLLM's (the default), or the bare relay's"
        " (bench.bare), with the broker's books (duties) or without",
    )
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="remotellm-instr-") as tmp:
        for which in (args.only,) if args.only else ("broker", "connector"):
            counts = asyncio.run(_count(which, args.requests, args.events, Path(tmp), args.path))
            label = which if args.path == "remotellm" else f"{args.path} {which}"
            print(
                f"{label}: {counts['request'] / 1000:,.1f}k instructions per request,"
                f" {counts['event'] / 1000:,.1f}k per streamed event"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
