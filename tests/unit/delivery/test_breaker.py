"""bridge.delivery.breaker: endpoint keys and the per-endpoint circuit breaker, with an explicit
clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.delivery.breaker import (
    CLOSED,
    FORGET_AFTER,
    HALF_OPEN,
    OPEN,
    Breakers,
    CircuitBreaker,
    endpoint_of,
)
from bridge.subscriptions.urls import InvalidUrl
from tests.support.clocks import FakeClock

THRESHOLD = 3
COOLDOWN = 30.0


# -- endpoint_of -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("https://hooks.example/receive?x=1", "https://hooks.example:443"),
        ("http://hooks.example/receive", "http://hooks.example:80"),
        ("https://hooks.example:8443/a/b", "https://hooks.example:8443"),
        ("http://hooks.example:8080", "http://hooks.example:8080"),
        ("http://hooks.example:443/", "http://hooks.example:443"),
        ("https://hooks.example:80/", "https://hooks.example:80"),
        ("https://Hooks.EXAMPLE/Path", "https://hooks.example:443"),
        ("HTTPS://hooks.example/", "https://hooks.example:443"),
        ("https://10.1.2.3/x", "https://10.1.2.3:443"),
        ("https://0x0a.1.2.3/x", "https://10.1.2.3:443"),
        ("http://[::1]:8080/x", "http://[::1]:8080"),
        ("https://Bücher.example/", "https://xn--bcher-kva.example:443"),
    ],
)
def test_endpoint_of(url: str, endpoint: str) -> None:
    assert endpoint_of(url) == endpoint


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("https://hooks.example/a", "https://hooks.example:443/b?c=d"),
        ("http://hooks.example/a", "http://HOOKS.example:80/"),
        ("https://hooks.example/a", "HTTPS://Hooks.Example/a"),
    ],
)
def test_same_endpoint(a: str, b: str) -> None:
    assert endpoint_of(a) == endpoint_of(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("https://hooks.example/", "http://hooks.example/"),
        ("https://hooks.example/", "https://hooks.example:8443/"),
        ("https://hooks.example/", "https://other.example/"),
        ("https://a.hooks.example/", "https://hooks.example/"),
    ],
)
def test_different_endpoints(a: str, b: str) -> None:
    assert endpoint_of(a) != endpoint_of(b)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:99999/x",  # once a ValueError from every attempt
        "http://xn--/",  # once an endpoint "http://xn--:80"
        "https://admin:s3cret@hooks.example/x",
        "https://hooks.example/#frag",
        "ftp://hooks.example/",
    ],
)
def test_an_unusable_url_has_no_endpoint(url: str) -> None:
    # The deliverer dead-letters such a delivery (invalid_url) instead of attempting it.
    with pytest.raises(InvalidUrl) as caught:
        endpoint_of(url)
    assert "s3cret" not in str(caught.value)


# -- CircuitBreaker ------------------------------------------------------------------------------


def tripped(now: float = 100.0) -> CircuitBreaker:
    """A breaker opened at ``now``."""
    breaker = CircuitBreaker(THRESHOLD, COOLDOWN)
    for _ in range(THRESHOLD):
        assert breaker.allow(now)
        breaker.failure(now)
    assert breaker.state == OPEN
    return breaker


def test_starts_closed_and_allows() -> None:
    breaker = CircuitBreaker(THRESHOLD, COOLDOWN)
    assert breaker.state == CLOSED
    assert all(breaker.allow(float(t)) for t in range(10))


def test_opens_after_threshold_consecutive_failures() -> None:
    breaker = CircuitBreaker(THRESHOLD, COOLDOWN)
    for n in range(1, THRESHOLD):
        breaker.failure(100.0 + n)
        assert breaker.state == CLOSED, f"open after {n} failures"
        assert breaker.allow(100.0 + n)
    breaker.failure(110.0)
    assert breaker.state == OPEN
    assert breaker.opened_at == 110.0
    assert not breaker.allow(110.0)


def test_threshold_of_one_opens_at_the_first_failure() -> None:
    breaker = CircuitBreaker(1, COOLDOWN)
    breaker.failure(5.0)
    assert breaker.state == OPEN


def test_success_resets_the_count() -> None:
    breaker = CircuitBreaker(THRESHOLD, COOLDOWN)
    for _ in range(THRESHOLD - 1):
        breaker.failure(100.0)
    breaker.success()
    assert breaker.failures == 0
    for _ in range(THRESHOLD - 1):
        breaker.failure(101.0)
    assert breaker.state == CLOSED
    breaker.failure(102.0)
    assert breaker.state == OPEN


def test_open_refuses_until_the_cooldown_has_passed() -> None:
    breaker = tripped(now=100.0)
    for now in (100.0, 110.0, 129.0, 129.999):
        assert not breaker.allow(now), now
        assert breaker.state == OPEN
    assert breaker.allow(100.0 + COOLDOWN)


def test_half_open_lets_exactly_one_probe_through() -> None:
    breaker = tripped(now=100.0)
    assert breaker.allow(200.0)
    assert breaker.state == HALF_OPEN
    # While the probe is out, nothing else goes, however long it takes.
    assert not breaker.allow(200.0)
    assert not breaker.allow(201.0)
    assert not breaker.allow(200.0 + 10 * COOLDOWN)
    assert breaker.state == HALF_OPEN


def test_probe_success_closes() -> None:
    breaker = tripped(now=100.0)
    assert breaker.allow(130.0)
    breaker.success()
    assert breaker.state == CLOSED
    assert breaker.failures == 0
    assert all(breaker.allow(131.0) for _ in range(5))
    # Closed again means a fresh count: it takes ``threshold`` failures to open.
    for _ in range(THRESHOLD - 1):
        breaker.failure(132.0)
    assert breaker.state == CLOSED


def test_probe_failure_reopens_with_a_fresh_cooldown() -> None:
    breaker = tripped(now=100.0)
    assert breaker.allow(140.0)
    breaker.failure(145.0)
    assert breaker.state == OPEN
    assert breaker.opened_at == 145.0
    # The cooldown counts from the probe's failure, not from the first opening.
    assert not breaker.allow(145.0 + COOLDOWN - 0.001)
    assert breaker.allow(145.0 + COOLDOWN)
    assert breaker.state == HALF_OPEN
    assert not breaker.allow(145.0 + COOLDOWN)


def test_a_single_probe_failure_reopens_even_below_threshold() -> None:
    breaker = tripped(now=100.0)
    breaker.failures = 0  # whatever the count, a failed probe re-opens
    assert breaker.allow(130.0)
    breaker.failure(131.0)
    assert breaker.state == OPEN


# -- Breakers ------------------------------------------------------------------------------------


def test_breakers_are_per_endpoint_and_use_the_clock() -> None:
    clock = FakeClock(1000.0)
    breakers = Breakers(THRESHOLD, COOLDOWN, clock)
    for _ in range(THRESHOLD):
        breakers.failure("https://a:443")
    assert breakers.state("https://a:443") == OPEN
    assert not breakers.allow("https://a:443")
    assert breakers.allow("https://b:443")
    assert breakers.state("https://b:443") == CLOSED

    clock.now += COOLDOWN - 1
    assert not breakers.allow("https://a:443")
    clock.now += 1
    assert breakers.allow("https://a:443")
    assert breakers.state("https://a:443") == HALF_OPEN
    assert not breakers.allow("https://a:443")

    clock.now += 5
    breakers.failure("https://a:443")
    assert breakers.state("https://a:443") == OPEN
    clock.now += COOLDOWN - 1
    assert not breakers.allow("https://a:443")
    clock.now += 1
    assert breakers.allow("https://a:443")
    breakers.success("https://a:443")
    assert breakers.state("https://a:443") == CLOSED
    assert breakers.allow("https://a:443")


def test_unknown_endpoint_is_closed_and_success_is_harmless() -> None:
    breakers = Breakers(THRESHOLD, COOLDOWN, FakeClock())
    assert breakers.state("https://never-seen:443") == CLOSED
    breakers.success("https://never-seen:443")
    assert breakers.state("https://never-seen:443") == CLOSED
    assert breakers.open_count() == 0


def test_open_count() -> None:
    clock = FakeClock(0.0)
    breakers = Breakers(THRESHOLD, COOLDOWN, clock)
    endpoints = ["https://a:443", "https://b:443", "https://c:443"]
    for endpoint in endpoints:
        assert breakers.allow(endpoint)
    assert breakers.open_count() == 0

    for endpoint in endpoints[:2]:
        for _ in range(THRESHOLD):
            breakers.failure(endpoint)
    breakers.failure(endpoints[2])  # below threshold: still closed
    assert breakers.open_count() == 2

    clock.now = COOLDOWN
    assert breakers.allow(endpoints[0])  # half-open still counts
    assert breakers.state(endpoints[0]) == HALF_OPEN
    assert breakers.open_count() == 2

    breakers.success(endpoints[0])
    assert breakers.open_count() == 1
    assert breakers.allow(endpoints[1])
    breakers.failure(endpoints[1])  # probe failed: open again
    assert breakers.open_count() == 1


@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["allow", "success", "failure", "tick"]),
            st.sampled_from(["https://a:443", "https://b:443", "https://c:443"]),
        ),
        max_size=60,
    )
)
def test_open_count_always_equals_a_recount(steps: list[tuple[str, str]]) -> None:
    now = [0.0]
    breakers = Breakers(threshold=2, cooldown=1.0, clock=lambda: now[0])
    for action, endpoint in steps:
        if action == "tick":
            now[0] += 0.6
        else:
            getattr(breakers, action)(endpoint)
        recount = sum(1 for b in breakers._by_endpoint.values() if b.state != CLOSED)
        assert breakers.open_count() == recount


def test_a_probe_given_back_goes_to_the_next_request() -> None:
    breaker = tripped(now=100.0)
    assert breaker.allow(200.0)
    breaker.release(breaker.probe)
    assert breaker.state == HALF_OPEN
    assert breaker.allow(200.0)
    assert not breaker.allow(200.0)
    closed = CircuitBreaker(THRESHOLD, COOLDOWN)
    closed.release(0)  # nothing to give back
    assert closed.state == CLOSED


def test_only_the_probe_itself_gives_its_place_back() -> None:
    """A request let through while the circuit was closed, not sent (its webhook changed, the
    bridge's crash) or deferred, gave back the probe another request held, and a second
    probe was sent beside it (until 2026-12-07)."""
    clock = FakeClock()
    breakers = Breakers(threshold=1, cooldown=30.0, clock=clock)
    endpoint = "https://a.example:443"
    before = breakers.allow(endpoint)  # closed: no probe
    assert before is not None and before.probe is None
    breakers.failure(endpoint)  # another request's failure opens it
    clock.now += 30.0
    probe = breakers.allow(endpoint)
    assert probe is not None and probe.probe is not None
    breakers.release(before)  # not sent: it held no probe
    assert breakers.allow(endpoint) is None  # the probe is still in flight
    breakers.release(probe)
    again = breakers.allow(endpoint)
    assert again is not None and again.probe not in (None, probe.probe)
    breakers.release(probe)  # an older probe's release frees nothing
    assert breakers.allow(endpoint) is None


def test_breakers_of_endpoints_that_failed_once_or_long_ago_are_swept() -> None:
    """Asking does not make a breaker; one closed (failures short of the threshold) is swept as
    endpoints come, and one open that nothing asked of for FORGET_AFTER past its cooldown; an
    open one is kept until then, so a failing endpoint gets one probe, not a wave. Until
    2026-12-06 every endpoint ever sent to had a breaker, kept for ever after a failure."""
    clock = FakeClock()
    breakers = Breakers(threshold=2, cooldown=30.0, clock=clock)
    for n in range(1_000):
        assert breakers.allow(f"https://asked{n}.example:443")
    assert len(breakers) == 0
    for _ in range(2):
        breakers.failure("https://down.example:443")
    for n in range(30_000):
        breakers.failure(f"https://h{n}.example:443")  # closed, one failure each
        clock.now += 0.0005  # 15 s in all: "down" stays within its cooldown
    assert len(breakers) <= 20_000
    assert breakers.state("https://down.example:443") == OPEN
    assert not breakers.allow("https://down.example:443")
    assert breakers.open_count() == 1
    clock.now += 30.0  # past its cooldown, asked of again after sweeps: one probe
    for n in range(30_000):
        breakers.failure(f"https://later{n}.example:443")
    assert [bool(breakers.allow("https://down.example:443")) for _ in range(5)] == [True] + [
        False
    ] * 4
    breakers.failure("https://down.example:443")  # the probe failed: open again
    clock.now += 30.0 + FORGET_AFTER
    for n in range(30_000):
        breakers.failure(f"https://latest{n}.example:443")
    assert breakers.open_count() == 0 and breakers.state("https://down.example:443") == CLOSED


def test_failures_of_requests_sent_before_the_opening_do_not_hold_the_probe_back() -> None:
    """Sixteen requests in flight as the circuit opens time out one after another: the probe
    goes through a cooldown after the opening, not after the last of them."""
    clock = FakeClock(0.0)
    breakers = Breakers(5, 30.0, clock)
    endpoint = "https://x.example:443"
    for n in range(16):
        clock.now = max(0.0, n - 4.0)
        breakers.failure(endpoint)
    assert breakers.state(endpoint) == OPEN
    assert breakers.reopens_in(endpoint) == 30.0 - clock.now
    clock.now = 30.0
    assert breakers.allow(endpoint)
    assert breakers.state(endpoint) == HALF_OPEN
    # The probe's failure opens it again, from then.
    breakers.failure(endpoint)
    assert breakers.state(endpoint) == OPEN and breakers.reopens_in(endpoint) == 30.0
