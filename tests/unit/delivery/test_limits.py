"""bridge.delivery.limits: per-endpoint slots with a bounded queue, and per-webhook token buckets.

Concurrency is driven by ``asyncio.Event`` gates and observed through the slots' own counters,
every wait bounded by ``asyncio.wait_for``; the token buckets run on a fake clock.
"""

from __future__ import annotations

import asyncio
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.delivery import limits
from bridge.delivery.limits import EndpointBusy, EndpointSlots, RateLimits, Slots, TokenBucket
from tests.support.clocks import FakeClock
from tests.support.waiting import PROMPT, eventually

A = "https://a.example:443"
B = "https://b.example:443"


class Holders:
    """Tasks that each take a slot, report it, and keep it until their gate opens."""

    def __init__(self, slots: EndpointSlots) -> None:
        self.slots = slots
        self.active: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.entered: list[int] = []
        self.gates: dict[int, asyncio.Event] = {}
        self.tasks: dict[int, asyncio.Task[None]] = {}

    def start(self, n: int, endpoint: str = A) -> asyncio.Task[None]:
        gate = self.gates[n] = asyncio.Event()

        async def hold() -> None:
            await self.slots.acquire(endpoint)
            try:
                self.entered.append(n)
                self.active[endpoint] = self.active.get(endpoint, 0) + 1
                self.peak[endpoint] = max(self.peak.get(endpoint, 0), self.active[endpoint])
                await gate.wait()
            finally:
                self.active[endpoint] -= 1
                self.slots.release(endpoint)

        task = self.tasks[n] = asyncio.create_task(hold())
        return task

    async def finish(self, *ns: int) -> None:
        for n in ns:
            self.gates[n].set()
        await asyncio.wait_for(asyncio.gather(*(self.tasks[n] for n in ns)), PROMPT)


async def test_at_most_limit_in_flight_per_endpoint() -> None:
    slots = EndpointSlots(limit=2, max_queued=10)
    holders = Holders(slots)
    for n in range(5):
        holders.start(n)
    await eventually(lambda: len(holders.entered) == 2 and slots.waiting(A) == 3)
    assert holders.entered == [0, 1]

    await holders.finish(0)
    await eventually(lambda: len(holders.entered) == 3)
    assert slots.waiting(A) == 2
    assert holders.entered == [0, 1, 2]  # first come, first served

    await holders.finish(1, 2, 3, 4)
    assert holders.peak[A] == 2
    assert sorted(holders.entered) == [0, 1, 2, 3, 4]


async def test_queue_is_bounded_and_the_next_is_refused_at_once() -> None:
    slots = EndpointSlots(limit=1, max_queued=2)
    holders = Holders(slots)
    holders.start(0)
    holders.start(1)
    holders.start(2)
    await eventually(lambda: holders.entered == [0] and slots.waiting(A) == 2)

    # Refused without waiting: a deadline far shorter than anything in flight would take.
    with pytest.raises(EndpointBusy):
        await asyncio.wait_for(slots.acquire(A), PROMPT)
    assert slots.waiting(A) == 2

    # The refused call took no place: when one waiter gets in, the queue has room again.
    await holders.finish(0)
    await eventually(lambda: holders.entered == [0, 1] and slots.waiting(A) == 1)
    holders.start(3)
    await eventually(lambda: slots.waiting(A) == 2)
    await holders.finish(1, 2, 3)
    assert holders.peak[A] == 1


async def test_no_queue_refuses_as_soon_as_the_slots_are_taken() -> None:
    slots = EndpointSlots(limit=2, max_queued=0)
    await asyncio.wait_for(slots.acquire(A), PROMPT)
    await asyncio.wait_for(slots.acquire(A), PROMPT)
    with pytest.raises(EndpointBusy):
        await asyncio.wait_for(slots.acquire(A), PROMPT)
    slots.release(A)
    await asyncio.wait_for(slots.acquire(A), PROMPT)
    slots.release(A)
    slots.release(A)


