"""bridge.worker.faust_monitor: the same Prometheus samples as Faust's own sensor."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from faust.types import TP
from prometheus_client import CollectorRegistry

from bridge.worker.faust_monitor import FaustPrometheusMonitor


class Owner:
    """The agent a stream belongs to (Faust keeps weak references to it)."""


class FakeStream:
    shortlabel = "Stream: Topic: postion.events"

    def __init__(self) -> None:
        self.task_owner = Owner()

    def __str__(self) -> str:
        return "stream-1"


def _feed(monitor: Any, start: int = 0) -> None:
    streams = [FakeStream(), FakeStream()]
    for n in range(start, start + 30):
        tp = TP("events" if n % 3 else "subscriptions", n % 4)
        message = SimpleNamespace(time_in=None)
        monitor.on_message_in(tp, n, message)
        monitor.track_tp_end_offset(tp, n + 100)
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


def test_same_samples_after_faust_clears_the_partition_metrics_on_a_rebalance() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    monitors = [
        PrometheusMonitor(metrics=FaustMetrics.create(theirs, "faust")),
        FaustPrometheusMonitor(metrics=FaustMetrics.create(ours, "faust")),
    ]
    for monitor in monitors:
        _feed(monitor)
        monitor._clear_partition_related_metrics()  # what a rebalance's start and end do
        _feed(monitor, start=1000)
    expected = _samples(theirs)
    assert _samples(ours) == expected
    # After the clearing only the new records count per topic; the totals keep everything.
    per_topic = [v for (name, _), v in expected.items() if name.endswith("per_topic_total")]
    assert sum(per_topic) == 30
    end_offsets = {
        labels: v for (name, labels), v in expected.items() if "partition_end_offset" in name
    }
    assert end_offsets and min(end_offsets.values()) >= 1100
