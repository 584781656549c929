"""LoopShare: the recoveries of a process together work at most their share of the time.

Simulated: payers (recoveries) on one event loop, each doing stretches of work of generated
lengths back to back, paying after each; a payer runs again when its sleep ends, one at a time
(the loop runs one task at a time), on a clock only the work and the sleeps move.
"""

from __future__ import annotations

import asyncio
import heapq

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.admin.loop_share import MIN_SLEEP, LoopShare, Payer

STRETCHES = st.lists(st.floats(0.0001, 0.02), min_size=1, max_size=40)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def simulate(share: float, payers: list[list[float]]) -> list[tuple[float, float]]:
    """Run every payer's stretches; the (start, end) of each stretch of work, in order."""
    clock = Clock()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    lane = LoopShare(share, clock=clock, sleep=sleep)
    ready = [(0.0, n, 0) for n in range(len(payers))]  # (ready at, payer, next stretch)
    heapq.heapify(ready)
    worked: list[tuple[float, float]] = []
    while ready:
        at, n, k = heapq.heappop(ready)
        clock.now = max(clock.now, at)
        began = lane.since()
        clock.now += payers[n][k]
        worked.append((began, clock.now))
        slept.clear()
        asyncio.run(lane.pay(began))
        wake = clock.now + (slept[0] if slept else 0.0)
        if k + 1 < len(payers[n]):
            heapq.heappush(ready, (wake, n, k + 1))
    return worked


@settings(max_examples=150, deadline=None)
@given(
    share=st.sampled_from([0.1, 0.25, 0.5, 0.9]), payers=st.lists(STRETCHES, min_size=1, max_size=5)
)
def test_the_payers_together_work_at_most_their_share_of_any_time(
    share: float, payers: list[list[float]]
) -> None:
    """In every window from the start of a stretch to the end of a later one, the work in it
    is at most ``share`` of the window, plus one stretch per payer (each may work once before
    it first pays, and a window may cut the lane's accounting at a stretch; and what each may
    owe unslept, under MIN_SLEEP)."""
    worked = simulate(share, payers)
    longest = max(max(p) for p in payers)
    # (a wait under MIN_SLEEP is owed, not slept: a payer may run that far ahead of the lane)
    allowance = len(payers) * (longest + MIN_SLEEP)
    for i, (start, _) in enumerate(worked):
        total = 0.0
        for begin, end in worked[i:]:
            total += end - begin
            assert total <= share * (end - start) + allowance + 1e-9, (i, total, end - start)


@settings(max_examples=100, deadline=None)
@given(share=st.sampled_from([0.1, 0.25, 0.5, 1.0]), stretches=STRETCHES)
def test_a_payer_alone_gets_its_share(share: float, stretches: list[float]) -> None:
    """Not starved either: a lone payer's work ends within ``1 / share`` of it (its last
    stretch's pause aside)."""
    worked = simulate(share, [stretches])
    work = sum(stretches)
    assert worked[-1][1] <= work / share + 1e-9
    assert worked[-1][1] >= work - 1e-9


def test_share_one_never_waits_but_lets_the_loop_turn() -> None:
    """At any share a payment lets other tasks run: a scan of records fetched already awaits
    nothing else, and held the event loop for as long as they lasted."""
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    lane = LoopShare(1.0, clock=lambda: 5.0, sleep=sleep)
    assert asyncio.run(lane.pay(0.0)) == 5.0
    assert slept == [0]
    quarter = LoopShare(0.25, clock=lambda: 5.0, sleep=sleep)
    slept.clear()
    asyncio.run(quarter.pay(5.0 - MIN_SLEEP / 10))  # owed less than MIN_SLEEP: a turn only
    assert slept == [0]
    # Before an await of the payer's own (a record handed over, a write): no turn of its own.
    asyncio.run(lane.pay(0.0, turn=False))
    asyncio.run(quarter.pay(5.0 - MIN_SLEEP / 10, turn=False))
    assert slept == [0]


@pytest.mark.parametrize("share", [0.0, -0.5, 1.5, float("nan")])
def test_a_share_outside_0_to_1_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match="share"):
        LoopShare(share)


def test_a_fetch_that_did_not_wait_is_work_and_one_that_waited_is_not() -> None:
    """A recovery's stretch begins with its fetch: records fetched already are unpacked in
    aiokafka's getmany without awaiting, on the recovery's task. A fetch that waited for the
    broker let the loop run other tasks: the stretch begins when it returns."""
    clock = Clock()
    paid: list[float] = []

    class Recording(LoopShare):
        async def pay(self, began: float) -> float:
            paid.append(self._clock() - began)
            return self._clock()

    async def run() -> None:
        paying = Payer(Recording(0.5, clock=clock))
        turn = paying.fetching()
        clock.now += 2.0  # unpacking buffered records: no await
        paying.fetched(turn)
        clock.now += 1.0  # matching
        await paying.pay()
        turn = paying.fetching()
        await asyncio.sleep(0)  # waiting for the broker: the loop runs a turn
        clock.now += 5.0  # (other tasks' work meanwhile)
        paying.fetched(turn)
        clock.now += 1.0
        await paying.pay()

    asyncio.run(run())
    assert paid == [3.0, 1.0]


@settings(max_examples=150, deadline=None)
@given(
    rate=st.sampled_from([1.0, 20.0, 500.0]),
    gaps=st.lists(st.floats(0.0, 0.2), min_size=1, max_size=60),
)
def test_recoveries_together_enqueue_at_most_the_shared_pace(
    rate: float, gaps: list[float]
) -> None:
    """Recoveries asking for moments to write at generated times (several at once included):
    no moment before its asking, any two at least 1/rate apart, and none later than that
    needs (each is its asking time or the one before's plus 1/rate)."""
    from bridge.admin.recovery import SharedPace

    clock = Clock()
    pace = SharedPace(rate, clock=clock)
    asked, given = [], []
    for gap in gaps:
        clock.now += gap
        asked.append(clock.now)
        given.append(pace.reserve())
    interval = 1.0 / rate
    for n, (ask, at) in enumerate(zip(asked, given, strict=True)):
        assert at >= ask
        if n:
            assert at - given[n - 1] >= interval - 1e-9
            assert at == pytest.approx(max(ask, given[n - 1] + interval))
