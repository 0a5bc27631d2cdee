"""Prometheus metrics of one broker, in a registry of its own (no global state).

Labels never hold a key, a user or a free-form string a client chose: a model
label is only ever a model some connector served, or "unknown".
"""

from __future__ import annotations

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
