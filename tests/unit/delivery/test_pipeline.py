"""bridge.delivery.pipeline.Pipeline driving a real Deliverer, with a fake sender and fake durable
outputs.

The sender is any object with ``async def send(delivery) -> AttemptResult``; the outputs record
what would be written to Kafka; metrics live on a fresh ``CollectorRegistry``. Progress is
observed through the fakes with ``asyncio.wait_for`` deadlines; there are no timed sleeps.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError
from prometheus_client import CollectorRegistry

from bridge.api.control import delivery_state
from bridge.attempts.record import Attempt
from bridge.contract.events import Event
from bridge.contract.payload import EncodedEvent, build_body, delivery_id
from bridge.contract.schemas import schema_errors
from bridge.delivery import pipeline as pipeline_module
from bridge.delivery.deliverer import Deliverer
from bridge.delivery.endpoint_health import EndpointHealth
from bridge.delivery.job import Job, SourceRef
from bridge.delivery.pending_retry import PendingRetry, parse_retry
from bridge.delivery.pipeline import Pipeline
from bridge.delivery.retry_policy import RetryPolicy
from bridge.errors import InvalidRecord
from bridge.http.base import AttemptResult
from bridge.metrics import Metrics
from bridge.subscriptions.freshness import TableFreshness
from bridge.subscriptions.index import SubscriptionIndex
from bridge.subscriptions.webhook import Webhook
from bridge.worker.retry_intake import RetryIntake
from tests.support.clocks import FakeClock
from tests.support.fakes import Acks, FakeOutputs
from tests.support.jobs import Outgoing
from tests.support.waiting import PROMPT, eventually

SECRET_PREFIX = "whsec_pipeline_"
NOW = datetime(2024, 1, 15, 10, 30, 2, 500000, tzinfo=UTC)
NOW_TS = NOW.timestamp()
AT = "2024-01-15T10:30:01.000Z"
OK = AttemptResult(True, 200, None, 0.125, AT)
DELIVERIES = "webhook_bridge_deliveries_total"
SOURCE = SourceRef("postion.events", 2, 41, b"site_789")
RETRY_SOURCE = SourceRef("postion.webhooks.retry.1", 0, 9, b"w")
#: Two retries at most: the first after 5 s, the second after 60 s (no jitter).
SCHEDULE = (5.0, 60.0)


def webhook(
    webhook_id: str,
    *,
    site_id: str | None = "site_789",
    user_id: str = "user_456",
    events: tuple[str, ...] = ("*",),
    active: bool = True,
    name: str | None = None,
) -> Webhook:
    return Webhook(
        id=webhook_id,
        name=name if name is not None else f"hook {webhook_id}",
        url=f"https://hooks.example/{webhook_id}",
        secret=SECRET_PREFIX + webhook_id,
        events=frozenset(events),
        site_id=site_id,
        user_id=user_id,
        active=active,
    )


def make_event(
    event_type: str = "post.created",
    *,
    event_id: str = "evt_1",
    site_id: str = "site_789",
    user_id: str = "user_456",
    data: dict[str, Any] | None = None,
) -> Event:
    return Event(
        id=event_id,
        type=event_type,
        data=data if data is not None else {"id": "post_123", "title": "My New Post"},
        timestamp="2024-01-15T10:30:00Z",
        site_id=site_id,
        user_id=user_id,
    )


class ScriptedSender:
    """Answers each delivery at once: ``results[webhook_id]``, else success."""

    def __init__(self, results: dict[str, AttemptResult] | None = None) -> None:
        self.results = results or {}
        self.sent: list[Outgoing] = []

    async def send(self, job: Job, body: bytes) -> AttemptResult:
        delivery = Outgoing(job, body)
        self.sent.append(delivery)
        return self.results.get(delivery.webhook.id, OK)


class BlockingSender:
    """Every send waits until its webhook's gate is set."""

    def __init__(self) -> None:
        self.gates: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.started: list[str] = []
        self.finished: list[str] = []

    async def send(self, job: Job, body: bytes) -> AttemptResult:
        delivery = Outgoing(job, body)
        self.started.append(delivery.webhook.id)
        await self.gates[delivery.webhook.id].wait()
        self.finished.append(delivery.webhook.id)
        return OK

    def release(self, webhook_id: str) -> None:
        self.gates[webhook_id].set()


class CrashingSender(ScriptedSender):
    """Raises (a bug, not an HTTP outcome) for the deliveries of ``event_id``."""

    def __init__(self, event_id: str) -> None:
        super().__init__()
        self.event_id = event_id

    async def send(self, job: Job, body: bytes) -> AttemptResult:
        if job.event.id == self.event_id:
            raise RuntimeError("bug in the sender")
        return await super().send(job, body)


class FixedFreshness:
    def __init__(self, current: bool) -> None:
        self.current = current
        self.calls: list[float] = []

    def received(self, source: Any) -> None:
        pass

    def covers(self, received_at: float, source: Any = None) -> bool:
        return self.current and bool(self.calls)

    async def wait_current(self, received_at: float, source: Any = None) -> bool:
        self.calls.append(received_at)
        return self.current


class Harness:
    def __init__(
        self,
        webhooks: list[Webhook],
        sender: Any,
        *,
        max_in_flight: int = 64,
        max_pending: int = 4096,
        max_body_bytes: int = 1024 * 1024,
        freshness: Any = None,
        clock: Callable[[], float] = lambda: 123.0,
    ) -> None:
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.outputs = FakeOutputs()
        self.sender = sender
        self.index = SubscriptionIndex(webhooks)
        self.deliverer = Deliverer(
            sender=sender,
            outputs=self.outputs,
            metrics=self.metrics,
            policy=RetryPolicy(SCHEDULE, jitter=0.0, rand=lambda: 0.0),
            health=EndpointHealth(5 * 86400.0, {}.get),
            max_in_flight=max_in_flight,
            # Every test webhook is on the same host: keep endpoint isolation out of the way,
            # and the share of slow endpoints and those not yet heard from (no share).
            endpoint_max_in_flight=1000,
            endpoint_max_queued=1000,
            slow_endpoint_share=1.0,
            breaker_threshold=1000,
            breaker_cooldown=30.0,
            max_body_bytes=max_body_bytes,
            clock=lambda: 123.0,
            wall_time=lambda: NOW_TS,
        )
        self.pipeline = Pipeline(
            index=self.index,
            deliverer=self.deliverer,
            outputs=self.outputs,
            metrics=self.metrics,
            max_pending=max_pending,
            freshness=freshness,
            wall_time=lambda: NOW_TS,
            clock=clock,
        )

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    async def settled(self) -> None:
        assert await self.pipeline.drain(PROMPT) == 0


async def settle() -> None:
    """Let every ready task run until it blocks (a yield, not a timed wait)."""
    for _ in range(20):
        await asyncio.sleep(0)


def assert_valid_dead_letter(record: dict[str, Any], source: SourceRef = SOURCE) -> None:
    assert schema_errors("deadletter", record) == []
    assert record["dead_lettered_at"] == "2024-01-15T10:30:02.500Z"
    assert record["source"] == {
        "topic": source.topic,
        "partition": source.partition,
        "offset": source.offset,
        "key": None if source.key is None else source.key.decode(),
    }


def retry_record(
    hook: Webhook,
    *,
    attempt: int,
    event: Event | None = None,
    not_before: float = NOW_TS,
    webhook_created_at: str | None = None,
    replayed: bool = False,
    enqueued_at: float = NOW_TS - 60,
    recovery_id: str | None = None,
    deferrals: int = 0,
) -> bytes:
    event = event if event is not None else make_event()
    history = tuple(
        AttemptResult(False, 500, "http_status", 0.5, AT).as_record() for _ in range(attempt - 1)
    ) + tuple(
        AttemptResult(False, None, "endpoint_busy", 0.0, AT).as_record() for _ in range(deferrals)
    )
    return PendingRetry(
        delivery_id=delivery_id(event.id, hook.id),
        webhook_id=hook.id,
        event=event,
        attempt=attempt,
        not_before=not_before,
        enqueued_at=enqueued_at,
        history=history,
        webhook_created_at=webhook_created_at,
        replayed=replayed,
        recovery_id=recovery_id,
    ).to_bytes()


# ------------------------------------------------------------------------ deliveries


async def test_one_delivery_per_matching_webhook() -> None:
    hooks = [
        webhook("w-site"),
        webhook("w-account", site_id=None),
        webhook("w-posts", events=("post.created",)),
        webhook("w-other-type", events=("post.deleted",)),
        webhook("w-other-site", site_id="site_000"),
        webhook("w-inactive", active=False),
    ]
    h = Harness(hooks, ScriptedSender())
    event = make_event()
    acks = Acks()
    await h.pipeline.handle_event(event.to_bytes(), SOURCE, acks)
    await h.settled()

    sent = {d.webhook.id: d for d in h.sender.sent}
    assert sorted(sent) == ["w-account", "w-posts", "w-site"]
    encoded = EncodedEvent.of(event)
    for webhook_id, delivery in sent.items():
        assert delivery.delivery_id == delivery_id("evt_1", webhook_id)
        assert delivery.job.event.id == "evt_1"
        assert delivery.job.event.type == "post.created"
        assert delivery.body == build_body(encoded, delivery.webhook)
        assert delivery.job.event.occurred_at == datetime(2024, 1, 15, 10, 30, tzinfo=UTC)
    assert acks.count == 1
    assert h.outputs.dead_letters == []
    assert h.outputs.retries == []
    assert sorted(r["webhook_id"] for _, r in h.outputs.attempts) == sorted(sent)
    assert {(r["outcome"], r["attempt"], r["next"]) for _, r in h.outputs.attempts} == {
        ("success", 1, None)
    }

    assert h.value("webhook_bridge_events_total", event_type="post.created") == 1
    assert h.value(DELIVERIES, event_type="post.created", outcome="delivered") == 3
    assert (
        h.value("webhook_bridge_delivery_attempts_total", outcome="success", status_class="2xx")
        == 3
    )
    assert h.value("webhook_bridge_http_request_duration_seconds_count", outcome="success") == 3
    assert h.value("webhook_bridge_http_request_duration_seconds_sum", outcome="success") == 0.375
    assert h.value("webhook_bridge_end_to_end_latency_seconds_count") == 3
    assert h.value("webhook_bridge_end_to_end_latency_seconds_sum") == 7.5
    assert h.value("webhook_bridge_in_flight_requests") == 0
    assert h.pipeline.in_flight == 0


async def test_ack_only_after_all_deliveries_finished() -> None:
    sender = BlockingSender()
    h = Harness([webhook("w1"), webhook("w2")], sender)
    acks = Acks()
    await h.pipeline.handle_event(make_event().to_bytes(), SOURCE, acks)
    await eventually(lambda: len(sender.started) == 2)
    assert acks.count == 0
    assert h.pipeline.in_flight == 2
    assert h.value("webhook_bridge_in_flight_requests") == 2

    sender.release("w1")
    await eventually(lambda: h.pipeline.in_flight == 1)
    await settle()
    assert acks.count == 0
    assert h.value("webhook_bridge_in_flight_requests") == 1

    sender.release("w2")
    await h.settled()
    assert acks.count == 1
    assert sorted(sender.finished) == ["w1", "w2"]
    assert h.value("webhook_bridge_in_flight_requests") == 0


