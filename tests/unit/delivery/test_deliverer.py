"""bridge.delivery.deliverer.Deliverer: one attempt through breaker, slots and sender, and how it
settles.

The sender is scripted (it returns ``AttemptResult`` s, optionally held back by a gate), the
durable outputs are recorded, the retry policy is real (default schedule, no jitter), health runs
over a dict, and metrics live on a fresh ``CollectorRegistry``. Both clocks are injected. Every wait
is bounded by ``asyncio.wait_for``; progress is observed through events, never timed sleeps.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from bridge.contract.events import Event, format_timestamp, parse_time
from bridge.contract.payload import EncodedEvent, build_body, delivery_id
from bridge.contract.schemas import schema_errors
from bridge.delivery.breaker import CLOSED, HALF_OPEN, OPEN, Breakers, endpoint_of
from bridge.delivery.deliverer import MAX_DEFERRALS, Deliverer
from bridge.delivery.endpoint_health import EndpointHealth
from bridge.delivery.job import Job, SourceRef
from bridge.delivery.pending_retry import PendingRetry, parse_retry
from bridge.delivery.retry_policy import DEFAULT_SCHEDULE, RetryPolicy
from bridge.http.base import AttemptResult
from bridge.metrics import Metrics
from bridge.subscriptions.webhook import Webhook
from tests.support.clocks import FakeClock
from tests.support.fakes import Acks, FakeOutputs
from tests.support.jobs import Outgoing
from tests.support.waiting import PROMPT, eventually

#: Upper bound for anything that should happen promptly.
SECRET = "whsec_deliverer-unit-7Qz9xK2m"
NOW = datetime(2024, 1, 15, 10, 30, 2, 500000, tzinfo=UTC)
NOW_TS = NOW.timestamp()
NOW_TEXT = "2024-01-15T10:30:02.500Z"
AT = "2024-01-15T10:30:01.000Z"
OK = AttemptResult(True, 200, None, 0.125, AT)
SOURCE = SourceRef("postion.events", 2, 41, b"site_789")
THRESHOLD = 3
COOLDOWN = 30.0
DISABLE_AFTER = 5 * 86400.0


def failed(
    status: int | None, *, error: str = "http_status", retry_after: float | None = None
) -> AttemptResult:
    return AttemptResult(False, status, error, 0.25, AT, retry_after)


def make_webhook(webhook_id: str = "webhook_abc", host: str = "hooks.example") -> Webhook:
    return Webhook(
        id=webhook_id,
        name=f"hook {webhook_id}",
        url=f"https://{host}/{webhook_id}?token=x",
        secret=SECRET,
        events=frozenset({"*"}),
        site_id="site_789",
        user_id="user_456",
    )


WEBHOOK = make_webhook()


def make_event(event_id: str = "evt_1") -> Event:
    return Event(
        id=event_id,
        type="post.created",
        data={"id": "post_123", "title": "My New Post"},
        timestamp="2024-01-15T10:30:00Z",
        site_id="site_789",
        user_id="user_456",
    )


EVENT = make_event()


def make_job(
    attempt: int = 1,
    *,
    webhook: Webhook = WEBHOOK,
    event: Event = EVENT,
    history: tuple[dict[str, Any], ...] = (),
) -> Job:
    return Job(EncodedEvent.of(event), webhook, attempt, SOURCE, history)


def earlier(n: int) -> tuple[dict[str, Any], ...]:
    """``n`` earlier failed attempts, as they appear in a pending retry."""
    return tuple(
        {
            "at": f"2024-01-1{i}T00:00:00.000Z",
            "status": 502,
            "error": "http_status",
            "duration_seconds": 0.5,
        }
        for i in range(n)
    )


class FakeSender:
    """Returns the scripted results in turn (then successes), raising the scripted exceptions
    (a bug in the sender); ``gate`` holds every send."""

    def __init__(self, *results: AttemptResult | Exception) -> None:
        self.script = list(results)
        self.sent: list[Outgoing] = []
        self.started = asyncio.Event()
        self.gate: asyncio.Event | None = None

    async def send(self, job: Job, body: bytes) -> AttemptResult:
        delivery = Outgoing(job, body)
        self.sent.append(delivery)
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        result = self.script.pop(0) if self.script else OK
        if isinstance(result, Exception):
            raise result
        return result


class Harness:
    def __init__(
        self,
        sender: FakeSender,
        *,
        max_in_flight: int = 64,
        endpoint_max_in_flight: int = 100,
        endpoint_max_queued: int = 100,
        max_body_bytes: int = 1024 * 1024,
        disable_after: float = DISABLE_AFTER,
        owner_max_in_flight: int = 0,
        slow_endpoint_share: float = 0.5,
        endpoint_max_wait: float = 30.0,
    ) -> None:
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.outputs = FakeOutputs()
        self.sender = sender
        self.table: dict[str, dict[str, Any]] = {}
        self.clock = FakeClock(5000.0)
        self.wall = FakeClock(NOW_TS)
        self.policy = RetryPolicy(jitter=0.0)
        self.deliverer = Deliverer(
            sender=sender,
            outputs=self.outputs,
            metrics=self.metrics,
            policy=self.policy,
            health=EndpointHealth(disable_after, self.table.get),
            max_in_flight=max_in_flight,
            endpoint_max_in_flight=endpoint_max_in_flight,
            endpoint_max_queued=endpoint_max_queued,
            breaker_threshold=THRESHOLD,
            breaker_cooldown=COOLDOWN,
            max_body_bytes=max_body_bytes,
            owner_max_in_flight=owner_max_in_flight,
            slow_endpoint_share=slow_endpoint_share,
            endpoint_max_wait=endpoint_max_wait,
            clock=self.clock,
            wall_time=self.wall,
        )
        self.acks = Acks()

    async def run(self, job: Job) -> None:
        await asyncio.wait_for(self.settled(job), PROMPT)

    def start(self, job: Job) -> asyncio.Task[None]:
        return asyncio.create_task(self.settled(job))

    async def settled(self, job: Job) -> None:
        """Run the job until it is settled: a pending attempt record acknowledged settles it,
        as the pipeline does."""
        written = await self.deliverer.run(job, self.acks)
        if written is not None:
            await written
            self.acks()

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def retry(self, index: int = -1) -> tuple[int, PendingRetry]:
        tier, key, value = self.outputs.retries[index]
        assert key == b"webhook_abc"
        assert schema_errors("retry", json.loads(value)) == []
        return tier, parse_retry(value)

    def attempt(self, index: int = -1) -> dict[str, Any]:
        """The attempt record, checked against its schema; a retry's ``next_at`` is checked
        against the retry record written with it (the same moment) and left out."""
        key, record = self.outputs.attempts[index]
        assert key == b"webhook_abc"
        assert schema_errors("attempt", record) == []
        record = dict(record)
        next_at = record.pop("next_at", None)
        assert (next_at is not None) == (record["next"] == "retry"), record
        if next_at is not None:
            due = [p for _, p in map(self.retry, range(len(self.outputs.retries)))]
            (pending,) = [
                p
                for p in due
                if p.delivery_id == record["delivery_id"] and p.history[-1]["at"] == record["at"]
            ]
            moment = datetime.fromtimestamp(pending.not_before, UTC)
            assert next_at == format_timestamp(moment)
        return record

    def dead_letter(self, index: int = -1) -> dict[str, Any]:
        key, record = self.outputs.dead_letters[index]
        assert key == b"webhook_abc"
        assert schema_errors("deadletter", record) == []
        assert record["dead_lettered_at"] == format_timestamp(
            datetime.fromtimestamp(self.wall.now, UTC)
        )
        assert record["source"] == {
            "topic": "postion.events",
            "partition": 2,
            "offset": 41,
            "key": "site_789",
        }
        return record


def attempt_record(attempt: int, result: AttemptResult, next_step: str | None) -> dict[str, Any]:
    if result.success:
        outcome = "success"
    elif result.error in ("circuit_open", "endpoint_busy", "destination_forbidden", "invalid_url"):
        outcome = "skipped"
    else:
        outcome = "failure"
    return {
        "delivery_id": delivery_id(EVENT.id, WEBHOOK.id),
        "webhook_id": WEBHOOK.id,
        "event_id": EVENT.id,
        "event_type": EVENT.type,
        "event_at": EVENT.timestamp,
        "attempt": attempt,
        "outcome": outcome,
        "status": result.status,
        "error": result.error,
        "duration_seconds": result.duration,
        "at": result.at,
        "next": next_step,
        "response_bytes": result.response_bytes,
        **({"response_truncated": True} if result.response_truncated else {}),
        **({"response_prefix": result.response_text} if result.response_prefix is not None else {}),
        # scheme://host:port of a request made (or refused): a starting worker's recent answers
        **({"endpoint": "https://hooks.example:443"} if outcome != "skipped" else {}),
    }


def skipped(error: str) -> AttemptResult:
    return AttemptResult(False, None, error, 0.0, NOW_TEXT)


# -- success ---------------------------------------------------------------------------------------


async def test_success_records_the_attempt_and_nothing_else() -> None:
    h = Harness(FakeSender(OK))
    await h.run(make_job())

    assert h.acks.count == 1
    [delivery] = h.sender.sent
    assert delivery.delivery_id == delivery_id(EVENT.id, WEBHOOK.id)
    assert delivery.webhook is WEBHOOK
    assert delivery.body == build_body(EncodedEvent.of(EVENT), WEBHOOK)
    assert h.outputs.calls == ["attempt"]
    assert h.attempt() == attempt_record(1, OK, None)
    assert h.outputs.retries == h.outputs.dead_letters == h.outputs.statuses == []
    assert h.value("webhook_bridge_delivery_attempts_total", outcome="success", status_class="2xx")
    assert (
        h.value("webhook_bridge_deliveries_total", event_type="post.created", outcome="delivered")
        == 1.0
    )
    # The event happened at 10:30:00; the 200 was settled at 10:30:02.5.
    assert h.value("webhook_bridge_end_to_end_latency_seconds_sum") == 2.5
    assert h.value("webhook_bridge_in_flight_requests") == 0.0
    assert h.value("webhook_bridge_circuits_open") == 0.0


async def test_success_after_failure_publishes_healthy() -> None:
    h = Harness(FakeSender(failed(500), OK))
    await h.run(make_job())
    await h.run(make_job(2, history=earlier(1)))
    states = [record["state"] for _, record in h.outputs.statuses]
    assert states == ["failing", "healthy"]
    assert h.attempt() == attempt_record(2, OK, None)


async def test_a_success_returns_its_pending_attempt_record_unsettled() -> None:
    h = Harness(FakeSender(OK))
    h.outputs.hold_attempts = True
    written = await asyncio.wait_for(h.deliverer.run(make_job(), h.acks), PROMPT)
    # The job's work is over; only the broker's acknowledgement of the record is left, and
    # settling on it is the caller's (the pipeline's), not ``done``'s.
    assert written is h.outputs.attempt_writes[0]
    written.set_result(None)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert h.acks.count == 0


async def test_a_success_that_changes_health_returns_the_writing_of_both_records() -> None:
    h = Harness(FakeSender(failed(500), OK))
    await h.run(make_job())
    h.outputs.hold_attempts = True
    written = await asyncio.wait_for(
        h.deliverer.run(make_job(2, history=earlier(1)), h.acks), PROMPT
    )
    assert written is not None and h.acks.count == 1  # settled by the caller, once written
    await asyncio.sleep(0)
    # The "healthy" status follows the attempt record once that is durable.
    assert h.outputs.calls[-1] == "attempt" and not written.done()
    h.outputs.attempt_writes[1].set_result(None)
    await asyncio.wait_for(written, PROMPT)
    assert h.outputs.calls[-2:] == ["attempt", "status"]


async def test_a_success_whose_status_cannot_be_written_fails_its_returned_writing() -> None:
    """The caller settles it as delivered (counted once); raised from ``run``, it was the
    caller's to dead-letter as a delivery that failed (until 2026-12-07)."""
    h = Harness(FakeSender(failed(500), OK))
    await h.run(make_job())
    h.outputs.status_error = RuntimeError("status topic gone")
    written = await asyncio.wait_for(
        h.deliverer.run(make_job(2, history=earlier(1)), h.acks), PROMPT
    )
    assert written is not None
    with pytest.raises(RuntimeError):
        await asyncio.wait_for(written, PROMPT)
    assert h.acks.count == 1


