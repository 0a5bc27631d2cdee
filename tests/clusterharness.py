"""A whole cluster on loopback: Redis, PostgreSQL, broker processes and HAProxy in front.

`running_cluster()` starts, each on a free port of 127.0.0.1: a redis-server
(tests/redisserver.py), a PostgreSQL cluster (tests/pgserver.py), `count` real
`remotellm-broker serve` processes in cluster mode (one shared cluster secret, the
PostgreSQL store, one API key and one connector token) and Debian's HAProxy balancing
`leastconn` over them with `option httpchk GET /readyz`. Everything it started is stopped
when the block ends, whether the test passed or not.

Brokers are real processes (`python -m broker.cli`), so a test can `kill -9` one and start
it again on the same port; HAProxy's runtime socket tells what its health checks think.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tests.e2e.test_processes import Proc, event_named
from tests.pgserver import running_postgres
from tests.redisserver import RedisServer, free_port

KEY = "sk-cluster-harness-key"
TOKEN = "cluster-harness-connector-token"
CLUSTER_SECRET = "cluster-harness-secret-0123456789abcdef"

HAPROXY_CONFIG = """\
global
    maxconn 4096
    stats socket {stats} mode 600 level admin

defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 660s
    # A WebSocket (a connector's /relay link) is a tunnel once upgraded: keep it for hours.
    timeout tunnel 1h
    timeout http-keep-alive 30s
    timeout http-request 30s
    # A connection refused by a dead broker is retried on another one.
    retries 2
    option redispatch 1

frontend api
    bind 127.0.0.1:{port}
    default_backend brokers

backend brokers
    balance leastconn
    option httpchk GET /readyz
    http-check expect status 200
    # Checked twice a second here so tests are quick; a second or two is fine in production.
    default-server inter 500ms fall 2 rise 2
{servers}
"""


def haproxy_config(port: int, brokers: list[int], stats: Path) -> str:
    servers = "\n".join(
        f"    server b{i} 127.0.0.1:{broker} check" for i, broker in enumerate(brokers)
    )
    return HAPROXY_CONFIG.format(port=port, servers=servers, stats=stats)


@dataclass
class Broker:
    """One broker process of the cluster, started again on the same port after a kill."""

    index: int
    port: int
    args: list[str]
    proc: Proc | None = None
    old: list[Proc] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        if self.proc is not None:
            self.old.append(self.proc)
        self.proc = await Proc.start("broker.cli", *self.args)
        await self.proc.wait_line(event_named("broker listening"), timeout=60)

    async def kill(self) -> None:
        """kill -9: no drain, no goodbye to its connectors."""
        assert self.proc is not None
        await self.proc.kill()

    def connectors_connected(self) -> int:
        """How many connector links this process has logged as connected."""
        assert self.proc is not None
        return sum(
            1 for line in self.proc.json_lines() if line.get("event") == "connector connected"
        )


@dataclass
class Cluster:
    redis: RedisServer
    database_url: str
    brokers: list[Broker]
    lb_port: int
    stats: Path
    connectors: list[Proc] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The load balancer's base URL: what users and connectors are given."""
        return f"http://127.0.0.1:{self.lb_port}"

    def server_states(self) -> dict[str, str]:
        """HAProxy's view of each broker: `UP`, `DOWN`, `UP 1/2`, ... by server name."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(self.stats))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        lines = data.decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        states = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") == "brokers" and row.get("svname", "").startswith("b"):
                states[row["svname"]] = row["status"]
        return states

    async def wait_states(self, expected: dict[str, str], timeout: float = 20) -> None:
        """Until HAProxy shows these servers in these states (`UP`, `DOWN`)."""
        async with asyncio.timeout(timeout):
            while True:
                states = self.server_states()
                if all(states.get(name) == state for name, state in expected.items()):
                    return
                await asyncio.sleep(0.1)

    async def start_connector(self, llm_url: str, name: str) -> Proc:
        """A real connector process whose broker URL is the load balancer."""
        proc = await Proc.start(
            "connector_app.cli",
            "--headless",
            f"--broker-url=ws://127.0.0.1:{self.lb_port}/relay",
            f"--broker-token={TOKEN}",
            f"--llm-url={llm_url}/v1",
            "--log-format=json",
            f"--name={name}",
        )
        self.connectors.append(proc)
        await proc.wait_line(event_named("connected to broker"), timeout=60)
        return proc


async def _wait_ready(url: str, timeout: float = 60) -> None:
    async with asyncio.timeout(timeout), aiohttp.ClientSession() as session:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{url}/readyz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def running_cluster(count: int = 3, *extra: str) -> AsyncIterator[Cluster]:
    """Redis, PostgreSQL, `count` brokers and HAProxy; all stopped when the block ends.

    `{lb_url}` in an `extra` argument stands for the load balancer's URL (known before the
    brokers start, for `--public-url`)."""
    binary = shutil.which("haproxy")
    assert binary, "needs Debian's haproxy; .ci/run installs it"
    base = Path(tempfile.mkdtemp(prefix="remotellm-cluster-"))
    redis = RedisServer()
    haproxy: asyncio.subprocess.Process | None = None
    brokers: list[Broker] = []
    cluster: Cluster | None = None
    try:
        redis.start()
        with running_postgres() as database_url:
            lb_port = free_port()
            extra = tuple(arg.replace("{lb_url}", f"http://127.0.0.1:{lb_port}") for arg in extra)
            for i in range(count):
                port = free_port()
                args = [
                    "serve",
                    "--host=127.0.0.1",
                    f"--port={port}",
                    f"--redis-url={redis.url}",
                    f"--cluster-secret={CLUSTER_SECRET}",
                    f"--internal-url=http://127.0.0.1:{port}",
                    f"--database-url={database_url}",
                    f"--data-dir={base / f'b{i}'}",
                    f"--user-api-key={KEY}",
                    f"--connector-token={TOKEN}",
                    "--log-format=json",
                    "--shutdown-grace=10",
                    *extra,
                ]
                brokers.append(Broker(i, port, args))
            # The first one writes the schema; the others find it there.
            await brokers[0].start()
            await asyncio.gather(*(broker.start() for broker in brokers[1:]))
            stats = base / "haproxy.sock"
            config = base / "haproxy.cfg"
            config.write_text(haproxy_config(lb_port, [b.port for b in brokers], stats))
            haproxy = await asyncio.create_subprocess_exec(
                binary,
                "-db",
                "-f",
                str(config),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            cluster = Cluster(redis, database_url, brokers, lb_port, stats)
            await _wait_ready(cluster.url)
            await cluster.wait_states({f"b{i}": "UP" for i in range(count)})
            yield cluster
    finally:
        if cluster is not None:
            for connector in cluster.connectors:
                await connector.kill()
        for broker in brokers:
            for proc in [*broker.old, *([broker.proc] if broker.proc else [])]:
                await proc.kill()
        if haproxy is not None and haproxy.returncode is None:
            haproxy.terminate()
            try:
                await asyncio.wait_for(haproxy.wait(), 10)
            except TimeoutError:
                haproxy.kill()
                await haproxy.wait()
        redis.close()
        shutil.rmtree(base, ignore_errors=True)


def json_events(proc: Proc, name: str) -> list[dict[str, object]]:
    """The JSON log lines of `proc` with this event name."""
    return [line for line in proc.json_lines() if line.get("event") == name]
