"""Result rows with targets, and their Markdown and JSON forms."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

PATHS = ("direct", "remotellm", "floor", "bare", "duties", "litellm")
LOWER_BOUNDS = ("floor", "bare", "duties")
"""Paths that stand for a relay with less to do than RemoteLLM (bench.floor, bench.bare)."""
TITLES = {"floor": "Floor", "bare": "Bare", "duties": "Bare+duties"}
Compare = Literal["added", "ratio", "none"]


@dataclass
class Row:
    """One measured number per path, how RemoteLLM compares, and its target."""

    workload: str
    metric: str
    values: dict[str, float | None]
    compare: Compare = "added"
    target: str = ""
    passed: bool | None = None
    note: str = ""

    def value(self, path: str) -> float | None:
        v = self.values.get(path)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else v

    def added(self, path: str = "remotellm") -> float | None:
        """`path` (RemoteLLM unless said) minus direct."""
        relay, direct = self.value(path), self.value("direct")
        return None if relay is None or direct is None else relay - direct

    def ratio(self, to: str = "direct") -> float | None:
        """RemoteLLM divided by `to`."""
        relay, other = self.value("remotellm"), self.value(to)
        if relay is None or other is None or other == 0:
            return None
        return relay / other

    def check(self, target: str, passed: bool | None) -> Row:
        self.target = target
        self.passed = passed
        return self

    def to_json(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "metric": self.metric,
            **{path: _clean(self.value(path)) for path in PATHS if path in self.values},
            "added_vs_direct": _clean(self.added()) if self.compare == "added" else None,
            **{
                f"{path}_added_vs_direct": (
                    _clean(self.added(path)) if self.compare == "added" else None
                )
                for path in LOWER_BOUNDS
                if path in self.values
            },
            "ratio_vs_direct": _clean(self.ratio()),
            "ratio_vs_litellm": _clean(self.ratio("litellm")),
            "target": self.target or None,
            "passed": self.passed,
            "note": self.note or None,
        }


def _clean(value: float | None) -> float | None:
    if value is None or math.isnan(value) or math.isinf(value):
        return None
    return round(value, 4)


def at_most(value: float | None, limit: float) -> bool | None:
    return None if value is None else value <= limit


def added_at_most(row: Row, limit: float) -> Row:
    """Check RemoteLLM's added time against `limit`, unless the run was too noisy to tell.

    A relay cannot be faster than the direct path it sits on by more than noise: when it
    looks faster by more than the limit itself, the direct path had a bad run and the row
    gets no verdict ("n/a", with a note saying why) instead of a pass.
    """
    added = row.added()
    target = f"added ≤ {limit:g} ms"
    if added is not None and added < -limit:
        direct = row.value("direct")
        row.note = (
            f"no verdict: the direct path itself was {direct:.3g} ms, slower than the relay by"
            f" more than the limit"
        )
        return row.check(target, None)
    return row.check(target, at_most(added, limit))


def at_least(value: float | None, limit: float) -> bool | None:
    return None if value is None else value >= limit


def added_versus_litellm(row: Row, limit: float) -> Row | None:
    """W1's second target: each relay's added time divided by LiteLLM's, at most `limit`.

    The "vs LiteLLM" column divides whole latencies; the target divides what each adds to
    the direct path. None when LiteLLM did not run or added nothing to divide by.
    """
    litellm = row.added("litellm")
    if litellm is None or litellm <= 0:
        return None
    values: dict[str, float | None] = {}
    for path in ("remotellm", *LOWER_BOUNDS):
        added = row.added(path)
        if added is not None:
            values[path] = added / litellm
    relay = values.setdefault("remotellm", None)  # no number of RemoteLLM's: no verdict (n/a)
    metric = row.metric.replace(" latency (ms)", "") + " added, ÷ LiteLLM's added"
    checked = Row(row.workload, metric, values, compare="none")
    return checked.check(f"≤ {limit:g}x LiteLLM's", at_most(relay, limit))


def frontier_versus_litellm(row: Row, first_rate: float | None, limit: float) -> Row | None:
    """W2's second target: RemoteLLM's frontier divided by LiteLLM's, at least `limit`.

    A LiteLLM that failed the ladder's first step sustained less than that rate, so the
    ratio is at least RemoteLLM's frontier over the first rate (the row says so).
    None when LiteLLM did not run.
    """
    if "litellm" not in row.values:
        return None
    relay, litellm = row.value("remotellm"), row.value("litellm")
    note = ""
    if litellm is None and first_rate:
        litellm, note = first_rate, f"at least: LiteLLM failed the first step ({first_rate:g}/s)"
    ratio = None if relay is None or not litellm else relay / litellm
    checked = Row(row.workload, "frontier ÷ LiteLLM's", {"remotellm": ratio}, compare="none")
    checked.note = note
    passed = at_least(ratio, limit)
    if note and passed is False:
        # Below the limit, a lower bound says nothing: the true ratio may still be above it.
        checked.note = f"no verdict: {note}, so the ratio is only known to be ≥ {ratio:.3g}x"
        passed = None
    return checked.check(f"≥ {limit:g}x LiteLLM's", passed)


@dataclass
class WorkloadResult:
    name: str
    rows: list[Row] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _versus(row: Row, path: str = "remotellm") -> str:
    if row.compare == "none":
        return ""
    parts: list[str] = []
    added = row.added(path) if row.compare == "added" else None
    if added is not None:
        parts.append(f"{'+' if added >= 0 else '-'}{_fmt(abs(added))}")
    other, direct = row.value(path), row.value("direct")
    ratio = None if other is None or not direct else other / direct
    if ratio is not None:
        parts.append(f"{ratio:.2f}x")
    return " ".join(parts)


def markdown(rows: list[Row], with_litellm: bool, bounds: tuple[str, ...] = ()) -> str:
    """The results as one Markdown table; `bounds` are the lower-bound paths that ran."""
    head = ["Workload", "Metric", "Direct", "RemoteLLM"]
    head += [TITLES[path] for path in bounds]
    if with_litellm:
        head.append("LiteLLM")
    head += ["RemoteLLM vs direct"]
    head += [f"{TITLES[path]} vs direct" for path in bounds]
    if with_litellm:
        head.append("vs LiteLLM")
    head += ["Target", "Result"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row.workload, row.metric, _fmt(row.value("direct")), _fmt(row.value("remotellm"))]
        cells += [_fmt(row.value(path)) for path in bounds]
        if with_litellm:
            cells.append(_fmt(row.value("litellm")))
        cells.append(_versus(row))
        cells += [_versus(row, path) for path in bounds]
        if with_litellm:
            ratio = row.ratio("litellm")
            cells.append("" if ratio is None or row.compare == "none" else f"{ratio:.2f}x")
        result = {True: "pass", False: "**FAIL**", None: ""}[row.passed]
        if row.target and row.passed is None:
            result = "n/a"
        cells += [row.target, result + (f" ({row.note})" if row.note else "")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
