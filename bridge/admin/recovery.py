"""Recovering a webhook's events: what it was sent (or missed) between two times, sent again.

A recovery reads the retained source topics, keeps the records published in ``[since, until)``
(the record's timestamp: when the platform published the event) whose event the webhook would
be sent now, and enqueues each in the first retry tier, due at once, with the delivery id the
first delivery had: receivers deduplicate on it. Deliveries then go through the worker's
normal path (the endpoint's concurrency, rate limit and circuit breaker apply), and the
recovery writes them no faster than ``rate`` per second, so an endpoint gets no more than its
webhook's rate limit allows (a token bucket: at most twice it in any one second) and the
retry tier never holds a backlog of not-yet-due records in front of other webhooks' retries.

A recovery is an :class:`Operation`: it reports progress and counts while it runs and can be
cancelled; :class:`Operations` keeps the latest ones of a process. An operation is also a record
(:meth:`Operation.to_record`, ``topics/schemas/recovery.json``) holding where it has read each
source partition to, so another process can resume it from there (:meth:`Operation.from_record`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import AsyncExitStack, aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bridge.admin.loop_share import STRETCH_RECORDS, LoopShare, Payer
from bridge.config import Settings
from bridge.contract.events import format_epoch, format_timestamp, parse_event, parse_time
from bridge.contract.jsoncanon import MAX_SAFE_INTEGER
from bridge.contract.payload import delivery_id
from bridge.delivery.pending_retry import PendingRetry
from bridge.errors import InvalidRecord
from bridge.kafka.clients import client_kwargs, new_consumer, require_topics, started, stopped
from bridge.kafka.reading import SETTLE_STAMP_MARGIN, fetch_kwargs, settled, stream_topic
from bridge.subscriptions.index import SubscriptionIndex
from bridge.subscriptions.webhook import MIN_RATE_LIMIT, TEST_EVENT, Webhook, before_created
from bridge.worker.recovery_view import recovery_record

__all__ = [
    "DEFAULT_RATE",
    "FETCH_PATIENCE",
    "FETCH_POLL",
    "FETCH_RECORDS",
    "MIN_RATE",
    "SharedPace",
    "WebhookGone",
    "WebhookPaces",
    "RecoveryRequest",
    "NOT_RECEIVING",
    "Operation",
    "Operations",
    "position_key",
    "select",
    "recover",
    "recorded_recoveries",
    "whole_milliseconds",
]

#: Records one fetch of a recovery hands over at most (aiokafka unpacks them at once, without
#: awaiting: a fetch of many partitions' buffered records is one long stretch otherwise).
FETCH_RECORDS = 4 * STRETCH_RECORDS

#: Seconds a recovery's reading waits for a source partition short of its end to bring a
#: record or move on, before it ends ``failed`` (``TimeoutError``).
FETCH_PATIENCE = 30.0
#: Seconds one fetch waits for records before the positions are looked at again (a position
#: moved past a transaction's marker brings no record).
FETCH_POLL = 1.0

#: The slowest pace a recovery goes at (one delivery every 100 s), however slow the rate asked
#: for or its webhook's ``rate_limit`` (5e-324 is a positive one: its interval was infinite,
#: and the recovery held its place until cancelled, until 2026-12-07). The lowest
#: ``rate_limit`` a webhook may have, too (:data:`~bridge.subscriptions.webhook.MIN_RATE_LIMIT`).
MIN_RATE = MIN_RATE_LIMIT

#: Deliveries a recovery enqueues per second unless told otherwise (and never more than the
#: webhook's own ``rate_limit``).
DEFAULT_RATE = 10.0


#: The most :attr:`Operation.progress` shows while it runs: 1 is its end alone.
_RUNNING_PROGRESS = 0.9999


def position_key(tp: TopicPartition) -> str:
    """How a record names a source partition (``topic:partition``; topic names have no ``:``)."""
    return f"{tp.topic}:{tp.partition}"


def _moment(seconds: float | None) -> str | None:
    return None if seconds is None else format_epoch(seconds)


def _seconds(value: Any, name: str) -> float:
    """A time of a recovery record, as seconds; ``ValueError`` for one that is not a time or
    that cannot be written back (the last fraction of a second of year 9999 rounds into year
    10000: until 2026-12-05 such a record was taken, and every answer showing it was a 500)."""
    try:
        seconds = parse_time(value).timestamp()
        format_epoch(seconds)
    except (ValueError, OverflowError, OSError) as exc:
        raise ValueError(f"{name}: {exc}") from None
    return seconds


def _count(record: dict[str, Any], name: str) -> int:
    value = record.get(name, 0)
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not 0 <= value <= MAX_SAFE_INTEGER  # as the API can write it
    ):
        raise ValueError(f"{name} is not a count")
    return value


def _rate(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name} is not positive")
    return float(value)


def _offsets(record: dict[str, Any], name: str) -> dict[str, int]:
    value = record.get(name) or {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str)
        and isinstance(v, int)
        and not isinstance(v, bool)
        and 0 <= v <= MAX_SAFE_INTEGER
        for k, v in value.items()
    ):
        raise ValueError(f"{name} is not offsets by partition")
    return dict(value)


def whole_milliseconds(moment: datetime) -> datetime:
    """``moment`` rounded up to a whole millisecond: a window ``[since, until)`` of records
    stamped in milliseconds selects the same records with both rounded up. ``ValueError`` for
    a moment in the last millisecond of year 9999, which has none to round up to."""
    extra = moment.microsecond % 1000
    try:
        return moment if extra == 0 else moment + timedelta(microseconds=1000 - extra)
    except OverflowError:
        raise ValueError("a time out of range") from None


@dataclass(frozen=True)
class RecoveryRequest:
    """What to recover: ``webhook``'s events published in ``[since, until)``, or only the one
    delivery ``delivery_id`` among them."""

    webhook: Webhook
    since: datetime
    until: datetime
    delivery_id: str | None = None
    #: Deliveries enqueued per second, at most.
    rate: float = DEFAULT_RATE

    def __post_init__(self) -> None:
        if self.since.tzinfo is None or self.until.tzinfo is None:
            raise ValueError("since and until must carry a time zone")
        # Whole milliseconds, as records are stamped and as the operation's record keeps them:
        # the window a resumed recovery reads back is the same, and selects the same records.
        object.__setattr__(self, "since", whole_milliseconds(self.since))
        object.__setattr__(self, "until", whole_milliseconds(self.until))
        if self.until <= self.since:
            raise ValueError("until must be after since")
        if not self.rate > 0:
            raise ValueError("rate must be positive")

    @property
    def pace(self) -> float:
        """Deliveries per second: ``rate``, and no more than the webhook's rate limit."""
        return self.pace_for(self.webhook)

    def pace_for(self, webhook: Webhook) -> float:
        """:attr:`pace` at ``webhook``'s rate limit (the webhook as it is now), and at least
        :data:`MIN_RATE`."""
        limit = _limit(webhook)
        return max(MIN_RATE, self.rate if limit is None else min(self.rate, limit))