async def test_try_acquire_takes_only_a_free_place_and_never_jumps_the_queue() -> None:
    slots = EndpointSlots(limit=1, max_queued=2)
    assert slots.try_acquire(A)
    assert not slots.try_acquire(A)
    queued = asyncio.ensure_future(slots.acquire(A))
    await eventually(lambda: slots.waiting(A) == 1)
    slots.release(A)  # handed to the one waiting, not left free for a try
    assert not slots.try_acquire(A)
    await asyncio.wait_for(queued, PROMPT)
    slots.release(A)
    assert slots.try_acquire(A)
    slots.release(A)
    assert slots.waiting(A) == 0 and len(slots._endpoints) == 0  # forgotten when idle


async def test_other_endpoints_are_unaffected() -> None:
    slots = EndpointSlots(limit=1, max_queued=1)
    holders = Holders(slots)
    holders.start(0, A)
    holders.start(1, A)
    await eventually(lambda: slots.waiting(A) == 1)
    with pytest.raises(EndpointBusy):
        await asyncio.wait_for(slots.acquire(A), PROMPT)

    # A hanging endpoint A holds nothing of B's.
    holders.start(2, B)
    await eventually(lambda: 2 in holders.entered)
    assert slots.waiting(B) == 0
    await holders.finish(2)
    await holders.finish(0, 1)


async def test_idle_endpoints_are_forgotten() -> None:
    slots = EndpointSlots(limit=1, max_queued=5)
    holders = Holders(slots)
    for n, endpoint in enumerate([A, A, B]):
        holders.start(n, endpoint)
    await eventually(lambda: slots.waiting(A) == 1 and 2 in holders.entered)
    await holders.finish(0, 1, 2)
    assert slots.waiting(A) == 0
    # No observable API lists endpoints; the map is what must not grow with every URL seen.
    assert slots._endpoints == {}


async def test_a_cancelled_waiter_gives_back_its_place_in_the_queue() -> None:
    slots = EndpointSlots(limit=1, max_queued=1)
    holders = Holders(slots)
    holders.start(0)
    waiter = holders.start(1)
    await eventually(lambda: slots.waiting(A) == 1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(waiter, PROMPT)
    assert slots.waiting(A) == 0
    holders.start(2)  # queued, not refused
    await eventually(lambda: slots.waiting(A) == 1)
    await holders.finish(0, 2)
    assert 1 not in holders.entered
    assert slots._endpoints == {}


# -- Slots ----------------------------------------------------------------------------------------


async def test_slots_bound_and_hand_over_in_arrival_order() -> None:
    slots = Slots(2)
    order: list[int] = []
    gate = asyncio.Event()

    async def holder(n: int) -> None:
        async with slots:
            order.append(n)
            await gate.wait()

    tasks = [asyncio.create_task(holder(n)) for n in range(6)]
    await eventually(lambda: len(order) == 2 and slots.waiting == 4)
    assert order == [0, 1] and slots.locked()
    gate.set()
    await asyncio.wait_for(asyncio.gather(*tasks), PROMPT)
    assert order == [0, 1, 2, 3, 4, 5]
    assert not slots.locked()
    # Every slot came back: two can be taken again without waiting, not three.
    await asyncio.wait_for(slots.acquire(), PROMPT)
    await asyncio.wait_for(slots.acquire(), PROMPT)
    assert slots.locked()


async def test_slots_a_cancelled_waiter_takes_no_slot() -> None:
    slots = Slots(1)
    await slots.acquire()
    cancelled = asyncio.create_task(slots.acquire())
    after = asyncio.create_task(slots.acquire())
    await eventually(lambda: slots.waiting == 2)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    slots.release()
    await asyncio.wait_for(after, PROMPT)  # the slot skipped the cancelled waiter
    assert slots.locked()
    slots.release()
    assert not slots.locked()


async def test_slots_granted_then_cancelled_passes_the_slot_on() -> None:
    slots = Slots(1)
    await slots.acquire()
    first = asyncio.create_task(slots.acquire())
    second = asyncio.create_task(slots.acquire())
    await eventually(lambda: slots.waiting == 2)
    slots.release()  # granted to ``first`` ...
    first.cancel()  # ... which is cancelled before it runs again
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, PROMPT)
    slots.release()
    assert not slots.locked()


