"""The bare relay: RemoteLLM's wire protocol with nothing else, to find the floor of its design.

    uv run python -m bench.bare [REQUESTS]
    uv run python -m bench --bare --duties     # the same paths in every workload

Two processes (`bench.bare_broker`, `bench.bare_connector`) on bare `asyncio.Protocol`s
(uvloop where installed), no task, future or coroutine per request, and none of the
product around the protocol: no logging,
metrics, usage rows, limits, queueing, flow control, timeouts, retries or error answers
beyond a bare refusal. What each side does per request is the work a relay of this
design cannot skip, done with the project's own code for it:

- bare broker: split and parse the client's HTTP/1.1 request head
  (`shared.websocket.parse_request_head`), check the bearer key's fingerprint against a
  set, read the model from the JSON body, rewrite the headers (`broker.stream.headers`), encode
  head, body and end frames (`shared.protocol`) into one WebSocket message, write it; on
  the way back, read the connector's WebSocket messages (`shared.websocket.FrameReader`),
  decode their frames and write the HTTP response (chunked when it has no length, one
  write per read of the relay socket) with `X-Request-ID`. A client that hangs up sends a cancel.
- bare connector: the mirror image, with the connector's own HTTP/1.1 client pieces
  (`shared.http1.request_bytes` and `ResponseParser`) on keep-alive
  connections to the stub, what arrives sent on at once, and masked frames as RFC 6455
  requires of a client.

With `--duties` (the "duties" path) the bare broker also keeps the product broker's books
for each request, with the product's own pieces: Prometheus metrics, the token tally,
a usage row on the ledger (SQLite, written in rounds) and the JSON `request finished`
log line. The connector stays bare.

Run alone, the client sends W1's 1 KB request one at a time, alternating blocks of 50
between the direct path, the floor (two byte-for-byte forwarders, `bench.floor`), the
bare relay and the bare relay with duties, and prints each path's added p50/p99 and its
processes' CPU per request. What the bare relay adds over the floor is the protocol's
unavoidable work in Python; what RemoteLLM adds over it is the product around it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from bench.client import Target, timed_fetch
from bench.floor import start_floor
from bench.procs import Child, Children, start_stub
from bench.stats import summary_ms
from shared.eventloop import run

BLOCK = 50


async def start_bare(
    children: Children,
    stub_port: int,
    *,
    duties: bool = False,
    wrap: dict[str, list[str]] | None = None,
    timeout: float = 20,
) -> tuple[list[Child], Target]:
    """A bare broker and connector in front of the stub, and the bench path through them.

    With `duties`, the broker also keeps the product's per-request books; the
    path is then called "duties". `wrap` puts a command (valgrind, say) before the
    "broker" or the "connector" process.
    """
    name = "duties" if duties else "bare"
    wrap = wrap or {}
    argv = [sys.executable, "-m", "bench.bare_broker"] + (["--duties"] if duties else [])
    broker = children.start(f"{name}-broker", [*wrap.get("broker", []), *argv])
    ports = await broker.wait_for(lambda obj: obj if "api" in obj else None, timeout=timeout)
    argv = [sys.executable, "-m", "bench.bare_connector", str(ports["relay"]), str(stub_port)]
    connector = children.start(f"{name}-connector", [*wrap.get("connector", []), *argv])
    await connector.wait_for(lambda obj: obj.get("ready"), timeout=timeout)
    return [broker, connector], Target(name, f"http://127.0.0.1:{ports['api']}/v1")


async def _measure(requests: int) -> dict[str, object]:
    children = Children(Path(tempfile.mkdtemp(prefix="bench-bare-")))
    try:
        _, stub_port = await start_stub(children)
        forwarders, floor = await start_floor(children, stub_port)
        bare_procs, bare = await start_bare(children, stub_port)
        duties_procs, duties = await start_bare(children, stub_port, duties=True)
        targets = {"direct": Target("direct", f"http://127.0.0.1:{stub_port}/v1")}
        targets |= {"floor": floor, "bare": bare, "duties": duties}
        procs = {"floor": forwarders, "bare": bare_procs, "duties": duties_procs}
        spec = "bench size=1024"
        for target in targets.values():
            for _ in range(BLOCK):
                ok, _ = await timed_fetch(target, spec)
                assert ok, f"{target.name} failed its warm-up request"
        samples: dict[str, list[int]] = {name: [] for name in targets}
        cpu = {name: 0.0 for name in procs}
        for _ in range(max(requests // BLOCK, 1)):
            for name, target in targets.items():
                before = sum(sum(c.cpu()) for c in procs.get(name, []))
                for _ in range(BLOCK):
                    ok, latency = await timed_fetch(target, spec)
                    if ok:
                        samples[name].append(latency)
                if name in procs:
                    cpu[name] += sum(sum(c.cpu()) for c in procs[name]) - before
        for target in targets.values():
            await target.close()
        stats = {name: summary_ms(values) for name, values in samples.items()}
        direct = stats["direct"]
        return {
            "requests": {name: len(values) for name, values in samples.items()},
            "p50_ms": {name: round(s["p50"], 3) for name, s in stats.items()},
            "p99_ms": {name: round(s["p99"], 3) for name, s in stats.items()},
            "added_p50_ms": {n: round(stats[n]["p50"] - direct["p50"], 3) for n in procs},
            "added_p99_ms": {n: round(stats[n]["p99"] - direct["p99"], 3) for n in procs},
            "cpu_us_per_request": {
                name: round(cpu[name] / max(len(samples[name]), 1) * 1e6, 1) for name in procs
            },
        }
    finally:
        children.stop_all()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bare", description=__doc__)
    parser.add_argument("requests", type=int, nargs="?", default=2000)
    args = parser.parse_args()
    print(json.dumps(run(_measure(args.requests)), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