def _limit(webhook: Webhook) -> float | None:
    """The pace ``webhook``'s recoveries share: its ``rate_limit``, at least :data:`MIN_RATE`;
    ``None`` without one."""
    limit = webhook.rate_limit
    return max(MIN_RATE, limit) if limit is not None and limit > 0 else None


#: What :func:`select` gives for the one delivery a redelivery asks for when its event is
#: found but the webhook, as it is now, no longer gets it (its event filter, site or account
#: changed, or it is off), and the error the redelivery ends ``failed`` with.
NOT_RECEIVING = "not_receiving"


def select(
    request: RecoveryRequest, index: SubscriptionIndex, timestamp_ms: int, value: bytes | None
) -> PendingRetry | str | None:
    """What to do with one source record: the delivery to enqueue, a reason it cannot be
    read (``invalid_event`` …), :data:`NOT_RECEIVING` when it is the one delivery a
    redelivery asks for but the webhook no longer gets its event, or ``None`` when it is
    outside the request (time, webhook, delivery id; a test event published before the
    webhook was created). ``index`` holds the request's webhook alone."""
    at = timestamp_ms / 1000
    if not request.since.timestamp() <= at < request.until.timestamp():
        return None
    try:
        event = parse_event(value)
    except InvalidRecord as exc:
        return exc.reason
    wanted = request.delivery_id
    if wanted is None and not index.match(event):
        return None
    if event.type == TEST_EVENT and before_created(
        event.occurred_at.timestamp(), request.webhook.created_at
    ):
        # Sent to a deleted webhook whose id this one took (a test event names its webhook by
        # id alone): not this one's to receive again (until 2026-12-05 it was).
        return None
    webhook_id = request.webhook.id
    delivery = delivery_id(event.id, webhook_id)
    if wanted is not None:
        if delivery != wanted:
            return None
        if not index.match(event):
            # Found, but not sent now: until 2026-12-07 passed over, and the redelivery
            # ended failed with event_not_retained, as if the event had left the topic.
            return NOT_RECEIVING
    return PendingRetry(
        delivery_id=delivery,
        webhook_id=webhook_id,
        event=event,
        attempt=1,
        not_before=0.0,
        enqueued_at=0.0,
        replayed=True,
        webhook_created_at=request.webhook.created_at,
    )


