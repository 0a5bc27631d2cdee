"""Prometheus metrics of one broker, in a registry of its own (no global state).

Labels never hold a key, a user or a free-form string a client chose: a model
label is only ever a model some connector served, or "unknown".
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "remotellm_requests",
            "API requests by model and HTTP status.",
            ["model", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "remotellm_request_duration_seconds",
            "End-to-end time of API requests.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttfb = Histogram(
            "remotellm_time_to_first_byte_seconds",
            "Time from request arrival to the response head being sent.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "remotellm_requests_in_flight", "API requests being served.", registry=self.registry
        )
        self.connectors = Gauge(
            "remotellm_connectors_connected", "Connectors connected.", registry=self.registry
        )
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        # `labels()` validates and locks on every call; a request needs the same few children.
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def finished(self, model: str, status: int, seconds: float | None = None) -> None:
        """Count a finished request; with `seconds`, record its duration too."""
        self._child(self.requests, model, str(status)).inc()
        if seconds is not None:
            self._child(self.duration, model).observe(seconds)

    def first_byte(self, model: str, seconds: float) -> None:
        self._child(self.ttfb, model).observe(seconds)
