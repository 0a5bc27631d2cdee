"""Prometheus metrics of one broker, in a registry of its own (no global state).

Labels never hold a key, a user or a free-form string a client chose: a model
label is only ever a model some connector served, or "unknown". Each distinct label value
is a time series, so the model label takes at most MAX_MODEL_LABELS distinct models;
requests for any further model count under "other". A model the hub forgets (no connector
served it for an hour) gives its label back, series and all, for a model served since.
"""

from __future__ import annotations

from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared.text import is_clean

MAX_MODEL_LABELS: Final = 100
"""Distinct values of the `model` label, besides "unknown" and "other"."""

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
        self._models: set[str] = set()
        """The model label values handed out so far (at most MAX_MODEL_LABELS)."""

    def model_label(self, model: str) -> str:
        """The `model` label for `model`: itself while under the cap, else "other".

        A label must encode as UTF-8 on a line of its own, or every later scrape fails:
        a model that is not clean text counts as "unknown" (the hub never serves one).
        """
        models = self._models
        if model in models or model in ("unknown", "other"):
            return model
        if not is_clean(model):
            return "unknown"
        if len(models) >= MAX_MODEL_LABELS:
            return "other"
        models.add(model)
        return model

    def forget(self, model: str) -> None:
        """Drop `model`'s label and its series (the hub forgot it), freeing its place."""
        if model not in self._models:
            return
        self._models.discard(model)
        for key in [key for key in self._children if model in key[1:2]]:
            metric, *labels = key
            del self._children[key]
            metric.remove(*labels)

    def _child(self, metric: Any, *labels: str) -> Any:
        # `labels()` validates and locks on every call; a request needs the same few children.
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def finished(self, model: str, status: int, seconds: float | None = None) -> None:
        """Count a finished request; with `seconds`, record its duration too."""
        label = self.model_label(model)
        self._child(self.requests, label, str(status)).inc()
        if seconds is not None:
            self._child(self.duration, label).observe(seconds)

    def first_byte(self, model: str, seconds: float) -> None:
        """Record the time to the response head of a request for `model`."""
        self._child(self.ttfb, self.model_label(model)).observe(seconds)