# -- failures: retry, dead letter ------------------------------------------------------------------


async def test_500_schedules_a_retry_in_tier_0() -> None:
    result = failed(500)
    h = Harness(FakeSender(result))
    await h.run(make_job())

    assert h.acks.count == 1
    tier, pending = h.retry()
    assert tier == 0
    assert pending == PendingRetry(
        delivery_id=delivery_id(EVENT.id, WEBHOOK.id),
        webhook_id=WEBHOOK.id,
        event=EVENT,
        attempt=2,
        not_before=NOW_TS + 5.0,
        enqueued_at=NOW_TS,
        history=(result.as_record(),),
    )
    assert h.attempt() == attempt_record(1, result, "retry")
    assert h.outputs.dead_letters == []
    # First failure of the endpoint: a failing period starts at the attempt's start, its
    # ``at`` in the log (until 2026-12-07 at its end: up to the HTTP timeout later).
    [(key, status)] = h.outputs.statuses
    assert key == b"webhook_abc"
    assert schema_errors("status", status) == []
    assert (status["state"], status["failing_since"]) == ("failing", parse_time(AT).timestamp())
    assert status["last_failure_at"] == parse_time(AT).timestamp()
    # The retry is written before the attempt's record says it is scheduled.
    assert h.outputs.calls.index("retry") < h.outputs.calls.index("attempt")
    assert h.value("webhook_bridge_retries_scheduled_total", tier="1") == 1.0
    assert (
        h.value("webhook_bridge_delivery_attempts_total", outcome="failure", status_class="5xx")
        == 1.0
    )


@pytest.mark.parametrize("attempt", range(1, len(DEFAULT_SCHEDULE) + 1))
async def test_each_attempt_goes_to_its_tier_with_the_history(attempt: int) -> None:
    result = failed(None, error="timeout")
    h = Harness(FakeSender(result))
    await h.run(make_job(attempt, history=earlier(attempt - 1)))
    tier, pending = h.retry()
    assert tier == attempt - 1
    assert pending.attempt == attempt + 1
    assert pending.not_before == NOW_TS + DEFAULT_SCHEDULE[attempt - 1]
    assert list(pending.history) == [*earlier(attempt - 1), result.as_record()]
    assert h.value("webhook_bridge_retries_scheduled_total", tier=str(attempt)) == 1.0


async def test_last_attempt_is_dead_lettered_with_the_full_history() -> None:
    result = failed(500)
    last = len(DEFAULT_SCHEDULE) + 1
    h = Harness(FakeSender(result))
    await h.run(make_job(last, history=earlier(last - 1)))

    assert h.acks.count == 1
    assert h.outputs.retries == []
    assert h.attempt() == attempt_record(last, result, "dead_letter")
    record = h.dead_letter()
    assert record["reason"] == "attempts_exhausted"
    assert record["detail"] == "8 attempts; last: HTTP 500"
    assert record["attempts"] == [*earlier(last - 1), result.as_record()]
    assert len(record["attempts"]) == 8
    assert record["event"] == EVENT.envelope()
    assert record["webhook_id"] == WEBHOOK.id
    assert record["delivery_id"] == delivery_id(EVENT.id, WEBHOOK.id)
    assert h.value("webhook_bridge_dead_letters_total", reason="attempts_exhausted") == 1.0
    assert (
        h.value(
            "webhook_bridge_deliveries_total", event_type="post.created", outcome="dead_lettered"
        )
        == 1.0
    )


async def test_last_attempt_without_a_response_names_the_error() -> None:
    h = Harness(FakeSender(failed(None, error="connect_error")))
    await h.run(make_job(8, history=earlier(7)))
    assert h.dead_letter()["detail"] == "8 attempts; last: connect_error"


async def test_410_disables_and_dead_letters() -> None:
    result = failed(410)
    h = Harness(FakeSender(result))
    await h.run(make_job(3, history=earlier(2)))

    assert h.acks.count == 1
    assert h.outputs.disabled == [("webhook_abc", "gone")]
    [(key, status)] = h.outputs.statuses
    assert key == b"webhook_abc"
    assert schema_errors("status", status) == []
    assert (status["state"], status["reason"]) == ("disabled", "gone")
    assert h.attempt() == attempt_record(3, result, "disabled")
    record = h.dead_letter()
    assert record["reason"] == "endpoint_gone"
    assert record["attempts"] == [*earlier(2), result.as_record()]
    assert h.outputs.retries == []
    # Decided, left to its owner (``disable`` answered False): counted where it is written
    # (until 2026-12-07 every decision was counted here, written or not).
    assert not h.value("webhook_bridge_webhooks_disabled_total", reason="gone")
    assert h.value("webhook_bridge_dead_letters_total", reason="endpoint_gone") == 1.0


async def test_a_disable_made_here_without_an_owner_is_marked_applied() -> None:
    """Without owners (no delivery_log) the deciding worker turns the webhook off itself; the
    status record then says so, so that an owner added later never applies it again (a
    webhook turned on since would be turned off)."""
    h = Harness(FakeSender(failed(410)))
    h.outputs.disables_here = True
    await h.run(make_job(3, history=earlier(2)))
    assert h.outputs.disabled == [("webhook_abc", "gone")]
    [(_, decided), (_, applied)] = h.outputs.statuses
    assert decided["applied_at"] is None and isinstance(applied["applied_at"], str)
    assert {**applied, "applied_at": None, "updated_at": decided["updated_at"]} == decided
    assert schema_errors("status", applied) == []


