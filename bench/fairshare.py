"""Fair share on a busy connector: one user's flood against another user's steady requests.

    uv run python -m bench.fairshare [--slots 2] [--service-ms 20] [--flood 200] [--steady 20]
        [--every-ms 100] [--rounds 3]

User A submits `--flood` requests at once; user B then sends `--steady` requests one after
another, one every `--every-ms` (each sent whether or not the previous one is answered, as
separate people or tools would). All go to one connector of `--slots` slots whose every request
holds its slot for `--service-ms` (an `asyncio.sleep`: a stub LLM with a fixed service time).
The broker's own hub (`broker.relay.hub.Hub`, which hands out the slots) is driven in process,
once with the waiting line in arrival order (`order="fifo"`, the broker's old rule) and once in
turn by user (`"fair"`, the shipped rule), rounds taking turns. It prints, per order, A's and
B's median and largest wait for a slot, and the throughput (requests served per second over
the whole run), with B's median wait against one slot's service time and the throughput
against 95% of FIFO's. Nothing is asserted; it exits 0 whatever it finds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import dataclass, field

from broker.relay.fairqueue import Policy
from broker.relay.gates import Gate
from broker.relay.hub import Hub

MODEL = "bench-model"


@dataclass(eq=False)
class _Connector:
    """What the hub needs of a link: one connector serving MODEL."""

    max_concurrency: int
    name: str = "bench-connector"
    models: frozenset[str] = frozenset({MODEL})
    draining: bool = False
    gate: Gate | None = None
    elsewhere: int = 0
    remote: bool = False


@dataclass
class Run:
    waits: dict[str, list[float]] = field(default_factory=lambda: {"A": [], "B": []})
    seconds: float = 0.0
    served: int = 0


async def _request(hub: Hub, user: str, service: float, run: Run) -> None:
    asked = time.perf_counter()
    link = await hub.acquire(MODEL, user=user, wait_offline=60, wait_busy=600)
    run.waits[user].append(time.perf_counter() - asked)
    try:
        await asyncio.sleep(service)
    finally:
        hub.release(link, user)
    run.served += 1


async def one_run(order: Policy, args: argparse.Namespace) -> Run:
    """A's flood and B's steady requests through one hub with this `order`."""
    hub = Hub(order=order)
    hub.register(_Connector(args.slots))
    run, service = Run(), args.service_ms / 1000
    started = time.perf_counter()
    flood = [asyncio.create_task(_request(hub, "A", service, run)) for _ in range(args.flood)]
    await asyncio.sleep(0)  # A's requests are all in line before B's first
    steady = []
    for _ in range(args.steady):
        steady.append(asyncio.create_task(_request(hub, "B", service, run)))
        await asyncio.sleep(args.every_ms / 1000)
    await asyncio.gather(*flood, *steady)
    run.seconds = time.perf_counter() - started
    return run


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.1f}"


async def main_async(args: argparse.Namespace) -> None:
    runs: dict[Policy, list[Run]] = {"fifo": [], "fair": []}
    for _ in range(args.rounds):
        for order in ("fifo", "fair"):
            runs[order].append(await one_run(order, args))
    print(
        f"{args.slots} slots, {args.service_ms} ms per request; A: {args.flood} at once,"
        f" B: {args.steady}, one every {args.every_ms} ms; median of {args.rounds} rounds\n"
    )
    print("| order | A wait p50 (ms) | A max (ms) | B wait p50 (ms) | B max (ms) | req/s |")
    print("| --- | --- | --- | --- | --- | --- |")
    rates: dict[Policy, float] = {}
    b_p50: dict[Policy, float] = {}
    for order, done in runs.items():
        a = [statistics.median(r.waits["A"]) for r in done]
        a_max = [max(r.waits["A"]) for r in done]
        b = [statistics.median(r.waits["B"]) for r in done]
        b_max = [max(r.waits["B"]) for r in done]
        rates[order] = statistics.median(r.served / r.seconds for r in done)
        b_p50[order] = statistics.median(b) * 1000
        print(
            f"| {order} | {_ms(a)} | {_ms(a_max)} | {_ms(b)} | {_ms(b_max)} | {rates[order]:.1f} |"
        )
    ratio = rates["fair"] / rates["fifo"]
    fits = b_p50["fair"] <= args.service_ms
    print(
        f"\nB's median wait under fair share: {b_p50['fair']:.1f} ms"
        f" (target ≤ {args.service_ms} ms, one slot's service time: {'pass' if fits else 'FAIL'})"
    )
    verdict = "pass" if ratio >= 0.95 else "FAIL"
    print(f"throughput fair / FIFO: {ratio:.3f} (target ≥ 0.95: {verdict})")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fairshare", description=__doc__)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--service-ms", type=float, default=20.0)
    parser.add_argument("--flood", type=int, default=200)
    parser.add_argument("--steady", type=int, default=20)
    parser.add_argument("--every-ms", type=float, default=100.0)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main_async(parser.parse_args()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
