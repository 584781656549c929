"""bridge.metrics: remembered label children count into the registry like ``labels()``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from bridge.metrics import Metrics


def test_child_is_remembered_and_counts_like_labels() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry, "test")
    first = metrics.child(metrics.events, "post.created")
    assert metrics.child(metrics.events, "post.created") is first
    assert metrics.child(metrics.events, "test.event") is not first
    first.inc()
    metrics.child(metrics.events, "post.created").inc()
    metrics.events.labels("post.created").inc()
    value = registry.get_sample_value("webhook_bridge_events_total", {"event_type": "post.created"})
    assert value == 3.0


def test_same_labels_on_different_metrics_are_different_children() -> None:
    metrics = Metrics(CollectorRegistry())
    assert metrics.child(metrics.dead_letters, "x") is not metrics.child(metrics.skipped, "x")
