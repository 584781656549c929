"""The delivery log of the attempts partitions this worker owns, read without gaps.

Two pieces, each doing what it does well:

* :class:`AssignmentTable`, a Faust (non-global) ``Table`` whose changelog is the attempts
  topic, used for **assignment only**: Faust's assignor gives each member that holds the table
  some of the topic's partitions and sends every member each member's ``canonical_url`` with
  the assignment (``app.assignor.table_metadata``), which is how a request is routed to the
  owner. Faust reads none of its records: :meth:`AssignmentTable.persisted_offset` says every
  partition is already read, so recovery has nothing to do and the partitions stay paused
  (Faust's own changelog reading drops records where recovery ends; see docs/api.md).
* :class:`DeliveryLogReader`, an aiokafka consumer without a group, ``assign()``-ed to the
  partitions the table was given at each rebalance, never paused: every record it reads goes
  into a :class:`~bridge.attempts.stores.DeliveryLogStore` (setting ``delivery_log_store``),
  whose limits bound what it holds. A partition starts at the checkpoint its store kept (the
  RocksDB store: a restart reads only what it missed), else at ``offsets_for_times(now -
  delivery_log_max_age)`` (or the partition's start when the broker has no answer). A
  checkpoint before the partition's start (retention deleted records never read) is dropped
  with its log and the partition read again, and so is one whose topic was recreated: reading
  resumes one record early, and that record must be the one the checkpoint names (its offset
  and timestamp); past the topic's end the broker answers "out of range" (Kafka) or an empty
  fetch with a lower high-water mark (the embedded broker, whose reported ends cannot be
  compared with a checkpoint: they may be too low). A partition that is revoked is forgotten
  (its files deleted). A partition whose store fails a write is not answered from (not
  :meth:`~DeliveryLogReader.complete`, so neither :attr:`~DeliveryLogReader.caught_up`) until
  its store is opened again, after a wait (:data:`REOPEN_FIRST`, doubled after each failure in a
  row up to :data:`REOPEN_LONGEST`), and it is read from its checkpoint to its end; one whose
  store cannot be opened when assigned waits as long, then is assigned again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import OffsetOutOfRangeError
from aiokafka.partitioner import DefaultPartitioner
from faust.assignor import PartitionAssignor
from faust.tables.table import Table
from mode import Service

from bridge.attempts.record import Attempt
from bridge.attempts.stores import Checkpoint, DeliveryLogStore
from bridge.errors import InvalidRecord
from bridge.kafka.clients import started, stopped
from bridge.subscriptions.webhook import created_seconds

__all__ = [
    "FUTURE_MARGIN",
    "NEVER_READ",
    "AssignmentTable",
    "CountingAssignor",
    "DeliveryLogReader",
    "Owner",
    "OwnerUnavailable",
    "REOPEN_FIRST",
    "REOPEN_LONGEST",
    "SWEEP_SLICE",
    "attempts_partition",
]

log = logging.getLogger(__name__)

#: The offset :class:`AssignmentTable` claims to have read up to: past any partition's end.
NEVER_READ = 2**62

#: Seconds past the reader's clock an attempt may be stamped and still be kept (writers' clocks
#: differ by less). One stamped later is not an attempt that happened: it is skipped as invalid,
#: since the log keeps the newest and the stats a bucket for each minute, and a sweep only
#: expires the past (until 2026-12-05 such records pushed real attempts out of the log and grew
#: the stats without bound).
FUTURE_MARGIN = 300.0

#: Longest the reader sweeps at a time before it lets the event loop run other work (requests,
#: and deliveries with ``--role all``): a whole sweep of 100,000 webhooks takes 0.2-1.3 s.
SWEEP_SLICE = 0.005

#: Seconds the reader waits before it opens again the store of a partition that failed a write
#: (RocksDB refuses every write after one failed, until the database is opened again), doubled
#: after each failure in a row of the same partition, up to :data:`REOPEN_LONGEST`; the count
#: starts afresh once the partition is read to its end. Until 2026-12-07 the reader went back to
#: the checkpoint at once, without opening the database again: the same write failed some 70
#: times a second for as long as the worker ran, and the partition was answered from meanwhile.
REOPEN_FIRST = 0.5
REOPEN_LONGEST = 30.0

_partitioner = DefaultPartitioner()


def _made_later(attempt: Attempt) -> bool:
    """Whether ``attempt`` names a webhook created after it was made (by more than
    :data:`FUTURE_MARGIN`), or a ``webhook_created_at`` that is no time: no attempt of a real
    webhook. The stats start afresh at a newer ``created_at`` and the API reads them by the
    webhook's own, so until 2026-12-07 one such record (created 9000-01-01) emptied its
    webhook's stats for as long as the log kept it (a week)."""
    created = attempt.webhook_created_at
    if created is None:
        return False
    made = created_seconds(created)
    return made is None or made > attempt.at_seconds + FUTURE_MARGIN


