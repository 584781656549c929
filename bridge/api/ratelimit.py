"""Requests per token: a token bucket for each API token, so that one client (a site's own tools
with a site-scoped token, a runaway script) cannot take a worker's API for itself. Over its
rate a request is answered ``429`` with ``Retry-After``, as Stripe's and Svix's APIs answer.

The buckets are per process: a deployment of N workers admits up to N times the rate for one
token when its requests are spread over them. A request is counted once by the worker whose
handler answers it: the one asked, or the webhook's owner for a change relayed to it, and a
creation also by the worker asked, which reads its body to find where it goes (before reading
it: until 2026-12-07 a token over its rate had each body read and parsed before its ``429``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from aiohttp import web

from bridge.api.problems import Problem

__all__ = ["BURST_SECONDS", "TokenBuckets"]

#: A token's bucket holds this many seconds of its rate: a client idle for a while may send that
#: many requests at once.
BURST_SECONDS = 2.0


#: The token a request was counted for (:meth:`TokenBuckets.admit_request`).
_COUNTED = web.RequestKey("bridge.api.counted", str)


#: What the refill's floating-point arithmetic may come short of a whole request by, after the
#: wait a refusal names (which is rounded up to whole seconds, so never short by more).
_ROUNDING = 1e-9


class TokenBuckets:
    """A bucket of ``rate * BURST_SECONDS`` requests for each token name, refilled at ``rate``
    a second (``rate`` 0: no limit). Names are those of the configured tokens (authenticated
    first), so the buckets are as many as the token file's entries."""

    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate * BURST_SECONDS)
        self._clock = clock
        #: Per token name: (requests left, when counted).
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, name: str) -> int:
        """Admit one request of token ``name``: ``0``, or, when its bucket is empty (nothing
        taken), the whole seconds until it holds one request again (for ``Retry-After``)."""
        if self.rate <= 0:
            return 0
        now = self._clock()
        left, then = self._buckets.get(name, (self.capacity, now))
        left = min(self.capacity, left + (now - then) * self.rate)
        if left >= 1.0 - _ROUNDING:
            self._buckets[name] = (left - 1.0, now)
            return 0
        self._buckets[name] = (left, now)
        return max(1, math.ceil((1.0 - left) / self.rate))

    def admit(self, name: str, what: str = "requests") -> None:
        """:meth:`take`, or ``429`` (``too_many_requests``) with ``Retry-After`` when the
        bucket is empty; ``what`` names what the rate counts, in the problem's detail."""
        wait = self.take(name)
        if wait:
            raise Problem(
                "too_many_requests",
                f"more than {self.rate:g} {what} a second with this token",
                headers={"Retry-After": str(wait)},
            )

    def admit_request(self, request: web.Request, name: str, what: str = "requests") -> None:
        """:meth:`admit` ``request`` of token ``name``, once: a middleware that counts it before
        reading its body and the route that counts it again take one request from the bucket,
        not two."""
        if request.get(_COUNTED) == name:
            return
        self.admit(name, what)
        request[_COUNTED] = name
