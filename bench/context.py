"""What every workload is given: the plan (sizes for quick or full mode) and the running paths."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.client import Target
from bench.procs import Child, Children
from bench.stats import CpuMeter


@dataclass(frozen=True)
class Plan:
    """How much of each workload to run."""

    mode: str
    w1_requests: int
    w1_sizes: tuple[int, ...] = (1024, 64 * 1024)
    w2_rates: tuple[int, ...] = ()
    w2_step_s: float = 2.0
    w3_streams: tuple[int, ...] = (1, 10)
    w3_rounds: tuple[int, ...] = (3, 2)
    w3_events: int = 64
    w3_interval_ms: int = 20
    w5_rounds: int = 0
    w6_events: int = 6
    w7_connectors: int = 0
    w8_cancels: int = 5
    workloads: tuple[str, ...] = ("W1", "W3", "W6", "W8")


W2_RATES: tuple[int, ...] = (25, 50, 100, 200, 300, 400, 500, 600, 800, 1000, 1250, 1500)
W2_RATES += (2000, 2500, 3000, 4000, 5000, 6000, 8000)

QUICK = Plan(mode="quick", w1_requests=500, w3_rounds=(4, 2))

FULL = Plan(
    mode="full",
    w1_requests=2000,
    w2_rates=W2_RATES,
    w2_step_s=3.0,
    w3_streams=(1, 10, 100, 1000),
    w3_rounds=(10, 4, 3, 1),
    w5_rounds=3,
    w6_events=20,
    w7_connectors=1000,
    w8_cancels=20,
    workloads=("W1", "W2", "W3", "W5", "W6", "W7", "W8"),
)


@dataclass
class Context:
    """The running paths and processes, shared by the workloads."""

    plan: Plan
    targets: dict[str, Target]
    """Path name -> target, in the order direct, remotellm, litellm (when running)."""
    processes: dict[str, Child]
    children: Children
    stub_url: str
    broker_url: str
    notes: list[str] = field(default_factory=list)

    def meter(self) -> CpuMeter:
        return CpuMeter(dict(self.processes))

    def rotation(self, turn: int, paths: list[str] | None = None) -> list[tuple[str, Target]]:
        """The paths in a turn-dependent order, so that no path always goes first."""
        names = [n for n in (paths or list(self.targets)) if n in self.targets]
        k = turn % len(names)
        return [(n, self.targets[n]) for n in names[k:] + names[:k]]


def cpu_per_unit(
    cpu: dict[str, dict[str, float]], units: dict[str, int], scale: float = 1e6
) -> dict[str, dict[str, float]]:
    """CPU per unit of work (µs by default) for each process, per path."""
    out: dict[str, dict[str, float]] = {}
    for path, bucket in cpu.items():
        n = units.get(path, 0)
        if n:
            out[path] = {
                name: round(value * scale / n, 1)
                for name, value in bucket.items()
                if name != "wall_s"
            }
    return out
