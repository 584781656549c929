"""bridge.worker.retry_intake.RetryIntake: one queue and one task per retry partition.

``handle`` is a recording fake standing in for ``Pipeline.handle_retry``; each record's handling
can be held open by the test (an event per offset), as a record waiting to fall due is.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.delivery.job import SourceRef
from bridge.worker.retry_intake import (
    HIGH_BYTES,
    HIGH_MARK,
    LOW_BYTES,
    LOW_MARK,
    RetryIntake,
)
from tests.support.clocks import FakeClock

TIER_1, TIER_2 = "postion.retry.1", "postion.retry.2"
TIERS = {TIER_1: 1, TIER_2: 2}
PROMPT = 2.0


class Handler:
    """Records (topic, partition, offset, tier) as each record's handling starts and ends; a
    record whose offset is in ``held`` is not finished until its event is set."""

    def __init__(self) -> None:
        self.started: list[tuple[str, int, int, int]] = []
        self.finished: list[tuple[str, int, int, int]] = []
        self.held: dict[tuple[str, int, int], asyncio.Event] = {}
        self.acks: list[int] = []
        self.failing: set[int] = set()
        #: When each record handed on was taken, in the order their handling started.
        self.taken_at: list[float] = []

    def hold(self, topic: str, partition: int, offset: int) -> asyncio.Event:
        event = self.held[(topic, partition, offset)] = asyncio.Event()
        return event

    async def __call__(
        self, raw: bytes | None, source: SourceRef, ack: Any, tier: int, taken_at: float
    ) -> None:
        entry = (source.topic, source.partition, source.offset, tier)
        self.started.append(entry)
        self.taken_at.append(taken_at)
        if source.offset in self.failing:
            raise RuntimeError("a bug")
        held = self.held.get((source.topic, source.partition, source.offset))
        if held is not None:
            await held.wait()
        ack()
        self.finished.append(entry)


class Marks:
    def __init__(self) -> None:
        self.full: list[tuple[str, int]] = []
        self.dropped: list[tuple[str, int]] = []


def make(handler: Handler, marks: Marks | None = None, **kwargs: Any) -> RetryIntake:
    marks = marks or Marks()
    return RetryIntake(
        handler,
        TIERS,
        on_full=lambda topic, partition: marks.full.append((topic, partition)),
        on_drop=lambda topic, partition: marks.dropped.append((topic, partition)),
        **kwargs,
    )


def offer(
    intake: RetryIntake,
    acks: list[int],
    topic: str,
    partition: int,
    offset: int,
    raw: bytes | None = b"{}",
) -> None:
    intake.offer(raw, SourceRef(topic, partition, offset), lambda: acks.append(offset))


async def until(condition: Any) -> None:
    async def wait() -> None:
        while not condition():
            await asyncio.sleep(0.001)

    await asyncio.wait_for(wait(), PROMPT)


async def test_a_partitions_records_are_handed_on_in_order_one_at_a_time() -> None:
    handler = Handler()
    intake = make(handler)
    first = handler.hold(TIER_1, 0, 10)
    for offset in (10, 11, 12):
        offer(intake, handler.acks, TIER_1, 0, offset)
    await until(lambda: handler.started)
    for _ in range(20):
        await asyncio.sleep(0)
    # The first is waiting (to fall due): the ones behind it wait for it.
    assert handler.started == [(TIER_1, 0, 10, 1)]
    assert intake.queued == 2
    assert intake.offsets(TIER_1, 0) == [11, 12] and intake.offsets(TIER_1, 1) == []
    first.set()
    await until(lambda: len(handler.finished) == 3)
    assert [entry[2] for entry in handler.started] == [10, 11, 12]
    assert handler.acks == [10, 11, 12]
    assert intake.queued == 0


async def test_each_record_is_handed_on_with_when_it_was_taken() -> None:
    """Not when its turn comes: the pipeline bounds a record's wait from then (a record due
    far ahead would otherwise add a tier's delay to every one queued behind it)."""
    handler = Handler()
    clock = FakeClock(10.0)
    intake = make(handler, clock=clock)
    first = handler.hold(TIER_1, 0, 1)
    for offset in (1, 2, 3):
        offer(intake, handler.acks, TIER_1, 0, offset)
        clock.now += 1.0
    await until(lambda: handler.started)
    clock.now = 50.0
    first.set()
    await until(lambda: len(handler.finished) == 3)
    assert handler.taken_at == [10.0, 11.0, 12.0]


