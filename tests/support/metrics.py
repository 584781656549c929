"""Reading a metric sample from a prometheus-client registry in tests."""

from __future__ import annotations

from prometheus_client import CollectorRegistry


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """The sample's value; 0 when the series does not exist (yet)."""
    return registry.get_sample_value(name, labels) or 0.0
