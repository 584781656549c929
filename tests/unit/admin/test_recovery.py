"""bridge.admin.recovery without a broker: which records a recovery sends again, its pace, its
progress and cancellation (the reading of topics is in tests/integration/test_recovery.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndTimestamp
from hypothesis import given
from hypothesis import strategies as st

from bridge.admin import recovery
from bridge.admin.recovery import Operation, Operations, RecoveryRequest, select
from bridge.config import Settings
from bridge.contract import jsoncanon
from bridge.contract.events import build_event
from bridge.contract.payload import delivery_id
from bridge.contract.schemas import is_valid
from bridge.delivery.pending_retry import PendingRetry
from bridge.subscriptions.index import SubscriptionIndex
from bridge.subscriptions.webhook import Webhook
from tests.support.fakes import consumers_of

SINCE = datetime(2024, 1, 15, 10, 0, tzinfo=UTC)
UNTIL = SINCE + timedelta(hours=1)
WEBHOOK = Webhook(
    id="wh",
    name="wh",
    url="https://hooks.example/wh",
    secret="s" * 32,
    events=frozenset({"post.created"}),
    site_id="s1",
    user_id="u1",
)


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def request(**changes: object) -> RecoveryRequest:
    base: dict[str, object] = {"webhook": WEBHOOK, "since": SINCE, "until": UNTIL}
    base.update(changes)
    return RecoveryRequest(**base)  # type: ignore[arg-type]


def event_bytes(event_type: str = "post.created", site: str = "s1", event_id: str = "e1") -> bytes:
    event = build_event(event_type, {"id": "p", "title": "t"}, site_id=site, user_id="u1")
    record = json.loads(event.to_bytes())
    record["id"] = event_id
    return json.dumps(record).encode()


INDEX = SubscriptionIndex([WEBHOOK])


def test_a_matching_record_in_the_window_is_sent_again_with_its_first_delivery_id() -> None:
    chosen = select(request(), INDEX, ms(SINCE), event_bytes())
    assert isinstance(chosen, PendingRetry)
    assert chosen.delivery_id == delivery_id("e1", "wh")
    assert (chosen.webhook_id, chosen.attempt, chosen.replayed) == ("wh", 1, True)


@pytest.mark.parametrize(
    ("timestamp", "value"),
    [
        (ms(SINCE) - 1, event_bytes()),  # before the window
        (ms(UNTIL), event_bytes()),  # the window is half-open
        (ms(SINCE), event_bytes("post.deleted")),  # not in the webhook's filter
        (ms(SINCE), event_bytes(site="s2")),  # another site
    ],
)
def test_records_outside_the_request_are_passed_over(timestamp: int, value: bytes) -> None:
    assert select(request(), INDEX, timestamp, value) is None


def test_one_delivery_only() -> None:
    wanted = delivery_id("e2", "wh")
    assert select(request(delivery_id=wanted), INDEX, ms(SINCE), event_bytes(event_id="e1")) is None
    assert isinstance(
        select(request(delivery_id=wanted), INDEX, ms(SINCE), event_bytes(event_id="e2")),
        PendingRetry,
    )


@pytest.mark.parametrize(
    "now",
    [
        dataclasses.replace(WEBHOOK, events=frozenset({"post.deleted"})),
        dataclasses.replace(WEBHOOK, site_id="s2"),
        dataclasses.replace(WEBHOOK, active=False),
    ],
)
def test_the_delivery_asked_for_of_an_event_the_webhook_no_longer_gets_is_named(
    now: Webhook,
) -> None:
    """Found, but its webhook's filter, site or state changed since: ``not_receiving``, not
    passed over as the other records are (until 2026-12-07 the redelivery then ended
    ``event_not_retained``, as if the event had left the topic)."""
    index = SubscriptionIndex([now])
    asked = request(webhook=now, delivery_id=delivery_id("e1", "wh"))
    assert select(asked, index, ms(SINCE), event_bytes(event_id="e1")) == recovery.NOT_RECEIVING
    assert select(asked, index, ms(SINCE), event_bytes(event_id="e2")) is None
    assert select(request(webhook=now), index, ms(SINCE), event_bytes(event_id="e1")) is None


@pytest.mark.parametrize("value", [None, b"{", b"[]", b'{"id": "x"}'])
def test_unreadable_records_are_counted_by_reason(value: bytes | None) -> None:
    reason = select(request(), INDEX, ms(SINCE), value)
    assert isinstance(reason, str) and reason


def test_the_pace_never_exceeds_the_webhooks_rate_limit() -> None:
    limited = dataclasses.replace(WEBHOOK, rate_limit=2.0)
    assert request(webhook=limited, rate=50.0).pace == 2.0
    assert request(webhook=limited, rate=0.5).pace == 0.5
    assert request(rate=50.0).pace == 50.0


@pytest.mark.parametrize(
    "changes",
    [
        {"until": SINCE},
        {"since": SINCE.replace(tzinfo=None)},
        {"rate": 0.0},
        {"rate": float("nan")},
    ],
)
def test_a_request_that_cannot_run_is_refused(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        request(**changes)


def test_an_operation_reports_progress_and_cancellation() -> None:
    operation = Operation(request())
    assert operation.as_dict()["progress"] == 0.0  # its ends not known yet
    operation.total, operation.done = 8, 2
    shown = operation.as_dict()
    assert shown["progress"] == 0.25 and shown["state"] == "running"
    assert shown["since"] == "2024-01-15T10:00:00.000Z" and shown["webhook_id"] == "wh"
    operation.cancel()
    assert operation.cancelled


@st.composite
def readings(draw: st.DrawFn) -> tuple[list[tuple[int, int, int]], list[tuple[int, int]]]:
    """Source partitions as ``(start, reported end, last offset + 1)`` (the embedded broker
    reports ends short of a last batch's records, and a position may be reset past the
    reported end), and the reads of them in turn: ``(partition, next offset)``."""
    partitions = []
    for _ in range(draw(st.integers(1, 4))):
        start = draw(st.integers(0, 50))
        end = draw(st.integers(start, start + 50))
        partitions.append((start, end, draw(st.integers(end, end + 10))))
    at = [start for start, _, _ in partitions]
    reads = []
    for _ in range(draw(st.integers(0, 60))):
        n = draw(st.integers(0, len(partitions) - 1))
        at[n] = min(partitions[n][2], at[n] + draw(st.integers(0, 7)))
        reads.append((n, at[n]))
    reads += [(n, last) for n, (_, _, last) in enumerate(partitions)]  # read to the last
    return partitions, reads


@given(readings(), st.sampled_from(["done", "cancelled", "failed"]))
def test_progress_only_grows_within_0_and_1_and_is_1_at_the_end_alone(
    reading: tuple[list[tuple[int, int, int]], list[tuple[int, int]]], end: str
) -> None:
    """0 before the ends are known (until 2026-12-07: 1), never 1 while it reads (records past
    a reported end counted in neither done nor total, and it showed 1 while they were read),
    never falling, and 1 once it ended having read every record."""
    partitions, reads = reading
    operation = Operation(request())
    shown = [operation.as_dict()["progress"]]
    assert shown == [0.0]
    # As the reading starts (recover: the ends when it began, each read from its start).
    operation.ends = {f"t:{n}": end for n, (_, end, _) in enumerate(partitions)}
    operation.positions = {f"t:{n}": start for n, (start, _, _) in enumerate(partitions)}
    operation.total = sum(end - start for start, end, _ in partitions)
    shown.append(operation.as_dict()["progress"])
    for n, next_offset in reads:
        operation.read_to(f"t:{n}", next_offset, partitions[n][1])
        shown.append(operation.as_dict()["progress"])
    assert operation.done == operation.total == sum(last - s for s, _, last in partitions)
    assert all(0.0 <= p < 1.0 for p in shown)
    assert shown == sorted(shown)
    operation.state = end  # (every record read: 1 whatever the end)
    assert operation.as_dict()["progress"] == 1.0


def test_operations_forget_the_oldest_finished_ones() -> None:
    operations = Operations(keep=2)
    running = Operation(request())
    operations.add(running)
    for _ in range(3):
        finished = Operation(request(), state="done")
        operations.add(finished)
    assert operations.get(running.id) is running
    assert len(operations.all()) == 2
    assert operations.get(finished.id) is finished


@given(st.integers(0, 2 * 3600 * 1000))
def test_the_window_is_exactly_since_to_until(offset_ms: int) -> None:
    timestamp = ms(SINCE) - 1800 * 1000 + offset_ms
    inside = ms(SINCE) <= timestamp < ms(UNTIL)
    assert (select(request(), INDEX, timestamp, event_bytes()) is not None) == inside


@given(st.floats(0, 4_102_444_800.0, allow_nan=False))  # up to 2100
def test_an_operation_starts_at_the_moment_its_record_holds(started: float) -> None:
    """A running operation and the same read back from the journal have one ``started_at``:
    the place of a page's cursor (until 2026-12-06 a cursor made from one running here named a
    moment a fraction of a millisecond later, and the next page showed it again). (Past 2106 a
    float's seconds no longer hold microseconds, and a read back can fall a millisecond short.)"""
    operation = Operation(request(), started_at=started)
    record = json.loads(json.dumps(operation.to_record(updated_at=started)))
    assert Operation.from_record(record, WEBHOOK).started_at == operation.started_at
    assert abs(operation.started_at - started) < 0.001


def test_an_operation_is_a_record_another_worker_resumes_from() -> None:
    operation = Operation(request(delivery_id="d1", rate=4.0), scanned=7, enqueued=2, invalid=1)
    operation.total, operation.done = 10, 7
    operation.positions, operation.ends = {"t:0": 5, "t:1": 3}, {"t:0": 6, "t:1": 4}
    operation.runner = "http://10.0.0.1:6066"
    record = operation.to_record(updated_at=SINCE.timestamp() + 5)
    assert is_valid("schemas/recovery.json", record)
    assert "secret" not in json.dumps(record) and WEBHOOK.secret not in json.dumps(record)
    back = Operation.from_record(json.loads(json.dumps(record)), WEBHOOK)
    assert back.to_record(updated_at=SINCE.timestamp() + 5) == record
    assert back.as_dict() == operation.as_dict()


@pytest.mark.parametrize(
    "change",
    [
        {"webhook_id": "other"},
        {"state": "paused"},
        {"rate": 0},
        {"id": ""},
        {"since": "yesterday"},
        {"positions": {"t:0": -1}},
        {"scanned": True},
        # What the API could not write back (each a 500 wherever shown, until 2026-12-05).
        {"scanned": 2**53},
        {"positions": {"t:0": 2**62}},
        {"started_at": "9999-12-31T23:59:59.9999999Z"},
        {"finished_at": "9999-12-31T23:59:59.9999995Z"},
    ],
)
def test_a_record_that_is_not_an_operation_is_refused(change: dict[str, object]) -> None:
    record = Operation(request()).to_record(updated_at=SINCE.timestamp())
    with pytest.raises(ValueError):
        Operation.from_record({**record, **change}, WEBHOOK)
    # One that is taken can always be written back as the API answers it.
    jsoncanon.dumps(Operation.from_record(record, WEBHOOK).as_dict())


def test_a_request_keeps_whole_milliseconds_as_its_record_does() -> None:
    """Records are stamped in milliseconds and an operation's record keeps its times to the
    millisecond: a request rounds its window up to whole ones (selecting the same records),
    so a resumed recovery reads the same window; one that rounds to nothing is refused."""
    since = datetime(2024, 1, 15, 10, 0, 0, 500, tzinfo=UTC)  # 10:00:00.0005
    operation = Operation(RecoveryRequest(WEBHOOK, since, since + timedelta(hours=1)))
    assert operation.request.since == datetime(2024, 1, 15, 10, 0, 0, 1000, tzinfo=UTC)
    resumed = Operation.from_record(operation.to_record(updated_at=0.0), WEBHOOK)
    assert resumed.request.since == operation.request.since
    assert resumed.request.until == operation.request.until
    index = SubscriptionIndex([WEBHOOK])
    at_10 = ms(datetime(2024, 1, 15, 10, 0, tzinfo=UTC))  # 10:00:00.000, before since
    for request in (operation.request, resumed.request):
        assert select(request, index, at_10, event_bytes()) is None
        assert select(request, index, at_10 + 1, event_bytes()) is not None
    with pytest.raises(ValueError, match="until must be after since"):
        RecoveryRequest(WEBHOOK, since, since + timedelta(microseconds=300))


def test_a_test_event_sent_before_the_webhook_was_created_is_not_sent_again() -> None:
    """A test event names its webhook by id alone: one published before this webhook was
    created was sent to a deleted webhook whose id it took (another site's, possibly), and a
    recovery does not send it to this one. One published since is sent again."""
    created = SINCE + timedelta(minutes=30)
    stamp = created.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    webhook = dataclasses.replace(WEBHOOK, extra={"created_at": stamp})
    index = SubscriptionIndex([webhook])

    def test_event(at: datetime) -> bytes:
        event = build_event(
            "test.event",
            {"webhook_id": "wh", "message": "site 2's test"},
            site_id="s1",
            user_id="u1",
            timestamp=at,
        )
        return event.to_bytes()

    before = created - timedelta(milliseconds=1)
    assert select(request(webhook=webhook), index, ms(before), test_event(before)) is None
    chosen = select(request(webhook=webhook), index, ms(created), test_event(created))
    assert isinstance(chosen, PendingRetry)
    # Other events of the window before the webhook was created are its site's: sent.
    assert isinstance(
        select(request(webhook=webhook), index, ms(before), event_bytes()), PendingRetry
    )


def test_one_webhooks_recoveries_share_one_pace_at_its_rate_limit() -> None:
    """Recoveries of one webhook held together take one pace at its ``rate_limit`` (moments
    1/limit apart whichever asks), another webhook's is its own, one without a limit has
    none, and a pace no recovery holds is forgotten."""
    from bridge.admin.recovery import WebhookPaces
    from bridge.subscriptions.webhook import webhook_from_record
    from tests.support.builders import webhook_record

    now = [100.0]
    paces = WebhookPaces(clock=lambda: now[0])
    limited = webhook_from_record(webhook_record(id="wh_l", rate_limit=4))
    other = webhook_from_record(webhook_record(id="wh_o", rate_limit=4))
    free = webhook_from_record(webhook_record(id="wh_f"))
    with paces.held(limited) as first, paces.held(limited) as second, paces.held(other) as third:
        assert first is second and first is not None and third is not first
        moments = [first.reserve(), second.reserve(), first.reserve(), second.reserve()]
        assert moments == [100.0, 100.25, 100.5, 100.75]
        assert third is not None and third.reserve() == 100.0
        with paces.held(free) as none:
            assert none is None
        assert len(paces) == 2
    assert len(paces) == 0
    # A limit changed while one runs: one pace still, at the newest limit.
    with paces.held(limited) as old:
        changed = webhook_from_record(webhook_record(id="wh_l", rate_limit=8))
        with paces.held(changed) as new:
            assert new is old and new is not None and new.rate == 8
        assert len(paces) == 1
    assert len(paces) == 0


def test_a_pace_whose_limit_changes_goes_on_from_the_moments_taken() -> None:
    from bridge.admin.recovery import SharedPace

    now = [10.0]
    pace = SharedPace(1.0, clock=lambda: now[0])
    assert [pace.reserve(), pace.reserve()] == [10.0, 11.0]
    pace.set_rate(4.0)  # the next a quarter second after the last taken, not a second
    assert [pace.reserve(), pace.reserve()] == [11.25, 11.5]
    pace.set_rate(0.01)
    assert pace.reserve() == 111.5
    with pytest.raises(ValueError):
        pace.set_rate(0.0)


class RetainedPartition:
    """An ``AIOKafkaConsumer`` of one events partition whose records below ``LOG_START`` the
    topic's retention deleted: a position below it is reset as ``auto_offset_reset`` says
    (aiokafka's default, ``latest``: to the end), as a real broker's OffsetOutOfRange makes
    aiokafka do."""

    LOG_START = 40
    END = 60
    made: list[RetainedPartition] = []

    def __init__(self, **kwargs: object) -> None:
        self.reset = kwargs.get("auto_offset_reset", "latest")
        self.at = 0
        RetainedPartition.made.append(self)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def topics(self) -> set[str]:
        return {"events"}

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0} if topic == "events" else set()

    def assign(self, tps: object) -> None:
        pass

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.END for tp in tps}

    async def offsets_for_times(
        self, times: dict[TopicPartition, int]
    ) -> dict[TopicPartition, Any]:
        # The first record at ``since`` was at offset 0, which retention deleted since.
        return {tp: OffsetAndTimestamp(0, stamp) for tp, stamp in times.items()}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.at = offset

    def _reset(self) -> None:
        if self.at < self.LOG_START:
            self.at = self.LOG_START if self.reset == "earliest" else self.END

    async def getmany(
        self, *tps: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Any]]:
        self._reset()
        if self.at >= self.END:
            return {}
        taken = range(self.at, min(self.END, self.at + (max_records or 10)))
        self.at = taken[-1] + 1
        stamp = ms(SINCE) + 1
        return {
            tps[0]: [
                SimpleNamespace(offset=n, timestamp=stamp, value=event_bytes(event_id=f"e{n}"))
                for n in taken
            ]
        }

    async def position(self, tp: TopicPartition) -> int:
        self._reset()
        return self.at

    def last_poll_timestamp(self, tp: TopicPartition) -> int:
        return int(time.time() * 1000) + 1