def test_slots_need_a_positive_limit() -> None:
    with pytest.raises(ValueError):
        Slots(0)


# -- TokenBucket / RateLimits --------------------------------------------------------------------


def test_token_bucket_burst_then_spaced() -> None:
    bucket = TokenBucket(rate=2.0, burst=2.0, tokens=2.0, updated=0.0)
    assert [bucket.wait_time(0.0) for _ in range(5)] == [0.0, 0.0, 0.5, 1.0, 1.5]


def test_token_bucket_refills_at_rate_up_to_burst() -> None:
    bucket = TokenBucket(rate=2.0, burst=3.0, tokens=0.0, updated=0.0)
    assert bucket.wait_time(0.5) == 0.0  # one token refilled in 0.5 s
    assert bucket.wait_time(0.5) == 0.5
    # A long idle period saves up at most ``burst`` tokens.
    assert [bucket.wait_time(1000.0) for _ in range(4)] == [0.0, 0.0, 0.0, 0.5]


def test_rate_limits_burst_then_one_per_interval() -> None:
    clock = FakeClock()
    rates = RateLimits(clock)
    # rate 4/s: a burst of 4, then each further delivery 0.25 s after the previous one.
    assert [rates.wait_time("w", 4.0) for _ in range(6)] == [0.0, 0.0, 0.0, 0.0, 0.25, 0.5]


def test_rate_limits_steady_at_the_rate_never_waits() -> None:
    clock = FakeClock()
    rates = RateLimits(clock)
    assert rates.wait_time("w", 2.0) == 0.0
    assert rates.wait_time("w", 2.0) == 0.0
    for _ in range(10):
        clock.now += 0.5
        assert rates.wait_time("w", 2.0) == 0.0
    assert rates.wait_time("w", 2.0) == 0.5


def test_rate_below_one_has_a_burst_of_one() -> None:
    clock = FakeClock()
    rates = RateLimits(clock)
    assert rates.wait_time("w", 0.5) == 0.0
    assert rates.wait_time("w", 0.5) == 2.0
    clock.now += 2.0
    assert rates.wait_time("w", 0.5) == 2.0  # the token refilled is already promised


@given(
    st.sampled_from([0.5, 1.0, 2.0, 3.5, 10.0]),
    st.lists(st.floats(0.0, 1.5, allow_nan=False), min_size=1, max_size=80),
)
def test_a_rate_limit_sends_at_most_twice_it_in_any_second(rate: float, gaps: list[float]) -> None:
    """What docs/producers.md says ``rate_limit`` allows: on average at most ``rate`` a
    second, up to ``max(1, rate)`` at once after a quiet spell, so at most ``rate`` more
    within the next second: in any one-second window at most ``max(1, rate) + rate`` (twice
    it from 1 up)."""
    clock = FakeClock()
    rates = RateLimits(clock)
    sent = []
    for gap in gaps:  # deliveries falling due, each sent once its wait is over
        clock.now += gap
        sent.append(clock.now + rates.wait_time("w", rate))
    bound = math.floor(max(1.0, rate) + rate * (1 + 1e-9))
    for at in sent:
        assert sum(at <= other <= at + 1 + 1e-9 for other in sent) <= bound


@pytest.mark.parametrize("rate", [1.0, 4.0, 10.0])
def test_after_a_quiet_second_a_rate_limit_sends_twice_it_within_a_second(rate: float) -> None:
    """The bound is reached: ``rate`` at once, then ``rate`` more by the second's end."""
    clock = FakeClock()
    rates = RateLimits(clock)
    sent = [clock.now + rates.wait_time("w", rate) for _ in range(int(2 * rate) + 1)]
    start = sent[0]
    assert sum(at <= start + 1 + 1e-9 for at in sent) == 2 * rate
    assert sent[-1] > start + 1


