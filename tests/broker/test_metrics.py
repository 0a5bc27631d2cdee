"""The metrics registry: a `model` label whose values stay few and always encodable."""

from __future__ import annotations

import json

from prometheus_client import generate_latest

from broker.metrics import MAX_MODEL_LABELS, Metrics


def model_labels(metrics: Metrics) -> set[str]:
    text = generate_latest(metrics.registry).decode()
    return {
        line.split('model="', 1)[1].split('"', 1)[0]
        for line in text.splitlines()
        if line.startswith("remotellm_requests_total{")
    }


def test_past_the_cap_further_models_count_as_other() -> None:
    metrics = Metrics()
    for i in range(MAX_MODEL_LABELS + 50):
        metrics.finished(f"m{i}", 200, 0.1)
        metrics.first_byte(f"m{i}", 0.05)
    labels = model_labels(metrics)
    assert labels == {f"m{i}" for i in range(MAX_MODEL_LABELS)} | {"other"}
    # A model under the cap keeps its own label; "unknown" stays itself past the cap too.
    metrics.finished("m0", 500)
    metrics.finished("unknown", 404)
    assert model_labels(metrics) == labels | {"unknown"}
    assert metrics.model_label(f"m{MAX_MODEL_LABELS}") == "other"


def test_a_model_that_is_not_clean_text_counts_as_unknown_and_scrapes_still_work() -> None:
    metrics = Metrics()
    lone_surrogate = json.loads('"bad\\udcff"')
    metrics.finished(lone_surrogate, 200, 0.1)
    metrics.first_byte(lone_surrogate, 0.05)
    metrics.finished("two\nlines", 200)
    assert model_labels(metrics) == {"unknown"}


def test_a_forgotten_model_gives_its_label_back_for_a_model_served_since() -> None:
    metrics = Metrics()
    for i in range(MAX_MODEL_LABELS):
        metrics.finished(f"m{i}", 200, 0.1)
        metrics.first_byte(f"m{i}", 0.05)
    assert metrics.model_label("new") == "other"
    metrics.forget("m0")
    metrics.forget("never-labelled")  # nothing to give back: no harm
    assert "m0" not in model_labels(metrics)
    assert 'model="m0"' not in generate_latest(metrics.registry).decode()  # every series
    assert metrics.model_label("new") == "new"
    metrics.finished("new", 200, 0.1)
    assert "new" in model_labels(metrics)
