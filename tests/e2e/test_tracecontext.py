"""W3C trace context across real processes: headers unchanged, the trace id in both logs."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import aiohttp

from tests.e2e.test_processes import KEY, Proc, start_pair
from tests.stub_llm import StubLLM

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"
TRACESTATE = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"


async def chat(url: str, headers: dict[str, str], **extra: Any) -> bytes:
    body = {"model": "stub-model", "messages": [{"role": "user", "content": "hi"}], **extra}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/v1/chat/completions", json=body, headers=headers) as resp,
    ):
        return await resp.read()


async def test_traceparent_reaches_the_llm_unchanged_and_both_logs_carry_its_trace_id(
    stub: StubLLM, procs: list[Proc]
) -> None:
    broker, connector, url = await start_pair(stub, procs)
    auth = {"Authorization": f"Bearer {KEY}"}
    trace = {"traceparent": TRACEPARENT, "tracestate": TRACESTATE}
    await chat(url, {**auth, **trace, "X-Request-ID": "trace-plain"})
    await chat(
        url,
        {**auth, **trace, "X-Request-ID": "trace-stream"},
        stream=True,
        x_stub={"mode": "events", "events": 3},
    )
    # A browser's request (it has an Origin) is served by aiohttp rather than the express lane.
    await chat(
        url, {**auth, **trace, "X-Request-ID": "trace-aiohttp", "Origin": "https://a.example"}
    )
    origin = {"Origin": "https://a.example"}
    await chat(url, {**trace, **origin, "X-Request-ID": "trace-aiohttp-refused"})
    bad = "00-not-a-trace"
    await chat(url, {**auth, "traceparent": bad, "X-Request-ID": "trace-invalid"})
    await chat(url, {**trace, "X-Request-ID": "trace-refused"})  # no key: the broker's 401
    assert [(s.headers.get("traceparent"), s.headers.get("tracestate")) for s in stub.seen] == [
        (TRACEPARENT, TRACESTATE),
        (TRACEPARENT, TRACESTATE),
        (TRACEPARENT, TRACESTATE),
        (bad, None),
    ]
    await asyncio.gather(
        connector.signal_and_wait(signal.SIGTERM), broker.signal_and_wait(signal.SIGTERM)
    )

    def lines(proc: Proc, request_id: str) -> list[dict[str, Any]]:
        return [line for line in proc.json_lines() if line.get("request_id") == request_id]

    for request_id in ("trace-plain", "trace-stream", "trace-aiohttp"):
        for proc, event in ((broker, "request finished"), (connector, "request served")):
            found = lines(proc, request_id)
            assert event in {line["event"] for line in found}
            assert all(line.get("trace_id") == TRACE for line in found), found
    for request_id in ("trace-refused", "trace-aiohttp-refused"):
        refused = lines(broker, request_id)
        assert refused and all(line.get("trace_id") == TRACE for line in refused)
    invalid = lines(broker, "trace-invalid") + lines(connector, "trace-invalid")
    assert len(invalid) >= 2 and not any("trace_id" in line for line in invalid)