async def test_a_start_that_retention_deleted_reads_on_from_the_oldest_record_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Until 2026-12-06 the reader reset such a position to the end (aiokafka's default), and
    the recovery failed after 30 s, or ended done, having sent none of the records left."""
    monkeypatch.setattr(recovery, "new_consumer", consumers_of(RetainedPartition))
    settings = Settings.load(
        env={}, overrides={"kafka_bootstrap_servers": "127.0.0.1:1", "events_topic": "events"}
    )
    written: list[PendingRetry] = []

    async def write(item: PendingRetry) -> None:
        written.append(item)

    operation = Operation(request(rate=1_000_000.0))
    await recovery.recover(settings, operation, write=write, settle=0.01)
    assert [item.delivery_id for item in written] == [
        delivery_id(f"e{n}", "wh")
        for n in range(RetainedPartition.LOG_START, RetainedPartition.END)
    ]
    # Each names the recovery that sent it, which its attempts record (since 2026-12-06).
    assert {item.recovery_id for item in written} == {operation.id}
    assert operation.state == "done"
    assert (operation.done, operation.total) == (RetainedPartition.END, RetainedPartition.END)
    assert RetainedPartition.made[-1].reset == "earliest"


class FakeTime:
    """A clock that moves only when slept on."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def run_with(
    monkeypatch: pytest.MonkeyPatch,
    operation: Operation,
    current: Any,
    clock: FakeTime | None = None,
    consumer: type[RetainedPartition] = RetainedPartition,
    **kwargs: Any,
) -> tuple[list[float], Any]:
    """Run ``operation`` over ``consumer`` (:class:`RetainedPartition`) with
    ``current(written)`` the webhook of its id once ``written`` deliveries were written: the
    times of the writes, and the run."""
    monkeypatch.setattr(recovery, "new_consumer", consumers_of(consumer))
    settings = Settings.load(
        env={}, overrides={"kafka_bootstrap_servers": "127.0.0.1:1", "events_topic": "events"}
    )
    clock = clock or FakeTime()
    times: list[float] = []

    async def write(item: PendingRetry) -> None:
        times.append(clock.now)

    run = recovery.recover(
        settings,
        operation,
        write=write,
        settle=0.01,
        clock=clock,
        sleep=clock.sleep,
        current=lambda webhook_id: current(len(times)),
        **kwargs,
    )
    return times, run


