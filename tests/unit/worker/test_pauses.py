"""A pause of the process long enough for the group to have dropped the worker unawares fences
its webhook changes (bridge.worker.pauses), at a worker's wiring too (Bridge._may_change)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st

from bridge.worker.app import Bridge
from bridge.worker.pauses import TICK, LoopPauses, PauseTicker
from tests.support.api import LOG_AUTH
from tests.support.clocks import FakeClock
from tests.support.waiting import PROMPT
from tests.support.workers import offline_bridge
from tests.unit.worker.test_api import HOLD, api_bridge, assign, relaying_app
from tests.unit.worker.test_delivery_log import turns


def pauses(
    clock: FakeClock, lapses: list[float] | None = None, seen: list[float] | None = None
) -> LoopPauses:
    """A fence of limit 1.5 s and hold 2 s on ``clock``, noting when it saw a pause (``seen``)
    and when a hold lapsed (``lapses``)."""
    return LoopPauses(
        limit=1.5,
        hold=2.0,
        clock=clock,
        on_lapse=(lambda: lapses.append(clock.now)) if lapses is not None else lambda: None,
        on_pause=(lambda: seen.append(clock.now)) if seen is not None else lambda: None,
    )


def test_ticks_closer_than_the_limit_never_refuse() -> None:
    clock = FakeClock(100.0)
    seen: list[float] = []
    fence = pauses(clock, seen=seen)
    assert fence.may_write()  # not ticking yet: ownership alone decides
    for _ in range(100):
        fence.tick()
        clock.now += 1.4
        assert fence.may_write()
    assert seen == []


def test_a_write_woken_by_a_pause_before_the_first_tick_after_it_is_refused() -> None:
    """After a pause the event loop runs what was ready in any order: a write that runs before
    the tick that would see the gap is refused all the same."""
    clock = FakeClock(100.0)
    fence = pauses(clock)
    fence.tick()
    clock.now += 1.6
    assert not fence.may_write()


def test_a_pause_refuses_writes_for_the_hold_then_wakes_what_waited() -> None:
    clock = FakeClock(100.0)
    lapses: list[float] = []
    seen: list[float] = []
    fence = pauses(clock, lapses, seen)
    fence.tick()
    clock.now += 10.0  # paused
    fence.tick()
    assert seen == [clock.now] and not fence.may_write()
    for _ in range(7):  # 1.75 s of ticks: still held
        clock.now += 0.25
        fence.tick()
        assert not fence.may_write()
    clock.now += 0.25
    assert fence.may_write()  # the hold is over, whether or not a tick saw it
    fence.tick()
    assert lapses == [clock.now] and fence.may_write()
    fence.tick()
    assert lapses == [clock.now]  # woken once


@given(st.lists(st.floats(min_value=0.0, max_value=5.0), min_size=1, max_size=40))
def test_no_write_within_the_hold_after_any_gap_longer_than_the_limit(gaps: list[float]) -> None:
    """Whatever the ticks' spacing: a write is allowed only if the last tick is within the
    limit and no gap longer than the limit ended less than the hold ago."""
    clock = FakeClock(100.0)
    fence = pauses(clock)
    fence.tick()
    pauses_ended: list[float] = []
    for gap in gaps:
        clock.now += gap
        allowed = fence.may_write()
        expected = gap <= 1.5 and all(clock.now >= end + 2.0 for end in pauses_ended)
        assert allowed == expected
        fence.tick()
        if gap > 1.5:
            pauses_ended.append(clock.now)


def test_a_worker_takes_its_limit_and_hold_from_its_group_timeouts(tmp_path: Path) -> None:
    bridge = offline_bridge(tmp_path, kafka_session_timeout=6.0)
    assert (bridge.pauses.limit, bridge.pauses.hold) == (5.0, 6.0)  # heartbeats every 1 s
    bridge = offline_bridge(tmp_path, kafka_session_timeout=2.0, kafka_rebalance_timeout=3.0)
    assert (bridge.pauses.limit, bridge.pauses.hold) == (1.5, 2.0)  # every 0.5 s


def fenced_bridge(tmp_path: Path) -> tuple[Bridge, FakeClock]:
    """A worker with the API and the delivery log whose pause fence (limit 1.5 s, hold 2 s, its
    lapse wired as the worker wires it) runs on a clock the test moves."""
    bridge = api_bridge(tmp_path)
    clock = FakeClock(100.0)
    bridge.pauses = LoopPauses(limit=1.5, hold=2.0, clock=clock, on_lapse=bridge._writes_may_go_on)
    return bridge, clock


async def test_a_change_woken_after_a_pause_is_held_and_made_once_the_hold_lapses(
    tmp_path: Path,
) -> None:
    """The owner of a webhook is paused with a change ready to be written: the change is not
    written then (the group may have given the webhook to another worker), but held, and made
    when the hold lapses with this worker still the owner (no rebalance came)."""
    bridge, clock = fenced_bridge(tmp_path)
    made: list[str] = []

    async def change(request: web.Request) -> web.Response:
        webhook_id = request.match_info["webhook_id"]
        async with bridge.change_locks.hold(webhook_id):
            async with bridge.change_locks.writing(webhook_id):
                made.append(webhook_id)
        return web.json_response({"made_by": "here"})

    assign(bridge, {bridge.settings.canonical_url: list(range(6))})
    bridge.pauses.tick()
    clock.now += 30.0  # paused; nothing ticked since
    async with TestClient(TestServer(relaying_app(bridge, change, HOLD))) as client:
        sent = asyncio.ensure_future(client.patch("/v1/webhooks/wh", json={}, headers=LOG_AUTH))
        await turns()
        assert not sent.done() and made == []  # held, not written
        bridge.pauses.tick()  # the loop runs again: the pause is seen, the hold begins
        await turns()
        assert not sent.done() and made == []
        for _ in range(8):  # ticks through the hold; the last one sees it lapse
            assert not sent.done() and made == []
            clock.now += 0.25
            bridge.pauses.tick()
        response = await asyncio.wait_for(sent, PROMPT)
        assert response.status == 200 and await response.json() == {"made_by": "here"}
    assert made == ["wh"]


def test_the_disables_refused_during_a_hold_are_offered_again_when_it_lapses(
    tmp_path: Path,
) -> None:
    """A disable refused by the fence is dropped (the next owner looks at every disable at its
    assignment); with no rebalance to come, the lapse of the hold looks at them here."""
    bridge, clock = fenced_bridge(tmp_path)
    assert bridge.disables is not None
    offered: list[object] = []
    bridge.disables.offer_owned = offered.append  # type: ignore[method-assign]
    bridge.pauses.tick()
    clock.now += 3.0
    bridge.pauses.tick()
    while not offered:
        assert clock.now < 110
        clock.now += 0.25
        bridge.pauses.tick()
    assert offered == [bridge._owns_log_of]


def test_ticks_come_well_within_the_limit_however_short() -> None:
    assert PauseTicker(LoopPauses(limit=5.0, hold=6.0)).interval == TICK
    assert PauseTicker(LoopPauses(limit=0.4, hold=0.5)).interval == 0.1


async def test_the_ticker_reports_how_late_the_loop_woke_it() -> None:
    """``webhook_bridge_event_loop_lag_seconds``: each tick's lateness; a loop held 0.6 s (a
    blocking call) while the ticker slept its 0.25 s shows as one of 0.35 to 0.6 s (held from
    the start of its sleep to its end), the others as next to nothing."""
    lags: list[float] = []
    ticker = PauseTicker(LoopPauses(limit=5.0, hold=6.0), on_lag=lags.append)
    await ticker.start()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PROMPT
        while len(lags) < 2 and loop.time() < deadline:
            await asyncio.sleep(0.01)
        time.sleep(0.6)  # the loop held: what the metric is for
        while max(lags) < 0.3 and loop.time() < deadline:
            await asyncio.sleep(0.01)
    finally:
        await ticker.stop()
    assert len(lags) >= 3
    assert 0.34 <= max(lags) < 1.0
    assert min(lags) < 0.25  # lateness, not the sleep itself
    assert all(lag >= 0 for lag in lags)


async def test_a_change_held_past_its_hold_by_a_pause_is_answered_503_saying_so(
    tmp_path: Path,
) -> None:
    """The request's hold ends before the pause's: not made, 503, and the detail names the
    pause (not a rebalance) for whoever reads it."""
    bridge, clock = fenced_bridge(tmp_path)

    async def change(request: web.Request) -> web.Response:
        async with bridge.change_locks.writing(request.match_info["webhook_id"]):
            raise AssertionError("written during the pause's hold")

    assign(bridge, {bridge.settings.canonical_url: list(range(6))})
    bridge.pauses.tick()
    clock.now += 30.0
    bridge.pauses.tick()  # the pause seen: held for 2 s of the fence's clock
    async with TestClient(TestServer(relaying_app(bridge, change, 0.2))) as client:
        answered = await client.patch("/v1/webhooks/wh", json={}, headers=LOG_AUTH)
        assert answered.status == 503 and "Retry-After" in answered.headers
        assert "paused" in (await answered.json())["detail"]
