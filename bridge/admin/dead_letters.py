"""Listing dead letters and replaying them into the first retry tier, with the same delivery ids."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer

from bridge.admin.loop_share import STRETCH_RECORDS, LoopShare, Payer
from bridge.config import Settings
from bridge.contract import jsoncanon
from bridge.contract.events import parse_event, parse_time
from bridge.contract.payload import delivery_id
from bridge.delivery.pending_retry import PendingRetry, read_history
from bridge.errors import InvalidRecord
from bridge.kafka.clients import client_kwargs, require_topics, started, stopped
from bridge.kafka.reading import Positioned, stream_positioned
from bridge.subscriptions.webhook import Webhook

__all__ = [
    "STAMP_MARGIN",
    "DeadLetterFilter",
    "list_dead_letters",
    "of_webhook_created",
    "stream_dead_letters",
    "stream_positioned_letters",
    "REPLAY_IN_FLIGHT",
    "REPLAY_REMEMBERED",
    "SKIP_REASONS",
    "ReplayReport",
    "replay_dead_letters",
]


#: Seconds by which a dead letter's record timestamp may differ from its ``dead_lettered_at``,
#: and from the ``dead_lettered_at`` of every letter after it in its partition (writers' clocks
#: apart, a clock stepped back, a broker's append time, a send retried): reading since a time
#: starts at the first record stamped this much before it, and reading up to a time stops at
#: the first record stamped this much after it. The bridge writes each letter when it stamps it.
STAMP_MARGIN = 300.0


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which dead letters to list or replay."""

    webhook_id: str | None = None
    delivery_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    #: Only the letters of the webhook created then (``created_at``), not a deleted one's whose
    #: id it took again (:func:`of_webhook_created`).
    webhook_created_at: str | None = None

    def matches(self, record: Mapping[str, Any]) -> bool:
        if self.webhook_id is not None and record.get("webhook_id") != self.webhook_id:
            return False
        if self.webhook_created_at is not None and not of_webhook_created(
            record, self.webhook_created_at
        ):
            return False
        if self.delivery_id is not None and record.get("delivery_id") != self.delivery_id:
            return False
        stamp = record.get("dead_lettered_at")
        if self.since or self.until:
            try:
                at = parse_time(stamp)
            except ValueError:
                return False  # no time to compare: not within any range
            if self.since is not None and at < self.since:
                return False
            if self.until is not None and at > self.until:
                return False
        return True


def of_webhook_created(record: Mapping[str, Any], created_at: str) -> bool:
    """Whether the dead letter ``record`` is of the webhook created at ``created_at``, not of
    a deleted webhook whose id was used again: by the letter's ``webhook_created_at``, or, in a
    letter without one (written before letters named it), by its time: not before then."""
    marked = record.get("webhook_created_at")
    if marked is not None:
        return bool(marked == created_at)
    try:
        return parse_time(record.get("dead_lettered_at")) >= parse_time(created_at)
    except ValueError:
        return False


async def list_dead_letters(
    settings: Settings, where: DeadLetterFilter = DeadLetterFilter()
) -> list[dict[str, Any]]:
    """Dead letters matching ``where``, oldest first per partition, in one list (see
    :func:`stream_dead_letters`)."""
    async with aclosing(stream_dead_letters(settings, where)) as letters:
        return [record async for record in letters]


async def stream_dead_letters(
    settings: Settings,
    where: DeadLetterFilter = DeadLetterFilter(),
    *,
    needed_until: Callable[[], datetime | None] | None = None,
    share: LoopShare | None = None,
) -> AsyncGenerator[dict[str, Any], None]:
    """Dead letters matching ``where``, oldest first per partition, one by one as they are
    read: a reader holds a fetched batch of the topic at a time, not the topic.

    Only what ``where`` can match is read: one webhook's letters from the partition of its key
    (the bridge keys a delivery's dead letter by its webhook id), letters since a time from
    the first record stamped :data:`STAMP_MARGIN` before it, and letters up to a time (``until``,
    or the latest ``dead_lettered_at`` the reader still needs, as ``needed_until()`` gives it
    while it reads: a page that has its letters needs no later ones) up to the first record
    stamped :data:`STAMP_MARGIN` after it. A letter without a ``dead_lettered_at`` (none the
    bridge writes) is read only where it lies within what is read. Close it
    (``contextlib.aclosing``) when stopping early. Given ``share`` (a worker's), the parsing
    and matching pay for each stretch of work there (:mod:`bridge.admin.loop_share`); what the
    caller does with a letter it is handed is not counted."""
    letters = stream_positioned_letters(settings, where, needed_until=needed_until, share=share)
    async with aclosing(letters) as reading:
        async for _, _, record in reading:
            if record is not None:
                yield record