async def test_no_matching_webhook_acks_at_once() -> None:
    h = Harness([webhook("w", site_id="elsewhere")], ScriptedSender())
    acks = Acks()
    await h.pipeline.handle_event(make_event().to_bytes(), SOURCE, acks)
    assert acks.count == 1
    assert h.pipeline.in_flight == 0
    assert h.sender.sent == []
    assert h.outputs.dead_letters == []
    assert h.value("webhook_bridge_events_total", event_type="post.created") == 1


async def test_test_event_goes_only_to_the_named_webhook() -> None:
    hooks = [webhook("named", events=("post.created",)), webhook("star")]
    h = Harness(hooks, ScriptedSender())
    acks = Acks()
    event = make_event("test.event", data={"webhook_id": "named"})
    await h.pipeline.handle_event(event.to_bytes(), SOURCE, acks)
    await h.settled()
    assert [d.webhook.id for d in h.sender.sent] == ["named"]
    assert h.sender.sent[0].job.event.type == "test.event"
    assert acks.count == 1


# ------------------------------------------------------------------- invalid records

INVALID: list[tuple[bytes | None, str]] = [
    (None, "malformed_json"),
    (b"{", "malformed_json"),
    (b"[1, 2]", "not_an_object"),
    (make_event().to_bytes().replace(b"post.created", b"post.edited"), "unknown_event_type"),
    (make_event(data={"id": "p"}).to_bytes(), "schema_invalid"),
    (make_event().to_bytes().replace(b"10:30:00Z", b"10:30:00"), "schema_invalid"),
    (
        make_event().to_bytes().replace(b'"post_123"', b'"p","n":9007199254740993'),
        "unsafe_integer",
    ),
    # Data of 253 and 255 levels, past MAX_DATA_DEPTH: accepted, delivered, and its retry record
    # or dead letter (or a page of /v1/dead-letters listing it) not written, until 2026-12-07.
    *(
        (
            make_event().to_bytes().replace(b'"post_123"', b'"p","x":' + b"[" * n + b"]" * n),
            "too_deep",
        )
        for n in (252, 254)
    ),
]


@pytest.mark.parametrize(("raw", "reason"), INVALID)
async def test_invalid_record_is_dead_lettered_and_acked(raw: bytes | None, reason: str) -> None:
    h = Harness([webhook("w")], ScriptedSender())
    acks = Acks()
    await h.pipeline.handle_event(raw, SOURCE, acks)
    assert acks.count == 1
    assert h.sender.sent == []
    ((key, record),) = h.outputs.dead_letters
    assert key == b"site_789"
    assert record["reason"] == reason
    assert record["detail"]
    assert record["event"] is None
    assert record["raw"] == (None if raw is None else raw.decode("utf-8"))
    assert record["webhook_id"] is None
    assert record["delivery_id"] is None
    assert record["attempts"] == []
    assert_valid_dead_letter(record)
    assert h.value("webhook_bridge_events_total", event_type="invalid") == 1
    assert h.value("webhook_bridge_dead_letters_total", reason=reason) == 1


async def test_invalid_record_without_key_is_dead_lettered_without_key() -> None:
    h = Harness([], ScriptedSender())
    acks = Acks()
    source = SourceRef("other.events", 0, 7)
    await h.pipeline.handle_event(b"\xff\xfe", source, acks)
    ((key, record),) = h.outputs.dead_letters
    assert key is None
    assert record["reason"] == "malformed_json"
    assert record["raw"] == "\ufffd\ufffd"
    assert_valid_dead_letter(record, source)
    assert acks.count == 1


# ------------------------------------------------------------------- failed delivery


