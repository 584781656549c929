"""From records to delivery jobs: events (first attempts) and pending retries (later ones).

Plain asyncio code with its collaborators passed in; Faust (the events topic's
:class:`~bridge.worker.direct_topic.DirectTopic`, the retry tiers'
:class:`~bridge.worker.retry_intake.RetryIntake`) only feeds it records. A
record is acknowledged (its offset may be committed) only when every job it produced has settled
durably: delivered, scheduled in a retry tier, or dead-lettered. Jobs of one record, and of
consecutive records, run concurrently, so one slow endpoint does not make its partition sequential.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any

from aiokafka.errors import KafkaError

from bridge.contract.events import Event, parse_event
from bridge.contract.payload import EncodedEvent
from bridge.delivery.attempt_record import dropped_record
from bridge.delivery.dead_letters import dead_letter_record, internal_error
from bridge.delivery.deliverer import Deliverer, Outputs
from bridge.delivery.job import Ack, Job, SourceRef
from bridge.delivery.limits import Slots
from bridge.delivery.pending_retry import parse_retry
from bridge.errors import InvalidEvent, InvalidRecord
from bridge.metrics import Metrics
from bridge.subscriptions.freshness import TableFreshness
from bridge.subscriptions.index import SubscriptionIndex

__all__ = ["Pipeline", "SETTLED_REMEMBERED", "drain_worst_case", "handover_timeout"]

log = logging.getLogger(__name__)

#: A record waiting for the subscription table: when it arrived, its value, where it is, and
#: how to acknowledge it.
_Held = tuple[float, bytes | None, SourceRef, Ack]
#: A job by what it attempts: its record's topic and partition, when a retry record was
#: written (``None`` for an event), its delivery id (of the event's id and the webhook's), the
#: ``created_at`` of its webhook (an id can be used again after a delete: the new webhook's job
#: is not the deleted one's), its attempt number and whether an operator sent it again. The
#: same for a record read twice, and for the copies of one record a write retried after its
#: answer was lost wrote (no idempotent producer: the platform's events and the bridge's retry
#: records alike), which are not at the same offset; a record's place alone can be taken by
#: another record (a retry tier deleted and made again, an in-memory broker restarted, while
#: the worker runs).
_JobKey = tuple[str, int, str, str | None, int, int, bool, str | None, int, str | None]


class _Running:
    """A job started and not yet ended: whether its task has begun, and the future of its
    outcome (True: settled, False: ended unsettled), made when a later read of the job first
    waits for it (nearly never)."""

    __slots__ = ("started", "outcome")

    def __init__(self) -> None:
        self.started = False
        self.outcome: asyncio.Future[bool] | None = None


#: Jobs settled on this worker remembered by :data:`_JobKey`, newest last: a record read again
#: after its jobs settled (its commit lost to a rebalance that gave the partition back) is
#: acknowledged without attempting them again. About 300 bytes each (5 MB).
SETTLED_REMEMBERED = 16384


def _key_of(job: Job) -> _JobKey:
    """What a job attempts: the same key is the same step of one delivery's sending.

    Not when its retry record was written: a worker that crashed after a failed attempt wrote
    its retry, before its commit, had the same attempt made again by the next owner, which
    wrote a second retry record of it, at another time; the two were different jobs, and the
    delivery's sending went on twice to the end of its schedule, each later attempt made
    twice and two final outcomes (two 200s, or two dead letters), one more for each crash
    (until 2026-12-07). Now the second is the first's copy: joined while the first runs,
    settled at once after it settled here. A deferral (one more entry in its history), an
    operator's redelivery or recovery (``replayed``, ``recovery_id``) and each replay of a dead
    letter (``replay_id``: from `1cdce4c` until it was added, the same letter replayed twice
    was settled the second time without a request) are other steps."""
    source = job.source
    return (
        source.topic,
        source.partition,
        job.delivery_id,
        job.webhook.created_at,
        job.attempt,
        len(job.history),
        job.replayed,
        job.recovery_id,
        job.replayed_after,
        job.replay_id,
    )


def handover_timeout(drain_timeout: float) -> float:
    """Longest wait, after the drain timeout, for the jobs handed to the retry path and the
    records still on their way (at least 5 s, so that a short drain can still write them)."""
    return max(5.0, drain_timeout)


def drain_worst_case(drain_timeout: float) -> float:
    """The longest :meth:`Pipeline.drain` can take with ``drain_timeout``: what a supervisor's
    grace period must cover, plus the time to commit and leave the consumer group."""
    return drain_timeout + handover_timeout(drain_timeout)


class _Unsettled:
    """A source record's acknowledgement: the record is counted among ``unsettled`` (taken at
    ``taken_at``) from its making until it is called (:meth:`Pipeline.oldest_unsettled`)."""

    __slots__ = ("_ack", "_unsettled")

    def __init__(self, ack: Ack, unsettled: dict[_Unsettled, float], taken_at: float) -> None:
        self._ack = ack
        self._unsettled = unsettled
        unsettled[self] = taken_at

    def untrack(self) -> None:
        """Counted no more (the record was not taken after all)."""
        self._unsettled.pop(self, None)

    def __call__(self) -> None:
        self.untrack()
        self._ack()


class Pipeline:
    """Turns event and retry records into delivery jobs, and acknowledges records when settled."""

    def __init__(
        self,
        *,
        index: SubscriptionIndex,
        deliverer: Deliverer,
        outputs: Outputs,
        metrics: Metrics,
        max_pending: int = 4096,
        freshness: TableFreshness | None = None,
        wall_time: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._index = index
        self._sleep = sleep
        self._deliverer = deliverer
        self._outputs = outputs
        self._metrics = metrics
        #: Bounds jobs started and not settled, so reading stops while too much is pending.
        self._pending = Slots(max_pending)
        #: Bounds records waiting for the subscription table (a separate bound: a record
        #: holding one of these may need job slots next).
        self._waiting = Slots(max_pending)
        self._freshness = freshness
        self._wall_time = wall_time
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()
        #: Jobs whose task has ended, settled once their attempt record is acknowledged.
        self._written: set[asyncio.Future[Any]] = set()
        metrics.pending.set_function(lambda: self.in_flight)
        #: Source records taken and not yet settled (acknowledged), with when each was taken,
        #: oldest first: the age of the first is what holds its partition's commits.
        self._unsettled: dict[_Unsettled, float] = {}
        metrics.oldest_unsettled.set_function(self.oldest_unsettled)
        #: Records waiting for the subscription table, oldest first, and the task releasing them.
        self._held: deque[_Held] = deque()
        self._releaser: asyncio.Task[None] | None = None
        #: Jobs started and not yet ended, by key (see :meth:`_start`).
        self._running: dict[_JobKey, _Running] = {}
        #: Tasks of later reads waiting for a running job's outcome: a drain lets them wait
        #: (they hold no request; the job they wait for settles or is handed over).
        self._joining: set[asyncio.Task[None]] = set()
        #: Set once a drain ends the jobs left (no job is started after).
        self._ending = False
        #: Keys of jobs settled here, at most :data:`SETTLED_REMEMBERED`, and their order.
        self._settled: set[_JobKey] = set()
        self._settled_order: deque[_JobKey] = deque()

    @property
    def in_flight(self) -> int:
        """Jobs started and not yet settled."""
        return len(self._tasks) + len(self._written)

    # -- events: first attempts ----------------------------------------------------------------
    async def handle_event(self, raw: bytes | None, source: SourceRef, ack: Ack) -> None:
        """Take one events-topic record; returns at once unless too many records are waiting.

        Matching waits until the subscription table is known to be current as of the record's
        arrival (see :mod:`bridge.subscriptions.freshness`). Records that must wait are held in
        arrival order and released together by one task per round of that check, beside the reading
        of further records: records arriving together share one check rather than paying one round
        trip (or one task) each.
        """
        received_at = self._clock()
        tracked = _Unsettled(ack, self._unsettled, received_at)
        freshness = self._freshness
        if freshness is None:
            await self._match(raw, source, tracked, received_at)
            return
        freshness.received(source)
        if not self._held and freshness.covers(received_at, source):
            await self._match(raw, source, tracked, received_at)
            return
        try:
            await self._waiting.acquire()
        except BaseException:
            tracked.untrack()  # (cancelled: the record was not taken)
            raise
        self._hold(received_at, raw, source, tracked)

    def oldest_unsettled(self) -> float:
        """Seconds the oldest source record taken and not yet settled has waited (0: none).

        Every record is settled (acknowledged) once its jobs have settled or it was
        dead-lettered; one that waits longer than a request and its places take is held up
        (a dead letter that cannot be written, a bug), and with it its partition's commits.
        Retry records are not counted: they wait until due by design."""
        for taken_at in self._unsettled.values():  # (the first is the oldest)
            return max(0.0, self._clock() - taken_at)
        return 0.0

    def accepts(self) -> bool:
        """True when :meth:`offer` can take a record now."""
        return not self._waiting.locked()

    def offer(self, raw: bytes | None, source: SourceRef, ack: Ack) -> None:
        """Take one events-topic record without waiting, for a caller that cannot await (see
        :mod:`bridge.worker.direct_topic`); only after :meth:`accepts` said yes. The record is held
        and matched by the releasing task, exactly as a record :meth:`handle_event` holds."""
        if not self._waiting.try_acquire():
            raise RuntimeError("Pipeline.offer without room: check accepts() first")
        if self._freshness is not None:
            self._freshness.received(source)
        received_at = self._clock()
        self._hold(received_at, raw, source, _Unsettled(ack, self._unsettled, received_at))

    def _hold(self, received_at: float, raw: bytes | None, source: SourceRef, ack: Ack) -> None:
        """Queue a record (its ``_waiting`` slot taken) for the releasing task."""
        self._held.append((received_at, raw, source, ack))
        if self._releaser is None or self._releaser.done():
            self._releaser = self._track(self._release_held())

    async def _release_held(self) -> None:
        """Match held records once the table is current as of the newest of them.

        Records that arrived while that was checked are matched with them only when the check
        covers them too (see :mod:`bridge.subscriptions.freshness`); the others wait for the next
        round. A partition's records arrive in offset order and coverage only grows, so what is
        matched of one partition is always its oldest held records, in order (coverage shrinks
        only when a partition is read again from a lower offset, where the records before and
        after that have no order between them to keep).
        """
        freshness = self._freshness
        while self._held:
            current = True
            if freshness is not None:
                received_at, _, source, _ = self._held[-1]
                current = await freshness.wait_current(received_at, source)
            if current and freshness is not None:
                batch: deque[_Held] = deque()
                kept: deque[_Held] = deque()
                for held in self._held:
                    (batch if freshness.covers(held[0], held[2]) else kept).append(held)
                if not batch:
                    # wait_current said yes for the newest record, so covers must too; never
                    # spin on a check that contradicts itself: match them all, as on a timeout.
                    log.error("subscription table check passed a record it does not cover")
                    batch, kept = kept, batch
                self._held = kept
            else:
                batch, self._held = self._held, deque()
            if not current:
                self._metrics.sync_timeouts.inc(len(batch))
                log.warning(
                    "subscription table not known to be current; matching anyway",
                    extra={"records": len(batch)},
                )
            for received_at, raw, source, ack in batch:
                self._waiting.release()
                await self._match(raw, source, ack, received_at)

    async def _match(
        self, raw: bytes | None, source: SourceRef, ack: Ack, received_at: float
    ) -> None:
        """Parse, match and start the record's jobs; a record that cannot be matched (invalid,
        or a bug met while matching it) is dead-lettered and acknowledged."""
        try:
            jobs = self._jobs_of(raw, source, received_at)
        except InvalidEvent as exc:
            self._metrics.events.labels("invalid").inc()
            log.warning(
                "event dead-lettered",
                extra={"reason": exc.reason, "topic": source.topic, "offset": source.offset},
            )
            await self._settle_unmatched(source, exc.reason, exc.detail, raw, ack)
            return
        except Exception as exc:
            await self._settle_unmatched(source, *internal_error(exc, "matching"), raw, ack)
            return
        await self._start(jobs, ack)

    def _jobs_of(self, raw: bytes | None, source: SourceRef, received_at: float) -> list[Job]:
        """The record's jobs, one per matching webhook; raises :class:`InvalidEvent`."""
        event = parse_event(raw)
        m = self._metrics
        m.child(m.events, event.type).inc()
        # The stages of the event's way to its first attempt, on the event's own clock (its
        # timestamp): received is when its record reached the pipeline (``received_at`` on the
        # pipeline's clock, carried over to the wall clock).
        now = self._wall_time()
        occurred = event.occurred_at.timestamp()
        received = now - (self._clock() - received_at)
        m.child(m.stage_latency, "received").observe(max(0.0, received - occurred))
        m.child(m.stage_latency, "matched").observe(max(0.0, now - occurred))
        encoded = EncodedEvent.of(event)
        return [Job(encoded, webhook, 1, source) for webhook in self._index.match(event)]

    async def _settle_unmatched(
        self, source: SourceRef, reason: str, detail: str, raw: bytes | None, ack: Ack
    ) -> None:
        """Dead-letter a record that produced no job, then acknowledge it; if even the dead
        letter cannot be written, the record stays unacknowledged (its partition's commits
        wait for it, and it is read again after a restart)."""
        try:
            await self._dead_letter_record(source, reason, detail, raw, None)
        except Exception:
            log.exception(
                "dead letter not written; the record stays unacknowledged",
                extra={"reason": reason, "topic": source.topic, "offset": source.offset},
            )
            return
        ack()

    # -- retries: later attempts -----------------------------------------------------------------
    async def handle_retry(
        self,
        raw: bytes | None,
        source: SourceRef,
        ack: Ack,
        tier: int,
        taken_at: float | None = None,
    ) -> None:
        """Process one retry-topic record: wait until it is due, then attempt it again.

        Its caller hands on a partition's records one at a time
        (:class:`~bridge.worker.retry_intake.RetryIntake`): waiting here holds up the records
        behind it in the same partition, which all became due later (same delay, enqueued
        later), give or take the jitter, and nothing is lost if the worker dies meanwhile,
        since the record is still unacknowledged in Kafka. ``tier`` counts from 1 (the first
        retry topic's), as the metrics' ``tier`` label does. ``taken_at``: when the record was
        taken from Kafka, on ``clock`` (``None``: now); it waits at most the tier's delay
        from then.
        """
        try:
            pending = parse_retry(raw)
        except InvalidRecord as exc:
            await self._settle_unmatched(source, exc.reason, exc.detail, raw, ack)
            return
        except Exception as exc:
            await self._settle_unmatched(source, *internal_error(exc, "reading a retry"), raw, ack)
            return
        delay = pending.not_before - self._wall_time()
        # A record of this tier was due at most the tier's delay after it was written, so at
        # most that long after it was taken: one due later (a writer's clock far ahead, or a
        # hostile record: 1e300) is taken as due then, rather than holding up the tier's
        # partition until it (until 2026-12-05, for good). Counted from when it was taken, not
        # from its turn: such records queued one behind another each held the partition a
        # whole delay in turn (until 2026-12-07). The schedule counts tiers from 0 (until
        # 2026-12-06 the next tier's delay was taken: 60 s rather than 5 in the first tier).
        longest = self._deliverer.policy.tier_delay(tier - 1)
        if taken_at is not None:
            longest -= self._clock() - taken_at
        if delay > longest:
            delay = longest
        if delay > 0:
            await self._sleep(delay)
        self._metrics.retry_wait.labels(str(tier)).observe(
            max(0.0, self._wall_time() - pending.enqueued_at)
        )
        if self._freshness is not None:
            # Current as of the moment the retry became due: a change that reached the
            # subscriptions topic before then applies to it. Records that fell due together (a
            # tier's backlog after an outage, an open circuit's skipped attempts) then share one
            # round of the check instead of paying one offsets request each.
            overdue = max(0.0, self._wall_time() - pending.not_before)
            await self._freshness.wait_current(self._clock() - overdue)
        webhook = self._index.get(pending.webhook_id)
        if webhook is None:
            dropped: str | None = "webhook_deleted"
        else:
            dropped = webhook.refusal(pending.webhook_created_at, pending.event)
        if dropped is not None:
            # Deleted or deactivated meanwhile (or deleted, and its id used again by a webhook
            # that must not get the deleted one's events), or changed so that it no longer
            # gets this event (moved to another site or account, its filter narrowed): no
            # further attempts, by design; recorded as the delivery's last word.
            self._metrics.retries_cancelled.inc()
            log.info(
                "pending retry dropped: webhook deleted, inactive, or no longer receiving it",
                extra={"webhook_id": pending.webhook_id, "delivery_id": pending.delivery_id},
            )
            record = dropped_record(pending, dropped, self._wall_time())
            try:
                await (await self._outputs.attempt(pending.webhook_id.encode("utf-8"), record))
            except (KafkaError, InvalidRecord) as exc:
                # The retry is dropped all the same: its record is for the log alone, and an
                # unacknowledged retry would hold its partition's commits back (a record that
                # would not encode held them for good until 2026-12-07).
                log.warning(
                    "the record of a dropped retry was not written: %s",
                    type(exc).__name__,
                    extra={"webhook_id": pending.webhook_id, "delivery_id": pending.delivery_id},
                )
            ack()
            return
        assert webhook is not None
        try:
            encoded = EncodedEvent.of(pending.event)
            job = Job(
                encoded,
                webhook,
                pending.attempt,
                source,
                pending.history,
                pending.replayed,
                pending.recovery_id,
                pending.replayed_after,
                pending.replay_id,
            )
        except Exception as exc:
            await self._settle_unmatched(source, *internal_error(exc, "reading a retry"), raw, ack)
            return
        await self._start([job], ack)

    # -- shared ----------------------------------------------------------------------------------
    async def _start(self, jobs: Sequence[Job], ack: Ack) -> None:
        """Start ``jobs`` (of one record) and acknowledge the record once all have settled.

        A record can reach the pipeline twice: a rebalance that takes its partition and gives
        it back reads it again from the committed offset, while its first read's jobs are
        still running here, or after they settled and before their commit; and a record can
        be in its topic twice, written again by a write retried after its answer was lost (no
        idempotent producer), a retry record's copy due at the same moment. Attempted again,
        each job made a second request in the same millisecond as the first (a retry
        record's, due already) and settled twice: two attempt records, and two records of
        its next retry, each attempted and each scheduling the next (until 2026-12-06). A
        job of the same record and delivery already settled here is now settled at once; one
        still running is joined: its outcome settles both, and only if it ends unsettled is
        the later job attempted. Counted in ``webhook_bridge_jobs_joined_total``. A copy of
        an event (its id again) is joined likewise: its deliveries are the first's, by id,
        which receivers deduplicate. Best effort, on this worker: a record read again by
        another worker, or after :data:`SETTLED_REMEMBERED` later jobs settled here, is
        attempted again (at least once).
        """
        if not jobs:
            ack()
            return
        remaining = len(jobs)

        def one_settled() -> None:
            nonlocal remaining
            remaining -= 1
            if remaining == 0:
                ack()

        for job in jobs:
            key = _key_of(job)
            if key not in self._settled:
                # Looked up again after the wait for a slot: the slot may be the one the first
                # read's job freed as it settled.
                await self._pending.acquire()
                if key not in self._settled:
                    if key in self._running:
                        follower = self._track(self._follow(job, key, one_settled))
                        self._joining.add(follower)
                        follower.add_done_callback(self._joining.discard)
                    else:
                        entry = self._running[key] = _Running()
                        self._track(self._run(job, key, entry, one_settled))
                    continue
                self._pending.release()
            self._joined(job, "settled")
            one_settled()

    async def _follow(self, job: Job, key: _JobKey, settled: Ack) -> None:
        """Run ``job``, or, while the same one runs (a read before this one), wait for its
        outcome: settled, it settles this one too; ended unsettled, this one is run, or
        joins the one another read started meanwhile. Holds a pending slot, as the job
        would, and releases it once."""
        while (first := self._running.get(key)) is not None:
            outcome = first.outcome
            if outcome is None:
                outcome = first.outcome = asyncio.get_running_loop().create_future()
            try:
                took = await asyncio.shield(outcome)
            except BaseException:
                self._pending.release()
                raise
            if took:
                self._pending.release()
                self._joined(job, "running")
                settled()
                return
            if self._ending:
                # Ended unsettled by the drain: left unacknowledged, as the job's own read.
                self._pending.release()
                return
        if key in self._settled:  # settled since this read was taken
            self._pending.release()
            self._joined(job, "settled")
            settled()
            return
        task = asyncio.current_task()
        if task is not None:
            self._joining.discard(task)  # a job from now on, which a drain may hand over
        entry = self._running[key] = _Running()
        await self._run(job, key, entry, settled)

    def _joined(self, job: Job, state: str) -> None:
        self._metrics.jobs_joined.labels(state).inc()
        log.info(
            "record read again: its job is settled by the first read's",
            extra={
                "delivery_id": job.delivery_id,
                "webhook_id": job.webhook.id,
                "attempt": job.attempt,
                "topic": job.source.topic,
                "partition": job.source.partition,
                "offset": job.source.offset,
                "detail": f"the first read's job was {state}",
            },
        )

    def _ended(self, key: _JobKey, settled: bool) -> None:
        """The running job of ``key`` (one at most) ended, settled or not."""
        entry = self._running.pop(key, None)
        outcome = None if entry is None else entry.outcome
        if settled and key not in self._settled:
            self._settled.add(key)
            self._settled_order.append(key)
            if len(self._settled_order) > SETTLED_REMEMBERED:
                self._settled.discard(self._settled_order.popleft())
        if outcome is not None and not outcome.done():
            outcome.set_result(settled)

    def _track(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``work`` as a task counted in ``in_flight`` until it ends."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run(self, job: Job, key: _JobKey, entry: _Running, settled: Ack) -> None:
        """One job; its pending slot is released exactly once, however it ends. A job that
        crashes (a bug) or whose attempt record cannot be written (unless its retry was written,
        which settles it) is dead-lettered (``internal_error``) and so settled; only if that
        dead letter cannot be written either, or the job is cancelled outside a drain, does its
        record stay unacknowledged, to be processed again after a restart."""
        entry.started = True
        released = False

        def done() -> None:
            nonlocal released
            released = True
            self._pending.release()
            self._ended(key, True)
            settled()

        def release() -> None:
            nonlocal released
            released = True
            self._pending.release()
            self._ended(key, False)

        def written_ended(written: asyncio.Future[Any]) -> None:
            self._written.discard(written)
            if written.cancelled():
                release()
                self._log_unsettled(job, None)
            elif (exc := written.exception()) is not None:
                giving_up = self._track(
                    self._give_up(job, exc, "recording its outcome", done, release, delivered=True)
                )
                # Recording the job's outcome (a dead letter): a drain lets it finish, as it
                # lets a job being recorded (cancelled before it began, it settled nothing).
                settling = self._deliverer.settling
                settling.add(giving_up)
                giving_up.add_done_callback(settling.discard)
            else:
                done()

        written: asyncio.Future[Any] | None = None
        try:
            written = await self._deliverer.run(job, done)
        except Exception as exc:
            if not released:
                # Recording its outcome (a dead letter): a drain lets it finish, as the other
                # giving up (until 2026-12-07 a drain cut it short: unsettled, unlogged, its
                # letter perhaps written and the event delivered again after a restart).
                task = asyncio.current_task()
                settling = self._deliverer.settling
                if task is not None:
                    settling.add(task)
                try:
                    await self._give_up(job, exc, "delivering", done, release)
                finally:
                    settling.discard(task)
            else:
                log.exception(
                    "delivery job failed after it settled",
                    extra={"delivery_id": job.delivery_id, "webhook_id": job.webhook.id},
                )
        finally:
            if written is not None:
                # The task ends here; the job settles when the broker acknowledges its record.
                self._written.add(written)
                written.add_done_callback(written_ended)
            elif not released:
                release()

    async def _give_up(
        self,
        job: Job,
        exc: BaseException,
        stage: str,
        done: Ack,
        release: Ack,
        *,
        delivered: bool = False,
    ) -> None:
        """Settle a job that failed for a reason of the bridge's own by dead-lettering it
        (``delivered``: its receiver answered 200, and its attempt record is what failed)."""
        reason, detail = internal_error(exc, stage)
        try:
            await self._deliverer.dead_letter(job, reason, detail, delivered=delivered)
        except Exception:
            try:
                # Its earlier attempts may be what cannot be written (a retry record's history,
                # written elsewhere): once more without them.
                without = dataclasses.replace(job, history=())
                await self._deliverer.dead_letter(
                    without, reason, f"{detail}; its earlier attempts left out", delivered=delivered
                )
            except Exception:
                release()
                self._log_unsettled(job, exc)
                return
        done()

    @staticmethod
    def _log_unsettled(job: Job, exc: BaseException | None) -> None:
        log.error(
            "delivery job not settled; its record stays unacknowledged",
            exc_info=exc,
            extra={"delivery_id": job.delivery_id, "webhook_id": job.webhook.id},
        )

    async def _dead_letter_record(
        self,
        source: SourceRef,
        reason: str,
        detail: str,
        raw: bytes | None,
        event: Event | None,
    ) -> None:
        record = dead_letter_record(
            reason=reason,
            detail=detail,
            source=source,
            now=datetime.fromtimestamp(self._wall_time(), UTC),
            event=event,
            raw=raw,
        )
        await self._outputs.dead_letter(source.bounded_key, record)
        self._metrics.dead_letters.labels(reason).inc()

    async def drain(self, timeout: float) -> int:
        """On shutdown: let jobs finish for ``timeout`` seconds (a delivered job finishes when
        the broker acknowledges its attempt record), then hand the rest to the retry path (see
        :meth:`Deliverer.run`) and wait for them and the records still on their way. Returns how
        many jobs were handed over."""
        if self._tasks or self._written:
            await asyncio.wait({*self._tasks, *self._written}, timeout=timeout)
        unfinished = {task for task in self._tasks if not task.done()}
        # A job whose outcome is being recorded is let finish: interrupted, a delivered job
        # was handed to the retry path (delivered again by the next worker) and a failed one
        # recorded twice, as failed and as interrupted (until 2026-12-06). So is a later read
        # waiting for a job's outcome: it holds no request, and the job settles or is handed
        # over (cancelled, it left its record unacknowledged: read and sent again).
        handed = unfinished - self._deliverer.settling - self._joining
        unstarted = [(key, e) for key, e in self._running.items() if not e.started]
        self._ending = True
        # One budget for the hand-over, whatever it waits for (drain_worst_case counts one).
        until = self._clock() + handover_timeout(timeout)
        if handed:
            self._deliverer.draining = True
            for task in handed:
                task.cancel()
            await asyncio.wait(handed, timeout=handover_timeout(timeout))
        # A job whose task was cancelled before it began (here, every one not begun) never ran:
        # it ended unsettled, and its slot is free (else a later read would wait for it).
        for key, entry in unstarted:
            if self._running.get(key) is entry and not entry.started:
                self._pending.release()
                self._ended(key, False)
        # Jobs that ended meanwhile may have left writes not waited for above.
        rest = {*unfinished, *self._written}
        if rest:
            await asyncio.wait(rest, timeout=max(0.0, until - self._clock()))
        return len(handed)