async def stream_positioned_letters(
    settings: Settings,
    where: DeadLetterFilter,
    *,
    needed_until: Callable[[], datetime | None] | None = None,
    share: LoopShare | None = None,
    start_offsets: Mapping[int, int] | None = None,
) -> AsyncGenerator[tuple[int, int, dict[str, Any] | None], None]:
    """:func:`stream_dead_letters`, each letter with its partition and offset; given
    ``start_offsets``, the partitions it names read from there (a replay resumed). Where
    records that are no matching letter were read, where the read got to, with no letter
    (``None``): a reader going through a long stretch of them can tell how far it has read."""
    key = None if where.webhook_id is None else where.webhook_id.encode("utf-8")
    since_ms = None
    if where.since is not None:
        since_ms = max(0, int((where.since.timestamp() - STAMP_MARGIN) * 1000))

    def until_ms() -> int | None:
        needed = None if needed_until is None else needed_until()
        moments = [moment for moment in (where.until, needed) if moment is not None]
        if not moments:
            return None
        return int((min(moments).timestamp() + STAMP_MARGIN) * 1000)

    stream = stream_positioned(
        settings,
        settings.deadletter_topic,
        key=key,
        since_ms=since_ms,
        until_ms=until_ms,
        start_offsets=start_offsets,
    )

    def letter(marked: tuple[Positioned, bool]) -> tuple[int, int, dict[str, Any] | None] | None:
        read, last = marked
        record: Any = None
        if read.value is not None and (key is None or read.key == key):
            try:
                record = jsoncanon.loads(read.value)
            except InvalidRecord:
                record = None
        if isinstance(record, dict) and where.matches(record):
            return read.partition, read.offset, record
        # The last of a batch (one partition's) or of a stretch of its records, taken or not
        # (another webhook's, when it reads one): where the read got to, however slowly its
        # share lets it go.
        return (read.partition, read.offset, None) if last else None

    async def ends_marked(
        batches: AsyncIterator[list[Positioned]],
    ) -> AsyncGenerator[list[tuple[Positioned, bool]], None]:
        async for batch in batches:
            end = len(batch) - 1
            yield [
                (read, n == end or (n + 1) % STRETCH_RECORDS == 0) for n, read in enumerate(batch)
            ]

    async with (
        aclosing(stream) as batches,
        aclosing(ends_marked(batches)) as marked,
        aclosing(Payer(share).each(marked, letter)) as letters,
    ):
        async for record in letters:
            yield record


#: Why a dead letter is not replayed, as :class:`ReplayReport` counts them:
#: ``unreadable``: the letter lacks what a retry needs (its event is invalid, or invalid as the
#: bridge reads events now; no webhook id or delivery id; attempts no retry record can carry);
#: ``webhook_gone``: no webhook of its id now, or another one (created after the letter was
#: written, or not the webhook the letter names by ``created_at``: a deleted webhook's id
#: taken again); ``webhook_off``: its webhook is turned off (by its owner, or disabled by the
#: bridge): turn it on, then replay; ``not_receiving``: its webhook no longer gets the event
#: (moved to another site or account, its filter narrowed); ``already_replayed``: a further
#: letter of a delivery this replay has written; ``wrong_delivery_id``: its ``delivery_id`` is not
#: the one its event id and webhook id make (:func:`bridge.contract.payload.delivery_id`), the
#: id a worker sends it with (written by something else than the bridge: until 2026-12-07 it
#: was reported under that id, and one naming another delivery's id made that delivery's letter
#: skip as ``already_replayed``).
SKIP_REASONS = (
    "unreadable",
    "webhook_gone",
    "webhook_off",
    "not_receiving",
    "already_replayed",
    "wrong_delivery_id",
)


