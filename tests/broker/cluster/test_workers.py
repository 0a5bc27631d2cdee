"""`remotellm-broker serve --workers N`: N processes on one port, supervised."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path

import aiohttp
import pytest

from broker.cluster.workers import WorkersError, worker_argv, worker_urls
from broker.settings import BrokerSettings
from tests.e2e.test_processes import Proc, event_named

pytestmark = pytest.mark.timeout(180)

SECRET = "workers-test-cluster-secret-0123456789"


def serve_args(redis_url: str, *extra: str) -> list[str]:
    return [
        "serve",
        "--host=127.0.0.1",
        f"--redis-url={redis_url}",
        f"--cluster-secret={SECRET}",
        "--log-format=json",
        *extra,
    ]


def events(proc: Proc, name: str) -> list[dict[str, object]]:
    return [line for line in proc.json_lines() if line.get("event") == name]


async def answering_pids(url: str, wanted: set[int]) -> set[int]:
    """The pids that answer /health on new connections, until all of `wanted` have."""
    seen: set[int] = set()
    async with asyncio.timeout(30):
        while not wanted <= seen:
            connector = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(connector=connector) as session:
                for _ in range(20):
                    async with session.get(f"{url}/health") as resp:
                        seen.add(int((await resp.json())["pid"]))
    return seen


def alive(pid: int) -> bool:
    """Running (an exited orphan nobody has reaped yet, a zombie, counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "\nState:\tZ" not in status


async def test_two_workers_share_one_port_restart_when_killed_and_stop_on_sigterm(
    redis_url: str,
) -> None:
    proc = await Proc.start("broker.cli", *serve_args(redis_url, "--port=0", "--workers=2"))
    try:
        await proc.wait_line(event_named("broker listening"), timeout=60)
        async with asyncio.timeout(60):
            while len(events(proc, "broker listening")) < 2:
                await asyncio.sleep(0.05)
        ports = {line["port"] for line in events(proc, "broker listening")}
        assert len(ports) == 1
        url = f"http://127.0.0.1:{ports.pop()}"
        started = events(proc, "worker started")
        pids = {int(str(line["pid"])) for line in started}
        assert len(pids) == 2
        assert {line["worker"] for line in started} == {0, 1}
        # Each worker has an internal URL of its own, for requests other brokers forward.
        assert len({line["internal_url"] for line in started}) == 2
        assert await answering_pids(url, pids) == pids

        # A worker killed outright is started again; the other answers meanwhile.
        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        await proc.wait_line(event_named("worker exited unexpectedly"))
        async with asyncio.timeout(60):
            while len(events(proc, "worker started")) < 3:
                await asyncio.sleep(0.05)
        new = int(str(events(proc, "worker started")[-1]["pid"]))
        assert new not in pids
        now = (pids - {victim}) | {new}
        assert await answering_pids(url, now) == now

        # SIGTERM to the supervisor: every worker drains and exits, then the supervisor.
        assert await proc.signal_and_wait(signal.SIGTERM, timeout=60) == 0
        assert not any(alive(pid) for pid in now)
        assert len(events(proc, "stopped")) == 2
    finally:
        await proc.kill()


async def test_workers_leave_when_their_supervisor_is_killed(redis_url: str) -> None:
    proc = await Proc.start("broker.cli", *serve_args(redis_url, "--port=0", "--workers=2"))
    try:
        async with asyncio.timeout(60):
            while len(events(proc, "broker listening")) < 2:
                await asyncio.sleep(0.05)
        pids = {int(str(line["pid"])) for line in events(proc, "worker started")}
    finally:
        await proc.kill()  # kill -9: the supervisor cannot pass anything on
    async with asyncio.timeout(30):
        while any(alive(pid) for pid in pids):
            await asyncio.sleep(0.1)


async def test_a_worker_that_keeps_dying_stops_the_supervisor(redis_url: str) -> None:
    # The port is taken by a socket without SO_REUSEPORT: every worker fails to listen.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = await Proc.start(
            "broker.cli", *serve_args(redis_url, f"--port={port}", "--workers=1")
        )
        try:
            assert await proc.ended(timeout=150) == 1
        finally:
            await proc.kill()
    assert len(events(proc, "worker exited unexpectedly")) == 5
    assert events(proc, "worker keeps dying: stopping all workers")
    assert "cannot listen" in "\n".join(proc.lines)


async def test_workers_need_redis() -> None:
    proc = await Proc.start("broker.cli", "serve", "--workers=2", "--port=0")
    assert await proc.ended() == 2
    assert "--workers needs --redis-url" in "\n".join(proc.lines)


def test_workers_run_the_command_without_workers_and_take_internal_ports_in_a_row() -> None:
    assert worker_argv(["serve", "--workers", "3", "--port=1", "--workers=2"]) == [
        "serve",
        "--port=1",
    ]
    cluster = {"redis_url": "redis://127.0.0.1:1/0", "cluster_secret": SECRET}
    settings = BrokerSettings(**cluster, internal_url="http://10.0.0.5:9000")
    assert worker_urls(settings, 8443, 3) == [
        "http://10.0.0.5:9000",
        "http://10.0.0.5:9001",
        "http://10.0.0.5:9002",
    ]
    with pytest.raises(WorkersError, match="give --internal-url a port of its own"):
        worker_urls(settings, 9001, 3)
    mine = worker_urls(BrokerSettings(**cluster, host="127.0.0.1"), 8443, 2)
    assert len(set(mine)) == 2
    assert all(url.startswith("http://127.0.0.1:") for url in mine)