@pytest.mark.parametrize(
    ("later", "error"),
    [
        (None, "webhook_deleted"),
        (
            dataclasses.replace(WEBHOOK, extra={"created_at": "2026-12-06T11:00:00.000Z"}),
            "webhook_deleted",
        ),
        (dataclasses.replace(WEBHOOK, active=False), "webhook_inactive"),
    ],
)
async def test_a_recovery_whose_webhook_goes_away_ends_failed_at_once(
    monkeypatch: pytest.MonkeyPatch, later: Webhook | None, error: str
) -> None:
    """Deleted, its id taken by another webhook, or turned off after two deliveries: the
    recovery stops there, failed, naming why (until 2026-12-06 it read on to its window's end
    sending nothing, and ended done)."""
    first = dataclasses.replace(WEBHOOK, extra={"created_at": "2026-12-06T10:00:00.000Z"})
    if later is not None and "created_at" not in later.extra:
        later = dataclasses.replace(later, extra=first.extra)
    operation = Operation(request(webhook=first, rate=1_000_000.0))
    times, run = run_with(monkeypatch, operation, lambda written: first if written < 2 else later)
    with pytest.raises(recovery.WebhookGone):
        await run
    assert len(times) == 2
    assert (operation.state, operation.error) == ("failed", error)
    assert operation.scanned == 2 < RetainedPartition.END - RetainedPartition.LOG_START


