"""bridge.delivery.limits.SlowEndpoints: which endpoints are slow, and the share they hold."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.delivery import limits
from bridge.delivery.limits import SLOW_AFTER, SLOW_FOR, SlowEndpoints
from tests.support.clocks import FakeClock

A, B = "https://a.example:443", "https://b.example:443"


def test_a_slow_answer_makes_an_endpoint_slow_for_a_time_whatever_it_answers_then() -> None:
    """Quick answers do not clear it (an endpoint could answer quickly through the share and
    hang with the worker's other places again), and it ends on its own: an endpoint whose
    requests are all deferred has no answer to clear it with (until the first version's
    average gave way to a time, its deliveries were dead-lettered untried)."""
    clock = FakeClock(1000.0)
    slow = SlowEndpoints(2, clock=clock)
    slow.observe(A, 30.0)
    slow.observe(B, SLOW_AFTER - 0.01)
    assert slow.is_slow(A) and not slow.is_slow(B)
    for _ in range(50):
        slow.observe(A, 0.01)
    clock.now += SLOW_FOR - 1
    assert slow.is_slow(A)
    clock.now += 1
    assert not slow.is_slow(A)
    slow.observe(A, SLOW_AFTER)  # slow again, for another SLOW_FOR
    clock.now += SLOW_FOR - 1
    assert slow.is_slow(A)


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
def test_it_remembers_only_slow_endpoints_and_never_more_than_its_bound(
    answers: list[tuple[int, float, float]],
) -> None:
    """Whatever endpoints answer, and when: the map never passes its bound, an endpoint is
    slow exactly when its last slow answer is within SLOW_FOR (unless the bound forgot it),
    and quick answers never add an entry."""
    original = limits._MAX_REMEMBERED
    limits._MAX_REMEMBERED = 8
    try:
        clock = FakeClock(0.0)
        slow = SlowEndpoints(4, clock=clock)
        last_slow: dict[str, float] = {}
        for n, duration, gap in answers:
            clock.now += gap
            endpoint = f"https://e{n}.example:443"
            before = dict(slow._until)
            slow.observe(endpoint, duration)
            assert len(slow._until) <= 8
            if duration >= SLOW_AFTER:
                last_slow[endpoint] = clock()
                assert slow.is_slow(endpoint)
            else:
                assert slow._until == before
            for name, at in last_slow.items():
                if slow.is_slow(name):
                    assert clock() - at < SLOW_FOR
                elif name in slow._until:
                    assert clock() - at >= SLOW_FOR
    finally:
        limits._MAX_REMEMBERED = original
