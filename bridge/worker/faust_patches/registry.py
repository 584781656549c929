"""Every patch, the fingerprint of each original it replaces or relies on, the checked installer."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import inspect
import sys
from dataclasses import dataclass
from typing import Any

from aiokafka.conn import AIOKafkaConnection
from faust.app import base as faust_app
from faust.tables import manager as faust_tables
from faust.tables import recovery as faust_recovery
from faust.transport import conductor as faust_conductor
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode.utils.queues import FlowControlEvent

from bridge.errors import ConfigError
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


class PatchMismatch(ConfigError):
    """faust-streaming is not the release, or a function a patch replaces or relies on is not
    the code, that the patch was written against: the worker refuses to start."""


@dataclass(frozen=True)
class Patch:
    """One replacement of (or reliance on) a faust-streaming internal."""

    #: Short name, used in messages.
    name: str
    #: The class or module holding the attribute.
    owner: Any
    attribute: str
    #: What is put in its place; ``None`` for an internal that is only relied on (checked,
    #: not replaced).
    replacement: Any
    #: SHA-256 (first 16 hex digits) of the original's source, as faust-streaming ships it.
    fingerprint: str
    #: The upstream behaviour the patch changes, in one line.
    upstream: str


def fingerprint(original: Any) -> str:
    """The first 16 hex digits of the SHA-256 of ``original``'s source (of the function a
    ``mode`` service task wraps; for a module, of its name)."""
    if inspect.ismodule(original):
        text = f"module {original.__name__}"
    else:
        text = inspect.getsource(getattr(original, "fun", original))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


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
    patch, when the installed faust-streaming is another release (checked first), or an original
    is missing or its fingerprint differs; nothing is patched then.
    """
    installed = importlib.metadata.version("faust-streaming")
    if installed != FAUST_VERSION:
        raise PatchMismatch(
            f"faust-streaming {installed} is installed; bridge.worker.faust_patches was written "
            f"against {FAUST_VERSION}: check every patch against the new release"
        )
    pending: list[Patch] = []
    for patch in PATCHES:
        where = getattr(patch.owner, "__qualname__", getattr(patch.owner, "__name__", "?"))
        current = getattr(patch.owner, patch.attribute, None)
        if current is None or ORIGINALS[patch.name] is None:
            # Missing now, or when the patch modules kept the original they call.
            raise PatchMismatch(
                f"faust patch {patch.name}: {where} has no {patch.attribute}, which the patch "
                f"replaces or relies on; upstream behaviour it changes: {patch.upstream}"
            )
        if patch.replacement is not None and current is patch.replacement:
            continue
        wrapper = getattr(current, "fun", current)
        if hasattr(wrapper, "__wrapped__"):
            # inspect.getsource reads the wrapped function's source: a wrapper (another
            # library's instrumentation) had the original's fingerprint, whatever it did, and
            # was replaced or run beneath unseen (until 2026-12-07).
            raise PatchMismatch(
                f"faust patch {patch.name}: {where}.{patch.attribute} is wrapped by "
                f"{getattr(wrapper, '__module__', '?')}, not the code the patch was written "
                f"against; upstream behaviour it changes: {patch.upstream}"
            )
        found = fingerprint(current)
        if found != patch.fingerprint:
            raise PatchMismatch(
                f"faust patch {patch.name}: {where}.{patch.attribute} is not the code the "
                f"patch was written against (fingerprint {found}, expected "
                f"{patch.fingerprint}); upstream behaviour it changes: {patch.upstream}"
            )
        if patch.replacement is not None:
            pending.append(patch)
    for patch in pending:
        setattr(patch.owner, patch.attribute, patch.replacement)