async def test_a_recovery_follows_its_webhooks_rate_limit_as_it_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Lowered from 50 to 2 a second after ten deliveries: the rest go at 2 a second, on the
    recovery's own pace and on the webhook's pace its recoveries share (until 2026-12-06 both
    kept the limit of the recovery's start)."""
    fast = dataclasses.replace(WEBHOOK, rate_limit=50.0)
    slow = dataclasses.replace(WEBHOOK, rate_limit=2.0)
    operation = Operation(request(webhook=fast, rate=1_000.0))
    clock = FakeTime()
    paces = recovery.WebhookPaces(clock=clock)
    times, run = run_with(
        monkeypatch,
        operation,
        lambda written: fast if written < 10 else slow,
        clock,
        webhook_paces=paces,
    )
    await run
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert all(gap == pytest.approx(0.02) for gap in gaps[:9])
    assert gaps[10:] and all(gap >= 0.5 - 1e-9 for gap in gaps[10:])
    # Shown at the pace it goes at now (until 2026-12-07 at its start's, 50), asked for 1,000.
    assert operation.as_dict()["rate"] == 2.0
    assert operation.to_record(updated_at=1.0)["requested_rate"] == 1_000.0


async def test_a_rate_limit_set_while_two_recoveries_run_bounds_them_together(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No limit when they start, 40 a second after two deliveries: from then on the two
    together write at most 40 a second (until 2026-12-06 each paced itself alone, 80 together).
    A load can only make them slower."""
    monkeypatch.setattr(recovery, "new_consumer", consumers_of(RetainedPartition))
    settings = Settings.load(
        env={}, overrides={"kafka_bootstrap_servers": "127.0.0.1:1", "events_topic": "events"}
    )
    limited = dataclasses.replace(WEBHOOK, rate_limit=40.0)
    now = {"webhook": WEBHOOK}
    times: list[float] = []
    paces = recovery.WebhookPaces()

    async def write(item: PendingRetry) -> None:
        times.append(time.monotonic())
        if len(times) == 2:
            now["webhook"] = limited

    await asyncio.gather(
        *(
            recovery.recover(
                settings,
                Operation(request(rate=1000.0)),
                write=write,
                settle=0.01,
                current=lambda webhook_id: now["webhook"],
                webhook_paces=paces,
            )
            for _ in range(2)
        )
    )
    after = times[3:]
    assert len(after) >= 30
    assert (len(after) - 1) / (after[-1] - after[0]) <= 40.0 * 1.05
    assert len(paces) == 0  # released as they ended


class CommittedPartition(RetainedPartition):
    """An events partition written in transactions: its records, then a commit marker at
    ``END - 1``. As aiokafka does, a fetch skips the marker, moving the position to the end,
    and hands over no record for it (a fetch at the end then brings nothing)."""

    LOG_START = 0
    END = 21

    async def getmany(
        self, *tps: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Any]]:
        if self.at == self.END - 1:
            self.at = self.END  # the marker, skipped
            return {}
        records = await super().getmany(*tps, timeout_ms=timeout_ms, max_records=max_records)
        for batch in records.values():
            del batch[self.END - 1 - batch[0].offset :]  # no record at the marker
            self.at = min(self.at, self.END - 1)
        return records


async def test_a_partition_ending_in_a_transaction_marker_is_read_to_its_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fetch brings nothing, the position at the end: the recovery ends done (until
    2026-12-07 it failed, TimeoutError, after 30 s; the embedded broker has no transactions)."""
    operation = Operation(request(rate=1_000_000.0))
    _, run = run_with(monkeypatch, operation, lambda n: WEBHOOK, consumer=CommittedPartition)
    operation = await asyncio.wait_for(run, 5.0)
    assert (operation.state, operation.enqueued) == ("done", CommittedPartition.END - 1)
    assert (operation.done, operation.total) == (CommittedPartition.END, CommittedPartition.END)


async def test_a_partition_that_never_reaches_its_end_fails_the_recovery(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing fetched and the position short of the end for ``FETCH_PATIENCE``: failed."""

    class Stuck(RetainedPartition):
        async def getmany(
            self, *tps: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
        ) -> dict[TopicPartition, list[Any]]:
            await asyncio.sleep(0.001)
            return {}

    monkeypatch.setattr(recovery, "FETCH_PATIENCE", 0.05)
    operation = Operation(request())
    _, run = run_with(monkeypatch, operation, lambda n: WEBHOOK, consumer=Stuck)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(run, 5.0)
    assert (operation.state, operation.error) == ("failed", "TimeoutError")


def test_a_record_keeps_the_rate_asked_for_apart_from_the_pace() -> None:
    """Asked for 50 a second of a webhook limited to 2: shown and recorded at 2, resumed at 50
    once the limit is raised to 100, and shown so (until 2026-12-07 the record kept the pace
    of the start alone, and a resumed recovery went at 2 for good)."""
    limited = dataclasses.replace(WEBHOOK, rate_limit=2.0)
    record = Operation(request(webhook=limited, rate=50.0)).to_record(updated_at=1.0)
    assert (record["rate"], record["requested_rate"]) == (2.0, 50.0)
    assert is_valid("schemas/recovery.json", record)
    raised = dataclasses.replace(WEBHOOK, rate_limit=100.0)
    back = Operation.from_record(json.loads(json.dumps(record)), raised)
    assert (back.request.rate, back.as_dict()["rate"]) == (50.0, 50.0)
    assert Operation.from_record(record, limited).as_dict()["rate"] == 2.0
    # One recorded before there was a requested_rate: its rate is taken as asked.
    del record["requested_rate"]
    assert Operation.from_record(record, raised).request.rate == 2.0
    with pytest.raises(ValueError):
        Operation.from_record({**record, "requested_rate": 0}, raised)


async def test_a_webhooks_tiniest_rate_limit_paces_its_recovery_at_the_floor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A ``rate_limit`` of 5e-324 (positive, so taken): the recovery goes at ``MIN_RATE``, one
    delivery every 100 s, on its own pace and on its webhook's shared one (until 2026-12-07 the
    interval was infinite, and it held its place until cancelled)."""
    tiny = dataclasses.replace(WEBHOOK, rate_limit=5e-324)
    assert request(webhook=tiny).pace == recovery.MIN_RATE == 0.01
    assert request(rate=5e-324).pace == recovery.MIN_RATE  # a record no API would write
    operation = Operation(request(webhook=tiny))
    clock = FakeTime()
    paces = recovery.WebhookPaces(clock=clock)
    times, run = run_with(monkeypatch, operation, lambda n: tiny, clock, webhook_paces=paces)
    await asyncio.wait_for(run, 5.0)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert len(times) == RetainedPartition.END - RetainedPartition.LOG_START
    assert all(gap == pytest.approx(100.0) for gap in gaps)
    assert operation.as_dict()["rate"] == 0.01


@pytest.mark.parametrize("wanted", ["e45", "gone"])
async def test_a_redelivery_has_its_end_before_its_clients_stop(
    monkeypatch: pytest.MonkeyPatch, wanted: str
) -> None:
    """Found, it ends ``done``; not found, ``failed`` with ``event_not_retained``: either way
    already while its consumer stops, which ``GET`` shows meanwhile (until 2026-12-07 it was
    ``done`` then, and ``failed`` once the consumer had stopped)."""
    operation = Operation(request(delivery_id=delivery_id(wanted, "wh"), rate=1_000_000.0))
    seen: list[tuple[str, str | None, bool]] = []

    class Stopping(RetainedPartition):
        async def stop(self) -> None:
            seen.append((operation.state, operation.error, operation.finished_at is not None))
            await asyncio.sleep(0)

    _, run = run_with(monkeypatch, operation, lambda n: WEBHOOK, consumer=Stopping)
    await asyncio.wait_for(run, 5.0)
    end = ("done", None) if wanted == "e45" else ("failed", "event_not_retained")
    assert seen == [(*end, True)]
    assert (operation.state, operation.error) == end


async def test_a_redelivery_whose_webhook_no_longer_gets_its_event_fails_saying_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its filter changed since the delivery: found, nothing sent, ``failed`` with
    ``not_receiving`` (until 2026-12-07 ``event_not_retained``), and the reading stops there."""
    narrowed = dataclasses.replace(WEBHOOK, events=frozenset({"post.deleted"}))
    operation = Operation(request(delivery_id=delivery_id("e45", "wh"), rate=1_000_000.0))
    times, run = run_with(monkeypatch, operation, lambda n: narrowed)
    await asyncio.wait_for(run, 5.0)
    assert times == []
    assert (operation.state, operation.error, operation.enqueued) == (
        "failed",
        "not_receiving",
        0,
    )
    assert operation.scanned == 45 - RetainedPartition.LOG_START + 1


async def test_records_past_a_reported_end_are_read_without_progress_reaching_1(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The embedded broker reports the end 5 records short: those are read and sent, counted
    in done and total, with the progress below 1 until the recovery is done (until 2026-12-07
    it showed 1 while they were read)."""

    class ShortEnd(RetainedPartition):
        async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
            return {tp: self.END - 5 for tp in tps}

    operation = Operation(request(rate=1_000_000.0))
    shown: list[float] = []

    def current(written: int) -> Webhook:
        shown.append(operation.as_dict()["progress"])
        return WEBHOOK

    times, run = run_with(monkeypatch, operation, current, consumer=ShortEnd)
    await asyncio.wait_for(run, 5.0)
    assert len(times) == ShortEnd.END - ShortEnd.LOG_START
    assert shown == sorted(shown) and all(0.0 <= p < 1.0 for p in shown)
    assert (operation.done, operation.total) == (ShortEnd.END, ShortEnd.END)
    assert (operation.state, operation.as_dict()["progress"]) == ("done", 1.0)
