"""Starting, watching and stopping the processes under test.

Every child gets its own log file, dies with the harness (PR_SET_PDEATHSIG), and
is stopped by `Child.stop()` (SIGTERM, then SIGKILL). CPU time and RSS are read
from /proc, summed over the child's process tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

LISTEN_BACKLOG = 1024
"""The bench's own servers queue a burst of connections as the broker does
(`broker.server.LISTEN_BACKLOG`)."""

USER_KEY: Final = "sk-bench-user-key-0123456789"
CONNECTOR_TOKEN: Final = "bench-connector-token-0123456789"
MODEL: Final = "stub"

_CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
_PAGE: Final = os.sysconf("SC_PAGE_SIZE")
_PR_SET_PDEATHSIG: Final = 1


def _die_with_parent() -> None:
    """In the child, before exec: get SIGKILL when the harness dies, however it dies."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                text = Path(f"/proc/{pid}/task/{tid}/children").read_text()
                out.extend(int(c) for c in text.split())
    return out


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        todo.extend(_children(current))
    return pids


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of one process: utime and stime in /proc/PID/stat."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0, 0.0
    # The command name may contain spaces; fields after it are fixed.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) / _CLK_TCK, int(fields[12]) / _CLK_TCK


def tree_cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of `pid` and its descendants."""
    times = [cpu_times(p) for p in tree(pid)]
    return sum(t[0] for t in times), sum(t[1] for t in times)


def rss_bytes(pid: int) -> int:
    """Resident set size of one process, from /proc/PID/statm."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def tree_rss_bytes(pid: int) -> int:
    return sum(rss_bytes(p) for p in tree(pid))


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (the `cpu` line of /proc/stat)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _CLK_TCK


class Child:
    """One process under test, its output going to a log file."""

    def __init__(
        self, name: str, argv: Sequence[str], log_dir: Path, *, drop: Sequence[str] = (), **env: str
    ) -> None:
        """Start `argv`, with the harness's environment plus `env` and without `drop`."""
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        log_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
            env={**{k: v for k, v in os.environ.items() if k not in drop}, **env},
        )
        self.pid = self.process.pid
        self.stop_signal = signal.SIGTERM
        self.final_cpu: float | None = None
        """CPU seconds used up to the moment it was told to stop (gone from /proc after)."""

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def cpu(self) -> tuple[float, float]:
        """(user, system) CPU seconds of the child and its descendants."""
        return tree_cpu_times(self.pid)

    def rss(self) -> int:
        return tree_rss_bytes(self.pid)

    def output(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    async def wait_for(self, match: Callable[[dict[str, Any]], Any], timeout: float) -> Any:
        """Wait for a JSON line in the log for which `match` returns something truthy."""
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            lines = self.output().splitlines()
            for line in lines[seen:]:
                with contextlib.suppress(ValueError):
                    obj = json.loads(line)
                    found = match(obj) if isinstance(obj, dict) else None
                    if found:
                        return found
            seen = len(lines)
            if not self.alive:
                break
            await asyncio.sleep(0.05)
        tail = "\n".join(self.output().splitlines()[-15:])
        state = "exited" if not self.alive else "did not get ready"
        raise RuntimeError(f"{self.name} {state} within {timeout:g} s; its log ends:\n{tail}")

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (or `stop_signal`), wait up to `timeout` seconds, then SIGKILL."""
        if self.final_cpu is None:
            self.final_cpu = sum(self.cpu())
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(self.stop_signal)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                self.process.wait(5)
        self._log.close()


class Children:
    """Every child the harness started, so that all of them are stopped at the end."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[Child] = []

    def start(
        self, name: str, argv: Sequence[str], *, drop: Sequence[str] = (), **env: str
    ) -> Child:
        child = Child(name, argv, self.log_dir, drop=drop, **env)
        self.started.append(child)
        return child

    def cpu_seconds(self) -> float:
        """CPU seconds used so far by every child, running or stopped."""
        return sum(
            child.final_cpu if child.final_cpu is not None else sum(child.cpu())
            for child in self.started
        )

    def stop_all(self, timeout: float = 5.0) -> None:
        """Signal every child at once, give them `timeout` seconds together, then kill."""
        for child in reversed(self.started):
            if child.alive:
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(child.stop_signal)
        deadline = time.monotonic() + timeout
        for child in reversed(self.started):
            child.stop(max(deadline - time.monotonic(), 0.1))
        self.started.clear()


async def start_stub(children: Children, name: str = "stub") -> tuple[Child, int]:
    child = children.start(name, [sys.executable, "-m", "bench.stub", "--port", "0"])
    port = await child.wait_for(lambda obj: obj.get("port"), timeout=20)
    return child, int(port)


def broker_argv() -> list[str]:
    """The broker's command line: 127.0.0.1 at a free port, info-level JSON logs, as deployed."""
    return [
        sys.executable,
        "-m",
        "broker.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--user-api-key",
        USER_KEY,
        "--connector-token",
        CONNECTOR_TOKEN,
        # The port is only announced at info level; info is also the deployed default.
        "--log-level",
        "info",
        # Nothing is measured during shutdown; do not wait 30 s for stragglers.
        "--shutdown-grace",
        "1",
        "--log-format",
        "json",
        # The usage ledger is written as deployed, to a store that leaves nothing behind.
        "--database-url",
        "sqlite+aiosqlite:///:memory:",
        "--session-secret",
        "bench-session-secret",
    ]


def connector_argv(broker_port: int, stub_port: int, max_concurrency: int = 1024) -> list[str]:
    """The connector's command line, serving the stub to the broker at `broker_port`."""
    return [
        sys.executable,
        "-m",
        "connector_app.cli",
        "--headless",
        "--broker-url",
        f"ws://127.0.0.1:{broker_port}/relay",
        "--broker-token",
        CONNECTOR_TOKEN,
        "--llm-url",
        f"http://127.0.0.1:{stub_port}",
        "--model",
        MODEL,
        "--name",
        "bench-connector",
        "--max-concurrency",
        str(max_concurrency),
        "--shutdown-grace",
        "1",
        "--log-level",
        "warning",
    ]


def broker_port_of(obj: dict[str, Any]) -> Any:
    """The port in the broker's "broker listening" log line, if `obj` is that line."""
    return obj.get("port") if obj.get("event") == "broker listening" else None


async def start_broker(children: Children, name: str = "broker") -> tuple[Child, int]:
    """A broker process on 127.0.0.1 at a free port; info-level logs, as deployed."""
    child = children.start(name, broker_argv())
    port = await child.wait_for(broker_port_of, timeout=30)
    return child, int(port)


def start_connector(
    children: Children,
    broker_port: int,
    stub_port: int,
    max_concurrency: int = 1024,
    name: str = "connector",
) -> Child:
    return children.start(name, connector_argv(broker_port, stub_port, max_concurrency))