async def test_a_waiting_record_holds_up_its_own_partition_only() -> None:
    handler = Handler()
    intake = make(handler)
    handler.hold(TIER_1, 0, 1)  # never set
    offer(intake, handler.acks, TIER_1, 0, 1)
    offer(intake, handler.acks, TIER_1, 0, 2)
    offer(intake, handler.acks, TIER_1, 1, 1)
    offer(intake, handler.acks, TIER_2, 0, 1)
    await until(lambda: len(handler.finished) == 2)
    assert sorted(handler.finished) == [(TIER_1, 1, 1, 1), (TIER_2, 0, 1, 2)]
    assert (TIER_1, 0, 2, 1) not in handler.started
    await intake.close()


async def test_a_full_partition_stops_its_fetching_until_it_is_down_to_the_low_mark() -> None:
    handler, marks = Handler(), Marks()
    intake = make(handler, marks, high_mark=4, low_mark=1)
    gate = handler.hold(TIER_1, 3, 0)
    for offset in range(6):  # one fetch can pass the mark: every record is still taken
        offer(intake, handler.acks, TIER_1, 3, offset)
    await until(lambda: handler.started)
    # Marked at the fourth record queued and at each one past it (offered in one go, as a
    # fetch's records are: the task takes the first only once the loop runs it).
    assert marks.full == [(TIER_1, 3)] * 3
    assert marks.dropped == []
    gate.set()
    await until(lambda: len(handler.finished) == 6)
    assert marks.dropped == [(TIER_1, 3)]
    assert handler.acks == list(range(6))


def test_the_default_marks_keep_a_tier_under_fausts_stream_buffer() -> None:
    assert 0 < LOW_MARK < HIGH_MARK
    assert HIGH_MARK * 6 <= 4096  # six partitions a tier by default; Faust buffered 4,096
    # 7 tiers of 6 partitions, each past its mark by at most one 1 MiB fetch.
    assert 0 < LOW_BYTES < HIGH_BYTES and 42 * (HIGH_BYTES + 2**20) <= 256 * 2**20
    with pytest.raises(ValueError):
        make(Handler(), high_mark=4, low_mark=4)
    with pytest.raises(ValueError):
        make(Handler(), high_bytes=4, low_bytes=5)


async def test_a_few_large_records_stop_the_fetching_as_many_small_ones_do() -> None:
    """Records carry their events (up to the largest body): a slow endpoint's deferrals of
    large events must not fill the worker's memory while their count stays under the mark."""
    handler, marks = Handler(), Marks()
    intake = make(handler, marks, high_bytes=3000, low_bytes=1000)
    gate = handler.hold(TIER_2, 1, 0)
    for offset in range(4):
        offer(intake, handler.acks, TIER_2, 1, offset, raw=b"x" * 1000)
    offer(intake, handler.acks, TIER_2, 1, 4, raw=None)  # a tombstone counts no bytes
    offer(intake, handler.acks, TIER_1, 0, 0, raw=b"y" * 10)
    await until(lambda: len(handler.started) == 2)
    assert intake.queued_bytes == 3000  # the first was taken by the task
    assert marks.full == [(TIER_2, 1)] * 3  # at 3,000 bytes queued, and at each record after
    # What the gauges show (webhook_bridge_retries_waiting..., by tier).
    assert (intake.waiting(2), intake.waiting(1), intake.full) == ((4, 3000), (0, 0), 1)
    gate.set()
    await until(lambda: len(handler.finished) == 6)
    # Let go once at most LOW_MARK records and 1,000 bytes were left.
    assert marks.dropped == [(TIER_2, 1)]
    assert intake.queued_bytes == 0 and intake.queued == 0
    assert (intake.waiting(2), intake.full) == ((0, 0), 0)


