"""Faust's Prometheus sensor, with its per-record label lookups remembered and its per-topic
counters kept through rebalances.

``faust.sensors.prometheus.PrometheusMonitor`` resolves labelled children (``labels(topic=...)``,
and a stream label through a regular expression) for every record consumed, every end offset it
tracks and every event a stream takes. The metrics are the same here, and so are their values
but for the per-topic counters after a rebalance (below); the children are looked up once per
topic, partition and stream, and the partition children looked up again after they are removed
(at every rebalance).

At a rebalance's start and end (``on_rebalance_start``, ``on_rebalance_end``) Faust also removes
the children of its per-topic counters (``messages_received_per_topic``, ``topic_messages_sent``):
each counted again from 0, so ``faust_messages_received_per_topic_total``, a dashboard panel,
went down at every rebalance (a counter's rate read that as a reset, and a scrape between the
removal and the next record lost the series). Here only the per-partition gauges are removed
(a partition's offsets are stale once another worker may own it); the counters keep counting.
Until 2026-12-07 the bridge kept Faust's clearing. The Faust internals this relies on are checked
with the patches (``keep_topic_counters`` in :mod:`bridge.worker.faust_patches.registry`): a
release that changes them refuses to start.
"""

from __future__ import annotations

from typing import Any

from faust.sensors.monitor import Monitor
from faust.sensors.prometheus import PrometheusMonitor

__all__ = ["FaustPrometheusMonitor"]


class FaustPrometheusMonitor(PrometheusMonitor):
    """Same metrics as :class:`PrometheusMonitor`, cheaper per record; its per-topic counters
    are not reset at a rebalance."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._by_topic: dict[str, Any] = {}
        self._by_partition: dict[Any, Any] = {}
        self._by_stream: dict[Any, Any] = {}
        self._end_offsets: dict[Any, Any] = {}

    def _clear_partition_related_metrics(self) -> None:
        # Faust's, but for FaustMetrics._clear_topic_related_metrics, which removes the per-topic
        # counters' children: a counter never goes down. The per-partition gauges go as in
        # Faust, and with them the children remembered here (one would go on being set where
        # no scrape sees it); the per-topic ones stay registered, and remembered.
        self._metrics._clear_topic_partition_related_metrics()
        self.tp_committed_offsets.clear()
        self.tp_read_offsets.clear()
        self.tp_end_offsets.clear()
        self._by_partition.clear()
        self._end_offsets.clear()

    def track_tp_end_offset(self, tp: Any, offset: int) -> None:
        Monitor.track_tp_end_offset(self, tp, offset)
        child = self._end_offsets.get(tp)
        if child is None:
            child = self._end_offsets[tp] = self._metrics.topic_partition_end_offset.labels(
                topic=tp.topic, partition=tp.partition
            )
        child.set(offset)

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        Monitor.on_message_in(self, tp, offset, message)
        metrics = self._metrics
        metrics.messages_received.inc()
        metrics.active_messages.inc()
        topic = self._by_topic.get(tp.topic)
        if topic is None:
            topic = self._by_topic[tp.topic] = metrics.messages_received_per_topics.labels(
                topic=tp.topic
            )
        topic.inc()
        partition = self._by_partition.get(tp)
        if partition is None:
            partition = self._by_partition[tp] = (
                metrics.messages_received_per_topics_partition.labels(
                    topic=tp.topic, partition=tp.partition
                )
            )
        partition.set(offset)

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> Any:
        state = Monitor.on_stream_event_in(self, tp, offset, stream, event)
        metrics = self._metrics
        metrics.total_events.inc()
        metrics.total_active_events.inc()
        child = self._by_stream.get(stream)
        if child is None:
            child = self._by_stream[stream] = metrics.total_events_per_stream.labels(
                stream=f"stream.{self._stream_label(stream)}.events"
            )
        child.inc()
        return state