async def test_failing_longer_than_disable_after_disables() -> None:
    h = Harness(FakeSender(failed(500), failed(500), failed(500)), disable_after=3600.0)
    await h.run(make_job())  # its attempt began at AT, 1.5 s before the clock's now
    h.wall.now += 3598.0
    await h.run(make_job(2, history=earlier(1)))
    assert [r["state"] for _, r in h.outputs.statuses] == ["failing"]
    assert len(h.outputs.retries) == 2

    h.wall.now += 1.0
    await h.run(make_job(3, history=earlier(2)))
    assert h.outputs.disabled == [("webhook_abc", "failing")]
    assert [(r["state"], r["reason"]) for _, r in h.outputs.statuses] == [
        ("failing", None),
        ("disabled", "failing"),
    ]
    assert h.attempt()["next"] == "disabled"
    assert h.dead_letter()["reason"] == "endpoint_disabled"
    assert len(h.outputs.retries) == 2


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_is_honoured(status: int) -> None:
    h = Harness(FakeSender(failed(status, retry_after=600.0)))
    await h.run(make_job())
    tier, pending = h.retry()
    # 600 s asked for: the first tier whose delay covers it is 30 min (tier 2).
    assert tier == 2
    assert pending.not_before == NOW_TS + 600.0
    assert h.value("webhook_bridge_retries_scheduled_total", tier="3") == 1.0


async def test_retry_after_is_capped() -> None:
    h = Harness(FakeSender(failed(429, retry_after=86400.0)))
    await h.run(make_job())
    tier, pending = h.retry()
    assert (tier, pending.not_before) == (3, NOW_TS + 3600.0)


async def test_retry_after_is_ignored_for_other_statuses() -> None:
    h = Harness(FakeSender(failed(500, retry_after=600.0)))
    await h.run(make_job())
    tier, pending = h.retry()
    assert (tier, pending.not_before) == (0, NOW_TS + 5.0)


# -- circuit breaker and endpoint isolation --------------------------------------------------------


async def test_circuit_opens_and_jobs_are_skipped_without_sending() -> None:
    h = Harness(FakeSender(*[failed(500)] * THRESHOLD))
    for n in range(THRESHOLD):
        await h.run(make_job(event=make_event(f"evt_{n}")))
    assert len(h.sender.sent) == THRESHOLD
    assert h.deliverer.breakers.state(endpoint_of(WEBHOOK.url)) == OPEN
    assert h.value("webhook_bridge_circuits_open") == 1.0

    h.clock.now += COOLDOWN - 1
    await h.run(make_job())
    assert len(h.sender.sent) == THRESHOLD  # not sent
    assert h.attempt() == attempt_record(1, skipped("circuit_open"), "retry")
    tier, pending = h.retry()
    assert (tier, pending.attempt, pending.not_before) == (0, 1, NOW_TS + 5.0)
    assert pending.history == (skipped("circuit_open").as_record(),)
    assert h.acks.count == THRESHOLD + 1
    # A skip is not an HTTP attempt, nor a failure of the endpoint.
    assert (
        h.value("webhook_bridge_delivery_attempts_total", outcome="failure", status_class="none")
        == 0
    )
    assert [r["state"] for _, r in h.outputs.statuses] == ["failing"]

    # Another endpoint is not affected.
    other = make_webhook("webhook_other", host="other.example")
    await h.run(make_job(webhook=other))
    assert h.sender.sent[-1].webhook is other

    # After the cooldown, one probe: its success closes the circuit.
    h.clock.now += 1
    await h.run(make_job())
    assert len(h.sender.sent) == THRESHOLD + 2
    assert h.deliverer.breakers.state(endpoint_of(WEBHOOK.url)) == CLOSED
    assert h.value("webhook_bridge_circuits_open") == 0.0
    assert h.attempt()["outcome"] == "success"


async def a_full_endpoint() -> tuple[FakeSender, Harness, asyncio.Task[None]]:
    """A harness whose endpoint takes one request and queues none, that one in flight (held
    at the sender's gate): its sender, the harness and the first job's task."""
    sender = FakeSender()
    sender.gate = asyncio.Event()
    h = Harness(sender, endpoint_max_in_flight=1, endpoint_max_queued=0)
    first = h.start(make_job(event=make_event("evt_first")))
    await asyncio.wait_for(sender.started.wait(), PROMPT)
    return sender, h, first


async def test_a_full_endpoint_queue_skips_with_endpoint_busy() -> None:
    sender, h, first = await a_full_endpoint()

    await h.run(make_job())
    assert len(sender.sent) == 1
    assert h.attempt() == attempt_record(1, skipped("endpoint_busy"), "retry")
    assert h.retry()[1].history == (skipped("endpoint_busy").as_record(),)

    sender.gate.set()
    await asyncio.wait_for(first, PROMPT)
    assert h.acks.count == 2
    assert h.outputs.attempts[-1][1]["outcome"] == "success"


async def test_a_delivery_waits_for_its_endpoint_no_longer_than_its_bound() -> None:
    """Behind an endpoint whose requests hang, a queued delivery is deferred ``endpoint_busy``
    once it waited ``endpoint_max_wait`` (MAX_ENDPOINT_WAIT): its source record settles (to the
    retry path) rather than holding its partition's commits for as many timeouts as waves are
    ahead of it (until 2026-12-07, minutes)."""
    sender = FakeSender()
    sender.gate = asyncio.Event()
    h = Harness(sender, endpoint_max_in_flight=1, endpoint_max_queued=10, endpoint_max_wait=0.05)
    first = h.start(make_job(event=make_event("evt_first")))
    await asyncio.wait_for(sender.started.wait(), PROMPT)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await h.run(make_job())
    assert 0.05 <= loop.time() - began < PROMPT
    assert len(sender.sent) == 1
    assert h.attempt() == attempt_record(1, skipped("endpoint_busy"), "retry")
    assert h.acks.count == 1  # settled
    sender.gate.set()
    await asyncio.wait_for(first, PROMPT)
    assert h.acks.count == 2


async def test_deliveries_queued_when_their_endpoints_circuit_opened_are_not_sent() -> None:
    """The requests in flight fail and open the circuit; the deliveries queued behind them
    (let through while it was closed) are deferred ``circuit_open`` until it lets a probe
    through, not sent one wave after another (until 2026-12-07 all of them were)."""
    sender = FakeSender(OK, *[failed(500)] * THRESHOLD)
    h = Harness(sender, endpoint_max_in_flight=THRESHOLD, endpoint_max_queued=10)
    await h.run(make_job(event=make_event("evt_known")))  # (heard from: no trial)
    sender.gate = asyncio.Event()
    ahead = [h.start(make_job(event=make_event(f"evt_{n}"))) for n in range(THRESHOLD)]
    queued = [h.start(make_job(event=make_event(f"evt_q{n}"))) for n in range(4)]
    while len(sender.sent) < THRESHOLD + 1:
        await asyncio.sleep(0)
    sender.gate.set()
    await asyncio.wait_for(asyncio.gather(*ahead, *queued), PROMPT)
    assert len(sender.sent) == THRESHOLD + 1
    assert h.deliverer.breakers.state(endpoint_of(WEBHOOK.url)) == OPEN
    skips = [r for _, r in h.outputs.attempts if r.get("error") == "circuit_open"]
    assert len(skips) == 4
    retries = [h.retry(i)[1] for i in range(-4, 0)]
    assert all(p.not_before == NOW_TS + COOLDOWN for p in retries), retries
    assert h.acks.count == THRESHOLD + 4 + 1


async def test_a_deferred_attempt_keeps_its_number_and_spends_no_entry_of_the_schedule() -> None:
    sender, h, first = await a_full_endpoint()
    # The last attempt of the schedule, deferred: it is still the last attempt, not a dead letter.
    last = h.deliverer._policy.max_attempts
    await h.run(make_job(last, history=earlier(last - 1)))
    tier, pending = h.retry()
    assert (tier, pending.attempt) == (0, last)
    assert h.outputs.dead_letters == []
    sender.gate.set()
    await asyncio.wait_for(first, PROMPT)


async def test_an_endpoint_down_for_the_whole_schedule_gets_every_attempt_despite_deferrals() -> (
    None
):
    h = Harness(FakeSender(*[failed(503)] * 20))
    breaker = h.deliverer.breakers._get(endpoint_of(WEBHOOK.url))
    job = make_job()
    while not h.outputs.dead_letters:
        # Each attempt is first deferred by an open circuit, then made once it reopens.
        breaker.state, breaker.opened_at = OPEN, h.clock.now
        await h.run(job)
        _, deferred = h.retry()
        assert deferred.attempt == job.attempt
        h.clock.now += 3600.0
        await h.run(make_job(deferred.attempt, history=deferred.history))
        if h.outputs.dead_letters:
            break
        _, pending = h.retry()
        assert pending.attempt == job.attempt + 1
        job = make_job(pending.attempt, history=pending.history)
    assert len(h.sender.sent) == h.deliverer._policy.max_attempts
    assert h.outputs.dead_letters[0][1]["reason"] == "attempts_exhausted"


