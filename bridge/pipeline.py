"""From one event record to its deliveries: validate, match, build, send, and account for each.

Plain asyncio code with its collaborators passed in; the Faust agent only feeds it records. An
event is acknowledged (its offset may be committed) only when every delivery it produced has
reached an outcome that is recorded durably: delivered, or dead-lettered. Deliveries of one event,
and of consecutive events, run concurrently up to ``max_in_flight``, so one slow endpoint does not
make its partition sequential.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from .deadletters import DeadLetterSink, SourceRef, dead_letter_record
from .delivery import AttemptResult, Delivery, Sender, status_class
from .errors import InvalidEvent
from .events import Event, parse_event
from .metrics import Metrics
from .payload import EncodedEvent, build_body, delivery_id
from .subscriptions import SubscriptionIndex
from .sync import TableFreshness

__all__ = ["Pipeline"]

log = logging.getLogger(__name__)

Ack = Callable[[], Awaitable[object]]


class Pipeline:
    """Turns event records into deliveries."""

    def __init__(
        self,
        *,
        index: SubscriptionIndex,
        sender: Sender,
        dead_letters: DeadLetterSink,
        metrics: Metrics,
        max_in_flight: int,
        max_body_bytes: int,
        freshness: TableFreshness | None = None,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._index = index
        self._sender = sender
        self._dead_letters = dead_letters
        self._metrics = metrics
        self._slots = asyncio.Semaphore(max_in_flight)
        self._max_body_bytes = max_body_bytes
        self._freshness = freshness
        self._wall_clock = wall_clock
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        """Deliveries started and not yet finished."""
        return len(self._tasks)

    async def handle(self, raw: bytes | None, source: SourceRef, ack: Ack) -> None:
        """Process one record; returns once its deliveries are started (not finished)."""
        received_at = self._clock()
        if self._freshness is not None and not await self._freshness.wait_current(received_at):
            self._metrics.sync_timeouts.inc()
            log.warning("subscription table not known to be current; matching anyway")
        try:
            event = parse_event(raw)
        except InvalidEvent as exc:
            self._metrics.events.labels("invalid").inc()
            log.warning(
                "event dead-lettered: %s (%s:%d@%d)",
                exc.reason,
                source.topic,
                source.partition,
                source.offset,
            )
            await self._dead_letter(
                source, reason=exc.reason, detail=exc.detail, raw=raw, event=None
            )
            await ack()
            return
        self._metrics.events.labels(event.type).inc()
        deliveries = await self._plan(event, source)
        if not deliveries:
            await ack()
            return
        remaining = len(deliveries)

        async def one_done() -> None:
            nonlocal remaining
            remaining -= 1
            if remaining == 0:
                await ack()

        for delivery in deliveries:
            await self._slots.acquire()
            task = asyncio.create_task(self._run(delivery, source, one_done))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _plan(self, event: Event, source: SourceRef) -> list[Delivery]:
        encoded = EncodedEvent.of(event)
        deliveries = []
        for webhook in self._index.match(event):
            try:
                body = build_body(encoded, webhook, max_bytes=self._max_body_bytes)
            except InvalidEvent as exc:
                await self._dead_letter(
                    source,
                    reason=exc.reason,
                    detail=exc.detail,
                    event=event,
                    webhook_id=webhook.id,
                    delivery_id=delivery_id(event.id, webhook.id),
                )
                self._metrics.deliveries.labels(event.type, "dead_lettered").inc()
                continue
            deliveries.append(
                Delivery(
                    delivery_id=delivery_id(event.id, webhook.id),
                    webhook=webhook,
                    event_id=event.id,
                    event_type=event.type,
                    body=body,
                    occurred_at=event.occurred_at,
                    event=event,
                )
            )
        return deliveries

    async def _run(self, delivery: Delivery, source: SourceRef, done: Ack) -> None:
        try:
            self._metrics.in_flight.inc()
            try:
                result = await self._sender.send(delivery)
            finally:
                self._metrics.in_flight.dec()
            self._record(delivery, result)
            if not result.success:
                await self._failed(delivery, source, [result])
        except Exception:
            # A bug must not lose the delivery silently: leave the event unacknowledged so it is
            # delivered again after a restart, and say so loudly.
            log.exception(
                "delivery %s crashed; its event stays unacknowledged", delivery.delivery_id
            )
            self._slots.release()
            return
        self._slots.release()
        await done()

    def _record(self, delivery: Delivery, result: AttemptResult) -> None:
        outcome = "success" if result.success else "failure"
        self._metrics.attempts.labels(outcome, status_class(result.status)).inc()
        self._metrics.request_duration.labels(outcome).observe(result.duration)
        if result.success:
            self._metrics.deliveries.labels(delivery.event_type, "delivered").inc()
            if delivery.occurred_at is not None:
                latency = (self._wall_clock() - delivery.occurred_at).total_seconds()
                self._metrics.end_to_end.observe(max(0.0, latency))
        else:
            log.warning(
                "delivery attempt failed: delivery=%s webhook=%s event_type=%s attempt=1 "
                "status=%s error=%s",
                delivery.delivery_id,
                delivery.webhook.id,
                delivery.event_type,
                result.status,
                result.error,
            )

    async def _failed(
        self, delivery: Delivery, source: SourceRef, attempts: list[AttemptResult]
    ) -> None:
        last = attempts[-1]
        detail = f"HTTP {last.status}" if last.status is not None else str(last.error)
        await self._dead_letter(
            source,
            reason="delivery_failed",
            detail=detail,
            event=delivery.event,
            webhook_id=delivery.webhook.id,
            delivery_id=delivery.delivery_id,
            attempts=attempts,
        )
        self._metrics.deliveries.labels(delivery.event_type, "dead_lettered").inc()

    async def _dead_letter(
        self,
        source: SourceRef,
        *,
        reason: str,
        detail: str,
        event: Event | None,
        raw: bytes | None = None,
        webhook_id: str | None = None,
        delivery_id: str | None = None,
        attempts: list[AttemptResult] | None = None,
    ) -> None:
        record = dead_letter_record(
            reason=reason,
            detail=detail,
            source=source,
            now=self._wall_clock(),
            event=event,
            raw=raw,
            webhook_id=webhook_id,
            delivery_id=delivery_id,
            attempts=attempts or (),
        )
        key = webhook_id.encode("utf-8") if webhook_id is not None else source.key
        await self._dead_letters.send(key, record)
        self._metrics.dead_letters.labels(reason).inc()

    async def drain(self, timeout: float) -> bool:
        """Wait for in-flight deliveries; True when all finished within ``timeout``."""
        if not self._tasks:
            return True
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        return not pending
