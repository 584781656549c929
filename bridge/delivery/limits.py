"""Isolation between endpoints: per-endpoint concurrency with a bounded queue, a share of the
worker's places for endpoints that answer slowly, per-webhook rate limits (token buckets; the
clock is passed in), and the FIFO slots they are built on."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType

from bridge.memo import Sweeps

__all__ = [
    "Slots",
    "EndpointSlots",
    "EndpointBusy",
    "SlowEndpoints",
    "QUICK",
    "SLOW",
    "PROBE",
    "UNPROVEN",
    "SLOW_AFTER",
    "SLOW_FOR",
    "TokenBucket",
    "RateLimits",
]


class Slots:
    """A FIFO counting semaphore whose acquire and release cost the same however many wait.

    ``asyncio.Semaphore.acquire`` (Python 3.11) scans every waiter on each call, which made
    thousands of jobs queued for the in-flight limit quadratic (see BENCHMARKS.md, *Slots*). Here
    a released slot is handed straight to the oldest waiter still waiting.
    """

    __slots__ = ("_free", "_waiters")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._free = limit
        self._waiters: deque[asyncio.Future[None]] = deque()

    def locked(self) -> bool:
        """True when an acquire would wait."""
        return self._free == 0

    @property
    def free(self) -> int:
        """Slots neither held nor handed to a waiter."""
        return self._free

    @property
    def waiting(self) -> int:
        """Waiters, including cancelled ones not yet skipped (an upper bound)."""
        return len(self._waiters)

    def try_acquire(self) -> bool:
        """Take a slot if one is free now; never waits."""
        if self._free > 0:
            self._free -= 1
            return True
        return False

    async def acquire(self) -> None:
        if self._free > 0:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                # Granted and cancelled in the same step: pass the slot on.
                self.release()
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class EndpointBusy(Exception):
    """The endpoint already has as many deliveries waiting as allowed."""


class _Endpoint:
    __slots__ = ("semaphore", "in_flight", "waiting")

    def __init__(self, limit: int) -> None:
        self.semaphore = Slots(limit)
        self.in_flight = 0
        self.waiting = 0


class EndpointSlots:
    """At most ``limit`` requests in flight per endpoint and ``max_queued`` waiting for one.

    A delivery that would have to wait behind a full queue raises :class:`EndpointBusy` at once,
    so a hanging endpoint can hold at most ``limit + max_queued`` deliveries of a worker.
    """

    def __init__(self, limit: int, max_queued: int) -> None:
        self._limit = limit
        self._max_queued = max_queued
        self._endpoints: dict[str, _Endpoint] = {}

    async def acquire(self, endpoint: str) -> None:
        state = self._endpoints.get(endpoint)
        if state is None:
            state = self._endpoints[endpoint] = _Endpoint(self._limit)
        if state.semaphore.locked() and state.waiting >= self._max_queued:
            raise EndpointBusy(endpoint)
        state.waiting += 1
        try:
            await state.semaphore.acquire()
        except BaseException:
            # Cancelled (a drain, a revoke), perhaps in the step its place was given: it may
            # have been the endpoint's last (until 2026-12-06 such entries stayed for ever).
            state.waiting -= 1
            self._forget_if_idle(endpoint, state)
            raise
        state.waiting -= 1
        state.in_flight += 1

    def try_acquire(self, endpoint: str) -> bool:
        """Take a place at ``endpoint`` if one is free now; never waits (nor queues)."""
        state = self._endpoints.get(endpoint)
        if state is None:
            state = self._endpoints[endpoint] = _Endpoint(self._limit)
        if not state.semaphore.try_acquire():
            self._forget_if_idle(endpoint, state)
            return False
        state.in_flight += 1
        return True

    def release(self, endpoint: str) -> None:
        state = self._endpoints[endpoint]
        state.semaphore.release()
        state.in_flight -= 1
        self._forget_if_idle(endpoint, state)

    def _forget_if_idle(self, endpoint: str, state: _Endpoint) -> None:
        # Idle endpoints are forgotten, so that the map stays the size of the busy ones.
        if state.in_flight == 0 and state.waiting == 0 and self._endpoints.get(endpoint) is state:
            del self._endpoints[endpoint]

    def waiting(self, endpoint: str) -> int:
        state = self._endpoints.get(endpoint)
        return state.waiting if state is not None else 0


#: An answer (or a timeout, counting as the whole ``http_timeout``) that took this many
#: seconds or more makes its endpoint slow.
SLOW_AFTER = 2.0
#: For this many seconds after its last slow answer, whatever it answers meanwhile.
SLOW_FOR = 300.0
#: At most this many endpoints are remembered; the one whose slowness ends first is forgotten
#: first.
_MAX_REMEMBERED = 50_000
#: At most this many endpoints are remembered as having answered quickly; the one proven first
#: is forgotten first (and takes a place of the share again until its next quick answer).
_MAX_PROVEN = 100_000


#: :meth:`SlowEndpoints.judge`'s verdicts.
QUICK, SLOW, PROBE, UNPROVEN = 0, 1, 2, 3


class SlowEndpoints:
    """Endpoints, and sites, that answer slowly, and endpoints not yet heard from, share at most
    ``places`` of a worker's requests.

    The per-site limit bounds what one site holds, not what a few together hold: sites with
    webhooks on endpoints that take the whole timeout to answer took every place of the worker
    (four sites of 64 places held all 256), and everyone else's deliveries waited out their
    requests, wave after wave (until 2026-12-06). A request whose endpoint, or whose site, had
    an answer of :data:`SLOW_AFTER` seconds or more within the last :data:`SLOW_FOR` now also
    needs one of ``places`` (half the worker's by default), taken without waiting: when none is
    free the delivery is deferred (``endpoint_busy``), holding nothing. The other places stay
    for the rest, and the share costs nothing while it is not full: it bounds how many such
    requests are in flight, and those that answer quickly free theirs at once.

    The site as well as the endpoint: a site's webhooks moved to hostnames the worker had not
    seen held the other places again, wave after wave. A time, not an average: quick answers
    through the share would make a key quick again for its next hanging wave. And when its
    time is up, one request is let through as any other's, the *probe* (the key stays slow
    for the rest meanwhile): its quick answer ends the key's slowness, a slow one renews it;
    so a key whose requests were all deferred, with no answer to be judged by, is measured
    again (a healthy endpoint that timed out once was otherwise deferred until its deliveries
    were dead-lettered untried), and one that still hangs gets one place outside the share
    every :data:`SLOW_FOR`, not a wave.

    An endpoint never heard answering quickly (:data:`UNPROVEN`: new, or new to this worker
    since it started) takes a place of the share too, and may wait for one: until 2026-12-07
    such an endpoint was judged quick until its first answers, and four new sites with four
    hanging webhooks each held all 256 places for a whole timeout (32 new sites of one hanging
    webhook, two timeouts), each worker and each restart again. It makes one request at a
    time, its *trial* (:meth:`begin_trial`, :meth:`end_trial`), whose answer its other
    requests wait for (:meth:`trial`) and are judged by: its first quick answer makes it quick
    (:data:`QUICK`) from then on, until it answers slowly, so endpoints that answer in time
    take one place of the share, once; and trials wait for places of the share before any slow
    endpoint takes one (:meth:`take` goes before :meth:`try_take`).
    The endpoint, not the site: a new site's webhook on an endpoint others use is judged by
    that endpoint, and a known site's webhook on a new endpoint is not let through on the
    site's word."""

    __slots__ = (
        "_places",
        "_share",
        "_slow_after",
        "_slow_for",
        "_clock",
        "_until",
        "_proven",
        "_trials",
    )

    def __init__(
        self,
        places: int,
        *,
        slow_after: float = SLOW_AFTER,
        slow_for: float = SLOW_FOR,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if places < 1:
            raise ValueError("places must be at least 1")
        self._places = places
        self._share = Slots(places)
        self._slow_after = slow_after
        self._slow_for = slow_for
        self._clock = clock
        #: Each slow key (an endpoint, a site), with when its slowness ends, in that order
        #: (every entry is written with the same lifetime, so insertion order is end order).
        self._until: dict[str, float] = {}
        #: Endpoints that answered quickly and have not answered slowly since, in the order
        #: they were proven.
        self._proven: dict[str, None] = {}
        #: Unproven endpoints with a request out (their trial), and what ends when it does.
        self._trials: dict[str, asyncio.Future[None]] = {}

    @property
    def taken(self) -> int:
        """Requests held to the share, in flight."""
        return self._places - self._share.free

    @property
    def waiting(self) -> int:
        """Requests waiting for a place of the share (an upper bound: see :attr:`Slots.waiting`)."""
        return self._share.waiting

    def judge(self, endpoint: str, site: str | None = None) -> int:
        """:data:`SLOW` when the endpoint or the site is slow (the request needs a place of
        the share, taken without waiting), :data:`PROBE` when a key's time is up and this
        request measures it again (the key is slow for others meanwhile), else
        :data:`UNPROVEN` when the endpoint has not answered quickly yet (the request waits
        for a place of the share), else :data:`QUICK`."""
        verdict = QUICK if endpoint in self._proven else UNPROVEN
        now = 0.0
        for key in (endpoint, site):
            if key is None:
                continue
            until = self._until.get(key)
            if until is None:
                continue
            now = now or self._clock()
            if now < until:
                return SLOW
            self._mark(key, now)
            verdict = PROBE
        return verdict

    def try_take(self) -> bool:
        """A place of the share, if one is free now (and none is waited for); never waits."""
        return self._share.try_acquire()

    async def take(self) -> None:
        """A place of the share, waiting for it behind those already waiting."""
        await self._share.acquire()

    def give_back(self) -> None:
        self._share.release()

    def trial(self, endpoint: str) -> asyncio.Future[None] | None:
        """The end of the request out to an endpoint not yet heard from (its trial), if one
        is out: the endpoint's other requests wait for it, then are judged again."""
        return self._trials.get(endpoint)

    def begin_trial(self, endpoint: str) -> None:
        self._trials[endpoint] = asyncio.get_running_loop().create_future()

    def end_trial(self, endpoint: str) -> None:
        """The trial ended: answered (and :meth:`observe` d first), or not sent at all."""
        ended = self._trials.pop(endpoint, None)
        if ended is not None and not ended.done():
            ended.set_result(None)

    @property
    def trials(self) -> int:
        """Endpoints not yet heard from with a request out."""
        return len(self._trials)

    def observe(self, keys: tuple[str, str | None], duration: float, *, probe: bool) -> None:
        """An answer (or a timeout, or an error) after ``duration`` seconds to a request
        judged with ``keys`` (its endpoint and site); ``probe``: it was judged :data:`PROBE`."""
        endpoint = keys[0]
        if duration >= self._slow_after:
            self._proven.pop(endpoint, None)
            now = self._clock()
            for key in keys:
                if key is not None:
                    self._mark(key, now)
            return
        if probe:
            for key in keys:
                if key is not None:
                    self._until.pop(key, None)
        if endpoint not in self._proven and endpoint not in self._until:
            if len(self._proven) >= _MAX_PROVEN:
                del self._proven[next(iter(self._proven))]
            self._proven[endpoint] = None

    def remember(self, proven: Iterable[str], slow: Mapping[str, float]) -> None:
        """What an earlier worker heard (:mod:`bridge.delivery.recent_answers`): endpoints
        that answered quickly (proven unless slow now, as by a quick answer), and endpoints
        that answered slowly with the seconds of their slowness left (slow for that long, as
        if they had answered so here). A worker hears from no endpoint before it starts, and
        until 2026-12-07 one that started to a backlog headed by many endpoints that hang took
        each for new: their trials held every place of the share for a timeout, and every
        other endpoint, all new to it too, waited for a place and was deferred (1,800 healthy
        deliveries behind 140 hanging endpoints came 36 and 65 s after the worker was ready)."""
        now = self._clock()
        # The shortest first: the map stays in the order slownesses end (none seeded lasts
        # longer than one marked from now on); those that last longest if not all fit.
        room = max(0, _MAX_REMEMBERED - len(self._until))
        lasting = sorted((left, key) for key, left in slow.items() if left > 0)
        for left, endpoint in lasting[max(0, len(lasting) - room) :]:
            if endpoint not in self._until:
                self._proven.pop(endpoint, None)
                self._until[endpoint] = now + min(left, self._slow_for)
        for endpoint in proven:
            if endpoint not in self._proven and endpoint not in self._until:
                if len(self._proven) >= _MAX_PROVEN:
                    return
                self._proven[endpoint] = None

    def _mark(self, key: str, now: float) -> None:
        self._until.pop(key, None)
        # Forget those whose slowness ended (the oldest first), and the oldest past the bound.
        for oldest, until in list(itertools.islice(self._until.items(), 8)):
            if until > now and len(self._until) < _MAX_REMEMBERED:
                break
            del self._until[oldest]
        self._until[key] = now + self._slow_for


@dataclass
class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up."""

    rate: float
    burst: float
    tokens: float
    updated: float

    def wait_time(self, now: float) -> float:
        """Take a token; the seconds to wait before using it (0 when one was available)."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        self.tokens -= 1.0
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class RateLimits:
    """Per-webhook rate limits (deliveries per second), for webhooks that set ``rate_limit``.

    A bucket that has filled up again is as good as none: those are swept out as the map grows
    (until 2026-12-06 the bucket of every webhook ever limited, deleted ones too, was kept)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._sweeps = Sweeps()

    def wait_time(self, webhook_id: str, rate: float | None) -> float:
        if rate is None or rate <= 0:
            self._buckets.pop(webhook_id, None)
            return 0.0
        now = self._clock()
        bucket = self._buckets.get(webhook_id)
        if bucket is None or bucket.rate != rate:

            def full(_: str, bucket: TokenBucket) -> bool:
                return bucket.tokens + (now - bucket.updated) * bucket.rate >= bucket.burst

            self._sweeps.make_room(self._buckets, full)
            burst = max(1.0, rate)
            bucket = self._buckets[webhook_id] = TokenBucket(rate, burst, burst, now)
        return bucket.wait_time(now)

    def __len__(self) -> int:
        return len(self._buckets)

    def refund(self, webhook_id: str) -> None:
        """Give back the token the last :meth:`wait_time` took (the delivery was not made)."""
        bucket = self._buckets.get(webhook_id)
        if bucket is not None:
            bucket.tokens += 1.0

    async def wait(self, webhook_id: str, rate: float | None) -> None:
        delay = self.wait_time(webhook_id, rate)
        if delay > 0:
            await asyncio.sleep(delay)
