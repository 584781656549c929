"""bridge.subscriptions.freshness.TableFreshness with a fake end-offsets request and a fake clock.

Every wait is bounded by ``asyncio.wait_for``; progress is observed through events and the fake's
call count, never through sleeps.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from bridge.delivery.job import SourceRef
from bridge.subscriptions.freshness import TableFreshness
from tests.support.clocks import FakeClock
from tests.support.waiting import PROMPT, eventually


class FakeEndOffsets:
    """Answers with ``results`` in turn (the last one repeats); an exception is raised.

    ``gate`` holds every answer back until it is set.
    """

    def __init__(self, *results: Mapping[int, int] | BaseException) -> None:
        self._results = list(results)
        self.calls = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self._called = asyncio.Event()

    async def __call__(self) -> Mapping[int, int]:
        self.calls += 1
        index = min(self.calls - 1, len(self._results) - 1)
        self._called.set()
        await self.gate.wait()
        result = self._results[index]
        if isinstance(result, BaseException):
            raise result
        return result

    async def wait_calls(self, n: int) -> None:
        async def reached() -> None:
            while self.calls < n:
                self._called.clear()
                await self._called.wait()

        await asyncio.wait_for(reached(), PROMPT)


async def settle() -> None:
    """Let every ready task run until it blocks (a yield, not a timed wait)."""
    for _ in range(20):
        await asyncio.sleep(0)


def is_unretrieved_round_timeout(context: dict[str, Any]) -> bool:
    return context.get("message") == "Task exception was never retrieved" and isinstance(
        context.get("exception"), TimeoutError
    )


@pytest.fixture
async def no_stray_tasks() -> AsyncIterator[None]:
    """Wait (bounded) for rounds a test left running, and keep the known unretrieved
    round timeout (see ``test_a_failed_round_is_not_reported_as_unretrieved``) out of the log."""
    loop = asyncio.get_running_loop()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if not is_unretrieved_round_timeout(context):
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    yield
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    if others:
        await asyncio.wait_for(asyncio.gather(*others, return_exceptions=True), PROMPT)
    gc.collect()


pytestmark = pytest.mark.usefixtures("no_stray_tasks")


def test_caught_up_to() -> None:
    fresh = TableFreshness(FakeEndOffsets({}), timeout=1)
    assert fresh.caught_up_to({}) is True
    assert fresh.caught_up_to({0: 0, 1: 0}) is True
    assert fresh.caught_up_to({0: 1}) is False
    fresh.applied(0, 0)
    assert fresh.caught_up_to({0: 1}) is True
    assert fresh.caught_up_to({0: 2}) is False
    assert fresh.caught_up_to({0: 1, 1: 5}) is False
    fresh.applied(1, 4)
    assert fresh.caught_up_to({0: 1, 1: 5, 2: 0}) is True


def test_applied_never_goes_backwards() -> None:
    fresh = TableFreshness(FakeEndOffsets({}), timeout=1)
    fresh.applied(0, 9)
    fresh.applied(0, 3)
    assert fresh.caught_up_to({0: 10}) is True


async def test_true_at_once_when_already_applied() -> None:
    clock = FakeClock()
    ends = FakeEndOffsets({0: 5, 1: 3, 2: 0})
    fresh = TableFreshness(ends, timeout=5, clock=clock)
    fresh.applied(0, 4)
    fresh.applied(1, 2)
    assert await asyncio.wait_for(fresh.wait_current(clock()), PROMPT) is True
    assert ends.calls == 1


async def test_covered_events_need_no_new_round() -> None:
    clock = FakeClock()
    ends = FakeEndOffsets({0: 1})
    fresh = TableFreshness(ends, timeout=5, clock=clock)
    fresh.applied(0, 0)
    received = clock()
    assert await asyncio.wait_for(fresh.wait_current(received), PROMPT) is True
    assert await asyncio.wait_for(fresh.wait_current(received), PROMPT) is True
    assert await asyncio.wait_for(fresh.wait_current(received - 50), PROMPT) is True
    assert ends.calls == 1


async def test_empty_topic_is_current() -> None:
    clock = FakeClock()
    ends = FakeEndOffsets({0: 0, 1: 0, 2: 0})
    fresh = TableFreshness(ends, timeout=5, clock=clock)
    assert await asyncio.wait_for(fresh.wait_current(clock()), PROMPT) is True


async def test_waits_until_applied_reaches_the_end_offsets() -> None:
    clock = FakeClock()
    ends = FakeEndOffsets({0: 3, 1: 1})
    fresh = TableFreshness(ends, timeout=5, clock=clock)
    waiter = asyncio.create_task(fresh.wait_current(clock()))
    await ends.wait_calls(1)
    await settle()
    assert not waiter.done()

    fresh.applied(0, 2)
    await settle()
    assert not waiter.done(), "partition 1 is not applied yet"

    fresh.applied(1, 0)
    assert await asyncio.wait_for(waiter, PROMPT) is True
    assert ends.calls == 1


async def test_progress_below_the_end_is_not_enough() -> None:
    clock = FakeClock()
    ends = FakeEndOffsets({0: 10})
    fresh = TableFreshness(ends, timeout=5, clock=clock)
    waiter = asyncio.create_task(fresh.wait_current(clock()))
    await ends.wait_calls(1)
    for offset in range(9):
        fresh.applied(0, offset)
        await settle()
        assert not waiter.done(), offset
    fresh.applied(0, 9)
    assert await asyncio.wait_for(waiter, PROMPT) is True


async def test_concurrent_waiters_share_one_round() -> None:
    clock = FakeClock()
    ends = FakeEndOffsets({0: 2})
    ends.gate.clear()
    fresh = TableFreshness(ends, timeout=5, clock=clock)
    received = clock()
    waiters = [asyncio.create_task(fresh.wait_current(received)) for _ in range(5)]
    await ends.wait_calls(1)
    await settle()
    assert ends.calls == 1
    assert not any(w.done() for w in waiters)

    fresh.applied(0, 1)
    ends.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*waiters), PROMPT)
    assert results == [True] * 5
    assert ends.calls == 1


async def test_event_received_after_a_round_started_needs_a_new_round() -> None:
    clock = FakeClock(1.0)
    # The second round sees a subscription change that arrived after the first one began.
    ends = FakeEndOffsets({0: 1}, {0: 2})
    ends.gate.clear()
    fresh = TableFreshness(ends, timeout=5, clock=clock)

    first = asyncio.create_task(fresh.wait_current(1.0))
    await ends.wait_calls(1)
    clock.now = 2.0
    second = asyncio.create_task(fresh.wait_current(2.0))
    await settle()
    assert ends.calls == 1, "the second event must wait for the running round to end"

    fresh.applied(0, 0)
    ends.gate.set()
    assert await asyncio.wait_for(first, PROMPT) is True
    await ends.wait_calls(2)
    await settle()
    assert not second.done(), "covered only once offset 1 is applied"

    fresh.applied(0, 1)
    assert await asyncio.wait_for(second, PROMPT) is True
    assert ends.calls == 2


async def test_event_received_after_a_finished_round_needs_a_new_round() -> None:
    clock = FakeClock(1.0)
    ends = FakeEndOffsets({0: 1}, {0: 3})
    fresh = TableFreshness(ends, timeout=5, clock=clock)
    fresh.applied(0, 0)
    assert await asyncio.wait_for(fresh.wait_current(1.0), PROMPT) is True

    clock.now = 2.0
    later = asyncio.create_task(fresh.wait_current(2.0))
    await ends.wait_calls(2)
    await settle()
    assert not later.done()
    fresh.applied(0, 2)
    assert await asyncio.wait_for(later, PROMPT) is True
    assert ends.calls == 2
    # Anything received up to the second round's start is covered now.
    assert await asyncio.wait_for(fresh.wait_current(2.0), PROMPT) is True
    assert ends.calls == 2


async def test_false_on_timeout_when_offsets_are_never_reached() -> None:
    clock = FakeClock()
    ends = FakeEndOffsets({0: 5})
    fresh = TableFreshness(ends, timeout=0.1, clock=clock)
    fresh.applied(0, 3)
    assert await asyncio.wait_for(fresh.wait_current(clock()), PROMPT) is False
    assert ends.calls >= 1


async def test_false_on_timeout_when_offsets_never_arrive() -> None:
    clock = FakeClock()
    ends = FakeEndOffsets({0: 0})
    ends.gate.clear()
    fresh = TableFreshness(ends, timeout=0.1, clock=clock)
    assert await asyncio.wait_for(fresh.wait_current(clock()), PROMPT) is False
    ends.gate.set()


async def test_expired_deadline_on_the_fake_clock_gives_false() -> None:
    class Jumping(FakeClock):
        """Time leaps past any deadline after the first reading."""

        def __call__(self) -> float:
            value = self.now
            self.now += 3600
            return value

    ends = FakeEndOffsets({0: 1})
    fresh = TableFreshness(ends, timeout=5, clock=Jumping())
    assert await asyncio.wait_for(fresh.wait_current(1000.0), PROMPT) is False
    assert ends.calls == 0


async def test_recovers_after_a_timeout() -> None:
    clock = FakeClock()
    ends = FakeEndOffsets({0: 2})
    fresh = TableFreshness(ends, timeout=0.1, clock=clock)
    received = clock()
    assert await asyncio.wait_for(fresh.wait_current(received), PROMPT) is False
    fresh.applied(0, 1)
    assert await asyncio.wait_for(fresh.wait_current(received), PROMPT) is True


async def test_recovers_when_end_offsets_raises_once() -> None:
    clock = FakeClock()
    ends = FakeEndOffsets(ConnectionError("broker unavailable"), {0: 1})
    fresh = TableFreshness(ends, timeout=5, clock=clock)
    fresh.applied(0, 0)
    assert await asyncio.wait_for(fresh.wait_current(clock()), PROMPT) is True
    assert ends.calls == 2


async def test_end_offsets_always_failing_gives_false() -> None:
    class Ticking(FakeClock):
        """Advances a little on every reading, so the deadline on this clock does pass."""

        def __call__(self) -> float:
            self.now += 0.05
            return self.now

    clock = Ticking()
    ends = FakeEndOffsets(ConnectionError("broker unavailable"))
    fresh = TableFreshness(ends, timeout=0.3, clock=clock)
    assert await asyncio.wait_for(fresh.wait_current(clock()), PROMPT) is False
    assert ends.calls >= 2


async def test_a_failed_round_is_not_reported_as_unretrieved() -> None:
    reported: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: reported.append(ctx))
    clock = FakeClock()
    ends = FakeEndOffsets({0: 5})
    fresh = TableFreshness(ends, timeout=0.1, clock=clock)
    assert await asyncio.wait_for(fresh.wait_current(clock()), PROMPT) is False
    # Let the timed-out round finish (asyncio.wait does not retrieve its exception).
    rounds = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    await asyncio.wait(rounds, timeout=PROMPT)
    assert all(t.done() for t in rounds)
    del rounds

    fresh.applied(0, 4)
    assert await asyncio.wait_for(fresh.wait_current(clock()), PROMPT) is True
    gc.collect()
    assert [c["message"] for c in reported] == []


async def test_a_waiter_is_not_confused_by_the_next_round_another_waiter_started() -> None:
    """Waiter A awaits round 1; waiter B, woken first, starts round 2 as soon as round 1 ends.
    A must judge round 1, not the still-running round 2 (it used to read ``self._round`` and
    crash with InvalidStateError, leaving its record unmatched)."""
    gates: list[asyncio.Event] = []

    async def ends() -> dict[int, int]:
        gate = asyncio.Event()
        gates.append(gate)
        await gate.wait()
        return {0: 0}

    now = [1.5]
    fresh = TableFreshness(ends, timeout=5.0, clock=lambda: now[0])
    starter = asyncio.create_task(fresh.wait_current(1.0))  # starts round 1 at 1.5
    await eventually(lambda: len(gates) == 1)
    late = asyncio.create_task(fresh.wait_current(2.0))  # not covered by round 1
    await asyncio.sleep(0)
    covered = asyncio.create_task(fresh.wait_current(1.2))  # covered by round 1, waits after
    await asyncio.sleep(0)
    now[0] = 2.5
    gates[0].set()
    await eventually(lambda: len(gates) == 2)
    assert await asyncio.wait_for(starter, PROMPT) is True
    assert await asyncio.wait_for(covered, PROMPT) is True
    gates[1].set()
    assert await asyncio.wait_for(late, PROMPT) is True


# ------------------------------------------------- source records covered by their offsets


class SeenEnds:
    """The consumer's high-water marks of the source partitions, as the test sets them; records
    whether they were read before the end-offsets request of each round."""

    def __init__(self, ends: FakeEndOffsets) -> None:
        self.value: dict[tuple[str, int], int] = {}
        self._ends = ends
        self.read_before_request: list[bool] = []

    def __call__(self) -> dict[tuple[str, int], int]:
        self.read_before_request.append(self._ends.calls == len(self.read_before_request))
        return dict(self.value)


def at(partition: int, offset: int, topic: str = "events") -> SourceRef:
    return SourceRef(topic, partition, offset)


async def test_a_round_covers_source_records_below_the_ends_seen_when_it_started() -> None:
    clock = FakeClock(1.0)
    ends = FakeEndOffsets({0: 1})
    ends.gate.clear()
    seen = SeenEnds(ends)
    fresh = TableFreshness(ends, timeout=5, clock=clock, source_ends=seen)
    seen.value = {("events", 0): 10, ("events", 1): 4}
    first = asyncio.create_task(fresh.wait_current(1.0, at(0, 3)))
    await ends.wait_calls(1)
    assert seen.read_before_request == [True]
    # Fetched before the round began, handed on after: covered by the same round.
    clock.now = 2.0
    seen.value = {("events", 0): 12, ("events", 1): 4}  # a later fetch: not this round's
    handed_on = asyncio.create_task(fresh.wait_current(2.0, at(0, 9)))
    await settle()
    fresh.applied(0, 0)
    ends.gate.set()
    assert await asyncio.wait_for(first, PROMPT) is True
    assert await asyncio.wait_for(handed_on, PROMPT) is True
    assert ends.calls == 1
    assert fresh.covers(2.0, at(1, 3))
    # Not below what the round saw, and received after it started: not covered.
    assert not fresh.covers(2.0, at(0, 10))
    assert not fresh.covers(2.0, at(1, 4))
    assert not fresh.covers(2.0, at(2, 0))
    assert not fresh.covers(2.0, at(0, 3, topic="other"))
    assert not fresh.covers(2.0)
    # Received before the round started: covered whatever its offset.
    assert fresh.covers(1.0, at(0, 99))


async def test_a_source_record_above_what_the_round_saw_waits_for_the_next_round() -> None:
    clock = FakeClock(1.0)
    ends = FakeEndOffsets({0: 1}, {0: 2})
    ends.gate.clear()
    seen = SeenEnds(ends)
    seen.value = {("events", 0): 5}
    fresh = TableFreshness(ends, timeout=5, clock=clock, source_ends=seen)
    first = asyncio.create_task(fresh.wait_current(1.0, at(0, 4)))
    await ends.wait_calls(1)
    clock.now = 2.0
    seen.value = {("events", 0): 6}
    # Published after the round read the ends: it must not ride on that round.
    late = asyncio.create_task(fresh.wait_current(2.0, at(0, 5)))
    fresh.applied(0, 0)
    ends.gate.set()
    assert await asyncio.wait_for(first, PROMPT) is True
    await ends.wait_calls(2)
    await settle()
    assert not late.done(), "covered only once the second round's end offset is applied"
    fresh.applied(0, 1)
    assert await asyncio.wait_for(late, PROMPT) is True
    assert seen.read_before_request == [True, True]
    assert fresh.covers(2.0, at(0, 5))


async def test_a_recreated_source_topic_is_not_covered_by_its_old_high_water_marks() -> None:
    # The events topic is deleted and created again under a running worker: its partition
    # starts over from offset 0, far below the marks the worker saw before.
    clock = FakeClock(1.0)
    ends = FakeEndOffsets({0: 0})
    seen = SeenEnds(ends)
    seen.value = {("events", 0): 1000, ("events", 1): 7}
    fresh = TableFreshness(ends, timeout=5, clock=clock, source_ends=seen)
    fresh.received(at(0, 999))
    assert await asyncio.wait_for(fresh.wait_current(1.0, at(0, 999)), PROMPT) is True
    assert fresh.covers(9.0, at(0, 40))
    fresh.received(at(0, 0))  # the new partition's first record
    clock.now = 2.0
    assert not fresh.covers(2.0, at(0, 0)), "the old marks no longer cover the partition"
    assert fresh.covers(2.0, at(1, 6)), "other partitions keep theirs"
    seen.value = {("events", 0): 30, ("events", 1): 7}
    assert await asyncio.wait_for(fresh.wait_current(2.0, at(0, 0)), PROMPT) is True
    assert ends.calls == 2
    assert fresh.covers(9.0, at(0, 29))
    assert not fresh.covers(9.0, at(0, 40)), "published after the second round read the ends"


async def test_a_round_running_when_a_partition_is_read_again_keeps_its_old_mark_out() -> None:
    clock = FakeClock(1.0)
    ends = FakeEndOffsets({0: 0})
    ends.gate.clear()
    seen = SeenEnds(ends)
    seen.value = {("events", 0): 1000, ("events", 1): 7}
    fresh = TableFreshness(ends, timeout=5, clock=clock, source_ends=seen)
    fresh.received(at(0, 999))
    running = asyncio.create_task(fresh.wait_current(1.0, at(0, 999)))
    await ends.wait_calls(1)
    fresh.received(at(0, 3))  # read again from a lower offset while the round runs
    ends.gate.set()
    assert await asyncio.wait_for(running, PROMPT) is True
    assert not fresh.covers(9.0, at(0, 40))
    assert fresh.covers(9.0, at(1, 6))
    assert fresh.covers(1.0, at(0, 40)), "received before the round started: covered by time"


async def test_records_arriving_in_order_keep_the_marks() -> None:
    clock = FakeClock(1.0)
    ends = FakeEndOffsets({0: 0})
    seen = SeenEnds(ends)
    seen.value = {("events", 0): 100}
    fresh = TableFreshness(ends, timeout=5, clock=clock, source_ends=seen)
    fresh.received(at(0, 10))
    assert await asyncio.wait_for(fresh.wait_current(1.0, at(0, 10)), PROMPT) is True
    for offset in (11, 50, 99):
        fresh.received(at(0, offset))
        assert fresh.covers(9.0, at(0, offset))
    fresh.received(at(1, 5))  # another partition's order is its own
    assert fresh.covers(9.0, at(0, 99))
    assert ends.calls == 1
    fresh.received(at(0, 99))  # the same record again: the partition is read again
    assert not fresh.covers(9.0, at(0, 99))
