"""`remotellm-broker serve --workers N`: one supervisor, N broker processes on one port.

Each worker is the same `serve` command run again as a child process with a fixed `--port`
(every worker binds it with SO_REUSEPORT, and the kernel spreads new connections over
them), its own `--internal-url` (a private port, for the requests other brokers of the
cluster forward to it) and a hidden `--worker-index`. The workers are ordinary cluster
brokers: they share connectors, limits and portal state through Redis, which is why
`--workers` needs `--redis-url`.

The supervisor passes SIGTERM and SIGINT on (each worker drains as a single broker does),
starts a worker again when it dies unexpectedly (after 0.5 s, doubling to 10 s), and gives up
(stops the others and exits 1) when one worker dies `MAX_DEATHS` times within `DEATH_WINDOW`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Sequence
from urllib.parse import urlsplit

import structlog

from broker.settings import BrokerSettings
from shared.signals import shutdown_signals

WORKER_FLAG = "--worker-index"
"""Hidden flag the supervisor gives each worker: bind the port with SO_REUSEPORT."""

MAX_DEATHS = 5
DEATH_WINDOW = 60.0
"""A worker that dies this many times within this many seconds is not started again."""

FIRST_DELAY = 0.5
MAX_DELAY = 10.0
STOP_MARGIN = 15.0
"""Seconds past --shutdown-grace a worker may take to exit on SIGTERM before it is killed."""

log = structlog.get_logger("remotellm.broker.workers")


class WorkersError(Exception):
    """--workers cannot run with these settings (the message says why and what to do)."""


def reuse_port_supported() -> bool:
    """True where several processes may listen on one port (Linux, macOS, BSD; not Windows)."""
    return hasattr(socket, "SO_REUSEPORT")


def _wildcard(host: str) -> bool:
    return host in ("", "0.0.0.0", "::")


def _free_port(host: str, reuse_port: bool = False) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def worker_urls(settings: BrokerSettings, public_port: int, count: int) -> list[str]:
    """Each worker's internal URL: --internal-url's port + i, or a free port on --host."""
    if settings.internal_url is not None:
        parts = urlsplit(settings.internal_url)
        base = parts.port or (443 if parts.scheme == "https" else 80)
        host = parts.netloc.rpartition(":")[0] if parts.port else parts.netloc
        if base <= public_port < base + count:
            raise WorkersError(
                f"with --workers {count}, worker i listens for other brokers on --internal-url's"
                f" port + i ({base}..{base + count - 1}), which includes --port {public_port}:"
                " give --internal-url a port of its own"
            )
        return [f"{parts.scheme}://{host}:{base + i}" for i in range(count)]
    scheme = "https" if settings.tls is not None else "http"
    host = "127.0.0.1" if _wildcard(settings.host) else settings.host
    shown = f"[{host}]" if ":" in host else host
    return [f"{scheme}://{shown}:{_free_port(host)}" for _ in range(count)]


def worker_argv(argv: Sequence[str]) -> list[str]:
    """The serve command line without --workers (and its value)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            out.append(arg)
    return out


class Supervisor:
    """Runs `count` workers until a signal (exit 0) or until one keeps dying (exit 1)."""

    def __init__(
        self, settings: BrokerSettings, argv: Sequence[str], count: int, port: int
    ) -> None:
        self.settings = settings
        self.count = count
        self.port = port
        self.urls = worker_urls(settings, port, count)
        self._argv = worker_argv(argv)
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._stop = asyncio.Event()
        self._failed = False

    def command(self, index: int) -> list[str]:
        """The child's command line: this interpreter, the broker CLI, the worker's flags."""
        return [
            sys.executable,
            "-m",
            "broker.cli",
            *self._argv,
            f"--port={self.port}",
            f"--internal-url={self.urls[index]}",
            f"{WORKER_FLAG}={index}",
        ]

    async def run(self) -> int:
        log.info("starting workers", workers=self.count, port=self.port)
        # A signal or a worker that keeps dying sets _stop.
        with shutdown_signals(self._stop.set):
            keepers = [asyncio.create_task(self._keep(i)) for i in range(self.count)]
            await self._stop.wait()
            log.info("stopping workers")
            await self._terminate_all()
            await asyncio.gather(*keepers, return_exceptions=True)
        log.info("workers stopped")
        return 1 if self._failed else 0

    async def _keep(self, index: int) -> None:
        deaths: deque[float] = deque()
        while not self._stop.is_set():
            proc = await asyncio.create_subprocess_exec(
                *self.command(index), stdin=asyncio.subprocess.DEVNULL
            )
            self._procs[index] = proc
            if self._stop.is_set():  # stopping began while it was being started
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
            log.info("worker started", worker=index, pid=proc.pid, internal_url=self.urls[index])
            code = await proc.wait()
            if self._stop.is_set():
                log.info("worker stopped", worker=index, pid=proc.pid, code=code)
                return
            now = time.monotonic()
            deaths.append(now)
            while deaths and deaths[0] < now - DEATH_WINDOW:
                deaths.popleft()
            log.error("worker exited unexpectedly", worker=index, pid=proc.pid, code=code)
            if len(deaths) >= MAX_DEATHS:
                log.error(
                    "worker keeps dying: stopping all workers",
                    worker=index,
                    deaths=len(deaths),
                    seconds=DEATH_WINDOW,
                )
                self._failed = True
                self._stop.set()
                return
            delay = min(FIRST_DELAY * 2 ** (len(deaths) - 1), MAX_DELAY)
            log.info("restarting worker", worker=index, delay=delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _terminate_all(self) -> None:
        live = [p for p in self._procs.values() if p.returncode is None]
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        deadline = self.settings.shutdown_grace + STOP_MARGIN
        for proc in live:
            try:
                await asyncio.wait_for(proc.wait(), deadline)
            except TimeoutError:
                log.error("worker did not stop in time: killing it", pid=proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()


async def leave_with_parent(parent: int, every: float = 1.0) -> None:
    """In a worker: SIGTERM to itself (a graceful drain) once its supervisor is gone, so a
    supervisor killed outright (kill -9) leaves no worker behind."""
    while True:  # no event tells a process its parent died: ask now and then
        if os.getppid() != parent:
            break
        await asyncio.sleep(every)
    log.warning("supervisor gone: stopping this worker")
    os.kill(os.getpid(), signal.SIGTERM)


async def supervise(settings: BrokerSettings, argv: Sequence[str], count: int) -> int:
    """Check the settings for --workers, then run the supervisor; the exit status."""
    if not settings.cluster:
        raise WorkersError(
            "--workers needs --redis-url (and --cluster-secret): the workers share connectors,"
            " limits and sign-ins through Redis"
        )
    if not reuse_port_supported():
        raise WorkersError(
            "--workers needs SO_REUSEPORT, which this platform does not have (Windows): run"
            " several brokers on different ports behind a load balancer instead"
        )
    if count < 1:
        raise WorkersError("--workers must be at least 1")
    port = settings.port or _free_port(settings.host or "0.0.0.0", reuse_port=True)
    return await Supervisor(settings, argv, count, port).run()
