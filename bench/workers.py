"""Throughput of one broker process against `serve --workers 2`, on this machine.

    uv run python -m bench.workers [--seconds 10] [--concurrency 64] [--rounds 2]

Both setups run in cluster mode against a throwaway redis-server (Debian's; `.ci/run`
installs it): "one" is `serve` as a single process, "workers=2" is `serve --workers 2`
(two processes on one port, SO_REUSEPORT). Connector processes (bench.procs, serving the
bench stub) attach to the broker's port until every broker process holds one, because a
request is served by the process it lands on (or, once instances forward, by a peer), and
the point here is the broker's own work. Then `--concurrency` clients send small non-streamed
requests back to back over kept-alive connections for `--seconds`, and the table gives
requests per second, the median and p99 latency and the errors, per setup, rounds taking
turns. Nothing is asserted; it exits 0 whatever it finds.

On two cores the client, the stub, the connectors and the brokers share the CPU, so the
gain of a second broker process is bounded by what the others leave it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import socket
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.client import Target, timed_fetch
from bench.procs import Children, broker_argv, broker_port_of, start_connector, start_stub

SECRET = "bench-workers-cluster-secret-0123456789"
SPEC = "bench size=256"


@dataclass
class Result:
    setup: str
    seconds: float = 0.0
    latencies: list[int] = field(default_factory=list)
    errors: int = 0

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def start_redis(children: Children, folder: Path) -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("bench.workers needs Debian's redis-server (.ci/run installs it)")
    port = _free_port()
    argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", ""]
    children.start("redis", [*argv, "--appendonly", "no", "--dir", str(folder)])
    async with asyncio.timeout(10):
        while True:
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                return f"redis://127.0.0.1:{port}/0"
            await asyncio.sleep(0.05)


async def _pids_with_connectors(port: int, tries: int = 40) -> dict[int, int]:
    """{pid: connectors} of the broker processes behind `port`, seen over new connections."""
    seen: dict[int, int] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        for _ in range(tries):
            async with s.get(f"http://127.0.0.1:{port}/health") as resp:
                health = await resp.json()
                seen[int(health["pid"])] = int(health["connectors"])
    return seen


async def start_setup(
    children: Children, name: str, redis_url: str, workers: int, stub_port: int
) -> int:
    """A broker (or a supervisor of `workers`), with a connector in every process; its port."""
    argv = [*broker_argv(), "--redis-url", redis_url, "--cluster-secret", SECRET]
    if workers > 1:
        argv += ["--workers", str(workers)]
    broker = children.start(name, argv)
    port = int(await broker.wait_for(broker_port_of, timeout=60))
    for n in range(8 * workers):
        start_connector(children, port, stub_port, name=f"{name}-connector-{n}")
        async with asyncio.timeout(30):
            while True:  # until the new connector's link is up on some process
                seen = await _pids_with_connectors(port)
                if sum(seen.values()) > n:
                    break
                await asyncio.sleep(0.1)
        if len(seen) >= workers and all(seen.values()):
            return port
    raise RuntimeError(f"{name}: connectors did not reach every worker")


async def load(name: str, port: int, seconds: float, concurrency: int) -> Result:
    result = Result(name)
    target = Target(name, f"http://127.0.0.1:{port}/v1")
    end = time.monotonic() + seconds

    async def client() -> None:
        while time.monotonic() < end:
            ok, latency = await timed_fetch(target, SPEC)
            if ok:
                result.latencies.append(latency)
            else:
                result.errors += 1

    for _ in range(3):  # warm the connections and the processes
        await timed_fetch(target, SPEC)
    started = time.monotonic()
    try:
        await asyncio.gather(*(client() for _ in range(concurrency)))
    finally:
        await target.close()
    result.seconds = time.monotonic() - started
    return result


def table(results: list[Result]) -> str:
    rows = ["| setup | req/s | p50 ms | p99 ms | errors |", "| --- | ---: | ---: | ---: | ---: |"]
    for setup in dict.fromkeys(r.setup for r in results):
        mine = [r for r in results if r.setup == setup]
        latencies = sorted(x for r in mine for x in r.latencies)
        rate = statistics.median(r.rate for r in mine)
        p50 = latencies[len(latencies) // 2] / 1e6 if latencies else float("nan")
        p99 = latencies[int(len(latencies) * 0.99)] / 1e6 if latencies else float("nan")
        errors = sum(r.errors for r in mine)
        rows.append(f"| {setup} | {rate:.0f} | {p50:.2f} | {p99:.2f} | {errors} |")
    return "\n".join(rows)


async def measure(seconds: float, concurrency: int, rounds: int, folder: Path) -> list[Result]:
    children = Children(folder / "logs")
    results: list[Result] = []
    try:
        redis_url = await start_redis(children, folder)
        _, stub_port = await start_stub(children)
        ports = {
            "one": await start_setup(children, "one", redis_url, 1, stub_port),
            "workers=2": await start_setup(children, "workers2", redis_url, 2, stub_port),
        }
        for _ in range(rounds):
            for name, port in ports.items():
                results.append(await load(name, port, seconds, concurrency))
    finally:
        children.stop_all()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="load per setup and round")
    parser.add_argument("--concurrency", type=int, default=64, help="clients at once")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, setups taking turns")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="remotellm-bench-workers-"))
    try:
        results = asyncio.run(measure(args.seconds, args.concurrency, args.rounds, folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