@pytest.mark.parametrize("rate", [None, 0, 0.0, -1.0])
def test_no_rate_never_waits(rate: float | None) -> None:
    rates = RateLimits(FakeClock())
    assert [rates.wait_time("w", rate) for _ in range(100)] == [0.0] * 100


def test_removing_the_rate_forgets_the_bucket() -> None:
    rates = RateLimits(FakeClock())
    assert rates.wait_time("w", 1.0) == 0.0
    assert rates.wait_time("w", 1.0) == 1.0
    assert rates.wait_time("w", None) == 0.0
    # Limited again later: a fresh, full bucket.
    assert rates.wait_time("w", 1.0) == 0.0
    assert rates.wait_time("w", 1.0) == 1.0


def test_rate_change_resets_the_bucket() -> None:
    rates = RateLimits(FakeClock())
    assert rates.wait_time("w", 1.0) == 0.0
    assert rates.wait_time("w", 1.0) == 1.0
    assert [rates.wait_time("w", 2.0) for _ in range(3)] == [0.0, 0.0, 0.5]


def test_rate_limits_are_per_webhook() -> None:
    rates = RateLimits(FakeClock())
    assert rates.wait_time("w1", 1.0) == 0.0
    assert rates.wait_time("w1", 1.0) == 1.0
    assert rates.wait_time("w2", 1.0) == 0.0


async def test_wait_sleeps_for_the_wait_time(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def fake_sleep(delay: float) -> None:
        slept.append(delay)

    monkeypatch.setattr(limits.asyncio, "sleep", fake_sleep)
    rates = RateLimits(FakeClock())
    await rates.wait("w", 2.0)
    await rates.wait("w", 2.0)
    assert slept == []
    await rates.wait("w", 2.0)
    await rates.wait("w", 2.0)
    assert slept == [0.5, 1.0]
    await rates.wait("w", None)
    await rates.wait("other", 2.0)
    assert slept == [0.5, 1.0]


def test_try_acquire_takes_a_free_slot_and_never_waits() -> None:
    slots = Slots(2)
    assert slots.try_acquire() and slots.try_acquire()
    assert slots.locked()
    assert not slots.try_acquire()
    slots.release()
    assert not slots.locked()
    assert slots.try_acquire()


async def test_a_waiter_granted_and_cancelled_in_one_step_leaves_no_entry() -> None:
    """The waiter's place is given as the holder finishes, and the waiter is cancelled (a
    drain, a revoke) before it runs: the endpoint is idle, and forgotten (until 2026-12-06 its
    entry stayed, one per endpoint ever seen so)."""
    slots = EndpointSlots(limit=1, max_queued=10)
    for n in range(50):
        endpoint = f"https://h{n}.example:443"
        await slots.acquire(endpoint)
        waiter = asyncio.ensure_future(slots.acquire(endpoint))
        await asyncio.sleep(0)  # queued
        slots.release(endpoint)  # its place is given to the waiter...
        waiter.cancel()  # ...which is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await waiter
    assert slots._endpoints == {}


def test_rate_limits_forget_the_buckets_that_filled_up_again() -> None:
    """Buckets of webhooks limited once (deleted since, say) are swept as others come; one
    still spacing its deliveries is kept, its spacing unchanged."""
    clock = FakeClock()
    limits = RateLimits(clock)
    for _ in range(3):
        limits.wait_time("busy", 0.001)  # a burst of one: waits 1,000 s, then 2,000 s
    for n in range(30_000):
        limits.wait_time(f"wh_{n}", 2.0)
        clock.now += 0.01  # each bucket is full again a second later
    assert len(limits) <= 20_000
    assert limits.wait_time("busy", 0.001) == pytest.approx(3_000.0 - 300.0)
