"""The latency floor of any two-process relay on this machine.

    uv run python -m bench.floor [REQUESTS] [--streams N]

Starts the bench stub and two byte-for-byte TCP forwarders, each its own process on
a bare `asyncio.Protocol` (uvloop where installed): client -> forwarder A ->
forwarder B -> stub. The forwarders parse nothing and add no framing: they stand for
a broker and a connector that cost nothing but their two socket hops. The client
sends W1's 1 KB request one at a time, alternating blocks between the direct path
and this chain, and prints the added p50/p99 and the forwarders' CPU per request.
Whatever a real relay adds on top of this floor is its own work.

With `--streams N` it runs W3's paced streams instead (N concurrent streams of 64
events 20 ms apart, starts spread over 20 ms, three rounds per path) and prints the
added per-event delay: the floor of W3 at that concurrency on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

from bench.client import StreamResult, Target, timed_fetch
from bench.procs import LISTEN_BACKLOG, Child, Children, start_stub
from bench.stats import summary_ms
from bench.streams import aggregate, paced_round
from shared.eventloop import run

BLOCK = 50
STREAM_EVENTS = 64
STREAM_INTERVAL_MS = 20
STREAM_ROUNDS = 3


class _Pipe(asyncio.Protocol):
    """One side of a forwarded connection: what it receives, the peer sends on."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Pipe | None = None
        self.pending: list[bytes] = []
        self.dialing: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self.pending.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


async def _forward(port: int, to_port: int) -> None:
    loop = asyncio.get_running_loop()

    def accepted() -> _Pipe:
        inbound = _Pipe()

        async def dial() -> None:
            _, outbound = await loop.create_connection(_Pipe, "127.0.0.1", to_port)
            outbound.peer, inbound.peer = inbound, outbound
            assert outbound.transport is not None
            for data in inbound.pending:
                outbound.transport.write(data)
            inbound.pending.clear()

        inbound.dialing = loop.create_task(dial())
        return inbound

    server = await loop.create_server(accepted, "127.0.0.1", port, backlog=LISTEN_BACKLOG)
    print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
    await asyncio.Event().wait()


async def _start_forwarder(children: Children, name: str, to_port: int) -> tuple[Child, int]:
    argv = [sys.executable, "-m", "bench.floor", "--forward", str(to_port)]
    child = children.start(name, argv)
    port = await child.wait_for(lambda obj: obj.get("port"), timeout=20)
    return child, int(port)


async def start_floor(children: Children, stub_port: int) -> tuple[list[Child], Target]:
    """The two forwarders in front of the stub, and the bench path through them."""
    forwarder_b, b_port = await _start_forwarder(children, "forwarder-b", stub_port)
    forwarder_a, a_port = await _start_forwarder(children, "forwarder-a", b_port)
    return [forwarder_a, forwarder_b], Target("floor", f"http://127.0.0.1:{a_port}/v1")


async def _measure(requests: int) -> dict[str, object]:
    children = Children(Path(tempfile.mkdtemp(prefix="bench-floor-")))
    try:
        _, stub_port = await start_stub(children)
        forwarders, floor = await start_floor(children, stub_port)
        targets = {"direct": Target("direct", f"http://127.0.0.1:{stub_port}/v1"), "floor": floor}
        spec = "bench size=1024"
        for target in targets.values():
            for _ in range(BLOCK):
                await timed_fetch(target, spec)
        samples: dict[str, list[int]] = {name: [] for name in targets}
        cpu_before = sum(sum(c.cpu()) for c in forwarders)
        for _ in range(max(requests // BLOCK, 1)):
            for name, target in targets.items():
                for _ in range(BLOCK):
                    ok, latency = await timed_fetch(target, spec)
                    if ok:
                        samples[name].append(latency)
        cpu = sum(sum(c.cpu()) for c in forwarders) - cpu_before
        for target in targets.values():
            await target.close()
        stats = {name: summary_ms(values) for name, values in samples.items()}
        return {
            "requests": {name: len(values) for name, values in samples.items()},
            "p50_ms": {name: round(s["p50"], 3) for name, s in stats.items()},
            "p99_ms": {name: round(s["p99"], 3) for name, s in stats.items()},
            "added_p50_ms": round(stats["floor"]["p50"] - stats["direct"]["p50"], 3),
            "added_p99_ms": round(stats["floor"]["p99"] - stats["direct"]["p99"], 3),
            "forwarders_cpu_us_per_request": round(cpu / len(samples["floor"]) * 1e6, 1),
        }
    finally:
        children.stop_all()


async def _measure_streams(n: int) -> dict[str, object]:
    children = Children(Path(tempfile.mkdtemp(prefix="bench-floor-")))
    try:
        _, stub_port = await start_stub(children)
        forwarders, floor = await start_floor(children, stub_port)
        targets = {"direct": Target("direct", f"http://127.0.0.1:{stub_port}/v1"), "floor": floor}
        spec = f"bench events={STREAM_EVENTS} interval_ms={STREAM_INTERVAL_MS} ttft_ms=0"
        spread = STREAM_INTERVAL_MS * 1_000_000
        for target in targets.values():  # open the connection pools first, unmeasured
            await paced_round(target, n, "bench events=4 interval_ms=20 ttft_ms=0", spread)
        collected: dict[str, list[StreamResult]] = {name: [] for name in targets}
        cpu_before = sum(sum(c.cpu()) for c in forwarders)
        for _ in range(STREAM_ROUNDS):
            for name, target in targets.items():
                collected[name] += await paced_round(target, n, spec, spread)
                await asyncio.sleep(0.1)
        cpu = sum(sum(c.cpu()) for c in forwarders) - cpu_before
        for target in targets.values():
            await target.close()
        agg = {name: aggregate(results, STREAM_EVENTS) for name, results in collected.items()}
        delay = {name: a["event_delay_ms"] for name, a in agg.items()}
        return {
            "streams": n,
            "event_delay_p50_ms": {name: round(d["p50"], 3) for name, d in delay.items()},
            "event_delay_p99_ms": {name: round(d["p99"], 3) for name, d in delay.items()},
            "added_p50_ms": round(delay["floor"]["p50"] - delay["direct"]["p50"], 3),
            "added_p99_ms": round(delay["floor"]["p99"] - delay["direct"]["p99"], 3),
            "delivered_ratio": {name: a["delivered_ratio"] for name, a in agg.items()},
            "forwarders_cpu_us_per_event": round(cpu / max(agg["floor"]["delivered"], 1) * 1e6, 1),
        }
    finally:
        children.stop_all()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("requests", type=int, nargs="?", default=2000)
    parser.add_argument("--streams", type=int, help="run W3's paced streams at this concurrency")
    parser.add_argument("--forward", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.forward is not None:
        run(_forward(0, args.forward))
        return 0
    measure = _measure_streams(args.streams) if args.streams else _measure(args.requests)
    print(json.dumps(run(measure), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
