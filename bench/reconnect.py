"""Coming back after a broker crash: how long until every connector is back, and how spread.

    uv run python -m bench.reconnect [--connectors 20,200] [--rounds 3] [--out FILE]

attaches N connectors (the product's relay client, in this process) to a broker process,
kills the broker with SIGKILL, starts a new one on the same port one second later, and
times each connector's return from the moment the new broker accepts connections. Each
round runs every N twice, taking turns: once with main's schedule before the reconnect
window (full jitter doubling to 30 s whatever the failure) and once with the shipped one
(`connector_app.core.backoff`). Nothing here asserts a time; the figures go to
docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import structlog

from bench.procs import CONNECTOR_TOKEN, MODEL, Child, Children, broker_argv, broker_port_of
from bench.stub import run
from connector_app.core.backoff import SLOW_CEILING, Backoff
from connector_app.core.client import RelayClient
from connector_app.core.llm import LocalLLM
from connector_app.core.status import LinkState, Status, StatusBoard

RESULTS = Path(__file__).resolve().parent / "results"
DOWN_FOR = 1.0
"""Seconds between the kill and the new broker's start, as in issue 18's report."""

SCHEDULES = {
    # Main before the window: every failure doubled to the slow ceiling.
    "main": lambda: Backoff(window=SLOW_CEILING),
    "window": Backoff,
}


@dataclass
class Outcome:
    """One kill and restart with `connectors` connectors on one schedule; times in seconds
    from the moment the new broker accepted connections."""

    schedule: str
    connectors: int
    answered_after_kill: float
    first: float
    median: float
    p90: float
    last: float
    dials_while_down: int
    """Dials every connector together made between the kill and the new broker answering."""
    peak_tenth: int
    """The most connectors that came back within one tenth of a second."""


class Watched:
    """One in-process connector and the times its link came up and it dialled."""

    def __init__(self, port: int, llm: LocalLLM, index: int, backoff: Backoff) -> None:
        self.board = StatusBoard(Status(models=(MODEL,)))
        self.connected: list[float] = []
        self.dials: list[float] = []
        self.board.subscribe(self._seen)
        self.client = RelayClient(
            url=f"ws://127.0.0.1:{port}/relay",
            token=CONNECTOR_TOKEN,
            name=f"bench-reconnect-{index}",
            max_concurrency=1,
            llm=llm,
            board=self.board,
            backoff=backoff,
        )
        self.task = asyncio.create_task(self.client.run())

    def _seen(self, status: Status) -> None:
        now = time.monotonic()
        if status.state is LinkState.CONNECTED:
            self.connected.append(now)
        elif status.retry_in is None and status.state is not LinkState.DISCONNECTED:
            # The client publishes (re)connecting with no retry time as each dial starts.
            self.dials.append(now)

    @property
    def up(self) -> bool:
        return self.board.status.state is LinkState.CONNECTED


async def _until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not happen within {timeout:g} s")
        await asyncio.sleep(0.01)


async def _start_broker(children: Children, port: int, name: str) -> Child:
    argv = broker_argv()
    argv[argv.index("--port") + 1] = str(port)
    child = children.start(name, argv)
    await child.wait_for(broker_port_of, timeout=30)
    return child


async def _answering(port: int) -> float:
    """Poll until a TCP connection to `port` is accepted; the monotonic time it was."""
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.002)
            continue
        writer.close()
        return time.monotonic()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def one_restart(children: Children, schedule: str, count: int) -> Outcome:
    """Attach `count` connectors, kill the broker, restart it, time the connectors' return."""
    port = _free_port()
    broker = await _start_broker(children, port, f"broker-{schedule}-{count}")
    llm = LocalLLM("http://127.0.0.1:9")
    watched = [Watched(port, llm, i, SCHEDULES[schedule]()) for i in range(count)]
    try:
        await _until(lambda: all(w.up for w in watched), 60, f"{count} connectors attaching")
        killed = time.monotonic()
        broker.process.kill()
        broker.process.wait(5)
        await _until(lambda: not any(w.up for w in watched), 30, "every connector seeing the kill")
        await asyncio.sleep(max(killed + DOWN_FOR - time.monotonic(), 0.0))
        answering = asyncio.create_task(_answering(port))
        broker = await _start_broker(children, port, f"broker-{schedule}-{count}-again")
        answered = await answering
        await _until(lambda: all(w.up for w in watched), 90, f"{count} connectors returning")
        return _outcome(schedule, watched, killed, answered)
    finally:
        await asyncio.gather(*(w.client.stop(0) for w in watched))
        await asyncio.gather(*(w.task for w in watched), return_exceptions=True)
        await llm.close()
        broker.stop()