async def test_deferrals_count_as_attempts_once_there_were_too_many() -> None:
    sender, h, first = await a_full_endpoint()
    deferred = tuple(skipped("endpoint_busy").as_record() for _ in range(MAX_DEFERRALS))
    await h.run(make_job(2, history=deferred))
    assert h.retry()[1].attempt == 3
    sender.gate.set()
    await asyncio.wait_for(first, PROMPT)


@pytest.mark.parametrize("letter_deferrals", [MAX_DEFERRALS + 5, 3])
async def test_a_replayed_delivery_counts_its_deferrals_since_the_replay(
    letter_deferrals: int,
) -> None:
    """A dead letter replayed holds the deferrals of its first sending (a long outage: 20 or
    more). Its replay's first deferral keeps its attempt and waits the schedule's first
    delay: until 2026-12-07 it spent an attempt (20 or more before) or waited 2**n times 5 s."""
    sender, h, first = await a_full_endpoint()
    letter = (skipped("circuit_open").as_record(),) * letter_deferrals + earlier(8)
    replay = dataclasses.replace(
        make_job(2, history=letter), replayed=True, replayed_after=len(letter)
    )
    await h.run(replay)
    tier, pending = h.retry()
    assert (tier, pending.attempt, pending.not_before) == (0, 2, NOW_TS + 5.0)
    assert pending.replayed_after == len(letter)  # carried to its retries
    assert h.outputs.dead_letters == []
    # Its next deferral doubles the wait: the replay's own deferrals count.
    await h.run(dataclasses.replace(replay, history=pending.history))
    assert h.retry()[1].not_before == NOW_TS + 10.0
    sender.gate.set()
    await asyncio.wait_for(first, PROMPT)


async def test_max_in_flight_bounds_requests_across_endpoints() -> None:
    sender = FakeSender()
    sender.gate = asyncio.Event()
    h = Harness(sender, max_in_flight=1)
    first = h.start(make_job())
    await asyncio.wait_for(sender.started.wait(), PROMPT)
    other = make_webhook("webhook_other", host="other.example")
    second = h.start(make_job(webhook=other))
    # The second request waits for the worker's only slot (it is not refused).
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(sender.sent) == 1
    assert h.value("webhook_bridge_in_flight_requests") == 1.0
    sender.gate.set()
    await asyncio.wait_for(asyncio.gather(first, second), PROMPT)
    assert [d.webhook.id for d in sender.sent] == ["webhook_abc", "webhook_other"]
    assert h.value("webhook_bridge_in_flight_requests") == 0.0


REFUSED = AttemptResult(False, None, "destination_forbidden", 0.001, AT, refusal="private")


async def test_destination_forbidden_is_dead_lettered_and_not_the_endpoints_fault() -> None:
    h = Harness(FakeSender(*[REFUSED] * (THRESHOLD + 1)))
    await h.run(make_job(2, history=earlier(1)))

    assert h.acks.count == 1
    assert h.attempt() == attempt_record(2, REFUSED, "dead_letter")
    record = h.dead_letter()
    assert record["reason"] == "destination_forbidden"
    assert record["detail"] == "refused before connecting: private"
    assert record["attempts"] == [*earlier(1), REFUSED.as_record()]
    assert h.outputs.retries == h.outputs.statuses == h.outputs.disabled == []
    assert h.value("webhook_bridge_ssrf_refusals_total", reason="private") == 1.0
    assert h.value("webhook_bridge_dead_letters_total", reason="destination_forbidden") == 1.0
    # However many refusals, the circuit stays closed and the webhook healthy.
    for n in range(THRESHOLD):
        await h.run(make_job(event=make_event(f"evt_{n}")))
    assert h.deliverer.breakers.state(endpoint_of(WEBHOOK.url)) == CLOSED
    assert h.outputs.statuses == []


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:99999/x", "http://xn--/", "https://hooks.example:0/", "https://exa mple/"],
)
async def test_an_unusable_url_is_dead_lettered_as_invalid_url_without_a_request(url: str) -> None:
    h = Harness(FakeSender())
    webhook = dataclasses.replace(WEBHOOK, url=url)
    await h.run(make_job(3, webhook=webhook, history=earlier(2)))
    assert h.acks.count == 1
    assert h.sender.sent == []
    record = h.dead_letter()
    assert record["reason"] == "invalid_url"
    assert url not in record["detail"]
    assert len(record["attempts"]) == 3 and record["attempts"][-1]["error"] == "invalid_url"
    assert h.attempt()["outcome"] == "skipped" and h.attempt()["next"] == "dead_letter"
    assert h.outputs.retries == h.outputs.statuses == []
    assert h.value("webhook_bridge_dead_letters_total", reason="invalid_url") == 1.0


@pytest.mark.parametrize(
    "probe", [REFUSED, RuntimeError("bug in the sender")], ids=["refused", "crashed"]
)
async def test_a_probe_without_an_answer_does_not_wedge_the_circuit(
    probe: AttemptResult | Exception,
) -> None:
    # The circuit opens; after the cooldown the probe gets no HTTP answer (the guard refused the
    # address DNS returned then, or the sender crashed); later the endpoint answers 200 again.
    h = Harness(FakeSender(*[failed(500)] * THRESHOLD, probe))
    for n in range(THRESHOLD):
        await h.run(make_job(event=make_event(f"evt_{n}")))
    h.clock.now += COOLDOWN
    if isinstance(probe, Exception):
        with pytest.raises(type(probe)):
            await h.run(make_job())
    else:
        await h.run(make_job())
    assert len(h.sender.sent) == THRESHOLD + 1
    # Long after, some delivery must be let through again.
    h.clock.now += 100 * COOLDOWN
    await h.run(make_job())
    assert len(h.sender.sent) == THRESHOLD + 2
    assert h.attempt()["outcome"] == "success"


async def test_the_bridge_s_own_crashes_do_not_open_an_endpoint_s_circuit() -> None:
    """A sender crashing (a bug; a webhook's record it could not use) says nothing of the
    endpoint: until 2026-12-07 five of them opened the circuit of every webhook on the host."""
    crashes = [RuntimeError(f"bug {n}") for n in range(THRESHOLD + 1)]
    h = Harness(FakeSender(*crashes))
    for n in range(THRESHOLD + 1):
        with pytest.raises(RuntimeError):
            await h.run(make_job(event=make_event(f"evt_{n}")))
    assert h.deliverer.breakers.state(endpoint_of(WEBHOOK.url)) == CLOSED
    await h.run(make_job(event=make_event("evt_next")))
    assert len(h.sender.sent) == THRESHOLD + 2 and h.attempt()["outcome"] == "success"


# -- invalid bodies --------------------------------------------------------------------------------


async def test_payload_too_large_is_dead_lettered_without_sending() -> None:
    h = Harness(FakeSender(), max_body_bytes=100)
    await h.run(make_job())
    assert h.sender.sent == []
    assert h.acks.count == 1
    record = h.dead_letter()
    assert record["reason"] == "payload_too_large"
    assert record["event"] == EVENT.envelope()
    assert record["delivery_id"] == delivery_id(EVENT.id, WEBHOOK.id)
    assert h.outputs.retries == []
    assert h.value("webhook_bridge_dead_letters_total", reason="payload_too_large") == 1.0


async def test_payload_too_large_on_a_retry_keeps_the_earlier_attempts() -> None:
    h = Harness(FakeSender(), max_body_bytes=100)
    await h.run(make_job(3, history=earlier(2)))
    assert h.dead_letter()["attempts"] == list(earlier(2))


# -- secrets ---------------------------------------------------------------------------------------


