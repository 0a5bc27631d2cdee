"""Optional sampling profiles of the relay processes while the workloads run (py-spy).

`python -m bench --profile` starts `py-spy record` on the broker and the
connector (py-spy must be on PATH; `uv tool install py-spy` puts it in
~/.local/bin). It samples in py-spy's default blocking mode, which pauses the
process briefly for each sample (costing some latency and throughput) but reads
consistent stacks. Profile in a run of its own, not in one whose numbers you
publish. At the end each profile is saved as collapsed
stacks (`<name>.folded`, loadable by speedscope or flamegraph.pl) and
summarised as the functions with the most samples, on their own and with their
callees.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections import Counter
from pathlib import Path
from typing import Any

from bench.procs import Child, Children

RATE = 250
TOP = 15
_LOOP_LEAVES = ("select (", "EpollSelector.select (", "Runner.run (", "run_forever (")


def find_py_spy() -> str | None:
    local = Path.home() / ".local" / "bin" / "py-spy"
    return shutil.which("py-spy") or (str(local) if os.access(local, os.X_OK) else None)


def start(children: Children, processes: dict[str, Child], exe: str) -> dict[str, Path]:
    """Start one recorder per relay process; returns where each writes its profile."""
    outputs: dict[str, Path] = {}
    for name in ("broker", "connector"):
        child = processes.get(name)
        if child is None:
            continue
        path = children.log_dir / f"{name}.folded"
        argv = [exe, "record", "--pid", str(child.pid), "--rate", str(RATE)]
        recorder = children.start(
            f"py-spy-{name}", [*argv, "--format", "raw", "--output", str(path)]
        )
        recorder.stop_signal = signal.SIGINT  # py-spy writes its output on SIGINT
        outputs[name] = path
    return outputs


def _frame(frame: str) -> str:
    # py-spy raw frames look like "write (aiohttp/http_writer.py:123)"; keep function and file.
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0].rstrip(")")
    parts = file.split("/")
    for anchor in ("site-packages", "python3.11", "lib"):
        if anchor in parts:
            parts = parts[parts.index(anchor) + 1 :]
            break
    return f"{name} ({'/'.join(parts[-3:])})"


def summarise(path: Path, top: int = TOP) -> dict[str, Any]:
    """Top functions by self samples and by inclusive samples of one folded profile."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = idle = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";") if f and not f.startswith("process ")]
        if not frames:
            continue
        if frames[-1].startswith(_LOOP_LEAVES):
            # The event loop itself: waiting in epoll (asyncio), or inside uvloop's C
            # loop, where waiting and its own work cannot be told apart.
            idle += count
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        if not total:
            return []
        return [(name, round(100 * n / total, 1)) for name, n in counter.most_common(top)]

    return {
        "samples": total,
        "idle_samples": idle,
        "self_pct": share(own),
        "inclusive_pct": share(inclusive),
    }