def _outcome(schedule: str, watched: list[Watched], killed: float, answered: float) -> Outcome:
    back = sorted(w.connected[-1] - answered for w in watched)
    tenths: dict[int, int] = {}
    for t in back:
        tenths[int(t * 10)] = tenths.get(int(t * 10), 0) + 1
    return Outcome(
        schedule=schedule,
        connectors=len(watched),
        answered_after_kill=round(answered - killed, 3),
        first=round(back[0], 3),
        median=round(statistics.median(back), 3),
        p90=round(back[int(0.9 * (len(back) - 1))], 3),
        last=round(back[-1], 3),
        dials_while_down=sum(1 for w in watched for t in w.dials if killed < t < answered),
        peak_tenth=max(tenths.values()),
    )


def summary(outcomes: list[Outcome]) -> str:
    """A Markdown table: per schedule and N, the median over rounds and the worst round."""
    lines = [
        "| Schedule | N | rounds | first back (s) | median back (s) | p90 back (s) "
        "| last back (s), median of rounds | last back (s), worst round "
        "| most back in 0.1 s | dials while down, per connector |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    keys = sorted({(o.connectors, o.schedule) for o in outcomes})
    for count, schedule in keys:
        runs = [o for o in outcomes if (o.connectors, o.schedule) == (count, schedule)]

        def med(field: str, runs: list[Outcome] = runs) -> float:
            return float(statistics.median(getattr(o, field) for o in runs))

        lines.append(
            f"| {schedule} | {count} | {len(runs)} | {med('first'):.2f} | {med('median'):.2f} "
            f"| {med('p90'):.2f} | {med('last'):.2f} | {max(o.last for o in runs):.2f} "
            f"| {max(o.peak_tenth for o in runs)} | {med('dials_while_down') / count:.1f} |"
        )
    return "\n".join(lines)


async def measure(counts: list[int], rounds: int) -> list[Outcome]:
    """Every round: each N with each schedule, taking turns."""
    # The clients' own "relay link down" lines would be thousands; only errors are shown.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    children = Children(RESULTS / "logs" / f"reconnect-{stamp}")
    outcomes: list[Outcome] = []
    try:
        for round_ in range(rounds):
            for count in counts:
                for schedule in SCHEDULES:
                    outcome = await one_restart(children, schedule, count)
                    outcomes.append(outcome)
                    print(f"round {round_ + 1}: {outcome}", file=sys.stderr, flush=True)
    finally:
        children.stop_all()
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reconnect", description=__doc__)
    parser.add_argument("--connectors", default="20,200", help="comma-separated N (20,200)")
    parser.add_argument("--rounds", type=int, default=3, help="kills per N and schedule (3)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the JSON")
    args = parser.parse_args()
    counts = [int(n) for n in args.connectors.split(",") if n]
    out = args.out or RESULTS / f"reconnect-{time.strftime('%Y%m%d-%H%M%S')}.json"
    outcomes = run(measure(counts, args.rounds))
    table = summary(outcomes)
    print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"outcomes": [asdict(o) for o in outcomes]}, indent=2) + "\n")
    out.with_suffix(".md").write_text(table + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
