"""Making one delivery attempt with endpoint isolation, and settling what happens next.

An attempt passes, in order: the endpoint's circuit breaker, the endpoint's concurrency slots,
the webhook's rate limit and the worker's in-flight limit; then it is signed and sent. Its outcome
is recorded (attempts topic, metrics, endpoint health) and settled durably before the caller may
acknowledge its source record: delivered; scheduled in a retry tier; or dead-lettered. A webhook
whose endpoint answered 410 Gone, or failed for longer than ``disable_after``, is disabled.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from bridge.contract.events import format_timestamp, parse_time
from bridge.contract.payload import build_body
from bridge.delivery.attempt_record import attempt_record
from bridge.delivery.breaker import CLOSED, Breakers, Permit, endpoint_of
from bridge.delivery.dead_letters import dead_letter_record, internal_error
from bridge.delivery.endpoint_health import EndpointHealth, HealthChange
from bridge.delivery.job import Ack, Job
from bridge.delivery.limits import (
    PROBE,
    QUICK,
    SLOW,
    UNPROVEN,
    EndpointBusy,
    EndpointSlots,
    RateLimits,
    Slots,
    SlowEndpoints,
)
from bridge.delivery.pending_retry import PendingRetry
from bridge.delivery.recent_answers import RecentAnswers
from bridge.delivery.retry_policy import RetryPolicy
from bridge.errors import InvalidEvent, InvalidUrl
from bridge.http.base import AttemptResult, DeliverySender, status_class
from bridge.metrics import SKIP_REASONS, Metrics
from bridge.subscriptions.webhook import Webhook

__all__ = ["Outputs", "Deliverer", "MAX_DEFERRALS", "MAX_ENDPOINT_WAIT"]

log = logging.getLogger(__name__)

#: Errors of attempts that were not made: no request was sent (every reason the metric names
#: but the drain's ``interrupted``, whose request may have been sent).
_SKIPPED = frozenset(SKIP_REASONS) - {"interrupted"}
#: Attempts not made because the endpoint could not take them now: the same attempt is tried
#: again later, without spending an entry of the retry schedule.
_DEFERRED = frozenset({"circuit_open", "endpoint_busy", "owner_busy", "rate_limited"})
#: Longest wait for a webhook's rate limit inside a job; a longer one defers the attempt to the
#: retry path, so that no source record is held for it.
_MAX_RATE_WAIT = 5.0
#: How often one delivery may be deferred before a deferral counts as an attempt (so that a
#: delivery to an endpoint that never has room still reaches the end of its schedule). Each
#: deferral waits twice the one before (:meth:`RetryPolicy.after_skip`), up to an hour: 20
#: take about 11.4 h with the default schedule (100 until 2026-12-06, when each waited 5 s).
MAX_DEFERRALS = 20
#: How long a delivery waits for a place at its endpoint (behind the ``endpoint_max_in_flight``
#: requests in flight) before it is deferred ``endpoint_busy`` to the retry path: a delivery
#: waiting holds its source record unsettled, and so its partition's commits. Until 2026-12-07
#: the wait had no bound but the queue's length: behind an endpoint that hangs, or answers
#: after 29 s, the 256 queued of one stranger held their partition's commits for minutes
#: (17 waves of the 30 s timeout), and a crash then sent that partition's settled deliveries
#: of the last minutes again.
MAX_ENDPOINT_WAIT = 10.0


class Outputs(Protocol):
    """Durable writes; each returns once the broker has acknowledged the record, except
    ``attempt``, which returns once the record is queued, with the future of that
    acknowledgement."""

    async def dead_letter(self, key: bytes | None, record: dict[str, Any]) -> None: ...

    async def retry(self, tier: int, key: bytes, value: bytes) -> None: ...

    async def attempt(self, key: bytes, record: dict[str, Any]) -> asyncio.Future[Any]: ...

    async def status(self, key: bytes, record: dict[str, Any]) -> None: ...

    async def disable(self, webhook: Webhook, reason: str) -> bool:
        """Whether the webhook is off here now, turned off or found off (without an owner
        to do it)."""
        ...


class Deliverer:
    """Runs :class:`Job` s."""

    def __init__(
        self,
        *,
        sender: DeliverySender,
        outputs: Outputs,
        metrics: Metrics,
        policy: RetryPolicy,
        health: EndpointHealth,
        max_in_flight: int,
        endpoint_max_in_flight: int,
        endpoint_max_queued: int,
        breaker_threshold: int,
        breaker_cooldown: float,
        max_body_bytes: int,
        owner_max_in_flight: int = 0,
        slow_endpoint_share: float = 0.5,
        endpoint_max_wait: float = MAX_ENDPOINT_WAIT,
        clock: Callable[[], float] = time.monotonic,
        wall_time: Callable[[], float] = time.time,
        webhooks: Callable[[str], Webhook | None] | None = None,
    ) -> None:
        self._sender = sender
        self._endpoint_max_wait = endpoint_max_wait
        #: The webhook of an id as the subscription table holds it now (``None``: not looked
        #: up again; a job is sent to its webhook as matched).
        self._webhooks = webhooks
        self._outputs = outputs
        self._metrics = metrics
        self._policy = policy
        self._health = health
        self._slots = Slots(max_in_flight)
        self._endpoints = EndpointSlots(endpoint_max_in_flight, endpoint_max_queued)
        #: Requests in flight per site (account), at most ``owner_max_in_flight`` (0: no
        #: limit): one site's webhooks on many endpoints, each holding its
        #: ``endpoint_max_in_flight`` for as long as it takes to answer, held every place of the
        #: worker and filled its pending jobs (until 2026-12-05).
        self._owner_limit = owner_max_in_flight
        self._owner_in_flight: dict[str, int] = {}
        #: The most that endpoints answering slowly hold together (half the worker's places by
        #: default; all of them, that is no share, at 1).
        self._slow = SlowEndpoints(max(1, int(max_in_flight * slow_endpoint_share)), clock=clock)
        #: Whether an endpoint not yet heard from makes one request at a time (:meth:`_share`):
        #: not without a share (1), where nothing is held back for the others.
        self._trials_on = slow_endpoint_share < 1
        self._breakers = Breakers(breaker_threshold, breaker_cooldown, clock)
        self._rates = RateLimits(clock)
        self._max_body_bytes = max_body_bytes
        self._wall_time = wall_time
        self.draining = False
        #: The tasks of jobs whose outcome is being recorded (a response or a skip, written to
        #: the attempts, retry and dead-letter topics): a drain lets them finish rather than
        #: interrupt them (:meth:`Pipeline.drain <bridge.delivery.pipeline.Pipeline.drain>`).
        self.settling: set[asyncio.Task[Any]] = set()
        self._in_flight = 0
        # Gauges read when scraped rather than set around every request.
        metrics.in_flight.set_function(lambda: self._in_flight)
        metrics.slow_in_flight.set_function(lambda: self._slow.taken)
        metrics.circuits_open.set_function(self._breakers.open_count)

    @property
    def breakers(self) -> Breakers:
        return self._breakers

    async def remember(
        self, answers: RecentAnswers, webhooks: Callable[[str], Webhook | None]
    ) -> None:
        """What the workers before this one heard from endpoints: those that answered quickly
        are not tried one request at a time again, those still slow take places of the share
        alone (:meth:`SlowEndpoints.remember`). Called with a share only (the worker's
        ``_remembers_answers``)."""
        self._slow.remember(*await answers.endpoints(webhooks, self._wall_time()))

    @property
    def policy(self) -> RetryPolicy:
        return self._policy

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._wall_time(), UTC)

    async def run(self, job: Job, done: Ack) -> asyncio.Future[Any] | None:
        """Attempt the delivery and settle its outcome; ``done`` is called once it is settled.

        Returns ``None`` when the job has ended: settled (``done`` was called), or not (an
        exception says why). A successful attempt returns the writing of its record instead
        (its attempt record, and its webhook's ``healthy`` status when it ended a failing),
        without calling ``done``: the job is settled when the writing succeeds, which the caller
        sees from the future's callback; when it fails, the delivery (counted ``delivered``)
        is the caller's to settle (:meth:`dead_letter` with ``delivered``).

        When cancelled while draining (SIGTERM), the interrupted attempt is handed to the retry
        path before ``done`` is called; a drain does not cancel a job whose outcome is being
        recorded (:attr:`settling`). Any other cancellation leaves the job unsettled: its
        source record stays unacknowledged and is processed again after a restart.
        """
        try:
            written = await self._run(job)
        except asyncio.CancelledError:
            if not self.draining:
                raise
            at = format_timestamp(self._now())
            self._metrics.skipped.labels("interrupted").inc()
            await self._settle_failure(
                job, AttemptResult(False, None, "interrupted", 0.0, at), counts=False
            )
            done()
            raise
        finally:
            if self.settling:
                self.settling.discard(asyncio.current_task())
        if written is None:
            done()
        return written

    def _recording(self) -> None:
        """The running job's outcome is being recorded from now on (:attr:`settling`)."""
        task = asyncio.current_task()
        if task is not None:
            self.settling.add(task)

    async def _run(self, job: Job) -> asyncio.Future[Any] | None:
        """The attempt and its settlement; returns the pending write of a successful
        attempt's record when nothing else is left to settle."""
        webhook = job.webhook
        try:
            body = build_body(
                job.encoded, webhook, max_bytes=self._max_body_bytes, delivery=job.delivery_id
            )
        except InvalidEvent as exc:
            self._recording()
            await self._dead_letter(job, exc.reason, exc.detail, job.history)
            return None
        try:
            endpoint = endpoint_of(webhook.url)
        except InvalidUrl as exc:
            # Not retried: no deployment can use the URL (the record predates the check, or
            # was written around it); the webhook's owner must change it.
            invalid = self._skipped("invalid_url")
            self._recording()
            await self._record_attempt(job, invalid, "dead_letter")
            await self._dead_letter(
                job, "invalid_url", exc.detail, [*job.history, invalid.as_record()]
            )
            return None
        rate_wait = self._rates.wait_time(webhook.id, webhook.rate_limit)
        if rate_wait > _MAX_RATE_WAIT:
            self._rates.refund(webhook.id)
            await self._settle_failure(job, self._skipped("rate_limited", rate_wait), counts=False)
            return None
        if rate_wait > 0:
            # Before any place is taken: a delivery waiting for its webhook's rate held its
            # endpoint's place (and a half-open circuit's probe) until 2026-12-07, and other
            # webhooks of the endpoint waited behind it with nothing sent.
            await asyncio.sleep(rate_wait)
        permit = self._breakers.allow(endpoint)
        if permit is None:
            # Not retried before the circuit would let it through: a retry due earlier would
            # only be skipped again, spending an attempt and a round through the retry tiers.
            # No request is made: the webhook's rate limit gets its token back.
            self._rates.refund(webhook.id)
            skip = self._skipped("circuit_open", self._breakers.reopens_in(endpoint))
            await self._settle_failure(job, skip, counts=False)
            return None
        #: When waiting for places ends (the endpoint's, and an unproven endpoint's place of
        #: the share: one bound for both), set when a wait begins.
        deadline: float | None = None
        try:
            if not self._endpoints.try_acquire(endpoint):  # (no timer for a free place)
                deadline = asyncio.get_running_loop().time() + self._endpoint_max_wait
                async with asyncio.timeout_at(deadline):
                    await self._endpoints.acquire(endpoint)
        except (EndpointBusy, TimeoutError):
            # Its queue full, or no place within MAX_ENDPOINT_WAIT: to the retry path,
            # settling its source record rather than holding its partition's commits.
            await self._deferred(job, permit, "endpoint_busy")
            return None
        if self._opened_meanwhile(permit):
            # Its circuit opened while it waited for its endpoint's place: deferred as one
            # arriving now would be. Until 2026-12-07 every delivery queued behind a hanging
            # endpoint was still sent, one timeout a wave.
            reopens = self._breakers.reopens_in(endpoint)
            await self._deferred(
                job, permit, "circuit_open", endpoint_held=True, retry_after=reopens
            )
            return None
        # The site's place, once the endpoint's is taken, and never waited for: a delivery
        # waiting for it would hold its endpoint's place (which other sites' deliveries to a
        # shared endpoint may need), and one holding it while waiting for its endpoint would
        # let one slow endpoint of a site take every place of the site's.
        owner = _owner_key(webhook) if self._owner_limit else None
        if owner is not None and not self._take_owner(owner):
            await self._deferred(job, permit, "owner_busy", endpoint_held=True)
            return None
        # Last: a place of the share that slow endpoints and sites, and endpoints not yet heard
        # answering quickly, hold together (:class:`SlowEndpoints`), so that the rest stays
        # for the others (:meth:`_share`).
        judged = (endpoint, owner if owner is not None else _owner_key(webhook))
        try:
            placed = await self._share(endpoint, judged, deadline)
        except BaseException:
            # Cancelled while it waited (a drain): what it took is given back, as a deferral's.
            self._give_back(job, permit, endpoint_held=True, owner=owner)
            raise
        if placed is None:
            await self._deferred(job, permit, "endpoint_busy", endpoint_held=True, owner=owner)
            return None
        verdict, shared, trying = placed
        if self._opened_meanwhile(permit):
            # Its circuit opened while it waited for the share or its endpoint's first answer.
            self._share_ended(endpoint, shared, trying)
            reopens = self._breakers.reopens_in(endpoint)
            await self._deferred(
                job, permit, "circuit_open", endpoint_held=True, owner=owner, retry_after=reopens
            )
            return None
        result: AttemptResult | None = None
        #: Why the job is not sent (its webhook deleted, turned off or no longer receiving it
        #: since it was matched), or the job to run again (its webhook's URL or name changed).
        changed: Job | str | None = None
        try:
            async with self._slots:
                current = self._as_now(job)
                if isinstance(current, Job) and _sends_alike(current.webhook, job.webhook):
                    job = current  # (its secret, say, rotated: signed with the one in force)
                    self._in_flight += 1
                    try:
                        result = await self._sender.send(job, body)
                    finally:
                        self._in_flight -= 1
                else:
                    changed = current
        finally:
            self._endpoints.release(endpoint)
            if owner is not None:
                self._release_owner(owner)
            if result is not None and result.error != "destination_forbidden":
                self._slow.observe(judged, result.duration, probe=verdict == PROBE)
            # After the answer is judged: those waiting for the endpoint's first answer
            # judge it again.
            self._share_ended(endpoint, shared, trying)
            if result is None:
                # Not sent (its webhook changed), or cancelled or crashed mid-request (the
                # bridge's, not the endpoint's: a bug, a drain): a half-open circuit's probe
                # goes to the next request, or the circuit would wait for its answer for ever;
                # the endpoint is not blamed (until 2026-12-07 it was, and a webhook's record
                # the sender could not use opened the circuit of every webhook on its host).
                self._breakers.release(permit)
        if changed is not None:
            self._rates.refund(webhook.id)
            if isinstance(changed, Job):
                return await self._run(changed)
            self._recording()
            await self._record_attempt(job, self._skipped(changed), None)
            return None
        assert result is not None
        if result.success:
            self._observe(job, result)
            self._breakers.success(endpoint)
            self._metrics.recent_endpoints.observe(endpoint, True)
            self._recording()
            # Counted delivered: whatever of its record fails from here is the bridge's, and
            # reaches the caller through the returned future, which settles it as delivered
            # (dead-lettered internal_error, not counted dead_lettered). Until 2026-12-07 a
            # delivery that ended its webhook's failing, whose record or status could not be
            # written, was counted with both outcomes.
            try:
                written = await self._queue_attempt(job, result, None)
            except Exception as exc:
                written = asyncio.get_running_loop().create_future()
                written.set_exception(exc)
                return written
            change = self._health.on_success(
                job.webhook.id, job.webhook.created_at, job.webhook.updated_at, self._wall_time()
            )
            if change is None:
                return written
            return asyncio.ensure_future(self._recovered(written, change))
        # A refusal by the SSRF guard made no request: it is not an HTTP attempt and says
        # nothing about the endpoint's health, but it must still release a half-open probe.
        refused = result.error == "destination_forbidden"
        if not refused:
            self._observe(job, result)
            self._metrics.recent_endpoints.observe(endpoint, False)
        if not refused or self._breakers.state(endpoint) != CLOSED:
            self._breakers.failure(endpoint)
        await self._settle_failure(job, result, counts=not refused)
        return None

    async def _recovered(self, written: asyncio.Future[Any], change: HealthChange) -> None:
        """A delivery's attempt record acknowledged, then its webhook's recovery published."""
        await written
        await self._publish_health(change)

    async def _share(
        self, endpoint: str, judged: tuple[str, str], deadline: float | None
    ) -> tuple[int, bool, bool] | None:
        """How a request goes: its verdict (:meth:`SlowEndpoints.judge`), whether it holds a
        place of the share, and whether it is its endpoint's trial; ``None`` when it is to be
        deferred (``endpoint_busy``), holding none of them. Waits until ``deadline`` (loop
        time; ``None``: the whole bound from now) at most.

        A slow endpoint's or site's request takes a place of the share without waiting. An
        endpoint not yet heard answering quickly makes one request at a time, its *trial*,
        which waits for a place of the share; the endpoint's other requests wait for the
        trial's answer and are judged again by it (quick: sent at once, without the share;
        slow: held to the share as any slow one's). Until 2026-12-07 each of them waited in
        the share's queue, behind hanging requests, after their endpoint had answered in a
        few milliseconds (15 s late, then deferred), and one new endpoint could hold as many
        places of the share as its ``endpoint_max_in_flight``: eight new hanging endpoints
        held all 128."""
        slow = self._slow
        loop = asyncio.get_running_loop()
        verdict = slow.judge(*judged)
        trials = self._trials_on
        while trials and verdict == UNPROVEN and (trial := slow.trial(endpoint)) is not None:
            if deadline is None:
                deadline = loop.time() + self._endpoint_max_wait
            left = deadline - loop.time()
            if left > 0:
                await asyncio.wait((trial,), timeout=left)
            if not trial.done():
                return None
            verdict = slow.judge(*judged)
        if verdict in (QUICK, PROBE):
            return verdict, False, False
        if verdict == SLOW:
            return (SLOW, True, False) if slow.try_take() else None
        if trials:
            slow.begin_trial(endpoint)
        if not slow.try_take():
            if deadline is None:
                deadline = loop.time() + self._endpoint_max_wait
            try:
                async with asyncio.timeout_at(deadline):
                    await slow.take()
            except BaseException as exc:
                if trials:
                    slow.end_trial(endpoint)
                if isinstance(exc, TimeoutError):
                    return None
                raise
            # Judged again: its site may have answered slowly meanwhile (elsewhere). A slow
            # one takes no place others wait for: the place goes to the next, and this
            # delivery to the retry path, not into another wave behind the same timeout.
            again = slow.judge(*judged)
            if again == SLOW and slow.waiting:
                self._share_ended(endpoint, True, trials)
                return None
            if again == PROBE:  # (its site's slowness ended while it waited)
                verdict = PROBE
        return verdict, True, trials

    def _share_ended(self, endpoint: str, shared: bool, trying: bool) -> None:
        """Give back what :meth:`_share` gave a request."""
        if shared:
            self._slow.give_back()
        if trying:
            self._slow.end_trial(endpoint)

    def _take_owner(self, owner: str) -> bool:
        """A place among the requests in flight of a site (account); ``False`` when it has
        them all."""
        taken = self._owner_in_flight.get(owner, 0)
        if taken >= self._owner_limit:
            return False
        self._owner_in_flight[owner] = taken + 1
        return True

    def _release_owner(self, owner: str) -> None:
        left = self._owner_in_flight[owner] - 1
        if left:
            self._owner_in_flight[owner] = left
        else:
            del self._owner_in_flight[owner]  # the map stays the size of the busy sites

    def owner_in_flight(self, owner: str) -> int:
        """Requests in flight for a site (``"site_id:..."``) or account (``"user_id:..."``)."""
        return self._owner_in_flight.get(owner, 0)

    async def _deferred(
        self,
        job: Job,
        permit: Permit,
        reason: str,
        *,
        endpoint_held: bool = False,
        owner: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        """Settle ``job`` deferred for ``reason`` once past the circuit, no request made: what
        it took is given back (:meth:`_give_back`)."""
        self._give_back(job, permit, endpoint_held=endpoint_held, owner=owner)
        await self._settle_failure(job, self._skipped(reason, retry_after), counts=False)

    def _give_back(
        self, job: Job, permit: Permit, *, endpoint_held: bool, owner: str | None
    ) -> None:
        """What a job past the circuit took, no request made: the endpoint's place when
        ``endpoint_held``, ``owner``'s place, the webhook's rate-limit token, and a half-open
        circuit's probe, which goes to the next request."""
        if endpoint_held:
            self._endpoints.release(permit.endpoint)
        if owner is not None:
            self._release_owner(owner)
        self._rates.refund(job.webhook.id)
        self._breakers.release(permit)

    def _opened_meanwhile(self, permit: Permit) -> bool:
        """Whether the circuit a request was let through (not as its probe) opened while it
        waited for its places: the requests ahead of it failed."""
        return permit.probe is None and self._breakers.state(permit.endpoint) != CLOSED

    def _as_now(self, job: Job) -> Job | str:
        """``job`` with its webhook as the table holds it now, or why it is not sent at all
        (``webhook_deleted``, ``webhook_inactive``, ``not_receiving``: the rule a retry is held
        to when it falls due). A job waits for its places, minutes for a busy endpoint: until
        2026-12-07 it was sent as its webhook was when the event was matched, to a webhook
        turned off or deleted since, and signed with a secret rotated since (one that leaked)."""
        if self._webhooks is None:
            return job
        webhook = self._webhooks(job.webhook.id)
        if webhook is None:
            return "webhook_deleted"
        refusal = webhook.refusal(job.webhook.created_at, job.event)
        if refusal is not None:
            return refusal
        if webhook is job.webhook:  # (the table's object, until a record of it is read)
            return job
        return dataclasses.replace(job, webhook=webhook)

    def _skipped(self, error: str, retry_after: float | None = None) -> AttemptResult:
        self._metrics.skipped.labels(error).inc()
        return AttemptResult(
            False, None, error, 0.0, format_timestamp(self._now()), retry_after=retry_after
        )

    def _observe(self, job: Job, result: AttemptResult) -> None:
        outcome = "success" if result.success else "failure"
        m = self._metrics
        m.child(m.attempts, outcome, status_class(result.status)).inc()
        m.child(m.request_duration, outcome).observe(result.duration)
        if result.success:
            m.child(m.deliveries, job.event.type, "delivered").inc()
            latency = self._wall_time() - job.event.occurred_at.timestamp()
            m.child(m.end_to_end).observe(max(0.0, latency))
        else:
            log.warning(
                "delivery attempt failed",
                extra={
                    "delivery_id": job.delivery_id,
                    "webhook_id": job.webhook.id,
                    "event_type": job.event.type,
                    "attempt": job.attempt,
                    "status": result.status,
                    "error": result.error,
                },
            )

    async def _settle_failure(self, job: Job, result: AttemptResult, *, counts: bool) -> None:
        """After a failed or skipped attempt: disable, retry or dead-letter, durably."""
        self._recording()
        history = [*job.history, result.as_record()]
        webhook_id = job.webhook.id
        now = self._wall_time()
        if result.error == "destination_forbidden":
            # Not retried: the same URL would be refused again.
            self._metrics.skipped.labels("destination_forbidden").inc()
            self._metrics.ssrf_refusals.labels(result.refusal or "unknown").inc()
            await self._record_attempt(job, result, "dead_letter")
            await self._dead_letter(
                job,
                "destination_forbidden",
                f"refused before connecting: {result.refusal}",
                history,
            )
            return
        # The webhook (its versions) and the attempt's start the health decisions are made for.
        made_for = (job.webhook.created_at, job.webhook.updated_at, job.made_at)
        began = _began(result, now)
        if counts and result.status == 410:
            gone = self._health.on_gone(webhook_id, now, *made_for, began=began)
            if gone is not None:
                await self._disable(job, gone, "gone")
            await self._record_attempt(job, result, "disabled")
            await self._dead_letter(job, "endpoint_gone", "the endpoint answered 410 Gone", history)
            return
        if counts:
            change = self._health.on_failure(webhook_id, now, *made_for, began=began)
            if change is not None and change.state == "disabled":
                await self._disable(job, change, "failing")
                await self._record_attempt(job, result, "disabled")
                await self._dead_letter(
                    job, "endpoint_disabled", "the endpoint failed for too long", history
                )
                return
            await self._publish_health(change)
        retry_after = (
            result.retry_after
            if result.status in (429, 503) or result.error in ("circuit_open", "rate_limited")
            else None
        )
        next_attempt = job.attempt + 1
        # Since the delivery was last replayed: a dead letter of a long outage holds 20 or more,
        # and until 2026-12-07 its replay's deferrals each spent an attempt (or waited up to an
        # hour from the first).
        since = history[job.replayed_after :]
        deferred = _deferrals(since) if result.error in _DEFERRED else 0
        if result.error == "interrupted":
            # Cut short by a drain, waiting for a place or for its answer: the same attempt,
            # soon, spending no entry of the schedule and no deferral. A request sent and
            # abandoned may have reached the receiver, which dedupes by delivery id; the
            # endpoint did not fail it. Until 2026-12-07 it spent an entry, and a last attempt
            # interrupted before it was sent was dead-lettered "last: interrupted".
            decision = self._policy.after_skip()
            next_attempt = job.attempt
        elif result.error in _DEFERRED and deferred <= MAX_DEFERRALS:
            # ``deferred`` counts this one: those before it double its wait.
            decision = self._policy.after_skip(retry_after, deferred=deferred - 1)
            next_attempt = job.attempt
        else:
            decision = self._policy.after_failure(job.attempt, retry_after)
        if decision.action == "dead_letter":
            await self._record_attempt(job, result, "dead_letter")
            last = f"HTTP {result.status}" if result.status is not None else str(result.error)
            await self._dead_letter(
                job, "attempts_exhausted", f"{job.attempt} attempts; last: {last}", history
            )
            return
        assert decision.tier is not None and decision.delay is not None
        pending = PendingRetry(
            delivery_id=job.delivery_id,
            webhook_id=webhook_id,
            event=job.event,
            attempt=next_attempt,
            not_before=now + decision.delay,
            enqueued_at=now,
            history=tuple(history),
            replayed=job.replayed,
            webhook_created_at=job.webhook.created_at,
            recovery_id=job.recovery_id,
            replay_id=job.replay_id,
            replayed_after=job.replayed_after,
        )
        # The retry is written before the attempt's record says it is scheduled, so that the
        # log never says "retrying" of a delivery whose retry was not written: until 2026-12-07
        # the record came first, and a retry write that failed (the producer gave up) left the
        # log retrying for good and the job dead-lettered without this attempt.
        try:
            await self._outputs.retry(decision.tier, webhook_id.encode("utf-8"), pending.to_bytes())
        except Exception as exc:
            reason, detail = internal_error(exc, "writing its retry")
            await self._record_attempt(job, result, "dead_letter")
            await self._dead_letter(job, reason, detail, history)
            return
        self._metrics.retries.labels(str(decision.tier + 1)).inc()
        try:
            await self._record_attempt(job, result, "retry", next_at=pending.not_before)
        except Exception:
            # The retry, written, settles the delivery, and its history holds this attempt;
            # dead-lettering it now would end a delivery that goes on. The log misses the attempt.
            log.exception(
                "attempt record not written; its retry is scheduled",
                extra={"delivery_id": job.delivery_id, "webhook_id": webhook_id},
            )

    async def _disable(self, job: Job, change: HealthChange, reason: str) -> None:
        log.warning(
            "disabling webhook",
            extra={"webhook_id": job.webhook.id, "reason": reason, "delivery_id": job.delivery_id},
        )
        # The webhook (and version) this delivery was made for: its owner turns that one off.
        made_for = dataclasses.replace(
            change,
            webhook_created_at=job.webhook.created_at,
            webhook_updated_at=job.webhook.updated_at,
        )
        await self._publish_health(made_for)
        if await self._outputs.disable(job.webhook, reason):
            # Turned off here, where no owner does it: marked applied, as an owner marks it
            # (bridge.worker.disables), so that an owner later never applies it again.
            applied = dataclasses.replace(made_for, applied_at=format_timestamp(self._now()))
            await self._publish_health(applied)
        # Counted where the webhook's record is written off (``webhooks_disabled``): here, it
        # may be left on (deleted or changed meanwhile), or written by its owner.

    async def _publish_health(self, change: HealthChange | None) -> None:
        if change is None:
            return
        record = change.to_record(format_timestamp(self._now()))
        await self._outputs.status(change.webhook_id.encode("utf-8"), record)

    async def _record_attempt(
        self, job: Job, result: AttemptResult, next_step: str | None, next_at: float | None = None
    ) -> None:
        await (await self._queue_attempt(job, result, next_step, next_at))

    async def _queue_attempt(
        self, job: Job, result: AttemptResult, next_step: str | None, next_at: float | None = None
    ) -> asyncio.Future[Any]:
        """Queue the attempt's record; returns the future of the broker's acknowledgement.
        ``next_at`` (Unix time) is when a retry is due, recorded only for ``next_step`` retry."""
        outcome = (
            "success" if result.success else ("skipped" if result.error in _SKIPPED else "failure")
        )
        record = attempt_record(job, result, outcome, next_step, next_at)
        return await self._outputs.attempt(job.webhook.id.encode("utf-8"), record)

    async def dead_letter(
        self, job: Job, reason: str, detail: str, *, delivered: bool = False
    ) -> None:
        """Dead-letter ``job`` without an attempt (its earlier attempts are kept).
        ``delivered``: its receiver answered 200 (counted ``delivered`` then), and what failed
        is the record of it: the job is not counted ``dead_lettered`` as well (until
        2026-12-06 one delivery was counted with both outcomes)."""
        await self._dead_letter(job, reason, detail, job.history, counted=delivered)

    async def _dead_letter(
        self,
        job: Job,
        reason: str,
        detail: str,
        history: Sequence[Mapping[str, Any]],
        *,
        counted: bool = False,
    ) -> None:
        record = dead_letter_record(
            reason=reason,
            detail=detail,
            source=job.source,
            now=self._now(),
            event=job.event,
            webhook_id=job.webhook.id,
            webhook_created_at=job.webhook.created_at,
            delivery_id=job.delivery_id,
            attempts=(),
        )
        record["attempts"] = [dict(a) for a in history]
        await self._outputs.dead_letter(job.webhook.id.encode("utf-8"), record)
        self._metrics.dead_letters.labels(reason).inc()
        if not counted:  # a final outcome reached once
            self._metrics.deliveries.labels(job.event.type, "dead_lettered").inc()


def _deferrals(history: Sequence[Mapping[str, Any]]) -> int:
    """How many of a delivery's recorded attempts were deferred (not made)."""
    return sum(1 for attempt in history if attempt.get("error") in _DEFERRED)


def _owner_key(webhook: Webhook) -> str:
    """The site (or account) whose places a webhook's deliveries take."""
    kind, name = webhook.owner
    return f"{kind}:{name}"


def _sends_alike(webhook: Webhook, was: Webhook) -> bool:
    """Whether a request to ``webhook`` goes where one to ``was`` would, with the same body
    (the body names the webhook): else the job takes its places again, those of its URL."""
    return (webhook.url, webhook.name) == (was.url, was.name)


def _began(result: AttemptResult, now: float) -> float:
    """When ``result``'s attempt began (Unix time): its ``at``, the time the delivery log
    shows it at (else ``now`` less its duration)."""
    try:
        return parse_time(result.at).timestamp()
    except ValueError:
        return now - result.duration
