"""bridge.faust_monitor: the same Prometheus samples as Faust's own sensor."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from faust.types import TP
from prometheus_client import CollectorRegistry

from bridge.faust_monitor import FaustPrometheusMonitor


class Owner:
    """The agent a stream belongs to (Faust keeps weak references to it)."""


class FakeStream:
    shortlabel = "Stream: Topic: postion.events"

    def __init__(self) -> None:
        self.task_owner = Owner()

    def __str__(self) -> str:
        return "stream-1"


def _feed(monitor: Any) -> None:
    streams = [FakeStream(), FakeStream()]
    for n in range(30):
        tp = TP("events" if n % 3 else "subscriptions", n % 4)
        message = SimpleNamespace(time_in=None)
        monitor.on_message_in(tp, n, message)
        state = monitor.on_stream_event_in(tp, n, streams[n % 2], object())
        assert state is not None and "time_in" in state


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for metric in registry.collect()
        for sample in metric.samples
        if not sample.name.endswith("_created")
    }


def test_same_samples_as_faust_s_prometheus_monitor() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    _feed(PrometheusMonitor(metrics=FaustMetrics.create(theirs, "faust")))
    _feed(FaustPrometheusMonitor(metrics=FaustMetrics.create(ours, "faust")))
    expected = _samples(theirs)
    assert expected  # the comparison is not vacuous
    assert _samples(ours) == expected
    per_topic = {labels: v for (name, labels), v in expected.items() if "per_topic" in name}
    assert per_topic, sorted(name for name, _ in expected)
