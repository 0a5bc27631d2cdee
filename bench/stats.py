"""Percentiles and CPU accounting, in plain Python (no numpy in the project)."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from bench.procs import Child, cpu_times


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (`q` in 0..100) of an already sorted sequence; nan if empty."""
    if not sorted_values:
        return math.nan
    rank = max(math.ceil(q / 100 * len(sorted_values)), 1)
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def summary_ms(values_ns: Iterable[int]) -> dict[str, float]:
    """p50/p99/p99.9/max/mean in milliseconds of nanosecond samples."""
    ordered = sorted(values_ns)
    n = len(ordered)
    ms = [v / 1e6 for v in ordered]
    return {
        "n": n,
        "p50": percentile(ms, 50),
        "p90": percentile(ms, 90),
        "p99": percentile(ms, 99),
        "p99.9": percentile(ms, 99.9),
        "max": ms[-1] if ms else math.nan,
        "mean": sum(ms) / n if n else math.nan,
    }


def _self_cpu() -> tuple[float, float]:
    return cpu_times(os.getpid())


@dataclass
class CpuMeter:
    """CPU seconds of each process under test (the system part as `name.sys`), per path.

    Wrap the work of one path in `with meter.segment(path):`; the CPU every
    process used meanwhile is charged to that path. Paths take turns, so a
    process that only one path uses (the broker) is charged only to that path.
    """

    processes: dict[str, Child]
    by_path: dict[str, dict[str, float]] = field(default_factory=dict)
    wall: dict[str, float] = field(default_factory=dict)

    def snapshot(self) -> dict[str, float]:
        """CPU seconds of each process (`name`), and the system part of it (`name.sys`)."""
        times = {name: child.cpu() for name, child in self.processes.items()}
        times["client"] = _self_cpu()
        snap: dict[str, float] = {}
        for name, (user, system) in times.items():
            snap[name] = user + system
            snap[f"{name}.sys"] = system
        return snap

    def segment(self, path: str) -> _Segment:
        return _Segment(self, path)

    def add(
        self, path: str, before: dict[str, float], after: dict[str, float], wall: float
    ) -> None:
        bucket = self.by_path.setdefault(path, {})
        for name, value in after.items():
            bucket[name] = bucket.get(name, 0.0) + value - before.get(name, 0.0)
        self.wall[path] = self.wall.get(path, 0.0) + wall

    def report(self) -> dict[str, dict[str, float]]:
        """CPU seconds per process per path, plus the wall time of each path's segments."""
        out: dict[str, dict[str, float]] = {}
        for path, bucket in self.by_path.items():
            out[path] = {name: round(value, 4) for name, value in bucket.items() if value > 0}
            out[path]["wall_s"] = round(self.wall.get(path, 0.0), 3)
        return out


class _Segment:
    def __init__(self, meter: CpuMeter, path: str) -> None:
        self.meter = meter
        self.path = path
        self.before: dict[str, float] = {}
        self.started = 0.0

    def __enter__(self) -> _Segment:
        self.before = self.meter.snapshot()
        self.started = time.monotonic()
        return self

    def __exit__(self, *_exc: object) -> None:
        wall = time.monotonic() - self.started
        self.meter.add(self.path, self.before, self.meter.snapshot(), wall)