def test_the_metrics_page_states_the_marks() -> None:
    """docs/metrics.md (webhook_bridge_retry_partitions_full) names the marks in force."""
    from tests.unit.test_docs import DOCS

    text = " ".join((DOCS / "metrics.md").read_text().split())
    mib = 2**20
    assert (
        f"because {HIGH_MARK} of their records, or {HIGH_BYTES // mib} MiB of them, are waiting; "
        f"fetching goes on at {LOW_MARK} records and {LOW_BYTES // mib} MiB"
    ) in text


async def test_a_rebalance_forgets_the_queued_records_unacknowledged() -> None:
    handler, marks = Handler(), Marks()
    intake = make(handler, marks, high_mark=3, low_mark=1)
    handler.hold(TIER_1, 0, 0)  # never set: waiting to fall due when the rebalance comes
    for offset in range(4):
        offer(intake, handler.acks, TIER_1, 0, offset)
    await until(lambda: handler.started)
    intake.revoke()
    await asyncio.sleep(0)
    assert intake.queued == 0
    assert handler.acks == [] and handler.finished == []
    assert handler.started == [(TIER_1, 0, 0, 1)]  # the waiting one was stopped, not finished
    # The partition's fetching, stopped for its full queue, is let go (the rebalance paused it).
    assert marks.full and marks.dropped == [(TIER_1, 0)]
    # Read again from the committed offset after the rebalance: handed on as new.
    offer(intake, handler.acks, TIER_1, 0, 0)
    handler.held[(TIER_1, 0, 0)].set()
    await until(lambda: handler.acks == [0])


async def test_fausts_flow_control_clears_it_as_a_rebalance_starts() -> None:
    """Managed by Faust's flow control, the intake is emptied when a rebalance starts
    (``flow_control.clear()``, before Faust waits for anything), not at the revocation's
    signal, whose other handlers may wait first: a record falling due meanwhile would be
    attempted by this worker and again by the partition's next owner."""
    from mode.utils.queues import FlowControlEvent

    handler = Handler()
    intake = make(handler)
    flow = FlowControlEvent(initially_suspended=False)
    flow.manage_queue(intake)  # type: ignore[arg-type]
    handler.hold(TIER_1, 0, 0)
    offer(intake, handler.acks, TIER_1, 0, 0)
    offer(intake, handler.acks, TIER_1, 0, 1)
    await until(lambda: handler.started)
    flow.suspend()
    flow.clear()
    for _ in range(20):
        await asyncio.sleep(0)
    assert intake.queued == 0 and handler.acks == []
    assert handler.started == [(TIER_1, 0, 0, 1)]


async def test_failing_marks_neither_lose_a_record_nor_stop_a_rebalance() -> None:
    handler = Handler()

    def broken(topic: str, partition: int) -> None:
        raise RuntimeError("a bug in the consumer's flow control")

    intake = RetryIntake(handler, TIERS, on_full=broken, on_drop=broken, high_mark=1, low_mark=0)
    handler.hold(TIER_1, 0, 0)
    offer(intake, handler.acks, TIER_1, 0, 0)  # past the mark at once: the mark fails
    offer(intake, handler.acks, TIER_1, 1, 0)
    await until(lambda: len(handler.started) == 2)  # each record still has its task
    intake.clear()  # a rebalance: both partitions' marks fail to be let go
    await asyncio.sleep(0)
    assert intake.queued == 0 and not intake._tasks
    assert handler.acks == [0]  # partition 1's record, finished before the rebalance


