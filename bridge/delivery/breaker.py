"""Per-endpoint circuit breakers (pure: the clock is passed in)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

from bridge.memo import Sweeps, remembered
from bridge.subscriptions.urls import WebhookUrl

__all__ = [
    "Permit",
    "endpoint_of",
    "CircuitBreaker",
    "Breakers",
    "CLOSED",
    "OPEN",
    "HALF_OPEN",
    "FORGET_AFTER",
]

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

#: An open breaker nothing asked of for this long past its cooldown may be forgotten.
FORGET_AFTER = 3600.0


@remembered  # read for every attempt; a third of the cost of parse's own cache
def endpoint_of(url: str) -> str:
    """The endpoint a URL belongs to: scheme, host and port (what one server answers for).

    Raises :class:`bridge.subscriptions.urls.InvalidUrl` for a URL no one could use.
    """
    return WebhookUrl.parse(url).endpoint


@dataclass
class CircuitBreaker:
    """Closed → open after ``threshold`` consecutive failures; after ``cooldown`` one probe is
    let through (half-open): its success closes the circuit, its failure opens it again."""

    threshold: int
    cooldown: float
    state: str = CLOSED
    failures: int = 0
    opened_at: float = 0.0
    probing: bool = False
    #: Which probe is in flight (:attr:`Permit.probe`), when ``probing``.
    probe: int = 0

    def allow(self, now: float) -> bool:
        """May a request be sent now? (Half-open lets exactly one probe through.)"""
        if self.state == CLOSED:
            return True
        if self.state == OPEN and now - self.opened_at >= self.cooldown:
            self.state = HALF_OPEN
            self.probing = False
        if self.state == HALF_OPEN and not self.probing:
            self.probing = True
            return True
        return False

    def release(self, probe: int) -> None:
        """Give back probe ``probe``, which :meth:`allow` let through but which was not sent
        (another probe's release changes nothing)."""
        if self.state == HALF_OPEN and self.probing and self.probe == probe:
            self.probing = False

    def success(self) -> None:
        self.state, self.failures, self.probing = CLOSED, 0, False

    def failure(self, now: float) -> None:
        if self.state == OPEN:
            # Of a request sent before the circuit opened (an open one lets none through):
            # its cooldown runs from the opening (until 2026-12-07 each such failure moved it
            # on, and requests timing out one after another held the probe back).
            return
        self.failures += 1
        if self.state == HALF_OPEN or self.failures >= self.threshold:
            self.state, self.opened_at, self.probing = OPEN, now, False


@dataclass(frozen=True)
class Permit:
    """A request :meth:`Breakers.allow` let through: the half-open circuit's probe it is (its
    number), or ``None`` for one let through a closed circuit."""

    endpoint: str
    probe: int | None = None


class Breakers:
    """One breaker per endpoint that failed: a closed breaker without failures is none. Those
    closed, or open with nothing asked of them for :data:`FORGET_AFTER` past their cooldown,
    are swept out as the map grows
    (until 2026-12-06 the breaker of every endpoint that ever failed was kept, and every
    endpoint ever sent to got one)."""

    def __init__(
        self, threshold: int, cooldown: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._threshold = threshold
        self._cooldown = cooldown
        self._clock = clock
        self._by_endpoint: dict[str, CircuitBreaker] = {}
        #: Endpoints whose breaker is not closed (kept as states change, for ``open_count``).
        self._not_closed: set[str] = set()
        self._sweeps = Sweeps()
        self._probes = itertools.count(1)

    def _get(self, endpoint: str) -> CircuitBreaker:
        breaker = self._by_endpoint.get(endpoint)
        if breaker is None:
            now = self._clock()

            def stale(_: str, breaker: CircuitBreaker) -> bool:
                # Closed: a few failures short of opening, forgotten. Open, and nothing asked
                # of it for an hour past its cooldown: its next requests are a fresh
                # endpoint's (a wave, not one probe).
                return breaker.state == CLOSED or (
                    breaker.state == OPEN
                    and now - breaker.opened_at >= breaker.cooldown + FORGET_AFTER
                )

            forgotten = self._sweeps.make_room(self._by_endpoint, stale)
            self._not_closed.difference_update(forgotten)
            breaker = self._by_endpoint[endpoint] = CircuitBreaker(self._threshold, self._cooldown)
        return breaker

    def __len__(self) -> int:
        return len(self._by_endpoint)

    def allow(self, endpoint: str) -> Permit | None:
        """The permit of a request to ``endpoint`` now, ``None`` when its circuit refuses it."""
        breaker = self._by_endpoint.get(endpoint)
        if breaker is None or breaker.state == CLOSED:
            return Permit(endpoint)
        if not breaker.allow(self._clock()):
            return None
        breaker.probe = next(self._probes)
        return Permit(endpoint, breaker.probe)

    def release(self, permit: Permit) -> None:
        """The request of ``permit`` was not sent (or not answered: the bridge's crash): the
        half-open circuit's probe it is goes to the next request, which would otherwise wait
        for an answer that never comes. A request let through a closed circuit releases
        nothing (until 2026-12-07 it freed another request's probe, and two were sent)."""
        if permit.probe is None:
            return
        breaker = self._by_endpoint.get(permit.endpoint)
        if breaker is not None:
            breaker.release(permit.probe)

    def success(self, endpoint: str) -> None:
        # Closed without failures: as good as none.
        if self._by_endpoint.pop(endpoint, None) is not None:
            self._not_closed.discard(endpoint)

    def failure(self, endpoint: str) -> None:
        breaker = self._get(endpoint)
        breaker.failure(self._clock())
        if breaker.state != CLOSED:
            self._not_closed.add(endpoint)

    def reopens_in(self, endpoint: str) -> float | None:
        """Seconds until an open circuit lets a probe through; ``None`` unless open."""
        breaker = self._by_endpoint.get(endpoint)
        if breaker is None or breaker.state != OPEN:
            return None
        return max(0.0, breaker.opened_at + breaker.cooldown - self._clock())

    def state(self, endpoint: str) -> str:
        breaker = self._by_endpoint.get(endpoint)
        return breaker.state if breaker is not None else CLOSED

    def open_count(self) -> int:
        """Endpoints whose circuit is open or half-open."""
        return len(self._not_closed)
