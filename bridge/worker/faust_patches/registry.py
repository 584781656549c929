"""Every patch, the fingerprint of each original it replaces or relies on, the checked installer."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from aiokafka.conn import AIOKafkaConnection
from faust.app import base as faust_app
from faust.sensors import prometheus as faust_prometheus
from faust.tables import manager as faust_tables
from faust.tables import recovery as faust_recovery
from faust.transport import conductor as faust_conductor
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode.utils.queues import FlowControlEvent

from bridge.kafka import aiokafka_patches
from bridge.patching import Patch, PatchMismatch, apply, fingerprint, require_release
from bridge.worker.faust_patches.commits import _new_offset, _perform_seek
from bridge.worker.faust_patches.connections import _send, _send_sasl_token
from bridge.worker.faust_patches.fetching import (
    _create_worker_consumer,
    _fetch_records,
    _getmany,
    _on_buffer_drop,
    _seek,
    _seek_to_beginning,
    _seek_to_committed,
    _seek_wait,
    _wait_next_records,
)
from bridge.worker.faust_patches.handoff import _wait_first
from bridge.worker.faust_patches.recovery import (
    _AsyncioFor312WaitFor,
    _on_recovery_completed,
    _seek_offsets,
    _start_table_manager,
)

__all__ = [
    "FAUST_VERSION",
    "PatchMismatch",
    "Patch",
    "fingerprint",
    "PATCHES",
    "ORIGINALS",
    "install",
]

#: The faust-streaming release the patches were written against and checked with.
FAUST_VERSION = "0.15.3"


PATCHES: tuple[Patch, ...] = (
    Patch(
        "fetch_max_wait",
        faust_aiokafka.AIOKafkaConsumerThread,
        "_create_worker_consumer",
        _create_worker_consumer,
        "c2701bfc3e6f6cad",
        "the worker's consumer is created with fetch_max_wait_ms=1500, not configurable",
    ),
    Patch(
        "reread_uncommitted_partitions",
        faust_aiokafka.AIOKafkaConsumerThread,
        "seek_to_committed",
        _seek_to_committed,
        "775ab0adc4b052ab",
        "partitions without a committed offset keep their pre-rebalance position, and Faust "
        "drops what was fetched meanwhile",
    ),
    Patch(
        "cheap_recovery_wait_for",
        faust_recovery,
        "asyncio",
        _AsyncioFor312WaitFor() if sys.version_info < (3, 12) else asyncio,
        "854b5a9b982c053b",
        "table recovery awaits asyncio.wait_for per record, a task each on Python 3.11",
    ),
    Patch(
        "cheap_recovery_wait_for.caller",
        faust_recovery.Recovery,
        "_slurp_changelogs",
        None,
        "7825c7e50f766d5a",
        "the only caller of asyncio.wait_for in faust.tables.recovery",
    ),
    Patch(
        "fast_record_handoff",
        faust_consumer.Consumer,
        "wait_first",
        _wait_first,
        "feade6a31f8a6789",
        "every fetched record is handed on through wait_first: four tasks and asyncio.wait",
    ),
    Patch(
        "fast_record_handoff.caller",
        faust_consumer.Consumer,
        "_drain_messages",
        None,
        "44a2500309e83c63",
        "the record hand-off whose wait_first call the fast path recognises",
    ),
    Patch(
        "prompt_fetcher",
        faust_consumer.Consumer,
        "_wait_next_records",
        _wait_next_records,
        "6218e1969a636b3f",
        "the fetcher waits up to 1 s for records and sleeps 1 s while no partition is active",
    ),
    Patch(
        "standby_after_active",
        faust_recovery.Recovery,
        "_seek_offsets",
        _seek_offsets,
        "19598ca63d94d250",
        "a global table's partitions are read again as standby from where recovery started",
    ),
    Patch(
        "keep_fetched_records",
        faust_recovery.Recovery,
        "on_recovery_completed",
        _on_recovery_completed,
        "6ef567acf072e46d",
        "once recovery is complete the stream partitions are resumed before their seek and the "
        "flow resume clears every queue: the changelog queue the global tables' standby reading "
        "fills, and stream records fetched after the seek",
    ),
    Patch(
        "keep_fetched_records.resume",
        FlowControlEvent,
        "resume",
        None,
        "4dcdc1253fd0dcb4",
        "(mode-streaming: resuming the flow clears every queue it manages)",
    ),
    Patch(
        "keep_fetched_records.clear",
        FlowControlEvent,
        "clear",
        None,
        "dda5e40d80288a8f",
        "(mode-streaming: the managed queues are the set FlowControlEvent._queues)",
    ),
    Patch(
        "keep_fetched_records.paused",
        faust_app.App,
        "_on_partitions_assigned",
        None,
        "de932b7927db85b3",
        "(every assigned partition is paused when an assignment arrives, until recovery resumes "
        "the stream partitions)",
    ),
    Patch(
        "keep_fetched_records.pause",
        faust_consumer.Consumer,
        "resume_partitions",
        None,
        "afe6b7c02a41d63c",
        "(pausing and resuming a partition only changes which fetched records are handed on; "
        "the seek applies to every assigned partition)",
    ),
    Patch(
        "skip_records_fetched_before_a_seek",
        faust_aiokafka.AIOKafkaConsumerThread,
        "_fetch_records",
        _fetch_records,
        "39a2c6c79fc1455a",
        "the rest of a batch fetched before a seek is handed on after it, overtaking the re-read "
        "of the sought partitions (whose records a table then skips as applied)",
    ),
    Patch(
        "skip_records_fetched_before_a_seek.seek_wait",
        faust_aiokafka.AIOKafkaConsumerThread,
        "_seek_wait",
        _seek_wait,
        "9d221e816d940467",
        "(the seeks of table recovery, here counted)",
    ),
    Patch(
        "skip_records_fetched_before_a_seek.seek",
        faust_aiokafka.AIOKafkaConsumerThread,
        "seek",
        _seek,
        "1498560d05f02582",
        "(a seek from the worker's loop, here counted)",
    ),
    Patch(
        "skip_records_fetched_before_a_seek.seek_to_beginning",
        faust_aiokafka.AIOKafkaConsumerThread,
        "seek_to_beginning",
        _seek_to_beginning,
        "bd4250b8d1e76d33",
        "(a seek to the start, here counted)",
    ),
    Patch(
        "no_table_registration_pause",
        faust_tables.TableManager,
        "on_start",
        _start_table_manager,
        "365dd25fbc0e0684",
        "the table manager sleeps 1 s before registering the tables' changelogs",
    ),
    Patch(
        "end_offset_once_per_fetch",
        faust_consumer.Consumer,
        "getmany",
        _getmany,
        "4b168d84882a70d6",
        "each fetched record reads and reports its partition's high-water mark",
    ),
    Patch(
        "paused_partitions_stay_paused",
        faust_consumer.Consumer,
        "on_buffer_drop",
        _on_buffer_drop,
        "4b57e8a418d5ad9c",
        "a partition whose buffer pressure drops is made active, paused or not: a global "
        "table's partitions are fetched between the standby seek and the resume that clears "
        "the changelog queue",
    ),
    Patch(
        "retry_intake.buffer_full",
        faust_consumer.Consumer,
        "on_buffer_full",
        None,
        "c8961679e0bcdce5",
        "(a partition whose buffer is full is no longer fetched: bridge.worker.retry_intake "
        "stops a retry tier's partition through it, and starts it again through on_buffer_drop)",
    ),
    Patch(
        "commit_settled_only",
        faust_consumer.Consumer,
        "_new_offset",
        _new_offset,
        "1d2c7ea89a7ad4f1",
        "a run of acknowledged offsets starting one past the committed offset is committed "
        "over the unacknowledged record before it",
    ),
    Patch(
        "commit_settled_only.seek",
        faust_consumer.Consumer,
        "perform_seek",
        _perform_seek,
        "0e8c130ff4b0afd8",
        "(the seek after which the records handed over are counted anew)",
    ),
    Patch(
        "closed_transport_is_a_broken_connection",
        AIOKafkaConnection,
        "send",
        _send,
        "5909ea32f4efca49",
        "(aiokafka) a request written to a connection uvloop found closed raises RuntimeError, "
        "which kills the producer's sender or the fetcher for good, not KafkaConnectionError",
    ),
    Patch(
        "closed_transport_is_a_broken_connection.sasl",
        AIOKafkaConnection,
        "_send_sasl_token",
        _send_sasl_token,
        "7a3d948fc526c953",
        "(aiokafka) the same, for a SASL token written as a connection is made",
    ),
    Patch(
        "keep_topic_counters",
        faust_prometheus.PrometheusMonitor,
        "_clear_partition_related_metrics",
        None,
        "f733982878e5c883",
        "(bridge.worker.faust_monitor overrides it) at a rebalance's start and end the sensor "
        "removes its per-topic counters' children with its per-partition gauges: "
        "faust_messages_received_per_topic_total goes down",
    ),
    Patch(
        "keep_topic_counters.start",
        faust_prometheus.PrometheusMonitor,
        "on_rebalance_start",
        None,
        "48426a8048bea7be",
        "(a rebalance's start clears the sensor's topic metrics through the method overridden)",
    ),
    Patch(
        "keep_topic_counters.end",
        faust_prometheus.PrometheusMonitor,
        "on_rebalance_end",
        None,
        "33ac613ec7131708",
        "(a rebalance's end clears them through it too)",
    ),
    Patch(
        "keep_topic_counters.gauges",
        faust_prometheus.FaustMetrics,
        "_clear_topic_partition_related_metrics",
        None,
        "ee5a72f3dc5bb8be",
        "(the per-partition gauges the override still clears, and no counter)",
    ),
    Patch(
        "direct_topic.conductor",
        faust_conductor.Conductor,
        "_compile_message_handler",
        None,
        "9fbc0538097aa4ec",
        "the conductor's per-record callback, which bridge.worker.direct_topic puts a hand-off "
        "before",
    ),
)


#: Each patched or relied-on attribute as faust-streaming shipped it (as found when this module
#: was imported, before anything was installed); ``None`` for one it lacks, which
#: :func:`install` refuses (a bare ``AttributeError`` here stopped the import before the release
#: check could name the cause, until 2026-12-07).
ORIGINALS: dict[str, Any] = {p.name: getattr(p.owner, p.attribute, None) for p in PATCHES}


def install() -> None:
    """Apply every patch, once: each original must be the code its patch was written against.

    Idempotent (a patch already applied is skipped). Raises :class:`PatchMismatch`, naming the
    patch, when the installed faust-streaming or aiokafka is another release (checked first),
    or an original is missing or its fingerprint differs; nothing of this registry is patched
    then. The patches of aiokafka's record reader (:mod:`bridge.kafka.aiokafka_patches`, which
    check aiokafka's release, on which the connection patches here rely too) are installed
    first: the worker's consumers are Faust's.
    """
    require_release("faust-streaming", FAUST_VERSION, "bridge.worker.faust_patches")
    aiokafka_patches.install()
    apply(PATCHES, ORIGINALS, "faust patch")
