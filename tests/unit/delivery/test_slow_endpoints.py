"""bridge.delivery.limits.SlowEndpoints: which endpoints are slow, and the share they hold."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.delivery import limits
from bridge.delivery.limits import SLOW_AFTER, SlowEndpoints


def test_one_timeout_makes_a_new_endpoint_slow_and_quick_answers_make_it_quick() -> None:
    slow = SlowEndpoints(2)
    slow.observe("https://a.example:443", 30.0)
    assert slow.is_slow("https://a.example:443")
    assert not slow.is_slow("https://b.example:443")
    answers = 0
    while slow.is_slow("https://a.example:443"):
        slow.observe("https://a.example:443", 0.05)
        answers += 1
    assert answers == 10  # 30 s weighs a quarter less with each quick answer
    slow.observe("https://b.example:443", 1.9)  # under SLOW_AFTER
    assert not slow.is_slow("https://b.example:443")


def test_the_share_is_taken_without_waiting_and_given_back() -> None:
    slow = SlowEndpoints(2)
    assert slow.try_take() and slow.try_take()
    assert not slow.try_take() and slow.taken == 2
    slow.give_back()
    assert slow.try_take() and slow.taken == 2
    with pytest.raises(ValueError):
        SlowEndpoints(0)


@given(st.lists(st.tuples(st.integers(0, 30), st.floats(0, 60)), max_size=300))
def test_it_remembers_only_endpoints_near_slow_and_never_more_than_its_bound(
    answers: list[tuple[int, float]],
) -> None:
    """Quick endpoints are forgotten (the map holds the slow and those near it), and the map
    never passes its bound, whatever endpoints answer."""
    original = limits._MAX_REMEMBERED
    limits._MAX_REMEMBERED = 8
    try:
        slow = SlowEndpoints(4)
        for n, duration in answers:
            slow.observe(f"https://e{n}.example:443", duration)
            assert len(slow._average) <= 8
            assert all(v >= SLOW_AFTER / 4 for v in slow._average.values())
        if answers:
            n, duration = answers[-1]
            assert slow.is_slow(f"https://e{n}.example:443") == (
                slow._average.get(f"https://e{n}.example:443", 0.0) >= SLOW_AFTER
            )
    finally:
        limits._MAX_REMEMBERED = original
