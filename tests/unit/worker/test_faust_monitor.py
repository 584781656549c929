"""bridge.worker.faust_monitor: the same Prometheus samples as Faust's own sensor, but for its
per-topic counters, which a rebalance does not reset."""

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
        monitor.on_send_initiated(None, tp.topic, None, 0, 0)
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


def _rebalance(monitor: Any) -> None:
    """A rebalance as Faust's consumer reports it to the sensor: its start, its return, its end."""
    app = SimpleNamespace(rebalancing_count=1)
    state = monitor.on_rebalance_start(app)
    monitor.on_rebalance_return(app, state)
    monitor.on_rebalance_end(app, state)


def _counters(samples: dict[Any, float]) -> dict[Any, float]:
    """The per-topic counters' samples."""
    names = ("faust_messages_received_per_topic_total", "faust_topic_messages_sent_total")
    return {key: v for key, v in samples.items() if key[0] in names}


def faust_s_and_ours() -> tuple[CollectorRegistry, CollectorRegistry, list[PrometheusMonitor]]:
    """Faust's sensor and ours, each with a registry of its own: (Faust's registry, ours, the
    two sensors)."""
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    monitors = [
        PrometheusMonitor(metrics=FaustMetrics.create(theirs, "faust")),
        FaustPrometheusMonitor(metrics=FaustMetrics.create(ours, "faust")),
    ]
    return theirs, ours, monitors


def test_per_topic_counters_keep_counting_through_a_rebalance() -> None:
    """Faust removes its per-topic counters' children at a rebalance's start and end, so
    faust_messages_received_per_topic_total (a dashboard panel) went down at each (until
    2026-12-07); here they keep counting, and every other sample is Faust's."""
    theirs, ours, monitors = faust_s_and_ours()
    for monitor in monitors:
        _feed(monitor)
    before = _counters(_samples(ours))
    assert before and _counters(_samples(theirs)) == before
    for monitor in monitors:
        _rebalance(monitor)
    assert _counters(_samples(ours)) == before  # nothing removed, nothing counted again
    assert _counters(_samples(theirs)) == {}  # what Faust's sensor does
    for monitor in monitors:
        _feed(monitor, start=1000)
    expected, got = _samples(theirs), _samples(ours)
    # Faust's counts the records since the rebalance; ours, every record.
    assert {key: v * 2 for key, v in _counters(expected).items()} == _counters(got)
    assert sum(_counters(got).values()) == 2 * 2 * 30  # received and sent, 30 of each per feed

    def rest(samples: dict[Any, float]) -> dict[Any, float]:
        """Every other sample, but the rebalance's latencies (timed: never the same twice)."""
        counters = _counters(samples)
        return {k: v for k, v in samples.items() if k not in counters and "latency" not in k[0]}

    assert rest(got) == rest(expected)
    # The per-partition gauges were removed, and set again by the records since.
    end_offsets = {labels: v for (name, labels), v in got.items() if "partition_end_offset" in name}
    assert end_offsets and min(end_offsets.values()) >= 1100


def test_per_partition_gauges_go_at_a_rebalance_as_in_faust() -> None:
    """A partition another worker may own now reports no offsets here until it is read again."""
    theirs, ours, monitors = faust_s_and_ours()
    for monitor in monitors:
        _feed(monitor)
        monitor.on_tp_commit({TP("events", 1): 7})
        _rebalance(monitor)
        assert not monitor.tp_end_offsets and not monitor.tp_read_offsets
        assert not monitor.tp_committed_offsets
    partition_names = (
        "faust_messages_received_per_topics_partition",
        "faust_topic_partition_end_offset",
        "faust_topic_partition_offset_commited",
    )
    for registry in (theirs, ours):
        assert not [key for key in _samples(registry) if key[0] in partition_names]
