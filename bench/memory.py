"""W7: memory. Broker RSS per idle connector and per active stream; connector RSS idle."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import aiohttp

from bench.client import StreamResult, Target, get_json, stream, wait_until
from bench.context import Context
from bench.procs import CONNECTOR_TOKEN, MODEL, USER_KEY, start_broker, start_connector
from bench.report import Row, WorkloadResult, at_most
from shared import protocol as p

KIB = 1024
MIB = 1024 * 1024
CONNECT_PARALLEL = 50
MAX_ACTIVE = 1000
"""Active streams W7 opens at most (the connector's advertised concurrency is 1024)."""
SETTLE_S = 1.0


async def _attach(
    session: aiohttp.ClientSession, port: int, i: int
) -> aiohttp.ClientWebSocketResponse:
    """One raw connector: real upgrade, Hello, Welcome; then it only answers pings."""
    ws = await session.ws_connect(
        f"ws://127.0.0.1:{port}/relay",
        headers={"Authorization": f"Bearer {CONNECTOR_TOKEN}"},
        autoping=True,
    )
    hello = p.Hello(p.PROTOCOL_VERSION, f"idle-{i}", ("idle-model",), 1)
    await ws.send_bytes(p.encode(hello))
    msg = await ws.receive(timeout=10)
    if msg.type is not aiohttp.WSMsgType.BINARY or not isinstance(p.decode(msg.data)[0], p.Welcome):
        raise RuntimeError(f"idle connector {i} got no Welcome: {msg.type!r}")
    return ws


async def _drain(ws: aiohttp.ClientWebSocketResponse) -> None:
    # Reading is what makes aiohttp answer the broker's heartbeat pings.
    with contextlib.suppress(aiohttp.ClientError, asyncio.CancelledError):
        async for _ in ws:
            pass


async def _idle_connectors(ctx: Context, count: int) -> dict[str, Any]:
    broker, port = await start_broker(ctx.children, name="broker-w7")
    sockets: list[aiohttp.ClientWebSocketResponse] = []
    readers: list[asyncio.Task[None]] = []
    try:
        # No pool limit: every idle connector holds its connection for good.
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=30),
        ) as session:
            # One connector first, so what every broker allocates once is in the baseline.
            warm = await _attach(session, port, -1)
            await warm.close()
            await asyncio.sleep(SETTLE_S)
            rss0 = broker.rss()
            limit = asyncio.Semaphore(CONNECT_PARALLEL)

            async def attach(i: int) -> aiohttp.ClientWebSocketResponse:
                async with limit:
                    return await _attach(session, port, i)

            started = time.monotonic()
            sockets = list(await asyncio.gather(*(attach(i) for i in range(count))))
            attach_s = time.monotonic() - started
            readers = [asyncio.create_task(_drain(ws)) for ws in sockets]
            await asyncio.sleep(SETTLE_S)
            health = await get_json(f"http://127.0.0.1:{port}/health")
            rss1 = broker.rss()
            for ws in sockets:
                await ws.close()
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
    finally:
        broker.stop()
    return {
        "connectors": count,
        "connected_per_broker": health.get("connectors"),
        "broker_rss_0_mib": rss0 / MIB,
        "broker_rss_n_mib": rss1 / MIB,
        "per_connector_kib": (rss1 - rss0) / count / KIB,
        "attach_s": round(attach_s, 2),
    }


async def _active_streams(ctx: Context, count: int) -> dict[str, Any]:
    """A fresh broker and connector, so earlier workloads' heap high-water marks
    do not hide the growth; RSS before and with `count` streams open."""
    stub_port = int(ctx.stub_url.rsplit(":", 1)[1])
    broker, port = await start_broker(ctx.children, name="broker-w7-streams")
    connector = start_connector(ctx.children, port, stub_port, name="connector-w7")
    base = f"http://127.0.0.1:{port}"
    target = Target("remotellm-w7", base + "/v1")
    tasks: list[asyncio.Task[StreamResult]] = []
    try:

        async def registered() -> bool:
            listed = await get_json(base + "/v1/models", Authorization=f"Bearer {USER_KEY}")
            return any(m.get("id") == MODEL for m in listed.get("data", []))

        await wait_until(registered, 30, "the W7 connector registering")
        # Warm both processes (imports, pools, first allocations) before the baseline.
        await asyncio.gather(
            *(stream(target, "bench events=2 ttft_ms=0", time.monotonic_ns()) for _ in range(10))
        )
        await asyncio.sleep(SETTLE_S)
        rss_b0, rss_c0 = broker.rss(), connector.rss()
        served0 = (await get_json(ctx.stub_url + "/_stats"))["requests"]
        spec = "bench events=120 interval_ms=1000 ttft_ms=0"
        tasks = [
            asyncio.create_task(stream(target, spec, time.monotonic_ns())) for _ in range(count)
        ]

        async def all_in_flight() -> bool:
            return int((await get_json(base + "/health"))["in_flight"]) >= count

        await wait_until(all_in_flight, 60, f"{count} streams in flight at the broker")
        await asyncio.sleep(SETTLE_S)
        rss_b1, rss_c1 = broker.rss(), connector.rss()
        served = (await get_json(ctx.stub_url + "/_stats"))["requests"] - served0
    finally:
        # Closing the client's session hangs up every stream at once.
        await target.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        connector.stop()
        broker.stop()
    return {
        "streams": count,
        "reached_llm_server": served,
        "broker_rss_0_mib": rss_b0 / MIB,
        "broker_rss_n_mib": rss_b1 / MIB,
        "broker_per_stream_kib": (rss_b1 - rss_b0) / count / KIB,
        "connector_rss_0_mib": rss_c0 / MIB,
        "connector_rss_n_mib": rss_c1 / MIB,
        "connector_per_stream_kib": (rss_c1 - rss_c0) / count / KIB,
    }


async def w7(ctx: Context) -> WorkloadResult:
    result = WorkloadResult("W7")
    n = ctx.plan.w7_connectors
    idle = await _idle_connectors(ctx, n)
    streams = min(n, MAX_ACTIVE)
    active = await _active_streams(ctx, streams)
    per_idle = Row(
        f"W7 {n} idle connectors",
        "broker RSS per idle connector (KiB)",
        {"remotellm": idle["per_connector_kib"]},
        compare="none",
    )
    per_idle.check("≤ 12 KiB", at_most(idle["per_connector_kib"], 12.0))
    per_stream = Row(
        f"W7 {streams} active streams",
        "broker RSS per active stream (KiB)",
        {"remotellm": active["broker_per_stream_kib"]},
        compare="none",
        note=f"{active['reached_llm_server']} of {streams} streams reached the stub;"
        f" connector {active['connector_per_stream_kib']:.1f} KiB per stream",
    )
    idle_rss = Row(
        "W7 connector",
        "connector RSS idle (MiB)",
        {"remotellm": active["connector_rss_0_mib"]},
        compare="none",
        note="fresh connector, after 10 warm-up requests",
    )
    base = Row(
        "W7 broker",
        "broker RSS, no connector (MiB)",
        {"remotellm": idle["broker_rss_0_mib"]},
        compare="none",
    )
    result.rows += [per_idle, per_stream, idle_rss, base]
    result.detail = {"idle_connectors": idle, "active_streams": active}
    return result
