"""The load generator's client side: one target per path, requests, streams, open loop.

All latencies are measured with `time.monotonic_ns()`, the clock the stub stamps
its events with. Open-loop work is scheduled on a fixed timetable and every
latency counts from the *scheduled* send time, so a slow server cannot slow the
arrivals down and hide its own queueing (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp

from bench.procs import MODEL, USER_KEY

EVENT: Final = re.compile(rb"@(\d+):(\d+)@")
REQUEST_TIMEOUT: Final = 30.0


def chat_body(spec: str, *, stream: bool) -> bytes:
    """A chat request whose last message tells the stub what to answer (see bench.stub)."""
    body = {"model": MODEL, "stream": stream, "messages": [{"role": "user", "content": spec}]}
    return json.dumps(body, separators=(",", ":")).encode()


@dataclass
class Target:
    """One path to the stub: direct, through RemoteLLM, or through LiteLLM."""

    name: str
    base_url: str
    """Ends before `/chat/completions`, e.g. http://127.0.0.1:8000/v1."""
    session: aiohttp.ClientSession = field(init=False)

    def __post_init__(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=False),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            headers={
                "Authorization": f"Bearer {USER_KEY}",
                "Content-Type": "application/json",
            },
            auto_decompress=False,
        )

    @property
    def url(self) -> str:
        return self.base_url + "/chat/completions"

    async def close(self) -> None:
        await self.session.close()


async def fetch(target: Target, spec: str) -> tuple[int, int]:
    """One non-streamed request; (status, body bytes)."""
    async with target.session.post(target.url, data=chat_body(spec, stream=False)) as resp:
        body = await resp.read()
        return resp.status, len(body)


async def timed_fetch(target: Target, spec: str) -> tuple[bool, int]:
    """(ok, latency ns) of one non-streamed request, measured from now."""
    start = time.monotonic_ns()
    try:
        status, _ = await asyncio.wait_for(fetch(target, spec), REQUEST_TIMEOUT)
    except (aiohttp.ClientError, OSError, TimeoutError):
        return False, time.monotonic_ns() - start
    return status == 200, time.monotonic_ns() - start


@dataclass
class StreamResult:
    """What one streamed response delivered, as the client saw it."""

    scheduled_ns: int
    ok: bool = False
    status: int = 0
    ttft_ns: int | None = None
    delays_ns: list[int] = field(default_factory=list)
    """recv - emit of each event, in arrival order."""
    emits_ns: list[int] = field(default_factory=list)
    received: int = 0
    out_of_order: int = 0
    error: str = ""


async def stream(
    target: Target,
    spec: str,
    scheduled_ns: int,
    *,
    stop_after: int | None = None,
    on_stop: Callable[[], None] | None = None,
) -> StreamResult:
    """Read one SSE stream, timing each event; optionally hang up after `stop_after` events."""
    result = StreamResult(scheduled_ns)
    last = -1
    try:
        async with target.session.post(target.url, data=chat_body(spec, stream=True)) as resp:
            result.status = resp.status
            if resp.status != 200:
                result.error = f"HTTP {resp.status}"
                await resp.read()
                return result
            pending = b""
            async for chunk in resp.content.iter_any():
                now = time.monotonic_ns()
                pending += chunk
                end = pending.rfind(b"\n\n")
                if end < 0:
                    continue
                done, pending = pending[:end], pending[end + 2 :]
                for match in EVENT.finditer(done):
                    index, emitted = int(match[1]), int(match[2])
                    if result.ttft_ns is None:
                        result.ttft_ns = now - scheduled_ns
                    if index < last:
                        result.out_of_order += 1
                    last = max(last, index)
                    result.received += 1
                    result.delays_ns.append(now - emitted)
                    result.emits_ns.append(emitted)
                if stop_after is not None and result.received >= stop_after:
                    if on_stop is not None:
                        on_stop()
                    resp.close()
                    result.ok = True
                    return result
            result.ok = True
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        result.error = str(exc) or type(exc).__name__
    return result


async def at(when_ns: int) -> int:
    """Sleep until about `when_ns`; return the time latencies are counted from.

    That is the scheduled time, or now if the timer fired early (uvloop's
    millisecond timers can): lateness is charged to the server, earliness is
    not credited to it.
    """
    delay = when_ns - time.monotonic_ns()
    if delay > 0:
        await asyncio.sleep(delay / 1e9)
    return max(when_ns, time.monotonic_ns())


@dataclass
class OpenLoopResult:
    offered: int
    latencies_ns: list[int]
    errors: int
    dropped: int
    """Arrivals not sent because too many requests were already outstanding."""
    duration_s: float
    client_lag_ns: list[int] = field(default_factory=list)
    """How late the client's own 5 ms ticks woke up: its stalls, not the server's."""


LAG_TICK_NS = 5_000_000


async def _lag_probe(samples: list[int]) -> None:
    """Record how late a 5 ms timer fires, until cancelled."""
    while True:
        due = time.monotonic_ns() + LAG_TICK_NS
        await asyncio.sleep(LAG_TICK_NS / 1e9)
        samples.append(max(time.monotonic_ns() - due, 0))


async def open_loop(
    rate: float,
    duration: float,
    send: Callable[[], Awaitable[bool]],
    max_outstanding: int = 2000,
) -> OpenLoopResult:
    """Call `send` at `rate` per second for `duration` seconds on a fixed timetable.

    A latency runs from the scheduled time to completion. Arrivals past
    `max_outstanding` open requests are dropped and counted as errors.
    """
    count = max(int(rate * duration), 1)
    period = 1e9 / rate
    start = time.monotonic_ns() + 5_000_000
    latencies: list[int] = []
    errors = 0
    dropped = 0
    outstanding: set[asyncio.Task[None]] = set()

    async def one(scheduled: int) -> None:
        nonlocal errors
        try:
            ok = await asyncio.wait_for(send(), REQUEST_TIMEOUT)
        except (aiohttp.ClientError, OSError, TimeoutError):
            ok = False
        if ok:
            latencies.append(time.monotonic_ns() - scheduled)
        else:
            errors += 1

    lag: list[int] = []
    probe = asyncio.create_task(_lag_probe(lag))
    for i in range(count):
        origin = await at(start + int(i * period))
        if len(outstanding) >= max_outstanding:
            dropped += 1
            continue
        task = asyncio.create_task(one(origin))
        outstanding.add(task)
        task.add_done_callback(outstanding.discard)
    if outstanding:
        await asyncio.gather(*outstanding, return_exceptions=True)
    probe.cancel()
    duration = (time.monotonic_ns() - start) / 1e9
    return OpenLoopResult(count, latencies, errors + dropped, dropped, duration, lag)


async def get_json(url: str, timeout: float = 5.0, **headers: str) -> Any:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
        session.get(url, headers=headers) as resp,
    ):
        return await resp.json(content_type=None)


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Poll `check` every 50 ms until it is true; RuntimeError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError, ValueError):
            if await check():
                return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{what} did not happen within {timeout:g} s")