def attempts_partition(webhook_id: str, partitions: int) -> int:
    """The attempts partition of a webhook's records (the producer's default partitioner, as
    :class:`bridge.kafka.outputs.KafkaOutputs` writes them)."""
    every = list(range(partitions))
    return int(_partitioner(webhook_id.encode("utf-8"), every, every))


class AssignmentTable(Table):  # type: ignore[type-arg]  # faust: Table[KT, VT]
    """A table over the attempts topic that only takes part in the assignment."""

    #: Called after each rebalance with the attempts partitions this worker now owns.
    on_assigned: Callable[[set[int]], None] | None = None

    def _changelog_topic_name(self) -> str:
        # As for the subscription table: the given topic, not ``<app>-<table>-changelog``.
        return str(self.changelog_topic.get_topic_name())

    def persisted_offset(self, tp: Any) -> int | None:
        # "Everything is read": recovery finds nothing remaining and never resumes these
        # partitions; the DeliveryLogReader reads them instead. (The app turns Faust's
        # ``recovery_consistency_check`` off, which would call this offset impossible.)
        return NEVER_READ

    async def on_rebalance(
        self, assigned: Any, revoked: Any, newly_assigned: Any, generation_id: int = 0
    ) -> None:
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)
        topic = self._changelog_topic_name()
        if self.on_assigned is not None:
            self.on_assigned({tp.partition for tp in assigned if tp.topic == topic})


class CountingAssignor(PartitionAssignor):
    """Faust's assignor, noting how many rebalances Faust had counted as begun
    (``app.rebalancing_count``, counted as the consumer gives up its partitions) when this
    member received its assignment: in Faust's consumer thread, after that rebalance's start
    and before the assignment reaches the tables on the event loop. An assignment is current
    while no rebalance has begun since (``Bridge.assignment_settled``), which a count read later,
    on the event loop, could not tell: a rebalance may begin meanwhile."""

    #: ``app.rebalancing_count`` when the last assignment was received (``-1``: none yet).
    received_at: int = -1

    def on_assignment(self, assignment: Any) -> None:
        super().on_assignment(assignment)
        self.received_at = self.app.rebalancing_count


@dataclass(frozen=True)
class Owner:
    """Where a webhook's log is held."""

    webhook_id: str
    partition: int
    #: The owner's ``canonical_url``; ``None`` while no assignment names one.
    url: str | None
    #: This worker holds it.
    local: bool


