"""Where a broker's memory per idle connector goes: tracemalloc by source line.

    uv run python -m bench.tracemem [N]

runs a broker in this process with tracemalloc on, attaches N (default 1000) raw
connectors from a child process (real upgrade, Hello, Welcome, as in W7), and
prints the Python allocations that grew, per connector, by the line that made
them. The child keeps the client side's allocations out of the picture.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import tracemalloc

import aiohttp
import structlog
from pydantic import SecretStr

from bench.memory import _attach, _drain
from bench.procs import CONNECTOR_TOKEN
from bench.stub import run
from broker.server import BrokerServer
from broker.settings import BrokerSettings

TOP = 25


async def _client(port: int, count: int) -> None:
    """The child: attach `count` connectors, say so, hold them until stdin closes."""
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        warm = await _attach(session, port, -1)
        await warm.close()
        await asyncio.sleep(0.5)
        print("warm", flush=True)
        sockets = [await _attach(session, port, i) for i in range(count)]
        readers = [asyncio.create_task(_drain(ws)) for ws in sockets]
        await asyncio.sleep(0.5)
        print("attached", flush=True)
        await loop.run_in_executor(None, sys.stdin.read)
        for ws in sockets:
            await ws.close()
        for task in readers:
            task.cancel()


async def _broker(count: int) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    tracemalloc.start(1)
    settings = BrokerSettings(
        host="127.0.0.1",
        port=0,
        connector_token=[SecretStr(CONNECTOR_TOKEN)],
        log_level="error",
        database_url="sqlite+aiosqlite:///:memory:",
        session_secret=SecretStr("bench-session-secret"),
    )
    server = BrokerServer(settings)
    await server.start()
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.tracemem",
        "--client",
        str(server.port),
        str(count),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None and child.stdin is not None
    try:
        await child.stdout.readline()  # warm
        gc.collect()
        before = tracemalloc.take_snapshot()
        await child.stdout.readline()  # attached
        gc.collect()
        after = tracemalloc.take_snapshot()
        print(f"connectors attached: {len(server.hub.links)}")
    finally:
        child.stdin.close()
        await child.wait()
        await server.stop()
    stats = after.compare_to(before, "lineno")
    total = sum(s.size_diff for s in stats)
    print(f"Python allocations per idle connector: {total / count / 1024:.2f} KiB")
    for stat in stats[:TOP]:
        frame = stat.traceback[0]
        where = frame.filename.split("site-packages/")[-1]
        print(
            f"{stat.size_diff / count:8.0f} B {stat.count_diff / count:6.1f} objects"
            f"  {where}:{frame.lineno}"
        )


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        run(_client(int(sys.argv[2]), int(sys.argv[3])))
        return 0
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    run(_broker(count))
    return 0


if __name__ == "__main__":
    sys.exit(main())
