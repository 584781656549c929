"""Whether this process ran without a pause long enough for its consumer group to have dropped
it unawares: the fence a worker's webhook changes pass (:meth:`Bridge._may_change
<bridge.worker.app.Bridge._may_change>`) besides owning the webhook.

A worker owns a webhook while no rebalance has begun since its assignment, and Faust counts a
rebalance as begun when the consumer learns of it: from the answer to a heartbeat. A process
paused (stopped, swapped out, its VM frozen) past its session timeout has been dropped from the
group, and another worker may own its webhooks, but on waking it runs what was waiting before
its consumer's next heartbeat is answered, and would write a change over the new owner's. The
event loop is ticked (:meth:`LoopPauses.tick`, by :class:`PauseTicker`, from before the worker
joins its group); a gap between ticks longer than a member can go silent and stay in the group
(the session timeout less one heartbeat interval) refuses writes for a session timeout after
it, time enough for the first heartbeat after the pause to be answered (and, if the worker was
dropped, for the rebalance to have begun). The event loop held that long by the worker itself
(the consumer heartbeats from its own thread) refuses them too: a change then waits, or is
answered ``503``, rather than risk being made twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from mode import Service

__all__ = ["TICK", "LoopPauses", "PauseTicker"]

log = logging.getLogger(__name__)

#: Seconds between ticks of the event loop (at most; a quarter of the limit if that is shorter).
TICK = 0.25


class LoopPauses:
    """The event loop's pauses (gaps between :meth:`tick` calls) longer than ``limit`` seconds,
    and the ``hold`` seconds after each in which :meth:`may_write` is false. ``on_pause``:
    called as each is seen (counted); ``on_lapse``: called by the first tick after a hold ends
    (to wake what waited for it)."""

    def __init__(
        self,
        *,
        limit: float,
        hold: float,
        on_lapse: Callable[[], None] = lambda: None,
        on_pause: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.hold = hold
        self._on_lapse = on_lapse
        self._on_pause = on_pause
        self._clock = clock
        #: The last tick (``None``: not ticking yet).
        self._last: float | None = None
        #: Writes are refused until then (``None``: not held).
        self._held_until: float | None = None

    def tick(self) -> float | None:
        """The loop ran: the seconds since the last tick (``None`` for the first)."""
        now = self._clock()
        last, self._last = self._last, now
        if last is not None and now - last > self.limit:
            self._held_until = now + self.hold
            self._on_pause()
            log.warning(
                "the event loop did not run for %.1f s (a member silent for %.1f s may have "
                "left its group): webhook changes are refused for %.1f s",
                now - last,
                self.limit,
                self.hold,
            )
        elif self._held_until is not None and now >= self._held_until:
            self._held_until = None
            self._on_lapse()
        return None if last is None else now - last

    def may_write(self) -> bool:
        """Whether no pause longer than ``limit`` is under way (the loop not ticked for longer:
        a write woken before the first tick after a pause) or was seen within ``hold``."""
        if self._last is None:
            return True
        now = self._clock()
        if now - self._last > self.limit:
            return False
        return self._held_until is None or now >= self._held_until


class PauseTicker(Service):
    """Ticks ``pauses`` every :data:`TICK` seconds (at most) from its start (a service started
    before the Faust app, so before any assignment: Faust's own timers begin only once the
    tables are recovered, and a pause between would go unseen)."""

    def __init__(
        self, pauses: LoopPauses, *, on_lag: Callable[[float], None] = lambda lag: None
    ) -> None:
        super().__init__()
        self._pauses = pauses
        self._on_lag = on_lag
        #: Seconds between ticks: well within the limit, whatever it is (a session timeout of
        #: a second or less would otherwise take every gap between ticks for a pause).
        self.interval = min(TICK, pauses.limit / 4)

    @Service.task
    async def _ticking(self) -> None:
        while not self.should_stop:
            gap = self._pauses.tick()
            if gap is not None:
                # How much later than asked the loop woke this task: its lag, every tick
                # (``webhook_bridge_event_loop_lag_seconds``). A sleep cut short by the stop
                # ends the loop before its tick.
                self._on_lag(max(0.0, gap - self.interval))
            await self.sleep(self.interval)