class OwnerUnavailable(Exception):
    """The log cannot be answered now (no owner during a rebalance, the owner still reads its
    partition, or the owner did not answer); the client should retry after ``retry_after``
    seconds. ``settles``: a change of the assignment or of the delivery log may end it, so a
    request may be held until one comes (:mod:`bridge.worker.settling`); not so when the
    owner answered, but not with the log. ``problem``: what the client is answered, the slug
    of :data:`~bridge.api.problems.PROBLEM_TITLES` (``too_many_requests`` when the owner
    refused the caller's token its rate: a ``503`` for it told the client to retry at once,
    which the limit refuses again)."""

    def __init__(
        self,
        detail: str,
        retry_after: int = 1,
        *,
        settles: bool = True,
        problem: str = "unavailable",
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after
        self.settles = settles
        self.problem = problem


class DeliveryLogReader(Service):
    """Feeds the store from the owned attempts partitions (module docstring).

    ``consumer_factory`` makes the group-less consumer (with ``auto_offset_reset="none"``, so
    an offset out of range is reported rather than silently moved); ``clock`` gives the time
    in seconds since the epoch; every ``sweep_interval`` seconds old attempts and stats
    buckets are expired, :data:`SWEEP_SLICE` seconds at a time between reads. ``on_change`` is
    called whenever what :attr:`assigned`, :meth:`complete` and :attr:`caught_up` answer may
    have changed (an assignment, partitions held or forgotten, a partition read to its end):
    requests held for the book wake then (:mod:`bridge.worker.settling`).

    ``partitions``: the attempts topic's partition count (the worker's declared one). Given, a
    record read on a partition other than its webhook's (:func:`attempts_partition`) is
    skipped and counted (``misplaced``): only a writer other than the bridge puts one there,
    and kept, it went into that partition's book, where the webhook's log and stats were
    looked up first in whichever book held the webhook, so a record of it elsewhere hid its
    real ones (until 2026-12-07). After the topic's partitions are increased, a webhook's
    older attempts are on its former partition and its log starts afresh on its new one.

    ``on_store_failure`` is called with ``write`` for each write of the store that failed
    (attempts or a checkpoint), ``open`` for each failed opening of a newly assigned partition
    (tried again after the same waits) and ``reopen`` for each failed opening of a partition
    again after a failed write;
    ``monotonic`` gives the time the waits between them are measured by."""

    def __init__(
        self,
        *,
        topic: str,
        consumer_factory: Callable[[], AIOKafkaConsumer],
        store: DeliveryLogStore,
        max_age: float,
        clock: Callable[[], float] = time.time,
        poll_timeout: float = 0.2,
        sweep_interval: float = 60.0,
        on_change: Callable[[], None] | None = None,
        partitions: int | None = None,
        on_store_failure: Callable[[str], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.topic = topic
        #: The partition of a webhook's records, remembered (~6 us each to compute).
        self._home: Callable[[str], int] | None = None
        if partitions is not None:
            count = partitions
            self._home = functools.lru_cache(maxsize=1 << 17)(
                lambda webhook_id: attempts_partition(webhook_id, count)
            )
        self._on_change = on_change
        self._on_store_failure = on_store_failure
        self._monotonic = monotonic
        self.store = store
        self._max_age = max_age
        self._consumer_factory = consumer_factory
        self._consumer: AIOKafkaConsumer | None = None
        self._clock = clock
        self._poll_timeout = poll_timeout
        self._sweep_interval = sweep_interval
        #: The partitions the latest assignment gave (``None`` before the first one).
        self._wanted: set[int] | None = None
        self._changed = asyncio.Event()
        #: Partitions being read.
        self._held: set[int] = set()
        #: Records read per partition (duplicates and invalid ones included).
        self.read: dict[int, int] = {}
        #: The last offset read per partition.
        self.positions: dict[int, int] = {}
        #: The next offset to fetch per partition (kept across ``assign()``, which forgets).
        self._next: dict[int, int] = {}
        #: The checkpoint each partition was resumed from (stores that keep one).
        self.resumed: dict[int, int] = {}
        #: Partitions whose stored log was dropped and read again (checkpoint out of range).
        self.reread = 0
        #: Partitions not yet read up to the end they had when assigned.
        self._catching_up: dict[int, int] = {}
        #: Partitions whose store failed a write (or its opening again), not fed until it is
        #: opened again and they are read again from their checkpoint: when (``monotonic``) to
        #: open each one's store again.
        self._failed: dict[int, float] = {}
        #: Failed partitions whose store never opened (:meth:`_fail` ``open``): assigned again
        #: once their wait is over, their checkpoint checked as at any assignment.
        self._unopened: set[int] = set()
        #: Failures in a row per partition, since it was last read to its end.
        self._failures: dict[int, int] = {}
        #: Resumed partitions whose first record must be the one their checkpoint names.
        self._verifying: dict[int, Checkpoint] = {}
        #: Partitions found to be another topic than their checkpoint's: read again.
        self._stale: set[int] = set()
        #: (partition, expected offset, offset read) whenever a record was not the next one.
        self.gaps: list[tuple[int, int, int]] = []
        self.invalid = 0
        #: Attempt records read on a partition other than their webhook's (skipped).
        self.misplaced = 0
        #: The steps left of the sweep under way.
        self._sweeping: Iterator[None] | None = None
        #: Sweeps finished (for tests and the summary).
        self.sweeps = 0

    # -- what the table tells ---------------------------------------------------------------
    def assign(self, partitions: Iterable[int]) -> None:
        """The partitions to read from now on (called at each rebalance)."""
        self._wanted = set(partitions)
        self._changed.set()
        self._progress()

    def _progress(self) -> None:
        """Tell ``on_change`` that what this reader answers may have changed."""
        if self._on_change is not None:
            self._on_change()

    @property
    def wanted(self) -> frozenset[int]:
        """The partitions assigned at the last rebalance (read or being read)."""
        return frozenset(self._wanted or ())

    @property
    def assigned(self) -> set[int]:
        return set(self._held)

    def complete(self, partition: int) -> bool:
        """``partition`` is held and read up to the end it had when assigned (or, after its store
        failed a write, read again to its end): its book can answer (while it is read, a part of
        it would be answered as if it were all)."""
        return (
            partition in self._held
            and partition not in self._catching_up
            and partition not in self._failed
        )

    @property
    def caught_up(self) -> bool:
        """Every partition has been read up to its end at assignment (and none failed since
        without being read to its end again)."""
        return (
            self._wanted is not None
            and self._wanted == set(self._held)
            and not self._catching_up
            and not self._failed
        )

    def _read_to_end(self, partition: int, *, tell: bool = True) -> None:
        """``partition`` is read up to its end: complete, unless its store failed meanwhile
        (``tell``: :meth:`_progress` tells it, else the caller does)."""
        if self._catching_up.pop(partition, None) is None:
            return
        failures = self._failures.pop(partition, None)
        if failures is not None:
            log.info(
                "delivery log: partition %s read to its end again, after %d failures",
                partition,
                failures,
            )
        if tell:
            self._progress()

    async def _preload(self, partition: int) -> None:
        """Let the store read what it kept of ``partition`` in a worker thread: requests (and
        deliveries, with ``--role all``) go on meanwhile. If that fails, :meth:`hold` reads it
        on the loop, as it did before."""
        try:
            await self._in_thread(self.store.preload, partition, self._clock())
        except Exception as exc:
            # A line, not a traceback: opening it on the loop next fails with the same error
            # when its disk does (logged then), else the partition is read all the same.
            level = logging.DEBUG if partition in self._failures else logging.WARNING
            log.log(
                level,
                "delivery log: partition %s not preloaded (%s: %s); opening it on the event loop",
                partition,
                type(exc).__name__,
                exc,
            )

    @staticmethod
    async def _in_thread(call: Callable[[int, float], None], partition: int, now: float) -> None:
        """``call(partition, now)`` in a worker thread, waited for to its end even when the
        caller is cancelled (stopping: closing the store then closes what it opened)."""
        loading = asyncio.ensure_future(asyncio.to_thread(call, partition, now))
        try:
            await asyncio.shield(loading)
        except asyncio.CancelledError:
            await asyncio.wait([loading])
            raise

    def hold(self, partition: int) -> Checkpoint | None:
        """Start holding ``partition``: the offset its store says to resume from, if any."""
        self._held.add(partition)
        return self.store.open(partition, self._clock())

    def add(self, partition: int, offset: int, value: bytes | None, timestamp: int = -1) -> None:
        """One record of ``partition`` into the store; never raises (a store that fails is
        read again from its checkpoint)."""
        self.add_many(partition, ((offset, value, timestamp),))

    def add_many(self, partition: int, records: Sequence[tuple[int, bytes | None, int]]) -> None:
        """Records of ``partition`` ((offset, value, timestamp), in offset order, as fetched)
        into the store; as :meth:`add`, with the partition's checks and counts once per call
        rather than once per record."""
        if not records:
            return
        if partition not in self._held or partition in self._failed or partition in self._stale:
            return  # fetched before the partition was revoked, or after a failed write
        store = self.store
        now = self._clock()
        last = self.positions.get(partition)
        count = 0
        invalid = 0
        misplaced = 0
        home = self._home
        # A resumed partition's first record must be the one its checkpoint names.
        expected = self._verifying.pop(partition, None)
        try:
            for offset, value, timestamp in records:
                if expected is not None:
                    if offset == expected.offset - 1 and timestamp == expected.timestamp:
                        expected = None
                        continue  # the record before the checkpoint, already kept: same topic
                    log.warning("delivery log: partition %s is not the one read before", partition)
                    self._stale.add(partition)
                    return
                count += 1
                if last is not None and offset > last + 1:
                    self.gaps.append((partition, last + 1, offset))
                if last is None or offset > last:
                    last = offset
                try:
                    attempt = Attempt.parse(value)
                except InvalidRecord:
                    invalid += 1
                    store.skip(partition, offset, timestamp)
                    continue
                except Exception:  # a bug: counted, the log goes on
                    invalid += 1
                    store.skip(partition, offset, timestamp)
                    log.exception("attempt record skipped")
                    continue
                if attempt.at_seconds > now + FUTURE_MARGIN or _made_later(attempt):
                    invalid += 1
                    store.skip(partition, offset, timestamp)
                    continue
                if home is not None and home(attempt.webhook_id) != partition:
                    misplaced += 1
                    store.skip(partition, offset, timestamp)
                    continue
                assert value is not None
                try:
                    store.add(partition, offset, attempt, value, now, timestamp)
                except Exception:
                    self._fail(partition, "write")
                    return
        finally:
            if count:
                self.read[partition] = self.read.get(partition, 0) + count
                self.invalid += invalid
                self.misplaced += misplaced
                assert last is not None
                self.positions[partition] = last
                self._next[partition] = last + 1
                end = self._catching_up.get(partition)
                if end is not None and last + 1 >= end:
                    self._read_to_end(partition)

    def start_sweep(self, now: float) -> None:
        """Begin a sweep of the store as of ``now``, unless one is under way."""
        if self._sweeping is None:
            self._sweeping = self.store.sweep_steps(now)

    @property
    def sweeping(self) -> bool:
        return self._sweeping is not None

    def sweep_for(self, budget: float) -> None:
        """Run steps of the sweep under way until ``budget`` seconds have passed (at least one
        step): the rest waits for the next call, so the event loop is never held for a whole
        sweep."""
        steps = self._sweeping
        if steps is None:
            return
        deadline = time.perf_counter() + budget
        try:
            while True:
                next(steps)
                if time.perf_counter() >= deadline:
                    return
        except StopIteration:
            self._sweeping = None
            self.sweeps += 1
        except Exception:  # tried again at the next sweep; reads filter by age
            log.exception("delivery log: sweep failed")
            self._sweeping = None

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop the logs of partitions no longer owned (the memory they took is freed by a
        sweep, started now unless one is under way)."""
        dropped = False
        for partition in partitions:
            dropped = True
            self._held.discard(partition)
            self.store.drop(partition)
            self.read.pop(partition, None)
            self.positions.pop(partition, None)
            self._next.pop(partition, None)
            self.resumed.pop(partition, None)
            self._catching_up.pop(partition, None)
            self._failed.pop(partition, None)
            self._unopened.discard(partition)
            self._failures.pop(partition, None)
            self._verifying.pop(partition, None)
            self._stale.discard(partition)
        if dropped:
            self.start_sweep(self._clock())

    def summary(self) -> dict[str, Any]:
        """What this reader holds (``GET /internal/delivery-log``)."""
        return {
            **self.store.summary(),
            "partitions": sorted(self._held),
            "caught_up": self.caught_up,
            "records_read": sum(self.read.values()),
            "read": {str(p): n for p, n in sorted(self.read.items())},
            "positions": {str(p): n for p, n in sorted(self.positions.items())},
            "resumed": {str(p): n for p, n in sorted(self.resumed.items())},
            "reread": self.reread,
            "invalid": self.invalid,
            "misplaced": self.misplaced,
            "failed": sorted(self._failed),
            "gaps": self.gaps[-20:],
        }

    # -- the consumer -------------------------------------------------------------------------
    async def _reassign(self, consumer: AIOKafkaConsumer) -> None:
        try:
            await self._hold_wanted(consumer)
        finally:
            # Partitions held, forgotten, or found to have nothing to read (complete at once).
            self._progress()

    async def _hold_wanted(self, consumer: AIOKafkaConsumer) -> None:
        self._changed.clear()
        wanted = set(self._wanted or ())
        self.forget(self._held - wanted)
        for gone in set(self._failures) - wanted:  # revoked while waiting to be held again
            del self._failures[gone]
        new = sorted(wanted - self._held)
        tps = {p: TopicPartition(self.topic, p) for p in sorted(wanted)}
        consumer.assign(list(tps.values()))
        # A new assignment has no positions: the partitions still held go on where they were.
        for p, offset in self._next.items():
            consumer.seek(tps[p], offset)
        if not new:
            return
        checkpoints: dict[int, Checkpoint | None] = {}
        for p in new:
            await self._preload(p)
            # Not caught up until its start and end are known (ready() reads this meanwhile).
            self._catching_up[p] = NEVER_READ
            checkpoints[p] = self._held_anew(p)
        new_tps = [tps[p] for p in new]
        starts = await consumer.beginning_offsets(new_tps)
        ends = await consumer.end_offsets(new_tps)
        resume: dict[int, int] = {}
        for tp in new_tps:
            if tp.partition in self._failed:
                continue
            checkpoint = checkpoints[tp.partition]
            if checkpoint is not None and checkpoint.offset < starts[tp]:
                log.info("delivery log: partition %s kept offsets no longer in the topic", tp)
                self.store.drop(tp.partition)
                self.reread += 1
                checkpoint = self._held_anew(tp.partition)
            if checkpoint is None:
                continue
            self.resumed[tp.partition] = checkpoint.offset
            resume[tp.partition] = checkpoint.offset
            if checkpoint.offset > starts[tp] and checkpoint.timestamp >= 0:
                resume[tp.partition] -= 1  # to see the record the checkpoint names
                self._verifying[tp.partition] = checkpoint
        since_ms = int((self._clock() - self._max_age) * 1000)
        unkept = [tp for tp in new_tps if tp.partition not in resume]
        found = await consumer.offsets_for_times({tp: since_ms for tp in unkept}) if unkept else {}
        for tp in new_tps:
            if tp.partition in self._failed:
                # Its fetched records are not kept: fetched from its end meanwhile, and
                # assigned again once its wait is over (_reopen_failed).
                consumer.seek(tp, ends[tp])
                self._next[tp.partition] = ends[tp]
                continue
            if tp.partition in resume:
                start = resume[tp.partition]
            else:
                stamped = found.get(tp)
                # Brokers without a time index (the embedded one answers 0 for every time)
                # give the start: the store drops what is older than its age limit.
                start = stamped.offset if stamped is not None else ends[tp]
                start = max(start, starts[tp])
            consumer.seek(tp, start)
            self._next[tp.partition] = start
            if ends[tp] > start:
                self._catching_up[tp.partition] = ends[tp]
            else:
                self._read_to_end(tp.partition, tell=False)  # _reassign tells
        log.info("delivery log: reading attempts partitions %s (resumed: %s)", new, self.resumed)

    def _held_anew(self, partition: int) -> Checkpoint | None:
        """:meth:`hold` a newly assigned ``partition`` (or one whose log was dropped). When its
        store cannot be opened now (a full or unwritable disk), it is held, not answered from,
        and assigned again after a wait (:meth:`_reopen_failed`), as a failed write's store is
        opened again: ``None``. Until 2026-12-07 the error stopped the reader (and, with
        ``--role all``, deliveries with it)."""
        try:
            return self.hold(partition)
        except Exception:
            self._unopened.add(partition)
            self._fail(partition, "open")
            return None

    async def _check_caught_up(self, consumer: AIOKafkaConsumer) -> None:
        """A partition is caught up once read to the end it had when assigned, or to the
        high-water mark of a fetch response: the embedded broker reports ends too low (its
        last batch's base offset + 1), so the end asked for at assignment may never be
        reached by an offset, while a fetch's mark is always reached."""
        for partition in list(self._catching_up):
            if partition in self._failed:
                continue  # its fetched records are not kept: read to its end once opened again
            tp = TopicPartition(self.topic, partition)
            mark = consumer.highwater(tp)
            if mark is not None and await consumer.position(tp) >= mark:
                self._read_to_end(partition)

    def _check_resumed(self, consumer: AIOKafkaConsumer) -> None:
        """Read again the partitions found to be another topic: by their first record, or
        by a fetch that gave none and a high-water mark below the checkpoint (the record it
        names is not there). Called right after a fetch returns, so the mark and the records
        come from the same responses."""
        for partition, checkpoint in list(self._verifying.items()):
            mark = consumer.highwater(TopicPartition(self.topic, partition))
            if mark is not None and mark < checkpoint.offset:
                log.warning("delivery log: partition %s is shorter than its checkpoint", partition)
                self._stale.add(partition)
        if self._stale:
            self._read_again(self._stale)

    def _read_again(self, partitions: Iterable[int]) -> None:
        """Drop ``partitions``' logs and read them anew (at the next reassignment)."""
        partitions = set(partitions) & self._held
        self.forget(partitions)
        self.reread += len(partitions)
        self._changed.set()

    def _flush(self, partitions: Iterable[int]) -> None:
        """Write the checkpoints of what was read (a partition whose write fails is opened
        again later: :meth:`_reopen_failed`)."""
        for partition in partitions:
            if partition not in self._failed and partition in self._held:
                try:
                    self.store.flush(partition)
                except Exception:
                    self._fail(partition, "write")

    def _fail(self, partition: int, operation: str) -> None:
        """``partition``'s store failed ``operation`` (``write``, ``open``, ``reopen``; called
        where the error is caught): it is fed nothing and not :meth:`complete` until opened
        again, after a wait that doubles with each failure in a row, and read to its end.
        Logged with the error's traceback at the first failure in a row, in one line at each
        next one."""
        failures = self._failures.get(partition, 0) + 1
        self._failures[partition] = failures
        wait = min(REOPEN_FIRST * 2 ** min(failures - 1, 16), REOPEN_LONGEST)
        self._failed[partition] = self._monotonic() + wait
        self._catching_up[partition] = NEVER_READ
        self.positions.pop(partition, None)
        if failures == 1:
            log.exception(
                "delivery log: partition %s: %s failed; opening it again in %.1f s to read it "
                "again from its checkpoint",
                partition,
                operation,
                wait,
            )
        else:
            error = sys.exc_info()[1]
            log.warning(
                "delivery log: partition %s: %s failed (%d failures in a row: %s); opening it "
                "again in %.1f s",
                partition,
                operation,
                failures,
                error,
                wait,
            )
        if self._on_store_failure is not None:
            self._on_store_failure(operation)
        self._progress()

    async def _reopen_failed(self, consumer: AIOKafkaConsumer) -> None:
        """Open again the store of each failed partition whose wait is over, and read it again
        from its checkpoint (anew from the topic when the store kept none)."""
        for partition in sorted(self._failed):
            if self._failed.get(partition, float("inf")) > self._monotonic():
                continue
            if partition in self._unopened:
                # Never opened: held again as if newly assigned (at the next reassignment),
                # its failures in a row kept.
                self._unopened.discard(partition)
                del self._failed[partition]
                self._held.discard(partition)
                self._catching_up.pop(partition, None)
                self._next.pop(partition, None)
                self.store.close_partition(partition)
                self._changed.set()
                continue
            self.store.close_partition(partition)
            try:
                # Reads every key the partition kept (as at assignment): in a thread.
                await self._in_thread(self.store.preload, partition, self._clock())
                checkpoint = self.store.open(partition, self._clock())
            except Exception:
                self._fail(partition, "reopen")
                continue
            del self._failed[partition]
            self.positions.pop(partition, None)
            if checkpoint is None:
                failures = self._failures[partition]
                self._read_again([partition])
                self._failures[partition] = failures  # in a row until read to its end
            else:
                consumer.seek(TopicPartition(self.topic, partition), checkpoint.offset)
                self._next[partition] = checkpoint.offset

    @Service.task
    async def _read(self) -> None:
        try:
            # (In the try: a consumer that does not start, or a stop meanwhile, closes the
            # store too, which holds its directory: until 2026-12-07 it stayed held, and a
            # worker started again in the same process was refused it.)
            consumer = await started(self._consumer_factory())
        except BaseException:
            self.store.close()
            raise
        self._consumer = consumer
        swept = self._clock()
        try:
            while not self.should_stop:
                if self._changed.is_set():
                    await self._reassign(consumer)
                if not self._held:
                    if self._sweeping is not None:
                        # Nothing to read, but revoked partitions to free.
                        self.sweep_for(SWEEP_SLICE)
                        await asyncio.sleep(0)
                        continue
                    try:
                        await asyncio.wait_for(self._changed.wait(), self._poll_timeout)
                    except TimeoutError:
                        pass
                    continue
                # While a sweep is under way, do not wait for records: sweep between reads.
                poll = 0.0 if self._sweeping is not None else self._poll_timeout
                try:
                    batches = await consumer.getmany(timeout_ms=int(poll * 1000))
                except OffsetOutOfRangeError as exc:
                    # A checkpoint past the end: the topic was recreated since it was written.
                    out = {tp.partition for tp in exc.args[0]} if exc.args else set(self._held)
                    log.warning("delivery log: partitions %s out of range; reading again", out)
                    self._read_again(out)
                    continue
                for tp, records in batches.items():
                    self.add_many(tp.partition, [(r.offset, r.value, r.timestamp) for r in records])
                self._check_resumed(consumer)
                self._flush([tp.partition for tp in batches])
                if self._failed:
                    await self._reopen_failed(consumer)
                await self._check_caught_up(consumer)
                if self._sweeping is None and self._clock() - swept >= self._sweep_interval:
                    swept = self._clock()
                    self.start_sweep(swept)
                if self._sweeping is not None:
                    self.sweep_for(SWEEP_SLICE)
                    await asyncio.sleep(0)  # whatever getmany did, let the loop run
        finally:
            self._consumer = None
            try:
                await stopped(consumer)
            finally:
                self.store.close()
