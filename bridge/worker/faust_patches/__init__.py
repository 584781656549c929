"""Adjustments to faust-streaming that its settings do not expose, applied by bridge.worker.app.

Each patch replaces (or relies on) one internal of faust-streaming. :func:`install` applies them
all, once, after checking the installed release and a fingerprint of each original, and refuses
to start when either is not what the patches were written against. The patches live with the
part of Faust they touch, each module's docstring saying what Faust does there and why the
bridge changes it:

- :mod:`.fetching`: the consumer thread and the fetcher (``fetch_max_wait``,
  ``reread_uncommitted_partitions``, ``prompt_fetcher``, ``skip_records_fetched_before_a_seek``,
  ``paused_partitions_stay_paused``, ``end_offset_once_per_fetch``);
- :mod:`.handoff`: each fetched record handed to the streams and tables
  (``fast_record_handoff``);
- :mod:`.recovery`: the tables' start and recovery (``cheap_recovery_wait_for``,
  ``standby_after_active``, ``keep_fetched_records``, ``no_table_registration_pause``);
- :mod:`.commits`: the offsets committed (``commit_settled_only``);
- :mod:`.connections`: aiokafka's broker connections, under Faust's clients and the bridge's
  own (``closed_transport_is_a_broken_connection``);
- :mod:`.registry`: every patch with its original's fingerprint (:data:`PATCHES`), the originals
  (:data:`ORIGINALS`) and :func:`install`; it also checks the internals of Faust's Prometheus
  sensor that :mod:`bridge.worker.faust_monitor` overrides (``keep_topic_counters``).

The rest of the bridge imports from this package, which re-exports each module's public names.
"""

from __future__ import annotations

from bridge.worker.faust_patches.commits import TakenOffsets, taken_offsets
from bridge.worker.faust_patches.fetching import (
    FETCHER_POLL,
    SeekStamps,
    seek_stamps,
    set_fetch_max_wait,
)
from bridge.worker.faust_patches.handoff import UNBUFFERED, UNBUFFERED_YIELD_EVERY
from bridge.worker.faust_patches.recovery import wait_for
from bridge.worker.faust_patches.registry import (
    FAUST_VERSION,
    ORIGINALS,
    PATCHES,
    Patch,
    PatchMismatch,
    fingerprint,
    install,
)

__all__ = [
    "install",
    "PATCHES",
    "Patch",
    "PatchMismatch",
    "FAUST_VERSION",
    "fingerprint",
    "ORIGINALS",
    "set_fetch_max_wait",
    "wait_for",
    "UNBUFFERED",
    "UNBUFFERED_YIELD_EVERY",
    "FETCHER_POLL",
    "TakenOffsets",
    "taken_offsets",
    "SeekStamps",
    "seek_stamps",
]