@dataclass
class ReplayReport:
    replayed: list[str] = field(default_factory=list)
    #: Dead letters not replayed, in all.
    skipped: int = 0
    #: Of them, how many for each of :data:`SKIP_REASONS` (every reason, 0 for none).
    skipped_by_reason: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0)
    )
    #: False when the replay stopped at its ``deadline`` before it had read every letter.
    complete: bool = True
    #: Where it got to: for each partition it took a letter of, the offset after the last
    #: one (written or skipped). A replay given them as ``resume`` goes on from there.
    positions: dict[int, int] = field(default_factory=dict)
    #: The last time of a letter it takes (``dead_lettered_at``): the filter's ``until`` or
    #: when it began. A replay resumed takes it as its ``until``.
    until: datetime | None = None

    def skip(self, reason: str) -> None:
        self.skipped_by_reason[reason] += 1
        self.skipped += 1


#: Replayed letters written before their writes are awaited: what a replay holds at most.
REPLAY_IN_FLIGHT = 500

#: Delivery ids one replay remembers, to replay each delivery once (its first letter read);
#: past that many, a later letter of a delivery not remembered may be replayed again.
REPLAY_REMEMBERED = 100_000


async def replay_dead_letters(
    settings: Settings,
    where: DeadLetterFilter,
    *,
    webhooks: Callable[[str], Awaitable[Webhook | None]],
    clock: Callable[[], float] = time.time,
    share: LoopShare | None = None,
    resume: Mapping[int, int] | None = None,
    deadline: float | None = None,
) -> ReplayReport:
    """Re-enqueue matching dead letters in the first retry tier, due now, with the same delivery
    id. Each replayed delivery gets the retry schedule again from its second entry; it is signed
    with the webhook's secret at that time.

    Each letter is judged by the rule the worker applies when the retry is due, against
    ``webhooks`` (the current webhook of an id, asked once an id): one whose webhook is gone,
    replaced, turned off or no longer gets its event is not written, and is counted by why
    (:data:`SKIP_REASONS`; until 2026-12-06 those of a turned-off webhook were counted as
    replayed, and the worker dropped them). A letter without ``webhook_created_at`` (written
    before letters named it) is of the current webhook unless that one was created after the
    letter was written (a deleted webhook's id used again); it is replayed naming that
    webhook's ``created_at``. Each delivery is replayed once (its first letter read that can be
    replayed; a delivery replayed before and dead-lettered again has several letters), as
    long as the replay remembers it (:data:`REPLAY_REMEMBERED`).

    Takes the letters dead-lettered up to when it began (and up to ``where.until``): a
    replayed delivery that fails again is dead-lettered again, later, and is not taken again.
    Writes them as it reads them, holding at most :data:`REPLAY_IN_FLIGHT` (so a replay of a
    large topic holds a part of it, not the letters it replays); a letter without a
    ``dead_lettered_at`` (none the bridge writes) is within no time and not replayed. Its
    reading pays ``share`` as :func:`stream_dead_letters` does.

    At ``deadline`` (the event loop's time), the replay stops reading, and ends once the letters
    it wrote are acknowledged: its report is not ``complete``, and names where it got to
    (``positions``, ``until``). Given those (``resume`` and ``where.until``), a replay takes
    the letters after them, and none of those before again (a request answers within its
    time, and is not answered ``503`` after writing some: a client sending it again wrote them
    twice). A delivery whose letters fall on both sides is written by both."""
    began = datetime.fromtimestamp(clock(), UTC)
    until = began if where.until is None or where.until > began else where.until
    report = ReplayReport(until=until)
    producer: AIOKafkaProducer | None = None
    in_flight: list[tuple[str, asyncio.Future[Any]]] = []
    replayed: set[str] = set()
    known: dict[str, Webhook | None] = {}

    async def current(webhook_id: str) -> Webhook | None:
        if webhook_id not in known:
            if len(known) >= REPLAY_REMEMBERED:
                known.clear()  # bounded: a webhook is then asked for again
            known[webhook_id] = await webhooks(webhook_id)
        return known[webhook_id]

    async def settle() -> None:
        for delivery, sent in in_flight:
            await sent
            report.replayed.append(delivery)
        in_flight.clear()

    letters = stream_positioned_letters(
        settings, dataclasses.replace(where, until=until), share=share, start_offsets=resume
    )
    if resume:
        report.positions.update(resume)
    try:
        async with aclosing(letters) as reading:
            loop = asyncio.get_running_loop()
            while True:
                if deadline is not None and loop.time() >= deadline:
                    # Letters fetched already are taken without a pause, in which the
                    # timeout below would not fire: a fetch can hold thousands.
                    report.complete = False
                    break
                # Only the reading is cut short: a letter read is written, or skipped.
                scope = asyncio.timeout_at(deadline)
                try:
                    async with scope:
                        partition, offset, record = await anext(reading)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    if not scope.expired():
                        raise  # the reading's own (no answer from the broker)
                    report.complete = False
                    break
                report.positions[partition] = offset + 1
                if record is None:
                    continue  # no letter it takes: read past (until 2026-12-06 such a stretch,
                    # longer than the deadline, stopped every replay at the same place)
                item = _replayed(record, clock())
                if item is None:
                    report.skip("unreadable")
                    continue
                if item.delivery_id != delivery_id(item.event.id, item.webhook_id):
                    report.skip("wrong_delivery_id")
                    continue
                if item.delivery_id in replayed:
                    report.skip("already_replayed")
                    continue
                webhook = await current(item.webhook_id)
                reason = _not_sent(item, record, webhook)
                if reason is not None:
                    report.skip(reason)
                    continue
                assert webhook is not None
                if item.webhook_created_at is None:
                    item = dataclasses.replace(item, webhook_created_at=webhook.created_at)
                if len(replayed) < REPLAY_REMEMBERED:
                    replayed.add(item.delivery_id)
                if producer is None:
                    producer = await started(
                        AIOKafkaProducer(
                            **client_kwargs(settings), acks="all", enable_idempotence=False
                        )
                    )
                    await require_topics(producer, [settings.retry_topics[0]])
                sent = await producer.send(
                    settings.retry_topics[0], item.to_bytes(), key=item.webhook_id.encode("utf-8")
                )
                in_flight.append((item.delivery_id, sent))
                if len(in_flight) >= REPLAY_IN_FLIGHT:
                    await settle()
        await settle()
    finally:
        if producer is not None:
            await stopped(producer)
    return report