@pytest.mark.parametrize(
    ("result", "status_class"),
    [
        (AttemptResult(False, 500, "http_status", 0.5, AT), "5xx"),
        (AttemptResult(False, 302, "redirect", 0.5, AT), "3xx"),
        (AttemptResult(False, None, "timeout", 30.0, AT), "none"),
    ],
)
async def test_failed_first_attempt_is_scheduled_for_retry(
    result: AttemptResult, status_class: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    bad, good = webhook("w-bad"), webhook("w-good")
    h = Harness([bad, good], ScriptedSender({"w-bad": result}))
    event = make_event()
    acks = Acks()
    await h.pipeline.handle_event(event.to_bytes(), SOURCE, acks)
    await h.settled()
    assert acks.count == 1
    assert h.outputs.dead_letters == []

    ((tier, key, value),) = h.outputs.retries
    assert (tier, key) == (0, b"w-bad")
    pending = parse_retry(value)
    assert pending.delivery_id == delivery_id("evt_1", "w-bad")
    assert pending.webhook_id == "w-bad"
    assert pending.event == event
    assert pending.attempt == 2
    assert pending.not_before == NOW_TS + SCHEDULE[0]
    assert [dict(a) for a in pending.history] == [result.as_record()]

    (failed,) = [r for _, r in h.outputs.attempts if r["webhook_id"] == "w-bad"]
    assert (failed["outcome"], failed["attempt"], failed["next"]) == ("failure", 1, "retry")
    assert (failed["status"], failed["error"]) == (result.status, result.error)

    assert SECRET_PREFIX not in h.outputs.everything()
    assert SECRET_PREFIX not in caplog.text
    assert h.value("webhook_bridge_retries_scheduled_total", tier="1") == 1
    assert h.value(DELIVERIES, event_type="post.created", outcome="delivered") == 1
    assert h.value(DELIVERIES, event_type="post.created", outcome="dead_lettered") == 0
    assert (
        h.value(
            "webhook_bridge_delivery_attempts_total", outcome="failure", status_class=status_class
        )
        == 1
    )
    assert h.value("webhook_bridge_http_request_duration_seconds_count", outcome="failure") == 1
    # Only the successful delivery has an end-to-end latency.
    assert h.value("webhook_bridge_end_to_end_latency_seconds_count") == 1


async def test_last_failed_attempt_is_dead_lettered_with_its_history(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    hook = webhook("w")
    last = AttemptResult(False, 503, "http_status", 0.25, AT)
    h = Harness([hook], ScriptedSender({"w": last}))
    acks = Acks()
    final = len(SCHEDULE) + 1
    await h.pipeline.handle_retry(retry_record(hook, attempt=final), RETRY_SOURCE, acks, 2)
    await h.settled()
    assert acks.count == 1
    assert h.outputs.retries == []

    ((key, record),) = h.outputs.dead_letters
    assert key == b"w"
    assert record["reason"] == "attempts_exhausted"
    assert record["detail"] == f"{final} attempts; last: HTTP 503"
    assert record["webhook_id"] == "w"
    assert record["delivery_id"] == delivery_id("evt_1", "w")
    assert record["event"] == make_event().envelope()
    assert len(record["attempts"]) == final
    assert record["attempts"][-1] == last.as_record()
    assert_valid_dead_letter(record, RETRY_SOURCE)

    (attempt,) = [r for _, r in h.outputs.attempts]
    assert (attempt["attempt"], attempt["next"]) == (final, "dead_letter")
    assert SECRET_PREFIX not in h.outputs.everything()
    assert SECRET_PREFIX not in caplog.text
    assert h.value("webhook_bridge_dead_letters_total", reason="attempts_exhausted") == 1
    assert h.value(DELIVERIES, event_type="post.created", outcome="dead_lettered") == 1


async def test_due_retry_is_delivered_with_the_same_delivery_id() -> None:
    hook = webhook("w")
    h = Harness([hook], ScriptedSender())
    acks = Acks()
    await h.pipeline.handle_retry(retry_record(hook, attempt=2), RETRY_SOURCE, acks, 1)
    await h.settled()
    (delivery,) = h.sender.sent
    assert delivery.delivery_id == delivery_id("evt_1", "w")
    assert delivery.body == build_body(EncodedEvent.of(make_event()), hook)
    assert acks.count == 1
    assert h.value("webhook_bridge_retry_wait_seconds_count", tier="1") == 1
    assert h.value("webhook_bridge_retry_wait_seconds_sum", tier="1") == 60.0


@pytest.mark.parametrize("tier", [1, 2, len(SCHEDULE), len(SCHEDULE) + 2])
@pytest.mark.parametrize("ahead", [SCHEDULE[-1] + 1, 10 * 365 * 86400.0, 1e300])
async def test_a_retry_due_past_its_tiers_delay_waits_that_delay_at_most(
    monkeypatch: pytest.MonkeyPatch, tier: int, ahead: float
) -> None:  # (tiers past the schedule, as after it shrank, wait the last tier's delay)
    """A record of a tier is due at most the tier's delay after it was written: one due later
    (a writer's clock far ahead, or a hostile record) is attempted after that delay, rather
    than holding up its tier's partition until then (until 2026-12-05: for good, at 1e300).
    Tiers count from 1, as the workers' retry agents number them (until 2026-12-06 the next
    tier's delay was taken)."""
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    hook = webhook("w")
    h = Harness([hook], ScriptedSender())
    monkeypatch.setattr(h.pipeline, "_sleep", sleep)
    acks = Acks()
    raw = retry_record(hook, attempt=2, not_before=NOW_TS + ahead)
    await asyncio.wait_for(h.pipeline.handle_retry(raw, RETRY_SOURCE, acks, tier), PROMPT)
    await h.settled()
    assert slept == [SCHEDULE[min(tier - 1, len(SCHEDULE) - 1)]]
    assert len(h.sender.sent) == 1 and acks.count == 1


async def test_retries_due_far_ahead_hold_their_partition_one_tier_delay_in_all(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Records of one partition due further ahead than their tier's delay (a writer whose clock
    runs ahead, or a hostile record) are each taken as due the tier's delay after the intake
    took them from Kafka, so together they hold the partition one delay, and a correct
    record behind them is attempted when due. Until 2026-12-07 each one's delay counted from
    its turn: the fourth was attempted four delays after it was taken, the one behind it too."""
    clock = FakeClock(500.0)

    def wall_time() -> float:
        return NOW_TS + (clock.now - 500.0)

    async def sleep(seconds: float) -> None:
        clock.now += seconds
        await asyncio.sleep(0)

    attempted: dict[str, float] = {}

    class Sender(ScriptedSender):
        async def send(self, job: Job, body: bytes) -> AttemptResult:
            attempted[job.event.id] = clock.now
            return await super().send(job, body)

    hook = webhook("w")
    h = Harness([hook], Sender())
    monkeypatch.setattr(h.pipeline, "_sleep", sleep)
    monkeypatch.setattr(h.pipeline, "_clock", clock)
    monkeypatch.setattr(h.pipeline, "_wall_time", wall_time)
    tier_delay = SCHEDULE[0]
    intake = RetryIntake(
        h.pipeline.handle_retry,
        {RETRY_SOURCE.topic: 1},
        on_full=lambda *_: None,
        on_drop=lambda *_: None,
        clock=clock,
    )
    due = [1e300, NOW_TS + 3600.0, NOW_TS + 100.0, NOW_TS + 10 * tier_delay, NOW_TS + tier_delay]
    for offset, not_before in enumerate(due):
        raw = retry_record(
            hook, attempt=2, event=make_event(event_id=f"e{offset}"), not_before=not_before
        )
        intake.offer(raw, dataclasses.replace(RETRY_SOURCE, offset=offset), Acks())
    try:
        await eventually(lambda: len(attempted) == len(due))
    finally:
        await intake.close()
    await h.settled()
    assert max(attempted.values()) <= 500.0 + tier_delay, attempted
    assert attempted["e0"] == 500.0 + tier_delay  # the first waits the whole delay
    assert list(attempted) == [f"e{offset}" for offset in range(len(due))]  # in offset order


async def test_retry_for_a_deleted_or_inactive_webhook_is_dropped() -> None:
    inactive = webhook("w-off", active=False)
    h = Harness([inactive], ScriptedSender())
    for hook in (inactive, webhook("w-deleted")):
        acks = Acks()
        await h.pipeline.handle_retry(retry_record(hook, attempt=2), RETRY_SOURCE, acks, 1)
        assert acks.count == 1
    assert h.sender.sent == []
    assert h.outputs.dead_letters == []
    assert h.value("webhook_bridge_retries_cancelled_total") == 2
    assert [(key, record["error"], record["next"]) for key, record in h.outputs.attempts] == [
        (b"w-off", "webhook_inactive", None),
        (b"w-deleted", "webhook_deleted", None),
    ]


@pytest.mark.parametrize(
    ("now", "event"),
    [
        # moved to another site (and URL) since: its old site's event is not its to get
        (webhook("w", site_id="site_B", user_id="user_B"), make_event()),
        # made account-wide for another account
        (webhook("w", site_id=None, user_id="user_B"), make_event()),
        # its filter narrowed to other types
        (webhook("w", events=("post.deleted",)), make_event()),
        # a test event of the account it no longer belongs to
        (
            webhook("w", user_id="user_B"),
            make_event("test.event", data={"webhook_id": "w", "message": "hi"}),
        ),
    ],
)
async def test_a_retry_goes_only_to_a_webhook_that_still_gets_its_event(
    now: Webhook, event: Event
) -> None:
    """A retry (a deferred first attempt, a replayed letter) is attempted under the same rule
    as the first attempt, against the webhook as it is when it falls due (until 2026-12-06 one
    moved to another site got its old site's events, signed with its new secret, at its new
    URL)."""
    h = Harness([now], ScriptedSender())
    acks = Acks()
    await h.pipeline.handle_retry(
        retry_record(webhook("w"), attempt=2, event=event), RETRY_SOURCE, acks, 1
    )
    await h.settled()
    assert acks.count == 1
    assert h.sender.sent == [] and h.outputs.dead_letters == []
    assert h.value("webhook_bridge_retries_cancelled_total") == 1
    # Recorded as the delivery's last word: skipped, nothing next (since 2026-12-06).
    [(key, record)] = h.outputs.attempts
    assert key == b"w" and schema_errors("attempt", record) == []
    assert (record["outcome"], record["error"], record["next"], record["attempt"]) == (
        "skipped",
        "not_receiving",
        None,
        2,
    )
    assert delivery_state([Attempt.of(record)]) == "dropped"
    # As it was, it gets the retry.
    before = Harness([webhook("w")], ScriptedSender())
    await before.pipeline.handle_retry(
        retry_record(webhook("w"), attempt=2, event=event), RETRY_SOURCE, Acks(), 1
    )
    await before.settled()
    assert len(before.sender.sent) == 1


async def test_a_dropped_retry_whose_record_cannot_be_written_is_acknowledged_all_the_same() -> (
    None
):
    """Its record is for the log alone: the broker failing it leaves the retry dropped and
    acknowledged, not holding its partition's commits back (the record was new 2026-12-06)."""
    h = Harness([webhook("w", active=False)], ScriptedSender())
    h.outputs.hold_attempts = True
    acks = Acks()
    handling = asyncio.ensure_future(
        h.pipeline.handle_retry(retry_record(webhook("w"), attempt=2), RETRY_SOURCE, acks, 1)
    )
    await eventually(lambda: h.outputs.attempt_writes or None)
    h.outputs.attempt_writes[0].set_exception(KafkaTimeoutError())
    await asyncio.wait_for(handling, PROMPT)
    assert acks.count == 1 and h.sender.sent == [] and h.outputs.dead_letters == []


class RetryWriteFails(FakeOutputs):
    """The producer gives up on every retry-tier write (request timeout)."""

    async def retry(self, tier: int, key: bytes, value: bytes) -> None:
        self.calls.append("retry")
        raise KafkaTimeoutError()


class AttemptWriteFails(FakeOutputs):
    """The producer gives up on every attempt record."""

    async def attempt(self, key: bytes, record: dict[str, Any]) -> asyncio.Future[Any]:
        await super().attempt(key, record)
        failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        failed.set_exception(KafkaTimeoutError())
        return failed


def outputs_of(h: Harness, outputs: FakeOutputs) -> FakeOutputs:
    h.outputs = h.deliverer._outputs = h.pipeline._outputs = outputs  # type: ignore[assignment]
    return outputs


@pytest.mark.parametrize("attempt", [1, 2])
async def test_a_retry_that_cannot_be_written_ends_the_delivery_in_the_log_and_the_letter(
    attempt: int,
) -> None:
    """The delivery's attempt failed and its retry cannot be written: it is dead-lettered
    (``internal_error``) with every attempt, this one included, and the log's last record of it
    says so. Until 2026-12-07 the attempt was recorded "retry" (due at ``next_at``) before the
    retry write failed: the log said "retrying" for good, and the letter lacked the attempt."""
    h = Harness([webhook("w")], ScriptedSender({"w": AttemptResult(False, 503, None, 0.1, AT)}))
    outputs = outputs_of(h, RetryWriteFails())
    acks = Acks()
    if attempt == 1:
        await h.pipeline.handle_event(make_event().to_bytes(), SOURCE, acks)
    else:
        await h.pipeline.handle_retry(retry_record(webhook("w"), attempt=2), RETRY_SOURCE, acks, 1)
    await h.settled()
    assert acks.count == 1
    log = [Attempt.of(record) for _, record in outputs.attempts]
    assert delivery_state(log) == "dead_lettered"
    [(_, letter)] = outputs.dead_letters
    assert [a["status"] for a in letter["attempts"]] == [500] * (attempt - 1) + [503]
    assert (letter["reason"], letter["detail"]) == (
        "internal_error",
        "writing its retry: KafkaTimeoutError",
    )
    assert [a.next for a in log] == ["dead_letter"]
    assert outputs.calls[-3:] == ["retry", "attempt", "dead_letter"]
    assert h.value("webhook_bridge_dead_letters_total", reason="internal_error") == 1
    assert not h.value("webhook_bridge_retries_scheduled_total", tier=str(attempt))


async def test_a_failed_attempt_whose_record_cannot_be_written_still_retries() -> None:
    """Its retry, written first, settles the delivery and holds the attempt in its history:
    the delivery goes on, not dead-lettered as well (a later attempt would deliver it)."""
    h = Harness([webhook("w")], ScriptedSender({"w": AttemptResult(False, 503, None, 0.1, AT)}))
    outputs = outputs_of(h, AttemptWriteFails())
    acks = Acks()
    await h.pipeline.handle_event(make_event().to_bytes(), SOURCE, acks)
    await h.settled()
    assert acks.count == 1 and outputs.dead_letters == []
    [(tier, _, value)] = outputs.retries
    pending = parse_retry(value)
    assert (tier, pending.attempt) == (0, 2)
    assert [a["status"] for a in pending.history] == [503]


@pytest.mark.parametrize("active", [True, False])
async def test_a_retry_record_whose_attempt_no_json_reader_keeps_is_dead_lettered(
    active: bool,
) -> None:
    """``"attempt": 2**53 + 1`` was read, then failed to encode in the record written of it:
    for a webhook turned off, the retry was never acknowledged and its partition's commits
    stopped for good (dead-lettered as the bridge's own error otherwise), until 2026-12-07."""
    h = Harness([webhook("w", active=active)], ScriptedSender())
    value = json.loads(retry_record(webhook("w"), attempt=1))
    value["attempt"] = 2**53 + 1
    acks = Acks()
    await h.pipeline.handle_retry(json.dumps(value).encode(), RETRY_SOURCE, acks, 1)
    await h.settled()
    assert acks.count == 1 and h.sender.sent == []
    assert [letter["reason"] for _, letter in h.outputs.dead_letters] == ["invalid_retry_record"]


def created(hook: Webhook, created_at: str) -> Webhook:
    return dataclasses.replace(hook, extra={"created_at": created_at})


async def test_a_retry_for_a_deleted_webhook_whose_id_was_taken_again_is_dropped() -> None:
    """A retry (or a replayed letter) names the ``created_at`` of the webhook it was made for:
    the webhook of that id now, created later (the first one deleted, its id used again by
    another site's), does not get the first one's event; the same webhook does, and so does
    a retry written before retries named it."""
    first, again = "2026-01-15T09:00:00.000Z", "2026-01-15T09:30:00.000Z"
    now = created(webhook("w"), again)
    h = Harness([now], ScriptedSender())
    acks = Acks()
    await h.pipeline.handle_retry(
        retry_record(now, attempt=2, webhook_created_at=first), RETRY_SOURCE, acks, 1
    )
    assert acks.count == 1
    assert h.sender.sent == []
    assert h.value("webhook_bridge_retries_cancelled_total") == 1
    for offset, marker in enumerate((again, None)):
        source = dataclasses.replace(RETRY_SOURCE, offset=offset)
        # (each a step of its own: the same step's second record would join the first)
        raw = retry_record(now, attempt=2, webhook_created_at=marker, deferrals=offset)
        await h.pipeline.handle_retry(raw, source, acks, 1)
    await h.settled()
    assert [d.webhook.url for d in h.sender.sent] == [now.url, now.url]
    assert h.outputs.dead_letters == []


async def test_retries_and_dead_letters_name_the_webhook_they_were_made_for() -> None:
    """Made for a webhook with a ``created_at``, a failed delivery's retry and, at the last
    attempt, its dead letter carry it (valid records of their schemas)."""
    hook = created(webhook("w"), "2026-01-15T09:00:00.000Z")
    failing = AttemptResult(False, 503, "http_status", 0.25, AT)
    h = Harness([hook], ScriptedSender({"w": failing}))
    acks = Acks()
    await h.pipeline.handle_event(make_event().to_bytes(), SOURCE, acks)
    await h.settled()
    ((_, _, raw),) = h.outputs.retries
    assert parse_retry(raw).webhook_created_at == hook.created_at
    final = len(SCHEDULE) + 1
    await h.pipeline.handle_retry(
        retry_record(hook, attempt=final, webhook_created_at=hook.created_at),
        RETRY_SOURCE,
        acks,
        2,
    )
    await h.settled()
    ((_, letter),) = h.outputs.dead_letters
    assert letter["webhook_created_at"] == hook.created_at
    assert_valid_dead_letter(letter, RETRY_SOURCE)


async def test_invalid_retry_record_is_dead_lettered() -> None:
    h = Harness([webhook("w")], ScriptedSender())
    acks = Acks()
    await h.pipeline.handle_retry(b'{"attempt": 2}', RETRY_SOURCE, acks, 1)
    assert acks.count == 1
    ((key, record),) = h.outputs.dead_letters
    assert key == b"w"
    assert record["reason"] == "invalid_retry_record"
    assert record["raw"] == '{"attempt": 2}'
    assert_valid_dead_letter(record, RETRY_SOURCE)


# ------------------------------------------------------------------ payload too large


async def test_payload_too_large_is_per_webhook() -> None:
    small = webhook("w-small", name="s")
    large = webhook("w-large", name="L" * 500)
    event = make_event()
    limit = len(build_body(EncodedEvent.of(event), small))
    h = Harness([small, large], ScriptedSender(), max_body_bytes=limit)
    acks = Acks()
    await h.pipeline.handle_event(event.to_bytes(), SOURCE, acks)
    await h.settled()

    assert [d.webhook.id for d in h.sender.sent] == ["w-small"]
    ((key, record),) = h.outputs.dead_letters
    assert key == b"w-large"
    assert record["reason"] == "payload_too_large"
    assert record["webhook_id"] == "w-large"
    assert record["delivery_id"] == delivery_id("evt_1", "w-large")
    assert record["event"] == event.envelope()
    assert record["attempts"] == []
    assert_valid_dead_letter(record)
    assert SECRET_PREFIX not in json.dumps(record)
    assert h.outputs.retries == []
    assert acks.count == 1
    assert h.value("webhook_bridge_dead_letters_total", reason="payload_too_large") == 1
    assert h.value(DELIVERIES, event_type="post.created", outcome="dead_lettered") == 1


async def test_payload_too_large_for_every_webhook() -> None:
    h = Harness([webhook("w1"), webhook("w2")], ScriptedSender(), max_body_bytes=10)
    acks = Acks()
    await h.pipeline.handle_event(make_event().to_bytes(), SOURCE, acks)
    await h.settled()
    assert acks.count == 1
    assert h.sender.sent == []
    assert sorted(r["webhook_id"] for _, r in h.outputs.dead_letters) == ["w1", "w2"]
    assert {r["reason"] for _, r in h.outputs.dead_letters} == {"payload_too_large"}


# ----------------------------------------------------------------------- concurrency


async def test_third_delivery_waits_for_an_in_flight_slot() -> None:
    sender = BlockingSender()
    h = Harness([webhook("w1"), webhook("w2"), webhook("w3")], sender, max_in_flight=2)
    acks = Acks()
    await h.pipeline.handle_event(make_event().to_bytes(), SOURCE, acks)
    await eventually(lambda: len(sender.started) == 2)
    await settle()
    assert sender.started == ["w1", "w2"]
    assert h.value("webhook_bridge_in_flight_requests") == 2
    assert h.pipeline.in_flight == 3

    sender.release("w2")
    await eventually(lambda: len(sender.started) == 3)
    assert sender.started[2] == "w3"
    assert acks.count == 0

    sender.release("w1")
    sender.release("w3")
    await h.settled()
    assert acks.count == 1


async def test_reading_stops_while_too_many_jobs_are_pending() -> None:
    sender = BlockingSender()
    h = Harness([webhook("w1"), webhook("w2"), webhook("w3")], sender, max_pending=2)
    acks = Acks()
    handling = asyncio.create_task(h.pipeline.handle_event(make_event().to_bytes(), SOURCE, acks))
    await eventually(lambda: len(sender.started) == 2)
    await settle()
    assert not handling.done(), "handle_event() must wait while max_pending jobs are unsettled"
    assert h.pipeline.in_flight == 2

    sender.release("w1")
    await asyncio.wait_for(handling, PROMPT)
    await eventually(lambda: len(sender.started) == 3)
    sender.release("w2")
    sender.release("w3")
    await h.settled()
    assert acks.count == 1


async def test_events_share_the_slots_and_ack_independently() -> None:
    sender = BlockingSender()
    hooks = [webhook("w-a", site_id="site_a"), webhook("w-b", site_id="site_b")]
    h = Harness(hooks, sender, max_in_flight=2)
    ack_a, ack_b = Acks(), Acks()
    event_a = make_event(event_id="a", site_id="site_a")
    event_b = make_event(event_id="b", site_id="site_b")
    await h.pipeline.handle_event(event_a.to_bytes(), SOURCE, ack_a)
    await h.pipeline.handle_event(event_b.to_bytes(), SOURCE, ack_b)
    await eventually(lambda: len(sender.started) == 2)

    sender.release("w-b")
    await eventually(lambda: ack_b.count == 1)
    assert ack_a.count == 0

    sender.release("w-a")
    await h.settled()
    assert (ack_a.count, ack_b.count) == (1, 1)


async def test_a_sender_crash_dead_letters_the_job_as_an_internal_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = Harness([webhook("w")], CrashingSender("e1"), max_in_flight=1, max_pending=1)
    crashed = Acks()
    await h.pipeline.handle_event(make_event(event_id="e1").to_bytes(), SOURCE, crashed)
    await h.settled()
    assert crashed.count == 1
    [(key, letter)] = h.outputs.dead_letters
    assert key == b"w" and letter["reason"] == "internal_error"
    assert letter["detail"] == "delivering: RuntimeError"
    assert letter["event"]["id"] == "e1" and letter["delivery_id"]
    assert "bug in the sender" in caplog.text  # the traceback is logged
    assert h.value("webhook_bridge_dead_letters_total", reason="internal_error") == 1
    assert h.value("webhook_bridge_in_flight_requests") == 0

    # The only slot was released: the next event is not blocked.
    acks = Acks()
    await asyncio.wait_for(
        h.pipeline.handle_event(make_event(event_id="e2").to_bytes(), SOURCE, acks), PROMPT
    )
    await h.settled()
    assert acks.count == 1
    assert [d.job.event.id for d in h.sender.sent] == ["e2"]


async def test_a_crashed_job_whose_dead_letter_cannot_be_written_stays_unacknowledged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = Harness([webhook("w")], CrashingSender("e1"), max_in_flight=1, max_pending=1)
    h.outputs.dead_letter_error = RuntimeError("broker gone")
    crashed = Acks()
    await h.pipeline.handle_event(make_event(event_id="e1").to_bytes(), SOURCE, crashed)
    await h.settled()
    assert crashed.count == 0
    assert "stays unacknowledged" in caplog.text
    assert h.pipeline.in_flight == 0


@pytest.mark.parametrize("where", ["parse", "match", "encode"])
async def test_a_bug_while_matching_dead_letters_the_record_as_an_internal_error(
    where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bridge.delivery.pipeline as pipeline_module

    h = Harness([webhook("w")], ScriptedSender())

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("secret-looking detail")

    if where == "parse":
        monkeypatch.setattr(pipeline_module, "parse_event", boom)
    elif where == "match":
        monkeypatch.setattr(h.pipeline._index, "match", boom)
    else:
        monkeypatch.setattr(pipeline_module.EncodedEvent, "of", boom)
    acks = Acks()
    raw = make_event(event_id="e1").to_bytes()
    await h.pipeline.handle_event(raw, SOURCE, acks)
    await h.settled()
    assert acks.count == 1
    [(_, letter)] = h.outputs.dead_letters
    assert letter["reason"] == "internal_error" and letter["detail"] == "matching: KeyError"
    assert "secret-looking detail" not in json.dumps(letter)
    assert letter["raw"] == raw.decode() and letter["source"]["offset"] == SOURCE.offset
    assert h.sender.sent == []


async def test_drain_hands_unfinished_deliveries_to_the_retry_path() -> None:
    sender = BlockingSender()
    h = Harness([webhook("w")], sender)
    assert await h.pipeline.drain(PROMPT) == 0
    acks = Acks()
    await h.pipeline.handle_event(make_event().to_bytes(), SOURCE, acks)
    await eventually(lambda: len(sender.started) == 1)

    assert await h.pipeline.drain(0.01) == 1
    assert acks.count == 1
    ((tier, key, value),) = h.outputs.retries
    assert (tier, key) == (0, b"w")
    pending = parse_retry(value)
    assert pending.attempt == 1  # the same attempt: an interrupted one spends no entry
    assert [a["error"] for a in pending.history] == ["interrupted"]
    assert h.pipeline.in_flight == 0
    assert h.value("webhook_bridge_in_flight_requests") == 0


async def test_a_delivered_job_settles_when_its_attempt_record_is_acknowledged() -> None:
    h = Harness([webhook("w")], ScriptedSender(), max_pending=1)
    h.outputs.hold_attempts = True
    acks = Acks()
    await h.pipeline.handle_event(make_event(event_id="e1").to_bytes(), SOURCE, acks)
    await eventually(lambda: len(h.outputs.attempt_writes) == 1)
    await settle()
    # Delivered, its task ended, but not settled: the record and the slot wait for the broker.
    assert acks.count == 0
    assert h.pipeline.in_flight == 1
    assert h.value("webhook_bridge_pending_jobs") == 1
    following = asyncio.create_task(
        h.pipeline.handle_event(make_event(event_id="e2").to_bytes(), SOURCE, Acks())
    )
    await settle()
    assert not following.done(), "the unsettled job must keep its pending slot"

    h.outputs.attempt_writes[0].set_result(None)
    await eventually(lambda: acks.count == 1)
    await asyncio.wait_for(following, PROMPT)  # the slot came back
    h.outputs.attempt_writes[1].set_result(None)
    await h.settled()
    assert h.pipeline.in_flight == 0


@pytest.mark.parametrize("failing", ["attempt", "status"])
async def test_a_delivery_ending_its_webhooks_failing_is_counted_delivered_once(
    failing: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Delivered (200) after its webhook failed: its attempt record or the webhook's healthy
    status cannot be written. Dead-lettered internal_error as the bridge's own failure, as
    a delivery that changed no health is, but counted delivered alone (until 2026-12-07 it
    was counted dead_lettered as well)."""
    sender = ScriptedSender({"w": AttemptResult(False, 500, "http_status", 0.1, "t")})
    h = Harness([webhook("w")], sender)
    await h.pipeline.handle_event(make_event(event_id="e1").to_bytes(), SOURCE, Acks())
    await h.settled()
    assert [r["state"] for _, r in h.outputs.statuses] == ["failing"]

    sender.results.clear()
    if failing == "attempt":
        h.outputs.hold_attempts = True
    else:
        h.outputs.status_error = RuntimeError("status topic gone")
    acked = Acks()
    await h.pipeline.handle_event(make_event(event_id="e2").to_bytes(), SOURCE, acked)
    if failing == "attempt":
        await eventually(lambda: len(h.outputs.attempt_writes) == 2)
        h.outputs.attempt_writes[1].set_exception(RuntimeError("broker gone"))
    await eventually(lambda: h.pipeline.in_flight == 0)
    await settle()
    assert acked.count == 1
    assert h.value(DELIVERIES, event_type="post.created", outcome="delivered") == 1
    assert h.value(DELIVERIES, event_type="post.created", outcome="dead_lettered") == 0
    [(_, letter)] = h.outputs.dead_letters
    assert (letter["reason"], letter["detail"]) == (
        "internal_error",
        "recording its outcome: RuntimeError",
    )


async def test_an_attempt_record_that_cannot_be_written_dead_letters_its_job(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = Harness([webhook("w")], ScriptedSender(), max_pending=1)
    h.outputs.hold_attempts = True
    acked = Acks()
    await h.pipeline.handle_event(make_event(event_id="e1").to_bytes(), SOURCE, acked)
    await eventually(lambda: len(h.outputs.attempt_writes) == 1)
    h.outputs.attempt_writes[0].set_exception(RuntimeError("broker gone"))
    await eventually(lambda: h.pipeline.in_flight == 0)
    await settle()
    assert acked.count == 1
    [(_, letter)] = h.outputs.dead_letters
    assert letter["reason"] == "internal_error"
    assert letter["detail"] == "recording its outcome: RuntimeError"
    assert "broker gone" in caplog.text

    # The only slot was released: the next event is not blocked.
    h.outputs.hold_attempts = False
    acks = Acks()
    await asyncio.wait_for(
        h.pipeline.handle_event(make_event(event_id="e2").to_bytes(), SOURCE, acks), PROMPT
    )
    await h.settled()
    assert acks.count == 1


class HeldOutputs(FakeOutputs):
    """Retry and status writes wait for ``gate`` (a broker slow at shutdown)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def retry(self, tier: int, key: bytes, value: bytes) -> None:
        self.calls.append("retry held")
        await self.gate.wait()
        await super().retry(tier, key, value)

    async def status(self, key: bytes, record: dict[str, Any]) -> None:
        self.calls.append("status held")
        await self.gate.wait()
        await super().status(key, record)


async def _drained_while_recording(h: Harness, held: str) -> tuple[int, Acks]:
    """A job whose outcome is being recorded (its write ``held``) when a drain's timeout
    ends; the write then goes through. How many jobs the drain handed over, and the acks."""
    outputs = HeldOutputs()
    h.outputs = h.deliverer._outputs = h.pipeline._outputs = outputs  # type: ignore[assignment]
    acks = Acks()
    await h.pipeline.handle_event(make_event().to_bytes(), SOURCE, acks)
    await eventually(lambda: held in outputs.calls)
    draining = asyncio.create_task(h.pipeline.drain(0.01))
    await asyncio.sleep(0.05)  # past the drain's timeout: it hands over what it interrupts
    outputs.gate.set()
    return await asyncio.wait_for(draining, PROMPT), acks


class HeldLetters(FakeOutputs):
    """Dead-letter writes wait for ``gate``."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def dead_letter(self, key: bytes | None, record: dict[str, Any]) -> None:
        self.calls.append("dead_letter held")
        await self.gate.wait()
        await super().dead_letter(key, record)


async def test_a_drain_lets_the_dead_letter_of_a_crashed_job_be_written() -> None:
    """The sender raised (the bridge's bug): its job is dead-lettered internal_error. Until
    2026-12-07 a drain cancelled that write, the job ended unsettled and unlogged (its letter
    perhaps written, and the event delivered again after a restart)."""
    h = Harness([webhook("w")], CrashingSender("evt_1"))
    outputs = HeldLetters()
    h.outputs = h.deliverer._outputs = h.pipeline._outputs = outputs  # type: ignore[assignment]
    acks = Acks()
    await h.pipeline.handle_event(make_event().to_bytes(), SOURCE, acks)
    await eventually(lambda: "dead_letter held" in outputs.calls)
    draining = asyncio.create_task(h.pipeline.drain(0.01))
    await asyncio.sleep(0.05)  # past the drain's timeout: it hands over what it interrupts
    outputs.gate.set()
    handed = await asyncio.wait_for(draining, PROMPT)
    assert handed == 0 and acks.count == 1
    assert [record["reason"] for _, record in outputs.dead_letters] == ["internal_error"]


async def test_a_drain_lets_an_answered_failure_be_recorded_once() -> None:
    """Until 2026-12-06 the drain interrupted it while its outcome was written: recorded
    twice, as a failure and as an interrupted skip, with two retries."""
    h = Harness(
        [webhook("w")], ScriptedSender({"w": AttemptResult(False, 500, "http_status", 0.2, AT)})
    )
    # Its first failure: the endpoint's health (failing) is published, then the retry.
    handed, acks = await _drained_while_recording(h, "status held")
    assert handed == 0 and acks.count == 1
    assert len(h.sender.sent) == 1
    assert [record["error"] for _, record in h.outputs.attempts] == ["http_status"]
    assert len(h.outputs.retries) == 1
    assert h.value("webhook_bridge_attempts_skipped_total", reason="interrupted") == 0
    assert (
        h.value("webhook_bridge_delivery_attempts_total", outcome="failure", status_class="5xx")
        == 1
    )


async def test_a_drain_lets_a_delivered_job_be_recorded_rather_than_retried() -> None:
    """A webhook recovering from failing publishes its health after the delivery's record;
    until 2026-12-06 a drain then handed the delivered job to the retry path, and the next
    worker delivered it again."""
    h = Harness([webhook("w")], ScriptedSender())
    failing = {"w": {"webhook_id": "w", "state": "failing", "failing_since": NOW_TS - 100}}
    h.deliverer._health = EndpointHealth(5 * 86400.0, failing.get)
    handed, acks = await _drained_while_recording(h, "status held")
    assert handed == 0 and acks.count == 1
    assert h.outputs.retries == []
    assert [record["outcome"] for _, record in h.outputs.attempts] == ["success"]
    assert h.value("webhook_bridge_attempts_skipped_total", reason="interrupted") == 0
    assert h.value(DELIVERIES, event_type="post.created", outcome="delivered") == 1


async def test_a_delivery_whose_record_failed_is_counted_delivered_only() -> None:
    """Its receiver answered 200; the record of it is dead-lettered internal_error, and until
    2026-12-06 the delivery was counted dead_lettered as well."""
    h = Harness([webhook("w")], ScriptedSender())
    h.outputs.hold_attempts = True
    acks = Acks()
    await h.pipeline.handle_event(make_event().to_bytes(), SOURCE, acks)
    await eventually(lambda: len(h.outputs.attempt_writes) == 1)
    h.outputs.attempt_writes[0].set_exception(RuntimeError("broker gone"))
    await eventually(lambda: acks.count == 1)
    assert [letter["reason"] for _, letter in h.outputs.dead_letters] == ["internal_error"]
    assert h.value("webhook_bridge_dead_letters_total", reason="internal_error") == 1
    assert h.value(DELIVERIES, event_type="post.created", outcome="delivered") == 1
    assert h.value(DELIVERIES, event_type="post.created", outcome="dead_lettered") in (None, 0)


async def test_drain_waits_for_attempt_records_on_their_way() -> None:
    h = Harness([webhook("w")], ScriptedSender())
    h.outputs.hold_attempts = True
    acks = Acks()
    await h.pipeline.handle_event(make_event().to_bytes(), SOURCE, acks)
    await eventually(lambda: len(h.outputs.attempt_writes) == 1)

    draining = asyncio.create_task(h.pipeline.drain(PROMPT))
    await settle()
    assert not draining.done(), "drain() must wait for the delivered job's attempt record"
    h.outputs.attempt_writes[0].set_result(None)
    # Delivered jobs are not handed to the retry path: nothing was interrupted.
    assert await asyncio.wait_for(draining, PROMPT) == 0
    assert acks.count == 1
    assert h.outputs.retries == []


@pytest.mark.parametrize("replayed", [False, True])
async def test_attempts_of_a_delivery_sent_again_are_recorded_manual_and_so_are_its_retries(
    replayed: bool,
) -> None:
    """A retry record an operator wrote (a redelivery, a recovery, a dead letter replayed:
    ``replayed``) makes attempts recorded ``trigger`` ``manual``, and its retry record stays
    ``replayed``: the delivery log tells them from the event's own attempts, whose numbers
    they repeat (a redelivery counts from 1 again). Until 2026-12-06 nothing told them apart."""
    hook = webhook("w")
    h = Harness([hook], ScriptedSender({"w": FAILED}))
    recovery = "rec-1" if replayed else None
    raw = retry_record(hook, attempt=1, replayed=replayed, recovery_id=recovery)
    await h.pipeline.handle_retry(raw, RETRY_SOURCE, Acks(), 1)
    await h.settled()
    ((_, record),) = h.outputs.attempts
    assert schema_errors("attempt", record) == []
    assert record.get("trigger") == ("manual" if replayed else None)
    assert record.get("recovery_id") == recovery
    ((_, _, value),) = h.outputs.retries
    assert parse_retry(value).replayed is replayed
    assert parse_retry(value).recovery_id == recovery
    h.sender.results.clear()

    async def due_at_once(seconds: float) -> None:
        pass

    h.pipeline._sleep = due_at_once  # the retry is due in 5 s
    await h.pipeline.handle_retry(value, dataclasses.replace(RETRY_SOURCE, offset=10), Acks(), 1)
    await h.settled()
    assert h.outputs.attempts[-1][1].get("trigger") == ("manual" if replayed else None)
    assert h.outputs.attempts[-1][1].get("recovery_id") == recovery
    assert h.outputs.attempts[-1][1]["attempt"] == 2


# ------------------------------------------------------------------ a record read twice

JOINED = "webhook_bridge_jobs_joined_total"
FAILED = AttemptResult(False, 500, "http_status", 0.25, AT)


class GatedSender:
    """Every send waits for the gate, then answers ``result``."""

    def __init__(self, result: AttemptResult = OK) -> None:
        self.gate = asyncio.Event()
        self.result = result
        self.sent: list[Outgoing] = []

    async def send(self, job: Job, body: bytes) -> AttemptResult:
        self.sent.append(Outgoing(job, body))
        await self.gate.wait()
        return self.result


async def running(h: Harness, sender: GatedSender, raw: bytes) -> Acks:
    """Hand ``raw`` to the pipeline as a retry record read once, and wait until its job's
    request is made (held at ``sender``'s gate); its acknowledgements."""
    first = Acks()
    await h.pipeline.handle_retry(raw, RETRY_SOURCE, first, 1)
    await eventually(lambda: len(sender.sent) == 1)
    return first


@pytest.mark.parametrize("result", [OK, FAILED], ids=["delivered", "failed"])
async def test_a_retry_record_read_again_while_its_job_runs_makes_no_second_request(
    result: AttemptResult,
) -> None:
    """A rebalance that gives a retry tier's partition back reads its uncommitted records
    again, due already: the second read joins the job still running rather than sending the
    same attempt in the same millisecond and settling it twice (until 2026-12-06: two attempt
    records, and two records of the next retry, each attempted in turn)."""
    hook = webhook("w")
    sender = GatedSender(result)
    h = Harness([hook], sender)
    raw = retry_record(hook, attempt=2)
    first, again = await running(h, sender, raw), Acks()
    await h.pipeline.handle_retry(raw, RETRY_SOURCE, again, 1)
    await settle()
    assert len(sender.sent) == 1 and again.count == 0
    assert h.pipeline.in_flight == 2  # the joined job holds its slot as the job would
    sender.gate.set()
    await h.settled()
    assert len(sender.sent) == 1
    assert (first.count, again.count) == (1, 1)
    assert len(h.outputs.attempts) == 1
    assert len(h.outputs.retries) == (0 if result.success else 1)
    assert h.value(JOINED, state="running") == 1


@pytest.mark.parametrize("settled_first", [False, True], ids=["running", "settled"])
async def test_a_copy_of_a_retry_record_makes_no_second_request(settled_first: bool) -> None:
    """A write retried after its answer was lost can put a retry record in its tier twice (no
    idempotent producer): the copy, at the next offset, is due at the same moment and joins
    the first (until 2026-12-06 both were attempted in one millisecond, and each scheduled
    the next retry: the chain doubled). So does another record of the same step written at
    another time: the next owner's, after a crash lost the commit of the attempt that wrote
    the first (until 2026-12-07 both were attempted, and the sending went on twice to the end
    of its schedule). A record of another step of the delivery is attempted: one deferred
    since (its history longer), an operator's redelivery or recovery."""
    hook = webhook("w")
    sender = GatedSender(FAILED)
    h = Harness([hook], sender)
    raw = retry_record(hook, attempt=2)
    acks = [Acks() for _ in range(5)]
    await h.pipeline.handle_retry(raw, RETRY_SOURCE, acks[0], 1)
    await eventually(lambda: len(sender.sent) == 1)
    if settled_first:
        sender.gate.set()
        await h.settled()
    others = [
        raw,  # the copy
        retry_record(hook, attempt=2, enqueued_at=NOW_TS - 30),  # the next owner's
        retry_record(hook, attempt=2, deferrals=1),  # deferred since
        retry_record(hook, attempt=2, replayed=True, recovery_id="rec_1"),  # an operator's
    ]
    for n, other in enumerate(others, start=1):
        source = dataclasses.replace(RETRY_SOURCE, offset=RETRY_SOURCE.offset + n)
        await h.pipeline.handle_retry(other, source, acks[n], 1)
    sender.gate.set()
    await h.settled()
    sent = sorted((len(d.job.history), d.job.replayed) for d in sender.sent)
    assert sent == [(1, False), (1, True), (2, False)]  # the first, the deferred, the operator's
    assert [ack.count for ack in acks] == [1] * 5
    assert len(h.outputs.attempts) == 3 and len(h.outputs.retries) == 3
    assert h.value(JOINED, state="settled" if settled_first else "running") == 2


def _failed_letter(webhook_id: str) -> dict[str, Any]:
    """The dead letter of a delivery to ``webhook_id`` that failed once."""
    event = make_event()
    return {
        "webhook_id": webhook_id,
        "delivery_id": delivery_id(event.id, webhook_id),
        "event": event.envelope(),
        "attempts": [FAILED.as_record()],
    }


async def test_a_dead_letter_replayed_twice_is_sent_twice() -> None:
    """Each replay of a letter is a sending of its own (``replay_id``): the operator replays
    while the receiver is still broken, the delivery is dead-lettered again, the receiver is
    fixed, the same letter is replayed again (its first letter, read first). From `1cdce4c`
    until replays had ids the second was taken for the first's copy and settled without a
    request: the delivery never reached the receiver."""
    from bridge.admin.dead_letters import _replayed

    h = Harness([webhook("w")], ScriptedSender({"w": FAILED}))
    letter = _failed_letter("w")
    for n in range(2):
        replay = _replayed(letter, NOW_TS)
        assert replay is not None and replay.replay_id
        source = dataclasses.replace(RETRY_SOURCE, offset=RETRY_SOURCE.offset + n)
        await h.pipeline.handle_retry(replay.to_bytes(), source, Acks(), 1)
        await h.settled()
    assert len(h.sender.sent) == 2
    assert h.value(JOINED, state="settled") == 0
    # Its retries keep the replay's id: a copy of one (a crash's) still joins its chain.
    ((_, _, first), (_, _, second)) = h.outputs.retries
    assert parse_retry(first).replay_id != parse_retry(second).replay_id
    assert parse_retry(first).replay_id is not None


async def test_a_dead_letter_replayed_twice_by_an_earlier_version_is_sent_twice() -> None:
    """Replays written by a version before replays had ids (during a rolling upgrade, the
    earlier version's ``dlq replay`` or API): told apart by when each was written. Until
    2026-12-07 this version took the second for the first's copy and settled it without a
    request. A copy of one (same record, written twice) still joins it."""
    from bridge.admin.dead_letters import _replayed

    h = Harness([webhook("w")], ScriptedSender({"w": FAILED}))
    letter = _failed_letter("w")
    written = []
    for n in range(2):
        replay = _replayed(letter, NOW_TS + n)
        assert replay is not None
        record = replay.to_record()
        del record["replay_id"]  # as the earlier version wrote it
        written.append(json.dumps(record).encode())
    for n, raw in enumerate([written[0], written[0], written[1]]):
        source = dataclasses.replace(RETRY_SOURCE, offset=RETRY_SOURCE.offset + n)
        await h.pipeline.handle_retry(raw, source, Acks(), 1)
        await h.settled()
    assert len(h.sender.sent) == 2
    assert h.value(JOINED, state="settled") == 1  # the copy
    ((_, _, first), (_, _, second)) = h.outputs.retries
    assert parse_retry(first).replay_id != parse_retry(second).replay_id


async def test_a_record_read_again_after_its_jobs_settled_is_acknowledged_at_once() -> None:
    """Read again after its jobs settled here (their commit lost to the rebalance): nothing is
    attempted again, for an event's every webhook and for a retry."""
    hooks = [webhook("w1"), webhook("w2")]
    h = Harness(hooks, ScriptedSender({"w2": FAILED}))
    event = make_event().to_bytes()
    retry = retry_record(hooks[0], attempt=2)
    for _ in range(2):
        await h.pipeline.handle_event(event, SOURCE, Acks())
        await h.pipeline.handle_retry(retry, RETRY_SOURCE, Acks(), 1)
        await h.settled()
    acks = Acks()
    await h.pipeline.handle_event(event, SOURCE, acks)
    await h.pipeline.handle_retry(retry, RETRY_SOURCE, acks, 1)
    assert acks.count == 2 and h.pipeline.in_flight == 0
    assert len(h.sender.sent) == 3
    assert len(h.outputs.attempts) == 3 and len(h.outputs.retries) == 1
    assert h.value(JOINED, state="settled") == 6


async def test_a_joined_job_is_attempted_when_the_first_ends_unsettled() -> None:
    """The first read's job cancelled outside a drain (its record stays unacknowledged): the
    job read again is attempted, and settles its record."""
    hook = webhook("w")
    sender = GatedSender()
    h = Harness([hook], sender)
    raw = retry_record(hook, attempt=2)
    first, again = await running(h, sender, raw), Acks()
    (task,) = h.pipeline._tasks
    await h.pipeline.handle_retry(raw, RETRY_SOURCE, again, 1)
    task.cancel()
    await eventually(lambda: len(sender.sent) == 2)
    sender.gate.set()
    await h.settled()
    assert (first.count, again.count) == (0, 1)
    assert len(h.outputs.attempts) == 1
    assert h.value(JOINED, state="running") == 0


async def test_a_record_read_again_waiting_for_a_slot_the_first_frees_is_not_attempted() -> None:
    """Every pending slot taken (a backlog): the record read again waits for one, and gets the
    one its first read's job frees as it settles (until a review found it, the check for a
    settled job was made before that wait alone, and the job was attempted again)."""
    hook = webhook("w")
    sender = GatedSender()
    h = Harness([hook], sender, max_pending=1)
    raw = retry_record(hook, attempt=2)
    first, again = await running(h, sender, raw), Acks()
    reread = asyncio.ensure_future(h.pipeline.handle_retry(raw, RETRY_SOURCE, again, 1))
    await settle()
    assert not reread.done()  # waiting for the slot
    sender.gate.set()
    await asyncio.wait_for(reread, PROMPT)
    await h.settled()
    assert len(sender.sent) == 1 and len(h.outputs.attempts) == 1
    assert (first.count, again.count) == (1, 1)
    assert h.value(JOINED, state="settled") == 1


async def test_two_reads_joining_a_job_that_ends_unsettled_attempt_it_once() -> None:
    """Read three times while the first read's job runs, which then ends unsettled: one of the
    two later reads attempts the job, the other joins that attempt."""
    hook = webhook("w")
    sender = GatedSender()
    h = Harness([hook], sender)
    raw = retry_record(hook, attempt=2)
    acks = [Acks(), Acks(), Acks()]
    await h.pipeline.handle_retry(raw, RETRY_SOURCE, acks[0], 1)
    await eventually(lambda: len(sender.sent) == 1)
    (task,) = h.pipeline._tasks
    for ack in acks[1:]:
        await h.pipeline.handle_retry(raw, RETRY_SOURCE, ack, 1)
    task.cancel()
    await eventually(lambda: len(sender.sent) == 2)
    await settle()
    assert len(sender.sent) == 2
    sender.gate.set()
    await h.settled()
    assert len(sender.sent) == 2 and len(h.outputs.attempts) == 1
    assert [ack.count for ack in acks] == [0, 1, 1]
    assert h.value(JOINED, state="running") == 1
    assert h.pipeline._pending._free == 4096


async def test_another_record_at_a_settled_records_place_is_attempted() -> None:
    """A place (topic, partition, offset) can be taken by another record while the worker runs
    (a retry tier made again, an in-memory broker restarted): a record of the same delivery
    there with another attempt number, or sent again by an operator, is its own job."""
    hook = webhook("w")
    h = Harness([hook], ScriptedSender())
    for raw in (
        retry_record(hook, attempt=2),
        retry_record(hook, attempt=1, replayed=True),
        retry_record(hook, attempt=3),
    ):
        acks = Acks()
        await h.pipeline.handle_retry(raw, RETRY_SOURCE, acks, 1)
        await h.settled()
        assert acks.count == 1
    assert len(h.sender.sent) == 3
    assert [r["attempt"] for _, r in h.outputs.attempts] == [2, 1, 3]
    assert h.value(JOINED, state="settled") == 0


async def test_a_drain_with_a_read_joining_a_job_frees_every_slot() -> None:
    hook = webhook("w")
    sender = GatedSender()
    h = Harness([hook], sender, max_pending=4)
    raw = retry_record(hook, attempt=2)
    first, again = await running(h, sender, raw), Acks()
    await h.pipeline.handle_retry(raw, RETRY_SOURCE, again, 1)
    assert await h.pipeline.drain(PROMPT / 100) == 1
    # The first is handed to the retry path, and the read joining it, not cancelled (it holds
    # no request), is settled with it: acknowledged (until a review found it, it was cancelled
    # and counted as handed over, its record left to be sent again).
    assert (first.count, again.count) == (1, 1)
    assert len(h.outputs.retries) == 1 and len(sender.sent) == 1
    assert h.pipeline._pending._free == 4 and not h.pipeline._running


async def test_a_drain_ends_a_job_cancelled_before_it_began_and_the_read_waiting_for_it() -> None:
    """A job's task cancelled before its first step never runs its own ending: the drain ends
    it unsettled, frees its slot, and the read waiting for it stops waiting (its record left
    unacknowledged, as the job's)."""
    hook = webhook("w")
    h = Harness([hook], ScriptedSender(), max_pending=8)
    raw = retry_record(hook, attempt=2)
    first, again = Acks(), Acks()
    await h.pipeline.handle_retry(raw, RETRY_SOURCE, first, 1)
    (task,) = h.pipeline._tasks
    task.cancel()  # before it ran a step
    await h.pipeline.handle_retry(raw, RETRY_SOURCE, again, 1)
    await asyncio.wait_for(h.pipeline.drain(PROMPT / 100), PROMPT)
    assert h.pipeline.in_flight == 0 and not h.pipeline._running
    assert h.pipeline._pending._free == 8
    assert (first.count, again.count) == (0, 0) and h.sender.sent == []


async def test_a_copy_for_a_webhook_made_again_under_a_deleted_ones_id_is_sent() -> None:
    """The job of a webhook made again under a deleted one's id is not the deleted one's,
    though its delivery id is the same: an event sent to the first (a test event repeated
    with its Idempotency-Key) goes to the second too."""
    first, again = "2026-01-15T09:00:00.000Z", "2026-01-15T09:30:00.000Z"
    h = Harness([created(webhook("w"), first)], ScriptedSender())
    event = make_event().to_bytes()
    await h.pipeline.handle_event(event, SOURCE, Acks())
    await h.settled()
    h.index.put(dataclasses.replace(created(webhook("w"), again), url="https://new.example/w"))
    await h.pipeline.handle_event(event, dataclasses.replace(SOURCE, offset=42), Acks())
    await h.settled()
    assert [d.webhook.url for d in h.sender.sent] == [
        "https://hooks.example/w",
        "https://new.example/w",
    ]
    assert h.value(JOINED, state="settled") == 0


async def test_a_drain_hands_over_within_one_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hand-over is waited for once (``drain_worst_case`` counts one): a job that will not
    stop when cancelled holds the drain for the budget, not for the budget twice."""
    import time

    monkeypatch.setattr(pipeline_module, "handover_timeout", lambda timeout: 1.0)
    stop = asyncio.Event()

    class Stubborn:
        sent: list[Outgoing] = []

        async def send(self, job: Job, body: bytes) -> AttemptResult:
            self.sent.append(Outgoing(job, body))
            while not stop.is_set():
                try:
                    await stop.wait()
                except asyncio.CancelledError:
                    continue  # hostile: ignores the drain's cancellation
            return OK

    sender = Stubborn()
    h = Harness([webhook("w")], sender)
    h.pipeline._clock = time.monotonic
    await h.pipeline.handle_event(make_event().to_bytes(), SOURCE, Acks())
    await eventually(lambda: len(sender.sent) == 1)
    started = time.monotonic()
    await asyncio.wait_for(h.pipeline.drain(0.01), PROMPT)
    took = time.monotonic() - started
    stop.set()
    await h.settled()
    assert 1.0 <= took < 1.8, took  # (twice the budget: 2 s)


async def test_an_event_read_again_joins_only_the_jobs_it_shares() -> None:
    """Per delivery: a webhook created between the two reads gets its job; the others are
    joined. A copy of the event at another offset (a write retried after its answer was lost)
    is joined as well: its deliveries have the first's ids."""
    sender = GatedSender()
    h = Harness([webhook("w1")], sender)
    event = make_event().to_bytes()
    first, again, copy = Acks(), Acks(), Acks()
    await h.pipeline.handle_event(event, SOURCE, first)
    await eventually(lambda: len(sender.sent) == 1)
    h.index.put(webhook("w2"))
    await h.pipeline.handle_event(event, SOURCE, again)
    await eventually(lambda: len(sender.sent) == 2)
    await h.pipeline.handle_event(event, dataclasses.replace(SOURCE, offset=42), copy)
    await settle()
    assert sorted(d.webhook.id for d in sender.sent) == ["w1", "w2"]
    sender.gate.set()
    await h.settled()
    assert (first.count, again.count, copy.count) == (1, 1, 1)
    assert len(h.outputs.attempts) == 2
    assert h.value(JOINED, state="running") == 3
    other = make_event(event_id="evt_2").to_bytes()
    await h.pipeline.handle_event(other, dataclasses.replace(SOURCE, offset=43), Acks())
    await h.settled()
    assert len(sender.sent) == 4


async def test_an_event_read_again_is_counted_again_and_its_delivery_once() -> None:
    """What docs/metrics.md says of a record read again after a rebalance (at least once): the
    event and its stage latencies are counted at each read, the delivery it settled once (the
    second read joins it). Until 2026-12-07 the documentation said the events were counted
    once, and operators compared them with what was published."""
    h = Harness([webhook("w")], ScriptedSender())
    event = make_event().to_bytes()
    for acks in (Acks(), Acks()):
        await h.pipeline.handle_event(event, SOURCE, acks)
        await h.settled()
        assert acks.count == 1
    assert len(h.sender.sent) == 1
    assert h.value("webhook_bridge_events_total", event_type="post.created") == 2
    for stage in ("received", "matched"):
        count = h.value("webhook_bridge_event_stage_latency_seconds_count", stage=stage)
        assert count == 2
    assert h.value(DELIVERIES, event_type="post.created", outcome="delivered") == 1
    assert h.value(JOINED, state="settled") == 1


async def test_settled_jobs_remembered_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline_module, "SETTLED_REMEMBERED", 3)
    hook = webhook("w")
    h = Harness([hook], ScriptedSender())
    records = [
        (
            retry_record(hook, attempt=2, deferrals=n),
            dataclasses.replace(RETRY_SOURCE, offset=n),
        )
        for n in range(5)
    ]
    for raw, source in records:
        await h.pipeline.handle_retry(raw, source, Acks(), 1)
    await h.settled()
    for raw, source in records:  # the oldest two forgotten: attempted again
        await h.pipeline.handle_retry(raw, source, Acks(), 1)
    await h.settled()
    assert len(h.sender.sent) == 7
    assert len(h.pipeline._settled) == 3


# ------------------------------------------------------------------------- freshness


async def test_sync_timeout_is_counted_and_the_event_still_delivered() -> None:
    freshness = FixedFreshness(current=False)
    h = Harness([webhook("w")], ScriptedSender(), freshness=freshness)
    acks = Acks()
    await h.pipeline.handle_event(make_event().to_bytes(), SOURCE, acks)
    await h.settled()
    assert freshness.calls == [123.0]
    assert h.value("webhook_bridge_subscription_sync_timeouts_total") == 1
    assert [d.webhook.id for d in h.sender.sent] == ["w"]
    assert acks.count == 1


async def test_current_table_counts_no_sync_timeout() -> None:
    freshness = FixedFreshness(current=True)
    h = Harness([webhook("w")], ScriptedSender(), freshness=freshness)
    await h.pipeline.handle_event(make_event().to_bytes(), SOURCE, Acks())
    await h.settled()
    assert freshness.calls == [123.0]
    assert h.value("webhook_bridge_subscription_sync_timeouts_total") == 0


@pytest.mark.parametrize(("not_before", "asked"), [(NOW_TS, 123.0), (NOW_TS - 30.0, 93.0)])
async def test_retry_waits_for_the_table_as_of_when_it_fell_due(
    not_before: float, asked: float
) -> None:
    # The pipeline's clock reads 123.0 and the wall clock NOW_TS: a retry due 30 s ago asks for
    # the table as of 30 s ago on the pipeline's clock, so a backlog of overdue retries is
    # covered by rounds already finished instead of starting one round each.
    freshness = FixedFreshness(current=True)
    hook = webhook("w")
    h = Harness([hook], ScriptedSender(), freshness=freshness)
    acks = Acks()
    record = retry_record(hook, attempt=2, not_before=not_before)
    await h.pipeline.handle_retry(record, RETRY_SOURCE, acks, 1)
    await h.settled()
    assert freshness.calls == [asked]
    assert [d.webhook.id for d in h.sender.sent] == ["w"]


async def test_a_backlog_of_overdue_retries_shares_one_offsets_request() -> None:
    requests = 0
    clock = 1000.0

    async def end_offsets() -> dict[int, int]:
        nonlocal requests
        requests += 1
        return {}

    freshness = TableFreshness(end_offsets, timeout=PROMPT, clock=lambda: clock)
    hook = webhook("w")
    h = Harness([hook], ScriptedSender(), freshness=freshness)
    h.pipeline._clock = lambda: clock
    acks = Acks()
    for n in range(20):
        clock += 0.01  # processing moves on; every record fell due a minute ago or earlier
        event = make_event(event_id=f"e{n}")
        record = retry_record(hook, attempt=2, event=event, not_before=NOW_TS - 60 - n)
        await h.pipeline.handle_retry(record, RETRY_SOURCE, acks, 1)
    await h.settled()
    assert acks.count == 20
    assert requests == 1


async def test_a_record_arriving_during_a_round_is_matched_with_it_only_if_covered() -> None:
    clock = 1.0
    gate = asyncio.Event()
    requests = 0

    async def end_offsets() -> dict[int, int]:
        nonlocal requests
        requests += 1
        await gate.wait()
        return {0: 1} if requests == 1 else {0: 2}

    # The consumer had fetched the events partition up to offset 42 when the round started.
    seen = {("postion.events", 2): 42}
    freshness = TableFreshness(
        end_offsets, timeout=PROMPT, clock=lambda: clock, source_ends=lambda: dict(seen)
    )
    freshness.applied(0, 0)
    h = Harness([webhook("w")], ScriptedSender(), freshness=freshness)
    h.pipeline._clock = lambda: clock
    acks = Acks()

    async def handle(event_id: str, offset: int) -> None:
        source = SourceRef("postion.events", 2, offset, b"site_789")
        await h.pipeline.handle_event(make_event(event_id=event_id).to_bytes(), source, acks)

    await handle("first", 40)
    await eventually(lambda: requests == 1)
    clock = 2.0  # both arrive while the round runs
    seen[("postion.events", 2)] = 44
    await handle("fetched-before-the-round", 41)
    await handle("published-after-it-read-the-ends", 42)
    gate.set()
    await eventually(lambda: acks.count == 2)
    await eventually(lambda: requests == 2)
    await settle()
    assert [d.job.event.id for d in h.sender.sent] == ["first", "fetched-before-the-round"]
    freshness.applied(0, 1)  # the subscription change the second round waits for
    await eventually(lambda: acks.count == 3)
    await h.settled()
    assert [d.job.event.id for d in h.sender.sent][2:] == ["published-after-it-read-the-ends"]


async def test_a_partition_read_again_from_a_lower_offset_waits_for_a_new_round() -> None:
    # A topic deleted and created again under the worker: offsets start over below the
    # high-water mark an earlier round saw, so that mark must not cover the new records.
    clock = 1.0
    requests = 0

    async def end_offsets() -> dict[int, int]:
        nonlocal requests
        requests += 1
        return {0: 1}

    seen = {("postion.events", 2): 42}
    freshness = TableFreshness(
        end_offsets, timeout=PROMPT, clock=lambda: clock, source_ends=lambda: dict(seen)
    )
    freshness.applied(0, 0)
    h = Harness([webhook("w")], ScriptedSender(), freshness=freshness)
    h.pipeline._clock = lambda: clock
    acks = Acks()

    async def handle(event_id: str, offset: int) -> None:
        source = SourceRef("postion.events", 2, offset, b"site_789")
        await h.pipeline.handle_event(make_event(event_id=event_id).to_bytes(), source, acks)

    await handle("old", 40)
    await eventually(lambda: acks.count == 1)
    assert requests == 1
    clock = 2.0
    await handle("old-next", 41)  # below the mark, in order: no new round
    await eventually(lambda: acks.count == 2)
    assert requests == 1
    seen[("postion.events", 2)] = 5
    await handle("new", 3)
    await eventually(lambda: acks.count == 3)
    await h.settled()
    assert requests == 2
    assert [d.job.event.id for d in h.sender.sent] == ["old", "old-next", "new"]


async def test_stage_latencies_are_observed_from_the_event_timestamp() -> None:
    # The event says 10:30:00; the wall clock reads NOW (10:30:02.5). Its record reached the
    # pipeline at 100.0 on the pipeline's clock and was matched at 100.5, after a freshness
    # round: received 2.0 s after the event's timestamp, matched 2.5 s.
    clock = [100.0]

    class Round(FixedFreshness):
        async def wait_current(self, received_at: float, source: Any = None) -> bool:
            clock[0] = 100.5  # the round took half a second
            return await super().wait_current(received_at, source)

    h = Harness([webhook("w")], ScriptedSender(), freshness=Round(current=True))
    h.pipeline._clock = lambda: clock[0]
    await h.pipeline.handle_event(make_event().to_bytes(), SOURCE, Acks())
    await h.settled()
    stage = "webhook_bridge_event_stage_latency_seconds"
    assert h.value(stage + "_count", stage="received") == 1
    assert h.value(stage + "_sum", stage="received") == pytest.approx(2.0)
    assert h.value(stage + "_sum", stage="matched") == pytest.approx(2.5)
    # Invalid records have no timestamp to measure from.
    await h.pipeline.handle_event(b"{not json", SOURCE, Acks())
    await h.settled()
    assert h.value(stage + "_count", stage="received") == 1


class GatedFreshness:
    """Not current until the test opens the gate; records each wait."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.calls: list[float] = []

    def received(self, source: Any) -> None:
        pass

    def covers(self, received_at: float, source: Any = None) -> bool:
        return self.gate.is_set()

    async def wait_current(self, received_at: float, source: Any = None) -> bool:
        self.calls.append(received_at)
        await self.gate.wait()
        return True


async def test_records_waiting_for_the_table_share_one_check_and_keep_their_order() -> None:
    freshness = GatedFreshness()
    h = Harness([webhook("w")], ScriptedSender(), freshness=freshness)
    clock = iter(range(1000))
    h.pipeline._clock = lambda: float(next(clock))
    acks = Acks()
    for n in range(50):
        await h.pipeline.handle_event(make_event(event_id=f"e{n}").to_bytes(), SOURCE, acks)
    await eventually(lambda: len(freshness.calls) == 1)
    # One task holds all fifty records; none was matched before the table was current.
    assert h.pipeline.in_flight == 1
    assert h.sender.sent == []
    freshness.gate.set()
    await eventually(lambda: acks.count == 50)
    await h.settled()
    assert [d.job.event.id for d in h.sender.sent] == [f"e{n}" for n in range(50)]
    # The check asked about the newest record held, which covers all of the older ones.
    assert freshness.calls == [49.0]


async def test_a_record_arriving_after_held_ones_waits_behind_them() -> None:
    freshness = GatedFreshness()
    h = Harness([webhook("w")], ScriptedSender(), freshness=freshness)
    acks = Acks()
    await h.pipeline.handle_event(make_event(event_id="first").to_bytes(), SOURCE, acks)
    await eventually(lambda: len(freshness.calls) == 1)
    freshness.gate.set()  # from now on ``covers`` says yes ...
    await h.pipeline.handle_event(make_event(event_id="second").to_bytes(), SOURCE, acks)
    await eventually(lambda: acks.count == 2)
    await h.settled()
    # ... yet "second" was not matched ahead of "first", still held when it arrived.
    assert [d.job.event.id for d in h.sender.sent] == ["first", "second"]


# ------------------------------------------------------------------------- offer (no waiting)


async def test_offered_records_wait_for_the_table_like_handled_ones_and_keep_their_order() -> None:
    freshness = GatedFreshness()
    h = Harness([webhook("w")], ScriptedSender(), freshness=freshness)
    clock = iter(range(1000))
    h.pipeline._clock = lambda: float(next(clock))
    acks = Acks()
    for n in range(30):
        assert h.pipeline.accepts()
        h.pipeline.offer(make_event(event_id=f"e{n}").to_bytes(), SOURCE, acks)
    await eventually(lambda: len(freshness.calls) == 1)
    assert h.sender.sent == []  # nothing matched before the table was current
    freshness.gate.set()
    # A record handed over the waiting way after offered ones still comes after them.
    await h.pipeline.handle_event(make_event(event_id="last").to_bytes(), SOURCE, acks)
    await eventually(lambda: acks.count == 31)
    await h.settled()
    assert [d.job.event.id for d in h.sender.sent] == [f"e{n}" for n in range(30)] + ["last"]
    assert freshness.calls[0] == 29.0


async def test_offered_records_are_matched_without_a_freshness_check_when_there_is_none() -> None:
    h = Harness([webhook("w1"), webhook("w2")], ScriptedSender())
    acks = Acks()
    h.pipeline.offer(make_event(event_id="e1").to_bytes(), SOURCE, acks)
    h.pipeline.offer(b"{not json", SOURCE, acks)
    await eventually(lambda: acks.count == 2)
    await h.settled()
    assert sorted(d.webhook.id for d in h.sender.sent) == ["w1", "w2"]
    assert [r["reason"] for _, r in h.outputs.dead_letters] == ["malformed_json"]


async def test_accepts_says_no_once_the_held_records_reach_the_limit() -> None:
    freshness = GatedFreshness()
    h = Harness([webhook("w")], ScriptedSender(), freshness=freshness, max_pending=3)
    acks = Acks()
    for n in range(3):
        assert h.pipeline.accepts()
        h.pipeline.offer(make_event(event_id=f"e{n}").to_bytes(), SOURCE, acks)
    assert not h.pipeline.accepts()
    with pytest.raises(RuntimeError, match="accepts"):
        h.pipeline.offer(make_event(event_id="over").to_bytes(), SOURCE, acks)
    # The waiting way blocks instead, until the held records are released.
    late = asyncio.ensure_future(
        h.pipeline.handle_event(make_event(event_id="e3").to_bytes(), SOURCE, acks)
    )
    await settle()
    assert not late.done()
    freshness.gate.set()
    await asyncio.wait_for(late, PROMPT)
    await eventually(lambda: acks.count == 4)
    assert h.pipeline.accepts()
    await h.settled()
    assert [d.job.event.id for d in h.sender.sent] == ["e0", "e1", "e2", "e3"]


async def test_a_job_whose_attempts_cannot_be_written_is_dead_lettered_without_them() -> None:
    """A job given up on (an error of the bridge's own) is dead-lettered with its attempts; when
    those are what cannot be written, once more without them, and its record is settled."""
    h = Harness([webhook("w")], ScriptedSender())
    written = h.outputs.dead_letter

    async def picky(key: bytes | None, record: dict[str, Any]) -> None:
        if record["attempts"]:
            raise InvalidRecord("unsafe_integer", "an integer beyond 2**53")
        await written(key, record)

    h.outputs.dead_letter = picky  # type: ignore[method-assign]
    job = Job(EncodedEvent.of(make_event()), webhook("w"), 2, SOURCE, ({"status": 2**60},))
    settled: list[str] = []
    await h.pipeline._give_up(
        job, RuntimeError("boom"), "delivering", lambda: settled.append("done"),
        lambda: settled.append("released"),
    )  # fmt: skip
    assert settled == ["done"]
    ((_, letter),) = h.outputs.dead_letters
    assert letter["attempts"] == [] and letter["reason"] == "internal_error"
    assert letter["detail"].endswith("its earlier attempts left out")


async def test_the_oldest_unsettled_record_is_exported_with_its_age_until_it_settles() -> None:
    """``webhook_bridge_oldest_unsettled_event_seconds``: what holds a partition's commits, as
    an age, oldest first; a record whose dead letter cannot be written stays counted (it is
    left unacknowledged), and retry records, which wait until due by design, are not."""
    clock = FakeClock(500.0)
    sender = BlockingSender()
    h = Harness([webhook("w1", site_id="s1"), webhook("w2", site_id="s2")], sender, clock=clock)
    oldest = "webhook_bridge_oldest_unsettled_event_seconds"
    assert h.value(oldest) == 0
    first, second = Acks(), Acks()
    await h.pipeline.handle_event(make_event(event_id="e1", site_id="s1").to_bytes(), SOURCE, first)
    clock.now += 7.0
    await h.pipeline.handle_event(
        make_event(event_id="e2", site_id="s2").to_bytes(), SOURCE, second
    )
    await eventually(lambda: len(sender.started) == 2)
    clock.now += 3.0
    assert h.value(oldest) == 10.0
    sender.release("w1")  # the oldest settles: the next is the oldest
    await eventually(lambda: first.count == 1)
    assert h.value(oldest) == 3.0
    sender.release("w2")
    await eventually(lambda: second.count == 1)
    assert h.value(oldest) == 0
    # Invalid, and its dead letter cannot be written: it stays, and ages.
    h.outputs.dead_letter_error = KafkaTimeoutError()
    stuck = Acks()
    await h.pipeline.handle_event(b"not json", SOURCE, stuck)
    clock.now += 60.0
    assert stuck.count == 0 and h.value(oldest) == 60.0