async def test_the_secret_is_never_recorded(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    script = [OK, failed(500), failed(410), failed(503, retry_after=60.0), failed(500)]
    script += [failed(500)] * THRESHOLD
    h = Harness(FakeSender(*script))
    await h.run(make_job())
    await h.run(make_job())
    await h.run(make_job(2, history=earlier(1), webhook=make_webhook("gone", "gone.example")))
    await h.run(make_job(webhook=make_webhook("busy", "busy.example")))
    await h.run(make_job(8, history=earlier(7)))
    for n in range(THRESHOLD):
        await h.run(
            make_job(webhook=make_webhook("down", "down.example"), event=make_event(f"{n}"))
        )
    await h.run(make_job(webhook=make_webhook("down", "down.example")))  # circuit open
    small = Harness(FakeSender(), max_body_bytes=10)
    await small.run(make_job())

    # The secret did flow through: the sender got it, to sign with.
    assert all(d.webhook.secret == SECRET for d in h.sender.sent)
    assert {"retry", "dead_letter", "attempt", "status", "disable"} <= set(h.outputs.calls)
    recorded = h.outputs.everything() + small.outputs.everything()
    assert SECRET not in recorded
    logged = [json.dumps(vars(r), default=str) for r in caplog.records]
    assert logged  # failures and the disable were logged
    assert not [line for line in logged if SECRET in line]


async def test_the_response_prefix_is_only_in_attempt_records(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A kept body prefix (it can hold personal data) goes to the attempt record and nowhere
    else: not to retry records, dead letters, logs or metric labels."""
    caplog.set_level(logging.DEBUG)
    body = b"name=Jane Roe; card=4111"

    def answer(status: int) -> AttemptResult:
        return dataclasses.replace(failed(status), response_bytes=len(body), response_prefix=body)

    h = Harness(FakeSender(answer(500), answer(410), answer(503), answer(500)))
    await h.run(make_job())  # a retry
    await h.run(make_job(2, history=earlier(1), webhook=make_webhook("gone", "gone.example")))
    await h.run(make_job(8, history=earlier(7)))  # attempts exhausted: a dead letter
    await h.run(make_job(8, history=earlier(7), event=make_event("x")))

    text = body.decode()
    assert [a["response_prefix"] for _, a in h.outputs.attempts] == [text] * 4
    assert {"retry", "dead_letter", "attempt", "disable"} <= set(h.outputs.calls)
    for _, record in h.outputs.dead_letters:
        assert text not in json.dumps(record)
        assert [a.get("response_prefix") for a in record["attempts"]] == [None] * len(
            record["attempts"]
        )
    assert all(text not in value.decode() for _, _, value in h.outputs.retries)
    assert text not in json.dumps(h.outputs.disabled) + "".join(h.outputs.disabled_reprs)
    labels = [
        value
        for metric in h.registry.collect()
        for sample in metric.samples
        for value in sample.labels.values()
    ]
    assert labels and not [v for v in labels if "Jane" in v or "card" in v]
    logged = [json.dumps(vars(r), default=str) for r in caplog.records]
    assert logged  # failures and the disable were logged
    assert not [line for line in logged if "Jane" in line]


# -- cancellation ----------------------------------------------------------------------------------


async def test_draining_cancellation_hands_the_job_to_the_retry_path() -> None:
    sender = FakeSender()
    sender.gate = asyncio.Event()
    h = Harness(sender)
    task = h.start(make_job())
    await asyncio.wait_for(sender.started.wait(), PROMPT)

    h.deliverer.draining = True
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, PROMPT)

    assert h.acks.count == 1
    interrupted = AttemptResult(False, None, "interrupted", 0.0, NOW_TEXT)
    assert h.attempt() == attempt_record(1, interrupted, "retry")
    tier, pending = h.retry()
    # The same attempt again, soon: an interrupted one spends no entry of the schedule.
    assert (tier, pending.attempt, pending.not_before) == (0, 1, NOW_TS + 5.0)
    assert pending.history == (interrupted.as_record(),)
    # Not the endpoint's fault: no health change, no breaker failure.
    assert h.outputs.statuses == []
    assert h.deliverer.breakers.state(endpoint_of(WEBHOOK.url)) == CLOSED
    assert h.value("webhook_bridge_in_flight_requests") == 0.0


async def test_a_last_attempt_interrupted_waiting_for_a_place_is_not_dead_lettered() -> None:
    """No request was made: the drain must not spend the delivery's last attempt (until
    2026-12-07 it was dead-lettered "8 attempts; last: interrupted")."""
    sender = FakeSender()
    sender.gate = asyncio.Event()
    h = Harness(sender, max_in_flight=1)
    first = h.start(make_job(event=make_event("evt_first")))
    await asyncio.wait_for(sender.started.wait(), PROMPT)
    last = h.policy.max_attempts
    other = make_webhook("webhook_other", host="other.example")
    waiting = h.start(make_job(last, webhook=other, history=earlier(last - 1)))
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(sender.sent) == 1  # the second waits for the worker's only place

    h.deliverer.draining = True
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(waiting, PROMPT)
    assert h.outputs.dead_letters == []
    tier, key, value = h.outputs.retries[-1]
    assert key == b"webhook_other"
    pending = parse_retry(value)
    assert (tier, pending.attempt, pending.not_before) == (0, last, NOW_TS + 5.0)
    assert [a["error"] for a in pending.history] == ["http_status"] * (last - 1) + ["interrupted"]
    assert (
        h.value("webhook_bridge_deliveries_total", event_type=EVENT.type, outcome="dead_lettered")
        == 0.0
    )
    sender.gate.set()
    await asyncio.wait_for(first, PROMPT)


async def test_a_last_attempt_interrupted_after_it_was_sent_is_tried_again() -> None:
    """Sent, not answered: the receiver may have it (it dedupes by delivery id), but its
    endpoint did not fail it, so it is not why the delivery is dead-lettered."""
    sender = FakeSender()
    sender.gate = asyncio.Event()
    h = Harness(sender)
    last = h.policy.max_attempts
    task = h.start(make_job(last, history=earlier(last - 1)))
    await asyncio.wait_for(sender.started.wait(), PROMPT)
    h.deliverer.draining = True
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, PROMPT)
    assert h.outputs.dead_letters == []
    assert h.retry()[1].attempt == last
    # Tried again, it is the last attempt still: a failure then dead-letters it.
    sender.gate.set()
    sender.script = [failed(502)]
    await h.run(make_job(last, history=h.retry()[1].history))
    assert h.dead_letter()["detail"] == f"{last} attempts; last: HTTP 502"


async def test_interruptions_are_not_counted_as_deferrals() -> None:
    sender, h, first = await a_full_endpoint()
    interrupted = AttemptResult(False, None, "interrupted", 0.0, AT).as_record()
    await h.run(make_job(2, history=(interrupted,) * MAX_DEFERRALS))
    tier, pending = h.retry()
    # Its first deferral: the same attempt, after the schedule's first delay.
    assert (tier, pending.attempt, pending.not_before) == (0, 2, NOW_TS + 5.0)
    sender.gate.set()
    await asyncio.wait_for(first, PROMPT)


async def test_cancellation_outside_a_drain_leaves_the_job_unsettled() -> None:
    sender = FakeSender()
    sender.gate = asyncio.Event()
    h = Harness(sender, endpoint_max_in_flight=1, endpoint_max_queued=0)
    task = h.start(make_job())
    await asyncio.wait_for(sender.started.wait(), PROMPT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, PROMPT)

    assert h.acks.count == 0
    assert h.outputs.calls == []
    assert h.value("webhook_bridge_in_flight_requests") == 0.0
    # The endpoint's slot was given back: the next delivery is sent, not refused as busy.
    sender.gate.set()
    await h.run(make_job())
    assert h.attempt()["outcome"] == "success"


async def test_a_skip_while_the_circuit_is_open_is_not_retried_before_it_reopens() -> None:
    h = Harness(FakeSender(*[failed(500)] * THRESHOLD))
    for n in range(THRESHOLD):
        await h.run(make_job(event=make_event(f"evt_{n}")))
    assert h.deliverer.breakers.state(endpoint_of(WEBHOOK.url)) == OPEN
    # 10 s into the 30 s cooldown: the first tier (5 s) would come round while still open,
    # so the retry waits the remaining 20 s, in the first tier whose delay covers it.
    h.clock.now += 10.0
    await h.run(make_job())
    tier, pending = h.retry()
    assert (tier, pending.attempt, pending.not_before) == (1, 1, NOW_TS + 20.0)
    assert h.attempt() == attempt_record(1, skipped("circuit_open"), "retry")
    assert pending.history == (skipped("circuit_open").as_record(),)
    # Less than the first tier's delay left: the schedule as usual.
    h.clock.now += 18.0
    await h.run(make_job())
    tier, pending = h.retry()
    assert (tier, pending.attempt, pending.not_before) == (0, 1, NOW_TS + 5.0)
    assert len(h.sender.sent) == THRESHOLD


def test_reopens_in_counts_down_only_while_open() -> None:
    clock = FakeClock(100.0)
    breakers = Breakers(threshold=2, cooldown=30.0, clock=clock)
    assert breakers.reopens_in("e") is None
    breakers.failure("e")
    assert breakers.reopens_in("e") is None  # one failure: still closed
    breakers.failure("e")
    assert breakers.reopens_in("e") == 30.0
    clock.now += 12.5
    assert breakers.reopens_in("e") == 17.5
    clock.now += 20.0
    assert breakers.reopens_in("e") == 0.0
    assert breakers.allow("e")  # the probe: half-open now
    assert breakers.reopens_in("e") is None


async def test_a_probe_that_finds_the_endpoint_busy_goes_to_the_next_request() -> None:
    # Requests allowed while the circuit was closed still hold every slot of the endpoint when
    # its cooldown ends: the probe the breaker let through is not sent, so it must not stay out.
    h = Harness(FakeSender(), endpoint_max_in_flight=1, endpoint_max_queued=0)
    endpoint = endpoint_of(WEBHOOK.url)
    await h.deliverer._endpoints.acquire(endpoint)  # a request from before the circuit opened
    for _ in range(THRESHOLD):
        h.deliverer.breakers.failure(endpoint)
    h.clock.now += COOLDOWN
    await h.run(make_job())
    assert h.attempt() == attempt_record(1, skipped("endpoint_busy"), "retry")
    assert h.deliverer.breakers.state(endpoint) == HALF_OPEN
    h.deliverer._endpoints.release(endpoint)
    await h.run(make_job(event=make_event("evt_next")))
    assert len(h.sender.sent) == 1  # the next request is the probe
    assert h.deliverer.breakers.state(endpoint) == CLOSED


@pytest.mark.parametrize("skip", ["circuit_open", "endpoint_busy"])
async def test_an_attempt_not_made_gives_its_rate_limit_token_back(skip: str) -> None:
    # One delivery per 100 s: the token a skipped attempt took would hold the next real one.
    limited = dataclasses.replace(WEBHOOK, rate_limit=0.01)
    h = Harness(FakeSender(), endpoint_max_in_flight=1, endpoint_max_queued=0)
    endpoint = endpoint_of(limited.url)
    if skip == "circuit_open":
        for _ in range(THRESHOLD):
            h.deliverer.breakers.failure(endpoint)
    else:
        await h.deliverer._endpoints.acquire(endpoint)
    await h.run(make_job(webhook=limited))
    assert h.attempt()["error"] == skip
    if skip == "circuit_open":
        h.clock.now += COOLDOWN
    else:
        h.deliverer._endpoints.release(endpoint)
    await h.run(make_job(webhook=limited, event=make_event("evt_next")))
    assert len(h.sender.sent) == 1
    assert h.attempt()["outcome"] == "success"  # sent at once, not deferred as rate_limited


async def test_a_delivery_waiting_for_its_rate_holds_no_place_of_its_endpoint() -> None:
    """A webhook limited to one delivery a second and another webhook on the same endpoint,
    which lets one request in flight: while the first webhook's second delivery waits for its
    token, the other's is sent (until 2026-12-07 it waited behind, nothing sent)."""
    h = Harness(FakeSender(), endpoint_max_in_flight=1, endpoint_max_queued=10)
    limited = dataclasses.replace(make_webhook("wh_a", host="shared.example"), rate_limit=1.0)
    other = make_webhook("wh_b", host="shared.example")
    await h.run(make_job(webhook=limited, event=make_event("evt_1")))
    waiting = h.start(make_job(webhook=limited, event=make_event("evt_2")))
    await h.run(make_job(webhook=other, event=make_event("evt_3")))
    assert [o.job.event.id for o in h.sender.sent] == ["evt_1", "evt_3"]
    await asyncio.wait_for(waiting, PROMPT)
    assert [o.job.event.id for o in h.sender.sent] == ["evt_1", "evt_3", "evt_2"]


async def test_one_sites_webhooks_take_at_most_their_places_whatever_their_endpoints() -> None:
    """A site's webhooks on many endpoints, each answering slowly, held every place of the
    worker (each endpoint its own 16) and the pipeline's pending jobs with them, until
    2026-12-05. Now a site has at most ``owner_max_in_flight`` requests in flight; a delivery
    finding them all taken is skipped ``owner_busy`` to the retry path at once (a deferral,
    not an attempt of the schedule), holding nothing, while another site's deliveries go on;
    a place is given back however its request ends (cancelled too)."""
    sender = FakeSender()
    sender.gate = asyncio.Event()
    h = Harness(sender, max_in_flight=64, owner_max_in_flight=2)
    hostile = [
        dataclasses.replace(make_webhook(f"wh_{n}", host=f"slow{n}.example"), site_id="s_bad")
        for n in range(8)
    ]
    jobs = [h.start(make_job(webhook=w, event=make_event(f"e_{n}"))) for n, w in enumerate(hostile)]
    await eventually(lambda: len(sender.sent) == 2 and sum(t.done() for t in jobs) == 6)
    skipped = [r for _, r in h.outputs.attempts if r["error"] == "owner_busy"]
    assert len(skipped) == 6 and all(r["next"] == "retry" for r in skipped)
    assert all(p.attempt == 1 for _, _, raw in h.outputs.retries for p in [parse_retry(raw)])
    assert h.deliverer.owner_in_flight("site_id:s_bad") == 2
    # Another site's delivery is sent at once, beside them.
    other = h.start(make_job(webhook=make_webhook("wh_other", host="fine.example")))
    await eventually(lambda: len(sender.sent) == 3)
    assert sender.sent[-1].job.webhook.id == "wh_other"
    # One of the two in flight is cancelled: its place goes back, and the site's next is sent.
    in_flight = [t for t in jobs if not t.done()]
    in_flight[0].cancel()
    await eventually(lambda: h.deliverer.owner_in_flight("site_id:s_bad") == 1)
    again = h.start(make_job(webhook=hostile[5], event=make_event("e_again")))
    await eventually(lambda: len(sender.sent) == 4)
    sender.gate.set()
    await asyncio.wait_for(asyncio.gather(in_flight[1], other, again), PROMPT)
    assert h.deliverer.owner_in_flight("site_id:s_bad") == 0


async def test_one_slow_endpoint_of_a_site_holds_no_more_than_its_own_places() -> None:
    """Deliveries waiting for a slow endpoint hold none of their site's places: the site's
    other endpoints keep the rest (until the change that made a site's place be taken with its
    endpoint's, a slow endpoint's queue could take every place of its site)."""
    sender = FakeSender()
    h = Harness(sender, endpoint_max_in_flight=2, owner_max_in_flight=3)
    slow = dataclasses.replace(make_webhook("wh_slow", host="slow.example"), site_id="s1")
    quick = dataclasses.replace(make_webhook("wh_quick", host="quick.example"), site_id="s1")
    for hook in (slow, quick):  # (both heard from: no trial)
        await h.run(make_job(webhook=hook, event=make_event(f"e_known_{hook.id}")))
    sender.gate = asyncio.Event()
    waiting = [h.start(make_job(webhook=slow, event=make_event(f"e_{n}"))) for n in range(6)]
    await eventually(lambda: len(sender.sent) == 4)
    assert h.deliverer.owner_in_flight("site_id:s1") == 2  # the four waiting hold none
    other = h.start(make_job(webhook=quick, event=make_event("e_quick")))
    await eventually(lambda: len(sender.sent) == 5)
    assert sender.sent[-1].job.webhook.id == "wh_quick"
    assert not any(r["error"] == "owner_busy" for _, r in h.outputs.attempts)
    sender.gate.set()
    await asyncio.wait_for(asyncio.gather(*waiting, other), PROMPT)
    assert len(sender.sent) == 9 and h.deliverer.owner_in_flight("site_id:s1") == 0


def timed_out(duration: float = 30.0) -> AttemptResult:
    return AttemptResult(False, None, "timeout", duration, AT)


async def test_endpoints_answering_slowly_hold_at_most_half_the_worker() -> None:
    """Sites whose endpoints take the whole timeout to answer, each within its own site's
    limit, together hold half the worker's places: a quick endpoint's delivery is sent at
    once, and the slow ones past their half are deferred ``endpoint_busy`` holding nothing.
    (Until 2026-12-06 four such sites held every place, and the quick one waited.)"""
    sender = FakeSender(*[timed_out() for _ in range(4)])
    h = Harness(sender, max_in_flight=4, owner_max_in_flight=1)
    slow = [
        dataclasses.replace(make_webhook(f"wh_slow{n}", host=f"slow{n}.example"), site_id=f"s{n}")
        for n in range(4)
    ]
    # Each endpoint's first answer is a timeout: from then on it is slow.
    await asyncio.gather(
        *(h.run(make_job(webhook=w, event=make_event(f"e_{n}"))) for n, w in enumerate(slow))
    )
    quick = dataclasses.replace(make_webhook("wh_quick", host="quick.example"), site_id="s_q")
    await h.run(make_job(webhook=quick, event=make_event("e_quick0")))  # heard from: quick
    assert h.value("webhook_bridge_slow_in_flight_requests") == 0
    sender.gate = asyncio.Event()
    held = [
        h.start(make_job(webhook=w, event=make_event(f"e_again{n}"))) for n, w in enumerate(slow)
    ]
    await eventually(lambda: len(sender.sent) == 7 and sum(t.done() for t in held) == 2)
    assert h.value("webhook_bridge_slow_in_flight_requests") == 2
    busy = [r for _, r in h.outputs.attempts if r.get("error") == "endpoint_busy"]
    assert len(busy) == 2
    other = h.start(make_job(webhook=quick, event=make_event("e_quick")))
    await eventually(lambda: len(sender.sent) == 8)
    assert sender.sent[-1].job.webhook.id == "wh_quick"
    sender.gate.set()
    await asyncio.wait_for(asyncio.gather(*held, other), PROMPT)
    assert h.value("webhook_bridge_slow_in_flight_requests") == 0
    assert h.deliverer.owner_in_flight("site_id:s0") == 0


async def test_a_slow_endpoint_is_held_to_the_share_for_a_time_not_by_its_answers() -> None:
    """Quick answers do not end an endpoint's slowness (they could be made through the share
    to hang with the other places again); :data:`SLOW_FOR` after its slow answer they do."""
    from bridge.delivery.limits import SLOW_FOR

    sender = FakeSender(timed_out())
    h = Harness(sender, max_in_flight=2)
    await h.run(make_job(event=make_event("e_0")))
    for n in range(1, 11):  # ten quick answers, through the share
        await h.run(make_job(event=make_event(f"e_{n}")))
    sender.gate = asyncio.Event()
    first = h.start(make_job(event=make_event("e_held")))
    await eventually(lambda: len(sender.sent) == 12)
    # Still slow: its one place of the share (2 // 2) is taken; the next is deferred.
    await h.run(make_job(event=make_event("e_busy")))
    assert h.outputs.attempts[-1][1]["error"] == "endpoint_busy"
    sender.gate.set()
    await asyncio.wait_for(first, PROMPT)
    h.clock.now += SLOW_FOR
    sender.gate = asyncio.Event()
    both = [h.start(make_job(event=make_event(f"e_both{n}"))) for n in range(2)]
    await eventually(lambda: len(sender.sent) == 14)  # both sent: neither held to the share
    sender.gate.set()
    await asyncio.wait_for(asyncio.gather(*both), PROMPT)


async def test_with_a_share_of_one_slow_endpoints_may_hold_every_place() -> None:
    sender = FakeSender(*[timed_out() for _ in range(4)])
    h = Harness(sender, max_in_flight=4, owner_max_in_flight=1, slow_endpoint_share=1.0)
    slow = [
        dataclasses.replace(make_webhook(f"wh_slow{n}", host=f"slow{n}.example"), site_id=f"s{n}")
        for n in range(4)
    ]
    await asyncio.gather(
        *(h.run(make_job(webhook=w, event=make_event(f"e_{n}"))) for n, w in enumerate(slow))
    )
    sender.gate = asyncio.Event()
    held = [
        h.start(make_job(webhook=w, event=make_event(f"e_again{n}"))) for n, w in enumerate(slow)
    ]
    await eventually(lambda: len(sender.sent) == 8)
    assert h.value("webhook_bridge_slow_in_flight_requests") == 4
    sender.gate.set()
    await asyncio.wait_for(asyncio.gather(*held), PROMPT)


async def test_endpoints_not_yet_heard_from_hold_at_most_the_share_and_wait_for_it() -> None:
    """New sites' webhooks on new endpoints that hang: until 2026-12-07 an endpoint with no
    answer yet was judged quick, and four new sites with four hanging webhooks each held all
    256 places of a worker for a whole timeout. Now they hold the share (two of four places
    here): an endpoint heard answering quickly is sent to at once beside them, and those
    past the share wait for a place, deferred ``endpoint_busy`` when none comes within the
    bound (holding their source records no longer); one that gets a place is sent."""
    sender = FakeSender()
    h = Harness(sender, max_in_flight=4, owner_max_in_flight=2, endpoint_max_wait=1.0)
    known = dataclasses.replace(make_webhook("wh_known", host="known.example"), site_id="s_k")
    await h.run(make_job(webhook=known, event=make_event("e_known0")))  # heard from: quick
    sender.gate = asyncio.Event()
    hostile = [
        dataclasses.replace(
            make_webhook(f"wh_{s}_{n}", host=f"new{s}x{n}.example"), site_id=f"n{s}"
        )
        for s in range(4)
        for n in range(2)
    ]
    jobs = [h.start(make_job(webhook=w, event=make_event(f"e_{w.id}"))) for w in hostile]
    await eventually(lambda: len(sender.sent) == 3)
    assert h.value("webhook_bridge_slow_in_flight_requests") == 2
    other = h.start(make_job(webhook=known, event=make_event("e_known")))
    await eventually(lambda: len(sender.sent) == 4)
    assert sender.sent[-1].job.webhook.id == "wh_known"
    await eventually(lambda: sum(t.done() for t in jobs) == 6, timeout=5.0)
    busy = [r for _, r in h.outputs.attempts if r.get("error") == "endpoint_busy"]
    assert len(busy) == 6 and all(r["next"] == "retry" for r in busy)
    assert len(sender.sent) == 4  # none of the six was sent
    # A new endpoint's delivery waits for a place of the share, and is sent when one frees.
    fresh = dataclasses.replace(make_webhook("wh_fresh", host="fresh.example"), site_id="s_f")
    queued = h.deliverer._slow.waiting  # (the six gave up theirs: an upper bound)
    waiting = h.start(make_job(webhook=fresh, event=make_event("e_fresh")))
    await eventually(lambda: h.deliverer._slow.waiting == queued + 1)
    assert not waiting.done() and len(sender.sent) == 4
    sender.gate.set()
    await asyncio.wait_for(asyncio.gather(*jobs, other, waiting), PROMPT)
    assert sender.sent[-1].job.webhook.id == "wh_fresh"
    assert h.outputs.attempts[-1][1]["outcome"] == "success"
    assert h.value("webhook_bridge_slow_in_flight_requests") == 0
    # The two sent are heard from now (they answered quickly): they take no place of the share.
    sender.gate = asyncio.Event()
    again = [h.start(make_job(webhook=w, event=make_event(f"e2_{w.id}"))) for w in hostile[:2]]
    await eventually(lambda: len(sender.sent) == 7)
    assert h.value("webhook_bridge_slow_in_flight_requests") == 0
    sender.gate.set()
    await asyncio.wait_for(asyncio.gather(*again), PROMPT)


class HostGates(FakeSender):
    """Holds each send to a host in ``holds`` until its event is set; answers OK."""

    def __init__(self) -> None:
        super().__init__()
        self.holds: dict[str, asyncio.Event] = {}

    async def send(self, job: Job, body: bytes) -> AttemptResult:
        self.sent.append(Outgoing(job, body))
        host = job.webhook.url.split("/")[2]
        hold = self.holds.get(host)
        if hold is not None:
            await hold.wait()
        return OK


async def test_an_endpoint_not_yet_heard_from_sends_one_request_until_it_answers() -> None:
    """One new endpoint held as many places of the share as its ``endpoint_max_in_flight``
    (eight new hanging endpoints held all 128), and once it answered quickly its deliveries
    still waiting in the share's queue waited behind hanging ones until deferred, 15 s later
    (until 2026-12-07). Now it makes one request, its trial; its other deliveries wait for the
    trial's answer, then go at once (quick), holding no place of the share."""
    sender = HostGates()
    h = Harness(sender, max_in_flight=6, endpoint_max_in_flight=16, endpoint_max_wait=5.0)
    for host in ("hang0.example", "hang1.example", "hang2.example", "new.example"):
        sender.holds[host] = asyncio.Event()
    hang = [make_webhook(f"wh_hang{n}", host=f"hang{n}.example") for n in range(3)]
    new = make_webhook("wh_new", host="new.example")
    jobs = [h.start(make_job(webhook=w, event=make_event(f"e_{w.id}"))) for w in hang[:2]]
    jobs.append(h.start(make_job(webhook=new, event=make_event("e_new0"))))
    await eventually(lambda: len(sender.sent) == 3)  # the share's three places
    # The third hanging endpoint: its first waits for a place of the share, the others for
    # that first one's answer; the new endpoint's others wait for its first one's answer.
    jobs += [h.start(make_job(webhook=hang[2], event=make_event(f"e_h{n}"))) for n in range(4)]
    jobs += [h.start(make_job(webhook=new, event=make_event(f"e_new{n}"))) for n in range(1, 6)]
    await eventually(lambda: h.deliverer._slow.waiting == 1)
    assert len(sender.sent) == 3 and h.deliverer._slow.trials == 4
    sender.holds["new.example"].set()  # its first answer, quick
    await eventually(lambda: sum(o.job.webhook.id == "wh_new" for o in sender.sent) == 6)
    # Sent at once, without the share: the third hanging endpoint's first took the place the
    # new one's first gave back, and its others still wait for it.
    await eventually(lambda: len(sender.sent) == 3 + 5 + 1)
    assert h.value("webhook_bridge_slow_in_flight_requests") == 3
    assert not [r for _, r in h.outputs.attempts if r.get("error")]
    for hold in sender.holds.values():
        hold.set()
    await asyncio.wait_for(asyncio.gather(*jobs), PROMPT)
    assert len(sender.sent) == 3 + 5 + 4 and h.deliverer._slow.trials == 0


@pytest.mark.parametrize("waiting_for", ["trial", "share"])
async def test_a_delivery_cancelled_while_it_waits_in_the_share_gives_its_places_back(
    waiting_for: str,
) -> None:
    """Cancelled while it waited for its endpoint's first answer or for a place of the share
    (not draining: its source record stays unsettled), it held its endpoint's place and its
    site's until the fix (nothing cancels such a job but a drain today)."""
    sender = FakeSender()
    sender.gate = asyncio.Event()
    h = Harness(sender, max_in_flight=2, owner_max_in_flight=4)  # a share of one
    other = make_webhook("wh_other", host="other.example")
    first = h.start(make_job(webhook=other if waiting_for == "share" else WEBHOOK))
    await eventually(lambda: len(sender.sent) == 1)
    endpoint = endpoint_of(WEBHOOK.url)
    waiting = h.start(make_job(event=make_event("e_wait")))
    if waiting_for == "trial":
        await eventually(lambda: h.deliverer._endpoints._endpoints[endpoint].in_flight == 2)
    else:
        await eventually(lambda: h.deliverer._slow.waiting == 1)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    places = 1 if waiting_for == "trial" else 0
    state = h.deliverer._endpoints._endpoints.get(endpoint)
    assert (state.in_flight if state is not None else 0) == places
    assert h.deliverer.owner_in_flight("site_id:site_789") == 1
    sender.gate.set()
    await asyncio.wait_for(first, PROMPT)
    assert h.deliverer._endpoints._endpoints.get(endpoint) is None
    assert h.deliverer.owner_in_flight("site_id:site_789") == 0


async def test_one_found_slow_while_waiting_for_the_share_leaves_its_place_to_the_next() -> None:
    """Deliveries to a new endpoint wait for its first request's answer, which times out: its
    endpoint is slow now, and the share's place its first request gives back goes to the
    delivery waiting for one (a new endpoint's); the second goes to the retry path, rather
    than making another request that hangs as long."""
    sender = FakeSender(timed_out())
    sender.gate = asyncio.Event()
    h = Harness(sender, max_in_flight=2, endpoint_max_in_flight=4)  # a share of one
    hangs = make_webhook("wh_hangs", host="hangs.example")
    fresh = dataclasses.replace(make_webhook("wh_fresh", host="fresh.example"), site_id="s_f")
    first = h.start(make_job(webhook=hangs, event=make_event("e_1")))
    await eventually(lambda: len(sender.sent) == 1)
    third = h.start(make_job(webhook=fresh, event=make_event("e_3")))
    await eventually(lambda: h.deliverer._slow.waiting == 1)
    # The second to the hanging endpoint waits for its first's answer (its trial's).
    second = h.start(make_job(webhook=hangs, event=make_event("e_2")))
    await eventually(
        lambda: h.deliverer._endpoints._endpoints[endpoint_of(hangs.url)].in_flight == 2
    )
    sender.gate.set()
    await asyncio.wait_for(asyncio.gather(first, second, third), PROMPT)
    # The new endpoint's goes first; the slow one's only through a place of the share left
    # free (here, once the new one has answered), else to the retry path.
    assert [o.job.event.id for o in sender.sent][:2] == ["e_1", "e_3"]
    errors = {r["event_id"]: r["error"] for _, r in h.outputs.attempts}
    assert errors["e_1"] == "timeout" and errors["e_3"] is None
    assert errors["e_2"] in ("endpoint_busy", None)
    assert h.value("webhook_bridge_slow_in_flight_requests") == 0


async def test_a_circuit_opened_while_waiting_for_the_endpoints_first_answer_defers() -> None:
    """As after the wait for its endpoint's place: the requests ahead of it failed."""
    sender = FakeSender(AttemptResult(False, 502, "http_status", 0.1, AT))
    sender.gate = asyncio.Event()
    h = Harness(sender, max_in_flight=2)  # a share of one
    first = h.start(make_job(event=make_event("e_1")))
    await eventually(lambda: len(sender.sent) == 1)
    second = h.start(make_job(event=make_event("e_2")))  # waits for the first's answer
    await eventually(
        lambda: h.deliverer._endpoints._endpoints[endpoint_of(WEBHOOK.url)].in_flight == 2
    )
    for _ in range(THRESHOLD):
        h.deliverer.breakers.failure(endpoint_of(WEBHOOK.url))
    sender.gate.set()
    await asyncio.wait_for(asyncio.gather(first, second), PROMPT)
    assert len(sender.sent) == 1
    assert h.outputs.attempts[-1][1]["error"] == "circuit_open"
    assert h.value("webhook_bridge_slow_in_flight_requests") == 0
    assert h.deliverer._endpoints.waiting(endpoint_of(WEBHOOK.url)) == 0


async def test_a_slow_sites_webhooks_on_hostnames_never_seen_are_held_to_the_share() -> None:
    """Their sites answered slowly: their webhooks moved to new hostnames are slow too (until
    the site was a key, each fresh hostname's first wave held the other places again)."""
    sender = FakeSender(*[timed_out() for _ in range(4)])
    h = Harness(sender, max_in_flight=4, owner_max_in_flight=1)

    def hook(n: int, host: str) -> Webhook:
        return dataclasses.replace(
            make_webhook(f"wh_{host}{n}", host=f"{host}{n}.example"), site_id=f"s{n}"
        )

    await asyncio.gather(
        *(h.run(make_job(webhook=hook(n, "slow"), event=make_event(f"e_{n}"))) for n in range(4))
    )
    quick = dataclasses.replace(make_webhook("wh_quick", host="quick.example"), site_id="s_q")
    await h.run(make_job(webhook=quick, event=make_event("e_quick0")))  # heard from: quick
    sender.gate = asyncio.Event()
    held = [
        h.start(make_job(webhook=hook(n, "fresh"), event=make_event(f"e_fresh{n}")))
        for n in range(4)
    ]
    await eventually(lambda: len(sender.sent) == 7 and sum(t.done() for t in held) == 2)
    assert h.value("webhook_bridge_slow_in_flight_requests") == 2
    other = h.start(make_job(webhook=quick, event=make_event("e_quick")))
    await eventually(lambda: len(sender.sent) == 8)
    sender.gate.set()
    await asyncio.wait_for(asyncio.gather(*held, other), PROMPT)


@pytest.mark.parametrize(
    ("change", "sent_as", "error"),
    [
        ("inactive", None, "webhook_inactive"),
        ("deleted", None, "webhook_deleted"),
        ("deleted_and_made_again", None, "webhook_deleted"),
        ("narrowed", None, "not_receiving"),
        ("rotated", "rotated", None),
        ("moved", "moved", None),
        ("renamed", "renamed", None),
    ],
)
async def test_a_job_waiting_for_its_place_is_sent_as_its_webhook_is_when_its_turn_comes(
    change: str, sent_as: str | None, error: str | None
) -> None:
    """A job waits for its places (here the worker's one place, held by another endpoint's
    request); its webhook changes meanwhile. Until 2026-12-07 it was sent as matched: to a
    webhook turned off, deleted or no longer receiving the event, and signed with a secret
    rotated since (one that leaked). Now it is not sent then (its attempt recorded skipped,
    nothing next), or sent to the webhook as it is: the new secret, the new URL (through its
    own places), the body naming its new name."""
    sender = FakeSender()
    sender.gate = asyncio.Event()
    h = Harness(sender, max_in_flight=1)
    other = make_webhook("other", host="elsewhere.example")
    base = dataclasses.replace(WEBHOOK, extra={"created_at": "2024-01-15T10:00:00.000Z"})
    current: dict[str, Webhook] = {"webhook_abc": base, "other": other}
    h.deliverer._webhooks = current.get
    blocking = h.start(make_job(webhook=other))
    await asyncio.wait_for(sender.started.wait(), PROMPT)
    waiting = h.start(make_job(webhook=base))
    await asyncio.sleep(0)  # (it takes its endpoint's place and waits for the worker's)
    changed = {
        "inactive": dataclasses.replace(base, active=False),
        "narrowed": dataclasses.replace(base, events=frozenset({"site.created"})),
        "rotated": dataclasses.replace(base, secret="whsec_rotated-after-a-leak-01234"),
        "moved": dataclasses.replace(base, url="https://moved.example/hook"),
        "renamed": dataclasses.replace(base, name="renamed"),
        "deleted_and_made_again": dataclasses.replace(
            base, extra={"created_at": "2024-01-15T10:31:00.000Z"}
        ),
    }
    if change == "deleted":
        del current["webhook_abc"]
    else:
        current["webhook_abc"] = changed[change]
    sender.gate.set()
    await asyncio.wait_for(asyncio.gather(blocking, waiting), PROMPT)
    sent = [s.job.webhook for s in sender.sent if s.job.webhook.id == "webhook_abc"]
    if sent_as is None:
        assert sent == []
        assert (h.attempt()["outcome"], h.attempt()["error"], h.attempt()["next"]) == (
            "skipped",
            error,
            None,
        )
        assert h.value("webhook_bridge_attempts_skipped_total", reason=error) == 1
        assert h.acks.count == 2 and not h.outputs.retries and not h.outputs.dead_letters
    else:
        assert sent == [changed[change]]
        body = json.loads(sender.sent[-1].body)
        assert body["webhook"] == {"id": "webhook_abc", "name": changed[change].name}


async def test_each_request_answered_marks_its_endpoint_succeeding_or_failing() -> None:
    """What WebhookBridgeNoDeliveries counts: endpoints, by their latest answer; a refusal of
    the SSRF guard made no request and marks none."""
    refused = AttemptResult(False, None, "destination_forbidden", 0.0, AT, refusal="private")
    h = Harness(FakeSender(failed(503), OK, refused))
    failing = make_webhook("failing", host="down.example")
    await h.run(make_job(webhook=failing))
    await h.run(make_job(webhook=make_webhook("fine", host="up.example")))
    await h.run(make_job(webhook=make_webhook("refused", host="inside.example")))
    recent = h.deliverer._metrics.recent_endpoints
    assert (recent.failing(), recent.succeeding()) == (1, 1)
    assert recent.count(False) == 1
