"""bridge.delivery.limits.SlowEndpoints: which endpoints and sites are slow, the probe that
measures one again, which endpoints have not been heard from, and the share they hold."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.delivery import limits
from bridge.delivery.limits import (
    PROBE,
    QUICK,
    SLOW,
    SLOW_AFTER,
    SLOW_FOR,
    UNPROVEN,
    SlowEndpoints,
)
from tests.support.clocks import FakeClock
from tests.support.waiting import PROMPT, eventually

A, B, SITE = "https://a.example:443", "https://b.example:443", "site_id:s1"


def test_a_slow_answer_makes_its_endpoint_and_site_slow_whatever_they_answer_then() -> None:
    """Quick answers through the share do not clear it (they would make a key quick again for
    its next hanging wave), and the site is slow too: its webhooks moved to hostnames never
    seen are held to the share as well."""
    clock = FakeClock(1000.0)
    slow = SlowEndpoints(2, clock=clock)
    assert slow.judge(A, SITE) == UNPROVEN
    slow.observe((A, SITE), 30.0, probe=False)
    slow.observe((B, "site_id:s2"), SLOW_AFTER - 0.01, probe=False)
    assert slow.judge(A, SITE) == SLOW and slow.judge(B, SITE) == SLOW  # B by its site
    assert slow.judge(B, "site_id:s2") == QUICK and slow.judge(A, None) == SLOW
    for _ in range(50):
        slow.observe((A, SITE), 0.01, probe=False)
    clock.now += SLOW_FOR - 1
    assert slow.judge(A, SITE) == SLOW


def test_when_its_time_is_up_one_request_measures_a_key_again() -> None:
    """The probe: one request let through as any other's while the key stays slow for the
    rest; its quick answer ends the slowness, a slow one renews it. A key whose requests were
    all deferred is measured again; one that still hangs gets one request, not a wave."""
    clock = FakeClock(1000.0)
    slow = SlowEndpoints(2, clock=clock)
    slow.observe((A, SITE), 30.0, probe=False)
    clock.now += SLOW_FOR
    assert slow.judge(A, SITE) == PROBE
    assert slow.judge(A, SITE) == SLOW  # the others, while the probe is out
    slow.observe((A, SITE), 30.0, probe=True)  # still hangs: slow again, for SLOW_FOR
    clock.now += SLOW_FOR - 1
    assert slow.judge(A, SITE) == SLOW
    clock.now += 1
    assert slow.judge(A, SITE) == PROBE
    slow.observe((A, SITE), 0.05, probe=True)  # answered in time: quick again
    assert slow.judge(A, SITE) == QUICK and not slow._until


def test_an_endpoint_is_unproven_until_it_answers_quickly_and_again_after_a_slow_answer() -> None:
    """Not heard from: the share (it may hang with the other places, as new sites' hanging
    webhooks did). Judged by its endpoint: a site's quick answers elsewhere do not vouch for a
    new endpoint of the site, and a new site on an endpoint heard answering quickly is quick."""
    clock = FakeClock(1000.0)
    slow = SlowEndpoints(2, clock=clock)
    assert slow.judge(A, SITE) == UNPROVEN and slow.judge(A) == UNPROVEN
    slow.observe((A, SITE), 0.05, probe=False)
    assert slow.judge(A, SITE) == QUICK and slow.judge(A, "site_id:new") == QUICK
    assert slow.judge(B, SITE) == UNPROVEN  # the site's word is not enough
    slow.observe((A, SITE), SLOW_AFTER, probe=False)
    assert slow.judge(A, "site_id:new") == SLOW
    clock.now += SLOW_FOR
    assert slow.judge(A, "site_id:new") == PROBE
    slow.observe((A, "site_id:new"), 0.05, probe=True)
    assert slow.judge(A, "site_id:new") == QUICK  # measured again: quick
    # A quick answer through the share while slow does not make it quick (nor proven).
    slow.observe((B, None), 30.0, probe=False)
    slow.observe((B, None), 0.05, probe=False)
    clock.now += 1
    assert slow.judge(B) == SLOW and B not in slow._proven


def test_the_endpoints_heard_from_are_bounded_the_first_proven_forgotten_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(limits, "_MAX_PROVEN", 3)
    slow = SlowEndpoints(2)
    for n in range(5):
        slow.observe((f"https://e{n}.example:443", None), 0.01, probe=False)
    assert list(slow._proven) == [f"https://e{n}.example:443" for n in (2, 3, 4)]
    assert slow.judge("https://e0.example:443") == UNPROVEN  # asks for the share again


async def test_an_unproven_request_waits_for_the_share_and_no_slow_one_jumps_it() -> None:
    slow = SlowEndpoints(1)
    assert slow.try_take()
    waiting = asyncio.ensure_future(slow.take())
    await eventually(lambda: slow.waiting == 1)
    assert not waiting.done()
    slow.give_back()  # handed to the waiter, not left for a slow request's try_take
    assert not slow.try_take()
    await asyncio.wait_for(waiting, PROMPT)
    assert slow.taken == 1
    # A waiter cancelled (its bound passed) takes nothing.
    late = asyncio.ensure_future(slow.take())
    await eventually(lambda: slow.waiting == 1)
    late.cancel()
    await asyncio.gather(late, return_exceptions=True)
    slow.give_back()
    assert slow.taken == 0 and slow.try_take()


def test_the_share_is_taken_without_waiting_and_given_back() -> None:
    slow = SlowEndpoints(2)
    assert slow.try_take() and slow.try_take()
    assert not slow.try_take() and slow.taken == 2
    slow.give_back()
    assert slow.try_take() and slow.taken == 2
    with pytest.raises(ValueError):
        SlowEndpoints(0)


@given(
    st.lists(
        st.tuples(st.integers(0, 30), st.floats(0, 60), st.floats(0, 2 * SLOW_FOR)), max_size=300
    )
)
def test_it_remembers_only_slow_keys_and_never_more_than_its_bound(
    answers: list[tuple[int, float, float]],
) -> None:
    """Whatever answers come, and when: the map never passes its bound, its order is the order
    its keys' slowness ends, a key judged slow had a slow answer (or a probe) within SLOW_FOR,
    and quick answers never add a key."""
    original = limits._MAX_REMEMBERED
    limits._MAX_REMEMBERED = 8
    try:
        clock = FakeClock(0.0)
        slow = SlowEndpoints(4, clock=clock)
        marked: dict[str, float] = {}
        for n, duration, gap in answers:
            clock.now += gap
            key = f"https://e{n}.example:443"
            verdict = slow.judge(key)
            if verdict == PROBE:
                marked[key] = clock()
            before = set(slow._until)
            slow.observe((key,), duration, probe=verdict == PROBE)
            assert len(slow._until) <= 8
            ends = list(slow._until.values())
            assert ends == sorted(ends)
            if duration >= SLOW_AFTER:
                marked[key] = clock()
                assert slow.judge(key) == SLOW
            elif verdict != PROBE:
                assert set(slow._until) <= before
            for name, at in marked.items():
                if clock() < slow._until.get(name, clock()):  # still slow
                    assert clock() - at < SLOW_FOR
            # An endpoint heard answering quickly is not slow, and one slow is not quick.
            assert not set(slow._proven) & set(slow._until)
            if duration < SLOW_AFTER and key not in slow._until:
                assert slow.judge(key) == QUICK
    finally:
        limits._MAX_REMEMBERED = original