def _not_sent(item: PendingRetry, record: Mapping[str, Any], current: Webhook | None) -> str | None:
    """Why the worker would drop ``item`` (replaying the letter ``record``) with ``current``
    the webhook of its id now (one of :data:`SKIP_REASONS`); ``None`` when it would send it.

    A letter that does not name the ``created_at`` of its webhook is of ``current`` unless
    that one was created after the letter was written: until 2026-12-06 such a letter was
    replayed naming no webhook, which every worker takes as of the current one, and a deleted
    webhook's event went to the webhook (another site's, perhaps) that took its id."""
    if current is None:
        return "webhook_gone"
    if item.webhook_created_at is None:
        if current.created_at is not None and not of_webhook_created(record, current.created_at):
            return "webhook_gone"
    refused = current.refusal(item.webhook_created_at, item.event)
    return None if refused is None else _SKIPPED_AS[refused]


#: The skip reason of each of :meth:`Webhook.refusal`'s.
_SKIPPED_AS = {
    "webhook_deleted": "webhook_gone",
    "webhook_inactive": "webhook_off",
    "not_receiving": "not_receiving",
}


def _replayed(record: dict[str, Any], now: float) -> PendingRetry | None:
    """The first-tier retry that replays the dead letter ``record``, due at ``now``; ``None``
    when it cannot be replayed (no webhook, or an event a worker would dead-letter now)."""
    # A webhook id is a non-empty string: until 2026-12-06 a letter naming 123 or ["wh"] was
    # replayed to the webhook "123" or "['wh']".
    webhook_id = record.get("webhook_id")
    if not isinstance(webhook_id, str) or not webhook_id:
        return None
    if not isinstance(record.get("event"), dict):
        return None
    # Written by something else than the bridge, a letter may lack what a retry needs (a
    # delivery id, attempts a retry record can carry): it is not replayed, and the others are
    # (until 2026-12-05 one such letter failed the replay).
    delivery = record.get("delivery_id")
    if not isinstance(delivery, str) or not delivery:
        return None
    try:
        history = read_history(record.get("attempts") or [])
    except InvalidRecord:
        return None
    created = record.get("webhook_created_at")
    try:
        event = parse_event(jsoncanon.dumps(record["event"]))
    except InvalidRecord:
        return None
    return PendingRetry(
        delivery_id=delivery,
        webhook_id=webhook_id,
        event=event,
        attempt=2,
        not_before=now,
        enqueued_at=now,
        history=history,
        replayed=True,
        webhook_created_at=created if isinstance(created, str) else None,
        # Its deferrals are counted afresh: the letter's are of the sending that ended.
        replayed_after=len(history),
        # A sending of its own: a worker that settled an earlier replay of this letter does
        # not take this one for its copy.
        replay_id=str(uuid.uuid4()),
    )