@dataclass
class Operation:
    """One recovery, as it goes."""

    request: RecoveryRequest
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    #: ``running``, ``done``, ``cancelled`` or ``failed``.
    state: str = "running"
    #: Source records read, matched (and enqueued), and unreadable (not valid events).
    scanned: int = 0
    enqueued: int = 0
    invalid: int = 0
    #: Records of the source partitions to read, and read so far.
    total: int = 0
    done: int = 0
    error: str | None = None
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    #: The next offset to read of each source partition (:func:`position_key`), and the end
    #: each is read to before the final settle read; empty until the reading starts.
    positions: dict[str, int] = field(default_factory=dict)
    ends: dict[str, int] = field(default_factory=dict)
    #: The URL of the worker running it (``None``: released by a worker that stopped, for the
    #: webhook's owner to resume).
    runner: str | None = None
    #: How many times it was resumed by another worker.
    resumed: int = 0
    #: The digest of the request that started it with an ``Idempotency-Key``
    #: (:mod:`bridge.api.idempotency`; its id is made from the key): the same key with another
    #: request is refused.
    request_digest: str | None = None
    #: The webhook as the recovery last saw it (its rate limit may have changed since the
    #: start); ``None``: as it was then (:attr:`RecoveryRequest.webhook`).
    webhook_now: Webhook | None = field(default=None, repr=False, compare=False)
    _cancel: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def __post_init__(self) -> None:
        # As its record holds it (whole milliseconds): the place of a page's cursor, which an
        # operation read back from the journal must match (until 2026-12-06 a cursor made from
        # one running here named a later moment, and the next page showed it again).
        self.started_at = parse_time(format_epoch(self.started_at)).timestamp()

    def cancel(self) -> None:
        """Stop after the delivery being written; what was enqueued stays enqueued."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def progress(self) -> float:
        """The share of its records read (:attr:`done` of :attr:`total`), rounded to 4 places:
        0 while it runs and the ends are not known yet, below 1 while it runs, 1 once
        ``done``; a ``failed`` or ``cancelled`` one keeps the share it read. Until 2026-12-07
        it was 1 before the reading began, and fell to 0 once it did."""
        if self.state == "done":
            return 1.0
        if self.total == 0:
            return 1.0 if self.ends and self.state != "running" else 0.0
        share = min(1.0, self.done / self.total)
        return round(min(share, _RUNNING_PROGRESS) if self.state == "running" else share, 4)

    def read_to(self, key: str, next_offset: int, end: int) -> None:
        """Source partition ``key`` read up to ``next_offset``, to be read to ``end``: its
        position recorded and the records counted read together, so that a runner resuming
        from the position counts on from there. Records past ``end`` (the embedded broker
        reports an end short of the last records of a batch, which are read all the same)
        count in :attr:`total` as well as in :attr:`done`: until 2026-12-07 they counted in
        neither, and the progress showed 1 while they were read."""
        before = self.positions.get(key, end)
        self.positions[key] = max(self.positions.get(key, 0), next_offset)
        if next_offset > before:
            self.done += next_offset - before
            self.total += max(0, next_offset - max(before, end))

    def finish(self, unsent: str | None = None) -> None:
        """Set the state it ended in, its reading over: ``cancelled``, ``done``, or for a
        redelivery that enqueued nothing ``failed`` with ``unsent`` as its error (why its
        delivery was found and not sent: :data:`NOT_RECEIVING`), else ``event_not_retained``.
        Decided once, before its clients stop: until 2026-12-07 it was set ``done`` there and
        rewritten ``failed`` once they had stopped, and a redelivery could be shown ``done``,
        then ``failed``."""
        if self.cancelled:
            self.state = "cancelled"
        elif self.request.delivery_id is not None and self.enqueued == 0:
            self.state = "failed"
            self.error = unsent or "event_not_retained"
        else:
            self.state = "done"

    @property
    def pace(self) -> float:
        """Deliveries it enqueues per second at most, as it goes now: the rate asked for at the
        rate limit of its webhook as it is now."""
        return self.request.pace_for(self.webhook_now or self.request.webhook)

    def to_record(self, *, updated_at: float) -> dict[str, Any]:
        """The operation as a record of the recoveries topic (no secret: the webhook by id)."""
        return {
            **self.as_dict(),
            "total": self.total,
            "read": self.done,
            "positions": dict(self.positions),
            "ends": dict(self.ends),
            "runner": self.runner,
            # The rate asked for, apart from the pace shown as ``rate`` (at the rate limit of
            # the moment): a resumed recovery goes at it again once the limit is raised.
            "requested_rate": self.request.rate,
            "updated_at": _moment(updated_at),
            **({} if self.request_digest is None else {"request_digest": self.request_digest}),
        }

    @classmethod
    def from_record(cls, record: dict[str, Any], webhook: Webhook) -> Operation:
        """The operation a record describes, for ``webhook`` (the record names its id);
        :class:`ValueError` when the record is not one."""
        if record.get("webhook_id") != webhook.id:
            raise ValueError("the record is of another webhook")
        state = record.get("state")
        if state not in ("running", "done", "cancelled", "failed"):
            raise ValueError("state is not an operation state")
        delivery = record.get("delivery_id")
        pace = _rate(record.get("rate"), "rate")
        # Until 2026-12-07 a record kept only its pace at its start (``rate``), taken as asked.
        rate = _rate(record.get("requested_rate", pace), "requested_rate")
        operation_id = record.get("id")
        if not isinstance(operation_id, str) or not operation_id:
            raise ValueError("id is not a string")
        since = datetime.fromtimestamp(_seconds(record.get("since"), "since"), UTC)
        until = datetime.fromtimestamp(_seconds(record.get("until"), "until"), UTC)
        finished = record.get("finished_at")
        error = record.get("error")
        runner = record.get("runner")
        return cls(
            RecoveryRequest(
                webhook,
                since,
                until,
                delivery_id=delivery if isinstance(delivery, str) else None,
                rate=rate,
            ),
            id=operation_id,
            state=str(state),
            scanned=_count(record, "scanned"),
            enqueued=_count(record, "enqueued"),
            invalid=_count(record, "invalid"),
            total=_count(record, "total"),
            done=_count(record, "read"),
            error=error if isinstance(error, str) else None,
            started_at=_seconds(record.get("started_at"), "started_at"),
            finished_at=None if finished is None else _seconds(finished, "finished_at"),
            positions=_offsets(record, "positions"),
            ends=_offsets(record, "ends"),
            runner=runner if isinstance(runner, str) else None,
            resumed=_count(record, "resumed"),
            request_digest=digest
            if isinstance(digest := record.get("request_digest"), str)
            else None,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": "recover",
            "webhook_id": self.request.webhook.id,
            "since": format_timestamp(self.request.since),
            "until": format_timestamp(self.request.until),
            "delivery_id": self.request.delivery_id,
            "rate": self.pace,
            "state": self.state,
            "scanned": self.scanned,
            "enqueued": self.enqueued,
            "invalid": self.invalid,
            "progress": self.progress,
            "error": self.error,
            "resumed": self.resumed,
            "started_at": _moment(self.started_at),
            "finished_at": _moment(self.finished_at),
        }


class Operations:
    """The latest operations of this process, by id (the oldest finished ones are forgotten)."""

    def __init__(self, keep: int = 100) -> None:
        self._keep = keep
        self._operations: dict[str, Operation] = {}

    def add(self, operation: Operation) -> None:
        self._operations[operation.id] = operation
        finished = [o for o in self._operations.values() if o.state != "running"]
        for old in finished[: max(0, len(self._operations) - self._keep)]:
            del self._operations[old.id]

    def get(self, operation_id: str) -> Operation | None:
        return self._operations.get(operation_id)

    def all(self) -> list[Operation]:
        return list(self._operations.values())


_Write = Callable[[PendingRetry], Awaitable[None]]


class SharedPace:
    """The deliveries every recovery of a process enqueues, at most ``rate`` a second together
    (each recovery's own pace applies first): what replays add to a worker's deliveries is
    bounded however many run and at whatever pace each was asked for.

    A recovery ready to write takes the next free moment (:meth:`reserve`) and waits for it,
    so the ready ones take turns."""

    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be positive, got {rate!r}")
        self.rate = rate
        self._interval = 1.0 / rate
        self._clock = clock
        self._next = float("-inf")

    def __repr__(self) -> str:
        return f"SharedPace({self.rate}/s)"

    def set_rate(self, rate: float) -> None:
        """Go on at ``rate``: the moments taken stand, the next comes ``1/rate`` after the last
        one taken (not the old rate's interval after it: from 0.01 a second to 50, the next
        write waited 99 s)."""
        if not rate > 0:
            raise ValueError(f"rate must be positive, got {rate!r}")
        if self._next != float("-inf"):
            self._next += 1.0 / rate - self._interval
        self.rate = rate
        self._interval = 1.0 / rate

    def reserve(self) -> float:
        """The moment (this pace's clock) the caller may write at; taken for it."""
        at = max(self._next, self._clock())
        self._next = at + self._interval
        return at

    def wait(self) -> float:
        """Seconds the caller waits for the moment it reserved (:meth:`reserve`)."""
        return max(0.0, self.reserve() - self._clock())


class WebhookPaces:
    """One :class:`SharedPace` at a webhook's ``rate_limit``, shared by the recoveries of that
    webhook a process runs (:meth:`held` while one runs): together they enqueue no more than
    the webhook takes. Each recovery's own pace is already no more than it (``pace``), but
    until 2026-12-06 four of one webhook limited to 5 a second enqueued 20 together, and the
    delivery path deferred the excess: hundreds of ``rate_limited`` attempts in seconds.
    Webhooks without a limit have none here (the worker's pace bounds their recoveries)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._paces: dict[str, tuple[SharedPace, list[int]]] = {}

    def __len__(self) -> int:
        return len(self._paces)

    @contextlib.contextmanager
    def held(self, webhook: Webhook) -> Iterator[SharedPace | None]:
        limit = _limit(webhook)
        if limit is None:
            yield None
            return
        entry = self._paces.get(webhook.id)
        if entry is None:
            entry = self._paces[webhook.id] = (SharedPace(limit, clock=self._clock), [0])
        elif entry[0].rate != limit:
            # Its limit changed: one pace still, at the limit of the newest to start (two
            # paces, one at each limit, let them enqueue both together until 2026-12-06).
            entry[0].set_rate(limit)
        entry[1][0] += 1
        try:
            yield entry[0]
        finally:
            entry[1][0] -= 1
            if entry[1][0] == 0:
                del self._paces[webhook.id]


async def recover(
    settings: Settings,
    operation: Operation,
    *,
    write: _Write | None = None,
    clock: Callable[[], float] = time.monotonic,
    wall_time: Callable[[], float] = time.time,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    settle: float = 0.3,
    current: Callable[[str], Webhook | None] | None = None,
    share: LoopShare | None = None,
    pace: SharedPace | None = None,
    webhook_paces: WebhookPaces | None = None,
) -> Operation:
    """Run ``operation`` to its end (or its cancellation) and return it.

    Every source partition is read from the first record published at ``since`` (as far as
    the broker can tell: a broker that cannot look offsets up by time is read from its first
    record) to its end when the recovery started, then records written before it started until
    a fetch of ``settle`` seconds brings nothing or every partition showed a later one (the
    embedded broker can report an end before the last records of a batch).
    ``write`` enqueues one delivery (the first retry tier by default). Given ``current`` (the
    worker's webhooks by id), each event is matched against the webhook as it is then (its
    events, site and account changed meanwhile; none sent once it is deleted, inactive, or
    its id taken by another webhook), not as it was when the recovery began. Given ``share``
    (a worker's, shared by its recoveries), the reading and matching pay for each stretch of
    work there (:mod:`bridge.admin.loop_share`), so that the recoveries together take at most
    that share of the event loop; given ``pace`` (a worker's), each delivery also waits its
    turn there, so that they together enqueue at most its rate; given ``webhook_paces`` (a
    worker's), first its turn at the webhook's rate limit (:class:`WebhookPaces`).

    A cancellation (a release, a stop) while a delivery is being written lets the write
    finish and counts it (a record given to the producer is sent when it stops), so that the
    worker that resumes the recovery reads on after it and the counts are what was written."""
    request = operation.request

    def seen(webhook: Webhook) -> None:
        operation.webhook_now = webhook  # its pace, as shown

    index = _Matching(request.webhook, current, seen)
    async with AsyncExitStack() as clients:  # stopped in reverse, however this ends
        if write is None:
            producer = AIOKafkaProducer(
                **client_kwargs(settings), acks="all", enable_idempotence=False
            )
            clients.push_async_callback(stopped, await started(producer))
            tier = settings.retry_topics[0]
            await require_topics(producer, [tier])

            async def write(item: PendingRetry) -> None:
                await producer.send_and_wait(tier, item.to_bytes(), key=item.webhook_id.encode())

        consumer = new_consumer(
            settings,
            **fetch_kwargs(settings),
            group_id=None,
            enable_auto_commit=False,
            # A position the topic's retention deleted meanwhile (a slow recovery near the
            # retention's edge, one resumed days later) reads on from the oldest record left,
            # not from the end (aiokafka's default), which skipped every record still there.
            auto_offset_reset="earliest",
        )
        clients.push_async_callback(stopped, await started(consumer))
        held: list[SharedPace | None] = []

        def webhook_pace(webhook: Webhook) -> SharedPace | None:
            """The pace the webhook's recoveries share at its rate limit as it is now: taken
            when it first has one (until 2026-12-06 at the start only: a limit set meanwhile
            was each recovery's own, and two of them together went at twice it)."""
            limit = _limit(webhook)
            if webhook_paces is None or limit is None:
                return None
            if not held:
                held.append(clients.enter_context(webhook_paces.held(webhook)))
            shared = held[0]
            if shared is not None and shared.rate != limit:
                shared.set_rate(limit)
            return shared

        webhook_pace(request.webhook)  # taken at the start, as the others see it
        paces = (webhook_pace, pace)
        try:
            unsent = await _run(
                consumer,
                write,
                settings,
                operation,
                index,
                clock,
                wall_time,
                sleep,
                settle,
                Payer(share),
                paces,
            )
            operation.finish(unsent)  # before the clients stop: what GET shows from now on
        except Exception as exc:
            operation.state = "failed"
            operation.error = exc.reason if isinstance(exc, WebhookGone) else type(exc).__name__
            raise
        finally:
            operation.finished_at = wall_time()
    return operation


class WebhookGone(Exception):
    """The webhook of a running recovery was deleted (or its id taken by another webhook),
    or turned off: nothing more would be sent, and the recovery ends ``failed`` with
    :attr:`reason` (``webhook_deleted``, ``webhook_inactive``) as its error."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Matching:
    """The index :func:`select` matches against: the request's webhook alone, as it is now
    when ``current`` can tell (else as it was when the recovery began). A webhook deleted,
    replaced or turned off meanwhile raises :class:`WebhookGone`: until 2026-12-06 the
    recovery read on to the end of its window sending nothing, held its slots, and ended
    ``done``. ``seen`` is given the webhook each time it is found changed."""

    def __init__(
        self,
        webhook: Webhook,
        current: Callable[[str], Webhook | None] | None,
        seen: Callable[[Webhook], None] | None = None,
    ) -> None:
        self._first = webhook
        self._current = current
        self._seen = seen
        self.webhook: Webhook = webhook
        self._index = SubscriptionIndex([webhook])

    def now(self) -> SubscriptionIndex:
        if self._current is not None:
            webhook = self._current(self._first.id)
            if webhook is None:
                raise WebhookGone("webhook_deleted")
            gone = webhook.gone_for(self._first.created_at)
            if gone is not None:
                raise WebhookGone(gone)
            if webhook is not self.webhook:
                self.webhook = webhook
                self._index = SubscriptionIndex([webhook])
                if self._seen is not None:
                    self._seen(webhook)
        return self._index


async def _run(
    consumer: AIOKafkaConsumer,
    write: _Write,
    settings: Settings,
    operation: Operation,
    index: _Matching,
    clock: Callable[[], float],
    wall_time: Callable[[], float],
    sleep: Callable[[float], Awaitable[None]],
    settle: float,
    paying: Payer,
    paces: tuple[Callable[[Webhook], SharedPace | None], SharedPace | None],
) -> str | None:
    """Read the source partitions and enqueue what the request selects, until their end, a
    cancellation, or the one delivery asked for; :data:`NOT_RECEIVING` when that one was
    found and not sent (its webhook no longer gets its event)."""
    request = operation.request
    await consumer.topics()
    tps = [
        TopicPartition(topic, p)
        for topic in settings.source_topics
        for p in sorted(consumer.partitions_for_topic(topic) or ())
    ]
    if not tps:
        return None
    consumer.assign(tps)
    current_ends = await consumer.end_offsets(tps)
    starts: dict[TopicPartition, int] = {}
    if operation.positions:
        # Resumed: read on from where the last runner recorded it had read, to the same ends.
        ends = {tp: operation.ends.get(position_key(tp), current_ends[tp]) for tp in tps}
        for tp in tps:
            starts[tp] = operation.positions.get(position_key(tp), ends[tp])
    else:
        ends = current_ends
        since_ms = max(0, int(request.since.timestamp() * 1000))  # before 1970: from the start
        found = await consumer.offsets_for_times({tp: since_ms for tp in tps})
        for tp in tps:
            hint = found.get(tp)
            # No record at or after ``since``: nothing to read there (a real broker); the
            # embedded one answers every lookup with offset 0, which is read and filtered.
            starts[tp] = ends[tp] if hint is None else min(hint.offset, ends[tp])
        operation.total = sum(ends[tp] - starts[tp] for tp in tps)
        operation.ends = {position_key(tp): ends[tp] for tp in tps}
        operation.positions = {position_key(tp): starts[tp] for tp in tps}
    for tp in tps:
        consumer.seek(tp, starts[tp])
    positioned_ms = int(time.time() * 1000)  # as aiokafka stamps a fetch's answer (settled)
    pending = {tp for tp in tps if starts[tp] < ends[tp]}
    next_write = clock()
    webhook_pace, worker_pace = paces
    unsent: str | None = None

    def handled(tp: TopicPartition, next_offset: int) -> None:
        operation.read_to(position_key(tp), next_offset, ends[tp])

    def scanned(tp: TopicPartition, record: Any, *, enqueued: bool) -> None:
        operation.enqueued += enqueued
        operation.scanned += 1
        handled(tp, record.offset + 1)

    async def take(tp: TopicPartition, records: Iterable[Any]) -> bool:
        """Handle ``records`` (the stretch of work under way goes on: the caller started it)."""
        nonlocal next_write, unsent
        for record in records:
            if operation.cancelled:
                return False
            chosen = select(request, index.now(), record.timestamp, record.value)
            enqueued = False
            if chosen == NOT_RECEIVING:
                unsent = NOT_RECEIVING
                scanned(tp, record, enqueued=False)
                return False  # the one delivery asked for, not to be sent
            if isinstance(chosen, str):
                operation.invalid += 1
            elif chosen is not None:
                await paying.settle()  # (the write awaits: the stretch ends here)
                # At the webhook's rate limit as it is now (until 2026-12-06 as it was when
                # the recovery began: one lowered meanwhile was exceeded, and the delivery
                # path deferred the excess as rate_limited).
                interval = 1.0 / request.pace_for(index.webhook)
                wait = next_write - clock()
                if wait > 0:
                    await sleep(wait)  # cancelled here: nothing written, the record read again
                for shared in (webhook_pace(index.webhook), worker_pace):  # webhook's, worker's
                    wait = 0.0 if shared is None else shared.wait()
                    if wait > 0:
                        await sleep(wait)  # (likewise)
                now = wall_time()
                item = dataclasses.replace(
                    chosen, not_before=now, enqueued_at=now, recovery_id=operation.id
                )
                writing = asyncio.ensure_future(write(item))
                try:
                    await asyncio.shield(writing)
                except asyncio.CancelledError:
                    # Released or stopped while writing: the write goes on (the producer sends
                    # what it was given when it stops), so it is awaited and counted, and the
                    # worker that resumes reads on after this record instead of writing it again.
                    await asyncio.wait([writing])
                    if not writing.cancelled() and writing.exception() is None:
                        scanned(tp, record, enqueued=True)
                    raise
                next_write = max(next_write, clock()) + interval
                enqueued = True
                paying.start()
            scanned(tp, record, enqueued=enqueued)
            if enqueued and request.delivery_id is not None:
                return False  # the one delivery asked for
            await paying.handled()
        await paying.pay()
        return True

    loop = asyncio.get_running_loop()
    quiet_since = loop.time()
    while pending:
        # Records fetched already are unpacked in getmany, on this task and without awaiting:
        # that is work of the stretch; a getmany that waited for the broker began it anew.
        waiting = paying.fetching()
        batch = await consumer.getmany(
            *pending, timeout_ms=int(FETCH_POLL * 1000), max_records=FETCH_RECORDS
        )
        paying.fetched(waiting)
        for tp, records in batch.items():
            if not await take(tp, records):
                return unsent
        # Those without records too: a position reset past the end, or moved past a
        # transaction's commit or abort marker (aiokafka skips control batches and hands over
        # no record for them, and a fetch at the end then brings nothing until its timeout:
        # until 2026-12-07 a partition ending in a marker made every recovery fail after 30 s).
        moved = False
        for tp in list(pending):
            position = await consumer.position(tp)
            moved = moved or position > operation.positions.get(position_key(tp), ends[tp])
            handled(tp, position)  # past what no record stands at (compacted, markers)
            if position >= ends[tp]:
                pending.discard(tp)
        if batch or moved:
            quiet_since = loop.time()
        elif pending and loop.time() - quiet_since >= FETCH_PATIENCE:
            raise TimeoutError(f"no records from the source topics within {FETCH_PATIENCE:g}s")
    # Settling (the embedded broker's ends, see stream_topic): records written before the
    # recovery began only, so that a topic that never falls silent ends it all the same.
    begun_ms = int((operation.started_at + SETTLE_STAMP_MARGIN) * 1000)
    settling = settled(consumer, tps, begun_ms, settle, positioned_ms=positioned_ms, ends=ends)
    async with aclosing(settling) as settling:
        async for tp, records in settling:
            paying.start()
            if not await take(tp, records):
                return unsent
    return unsent


async def recorded_recoveries(settings: Settings, webhook_id: str) -> list[dict[str, Any]]:
    """The newest record of each of a webhook's recoveries and redeliveries in the recoveries
    topic (as workers record them; those that ended more than ``recovery_retention`` ago are
    gone), newest first. Holds only that webhook's records while it reads."""
    newest: dict[bytes, dict[str, Any]] = {}
    async with aclosing(stream_topic(settings, settings.recoveries_topic)) as batches:
        async for batch in batches:
            for key, value in batch:
                if key is None:
                    continue
                if value is None:
                    newest.pop(key, None)
                    continue
                record = recovery_record(key, value)
                if record is None:
                    continue
                if record.get("webhook_id") == webhook_id:
                    newest[key] = record
                else:
                    newest.pop(key, None)
    return sorted(
        newest.values(),
        key=lambda r: (str(r.get("started_at") or ""), str(r.get("id"))),
        reverse=True,
    )
