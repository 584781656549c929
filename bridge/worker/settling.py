"""Holding a request, for a bounded time, while the owners of webhooks settle after a rebalance.

A request that needs a webhook's owner (a read of its delivery log or stats, a delivery lookup,
which needs every owner, a change, which the owner makes) finds none while a consumer-group
rebalance is under way, finds this worker the owner but still reading the partition it was just
given, or, relayed to the owner, finds that the owner moved on the way. Rather than answer
``503`` at once, the request waits for the next change of what decides it (:class:`Changes`: an
assignment received, a partition of the delivery log held or read to its end), looks again, and
goes on as soon as the owner is known and ready. After its bound (:func:`hold_bound`, derived
from the request timeout) it is answered as it was before it was held: ``503`` with
``Retry-After``. Nothing polls: every wait is for a :class:`Changes` event, with a deadline.

A routed read or a relayed change carries what is left of its hold (:data:`HOLD_HEADER`), and
the worker answering it holds it no longer than that: the hold of one request, over its hops,
stays within the bound of the worker the client sent it to.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import TypeVar

from bridge.worker.delivery_log import OwnerUnavailable

__all__ = [
    "HOLD_HEADER",
    "MAX_HOLD",
    "Changes",
    "hold_bound",
    "hold_left",
    "hold_until",
    "held",
    "settle",
    "settle_async",
    "wait_for_change",
]

_T = TypeVar("_T")

#: The longest a request is held (seconds), however long it may take: a rebalance takes up to
#: ``kafka_rebalance_timeout`` (4 s by default), and a new owner then reads what it was given.
MAX_HOLD = 5.0

#: The seconds the request being answered has waited for changes, each wait apart (a list the
#: request's first task sets; tasks it starts share it), or ``None`` when nobody counts them.
held: ContextVar[list[float] | None] = ContextVar("held", default=None)

#: Header of a routed read or a relayed change: the seconds its hold has left, as a decimal.
#: Not trusted (anyone can send it): it can only make a hold shorter.
HOLD_HEADER = "X-Bridge-Hold"


def hold_bound(request_timeout: float) -> float:
    """How long a request that must be answered within ``request_timeout`` seconds is held at
    most: half of that (the other half is for the answer, from a book or the owner), and never
    more than :data:`MAX_HOLD`."""
    return max(0.0, min(MAX_HOLD, request_timeout / 2))


def hold_until(header: str | None, bound: float, now: float) -> float:
    """When a request received at ``now`` (event loop time) stops holding: ``bound`` seconds
    later, or sooner when its :data:`HOLD_HEADER` says less is left (a peer's request)."""
    budget = bound
    if header is not None:
        try:
            given = float(header)
        except ValueError:
            given = math.nan
        if not math.isnan(given):
            budget = min(bound, max(0.0, given))
    return now + budget


def hold_left(until: float | None, now: float) -> str:
    """The :data:`HOLD_HEADER` of a request sent on at ``now`` by one that holds until
    ``until`` (``None``: not held, so neither is the request sent on)."""
    return "0" if until is None else f"{max(0.0, until - now):.3f}"


class Changes:
    """Wakes every waiter at each change of where a webhook is answered: an assignment received
    (:class:`~bridge.worker.app.Bridge`), a partition of the delivery log held or read to its end
    (:class:`~bridge.worker.delivery_log.DeliveryLogReader`). Notified on the event loop's
    thread only (both are called there: Faust hands the assignment over to the main thread)."""

    def __init__(self) -> None:
        self._next = asyncio.Event()

    def notify(self) -> None:
        """Wake whoever waits for the next change."""
        self._next.set()
        self._next = asyncio.Event()

    def watch(self) -> asyncio.Event:
        """The event the next change sets. Take it *before* looking at what it may change: a
        change in between then sets it, and is not missed."""
        return self._next


async def wait_for_change(changed: asyncio.Event, until: float | None) -> bool:
    """Whether ``changed`` is set before ``until`` (event loop time; ``None``: not waited for):
    after the deadline the answer is ``False`` even when it is set, so that no hold goes on past
    its bound, however often things change."""
    if until is None:
        return False
    loop = asyncio.get_running_loop()
    if loop.time() >= until:
        return False
    if changed.is_set():
        return True
    started = loop.time()
    try:
        async with asyncio.timeout_at(until):
            await changed.wait()
    except TimeoutError:
        return False
    finally:
        waited = held.get()
        if waited is not None:
            waited.append(loop.time() - started)
    return True


async def settle(check: Callable[[], _T], changes: Changes, until: float | None) -> _T:
    """``check()``'s answer as soon as it gives one, as :func:`settle_async` waits for it."""

    async def attempt() -> _T:
        return check()

    return await settle_async(attempt, changes, until)


async def settle_async(
    attempt: Callable[[], Awaitable[_T]], changes: Changes, until: float | None
) -> _T:
    """What ``attempt()`` gives as soon as it gives something: while it raises an
    :class:`~bridge.worker.delivery_log.OwnerUnavailable` that a change may end (``settles``),
    wait for the next change (since the attempt began) and try again, until ``until`` (event
    loop time; ``None``: tried once); then that error. An attempt that may not be made twice
    (a change sent to its owner) raises nothing that settles once it is made."""
    while True:
        changed = changes.watch()
        try:
            return await attempt()
        except OwnerUnavailable as exc:
            unavailable = exc
        if not unavailable.settles or not await wait_for_change(changed, until):
            try:
                raise unavailable
            finally:
                # Its traceback holds this frame: not kept here too, which made a reference
                # cycle of every 503 (until 2026-12-07), left to the collector's full passes.
                del unavailable