async def test_a_failing_mark_does_not_stop_the_partition() -> None:
    handler = Handler()

    def broken(topic: str, partition: int) -> None:
        raise RuntimeError("a bug in the consumer's flow control")

    intake = RetryIntake(
        handler, TIERS, on_full=lambda *a: None, on_drop=broken, high_mark=2, low_mark=1
    )
    for offset in range(4):
        offer(intake, handler.acks, TIER_1, 0, offset)
    await until(lambda: len(handler.acks) == 4)


async def test_a_rebalance_of_some_partitions_leaves_the_others() -> None:
    handler = Handler()
    intake = make(handler)
    handler.hold(TIER_1, 0, 0)
    kept = handler.hold(TIER_1, 1, 0)
    offer(intake, handler.acks, TIER_1, 0, 0)
    offer(intake, handler.acks, TIER_1, 1, 0)
    offer(intake, handler.acks, TIER_1, 1, 1)
    await until(lambda: len(handler.started) == 2)
    intake.revoke([(TIER_1, 0)])
    kept.set()
    await until(lambda: handler.acks == [0, 1])
    assert [entry[:3] for entry in handler.finished] == [(TIER_1, 1, 0), (TIER_1, 1, 1)]
    await intake.close()


async def test_a_bug_in_handling_leaves_that_record_unacknowledged_and_goes_on() -> None:
    handler = Handler()
    handler.failing = {1}
    intake = make(handler)
    for offset in range(3):
        offer(intake, handler.acks, TIER_2, 4, offset)
    await until(lambda: len(handler.finished) == 2)
    assert handler.acks == [0, 2]


async def test_after_close_nothing_is_taken_or_handed_on() -> None:
    handler = Handler()
    intake = make(handler)
    handler.hold(TIER_1, 0, 0)
    offer(intake, handler.acks, TIER_1, 0, 0)
    offer(intake, handler.acks, TIER_1, 0, 1)
    await until(lambda: handler.started)
    await intake.close()
    offer(intake, handler.acks, TIER_1, 2, 0)
    for _ in range(20):
        await asyncio.sleep(0)
    assert handler.started == [(TIER_1, 0, 0, 1)]
    assert handler.acks == [] and intake.queued == 0


async def test_a_record_of_another_topic_is_refused() -> None:
    intake = make(Handler())
    with pytest.raises(ValueError, match="not a retry tier"):
        intake.offer(b"{}", SourceRef("postion.events", 0, 1), lambda: None)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([TIER_1, TIER_2]), st.integers(0, 2), st.booleans()),
        max_size=60,
    )
)
def test_every_partition_is_handed_on_in_offset_order_whatever_the_interleaving(
    arrivals: list[tuple[str, int, bool]],
) -> None:
    """Records of several partitions offered in any interleaving, some of them pausing (a
    record waiting to fall due, the loop running others meanwhile): each partition's records
    are handled in offset order, each once, and all are acknowledged."""

    async def scenario() -> None:
        handler = Handler()
        intake = make(handler, high_mark=3, low_mark=1)
        next_offset: dict[tuple[str, int], int] = {}
        expected: dict[tuple[str, int], list[int]] = {}
        for topic, partition, pause in arrivals:
            offset = next_offset.get((topic, partition), 0)
            next_offset[(topic, partition)] = offset + 1
            expected.setdefault((topic, partition), []).append(offset)
            offer(intake, handler.acks, topic, partition, offset)
            if pause:
                await asyncio.sleep(0)
        await until(lambda: len(handler.finished) == len(arrivals))
        got: dict[tuple[str, int], list[int]] = {}
        for topic, partition, offset, tier in handler.started:
            assert tier == TIERS[topic]
            got.setdefault((topic, partition), []).append(offset)
        assert got == expected
        assert intake.queued == 0

    asyncio.run(scenario())
