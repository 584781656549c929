"""End to end on the embedded broker: events become signed deliveries at the right endpoints."""

from __future__ import annotations

import json
import uuid
from collections import Counter

import pytest

from bridge.admin.publish import publish_events
from bridge.config import Settings
from bridge.contract.events import build_event
from bridge.contract.payload import delivery_id
from bridge.http.base import USER_AGENT
from bridge.kafka.reading import read_topic
from bridge.subscriptions.store import WebhookStore
from tests.support.receivers import Receiver

pytestmark = pytest.mark.integration


async def create(store: WebhookStore, receiver: Receiver, name: str, **fields: object) -> str:
    path = f"/wh/{name}"
    secret = f"secret-{name}-{uuid.uuid4().hex}"
    webhook = await store.create(
        url=receiver.url(path), secret=secret, webhook_id=name, name=f"Hook {name}", **fields
    )
    receiver.secrets[path] = secret
    return webhook.id


async def test_each_event_type_reaches_exactly_the_right_endpoints(
    settings: Settings, receiver: Receiver, in_process_workers
) -> None:
    async with WebhookStore(settings) as store:
        await create(store, receiver, "site_all", events=["*"], site_id="s1", user_id="u1")
        await create(
            store, receiver, "site_published", events=["post.published"], site_id="s1", user_id="u1"
        )
        await create(
            store,
            receiver,
            "account",
            events=["site.created", "subscription.created", "subscription.cancelled"],
            user_id="u1",
        )
        await create(store, receiver, "other_site", events=["*"], site_id="s2", user_id="u1")
        await create(
            store, receiver, "inactive", events=["*"], site_id="s1", user_id="u1", active=False
        )
        await create(store, receiver, "other_user", events=["*"], user_id="u2")
        await create(
            store, receiver, "test_target", events=["post.deleted"], site_id="s9", user_id="u1"
        )
    worker = in_process_workers(settings)
    await worker.wait_ready()

    data = {
        "post.created": {"id": "p1", "title": "Hello"},
        "post.published": {"id": "p1", "title": "Hello"},
        "post.deleted": {"id": "p1"},
        "site.created": {"id": "s1", "name": "My site"},
        "subscription.created": {"id": "sub1", "email": "a@example.com"},
        "subscription.cancelled": {"id": "sub1"},
        "test.event": {"webhook_id": "test_target", "message": "ping"},
    }
    events = [
        build_event(t, d, site_id="s1", user_id="u1", event_id=f"evt-{t}") for t, d in data.items()
    ]
    await publish_events(settings, events)

    expected = {("site_all", t) for t in data if t != "test.event"} | {
        ("site_published", "post.published"),
        ("account", "site.created"),
        ("account", "subscription.created"),
        ("account", "subscription.cancelled"),
        ("test_target", "test.event"),
    }
    await receiver.wait_for(lambda got: len(got) >= len(expected))
    # Everything consumed and settled: no further delivery can still be on its way.
    await worker.wait_metric(
        'webhook_bridge_events_total{event_type="test.event"}', lambda v: v == 1
    )
    await worker.wait_metric("webhook_bridge_in_flight_requests", lambda v: v == 0)
    got = Counter(
        (r.path.removeprefix("/wh/"), r.headers["X-Webhook-Event"]) for r in receiver.received
    )
    assert set(got) == expected
    assert all(n == 1 for n in got.values()), got

    by_type = {e.type: e for e in events}
    for record in receiver.received:
        webhook_id = record.path.removeprefix("/wh/")
        event = by_type[record.headers["X-Webhook-Event"]]
        assert receiver.verified(record), record.path
        assert record.headers["Content-Type"] == "application/json"
        assert record.headers["User-Agent"] == USER_AGENT
        assert record.headers["X-Webhook-Delivery"] == delivery_id(event.id, webhook_id)
        assert record.json == {
            "id": delivery_id(event.id, webhook_id),
            "event": {
                "type": event.type,
                "data": dict(event.data),
                "timestamp": event.timestamp,
                "site_id": "s1",
                "user_id": "u1",
            },
            "webhook": {"id": webhook_id, "name": f"Hook {webhook_id}"},
        }
        assert event.timestamp.endswith("Z")


async def test_non_200_answers_are_failures_retried_then_dead_lettered(
    settings: Settings, receiver: Receiver, in_process_workers
) -> None:
    statuses = {"created": 201, "no_content": 204, "error": 500, "moved": 302}
    async with WebhookStore(settings) as store:
        for name, status in statuses.items():
            await create(store, receiver, name, events=["post.created"], site_id="s1", user_id="u1")
            receiver.statuses[f"/wh/{name}"] = status
        await create(store, receiver, "fine", events=["post.created"], site_id="s1", user_id="u1")
    worker = in_process_workers(settings)
    await worker.wait_ready()
    event = build_event("post.created", {"id": "p", "title": "t"}, site_id="s1", user_id="u1")
    await publish_events(settings, [event])

    attempts = len(settings.retry_schedule) + 1
    values = await worker.wait_metric(
        'webhook_bridge_dead_letters_total{reason="attempts_exhausted"}',
        lambda v: v == len(statuses),
    )
    key = 'webhook_bridge_deliveries_total{event_type="post.created",outcome="delivered"}'
    assert values[key] == 1
    failures = 'webhook_bridge_delivery_attempts_total{outcome="failure",status_class="%s"}'
    assert values[failures % "2xx"] == 2 * attempts
    assert values[failures % "3xx"] == attempts
    assert values[failures % "5xx"] == attempts
    # Redirects are never followed: nothing arrived at the Location.
    assert receiver.at("/elsewhere") == []
    assert len(receiver.received) == len(statuses) * attempts + 1
    for name in statuses:
        ids = {r.delivery_id for r in receiver.at(f"/wh/{name}")}
        assert ids == {delivery_id(event.id, name)}

    records = [json.loads(v) for _, v in await read_topic(settings, settings.deadletter_topic)]
    assert sorted(r["webhook_id"] for r in records) == sorted(statuses)
    for record in records:
        assert record["reason"] == "attempts_exhausted"
        assert record["delivery_id"] == delivery_id(event.id, record["webhook_id"])
        assert [a["status"] for a in record["attempts"]] == [
            statuses[record["webhook_id"]]
        ] * attempts
        assert record["event"]["id"] == event.id
        secret = receiver.secrets[f"/wh/{record['webhook_id']}"]
        assert secret not in json.dumps(record)


async def test_malformed_events_are_dead_lettered_and_the_partition_keeps_moving(
    settings: Settings, receiver: Receiver, in_process_workers
) -> None:
    from aiokafka import AIOKafkaProducer

    async with WebhookStore(settings) as store:
        await create(store, receiver, "hook", events=["*"], site_id="s1", user_id="u1")
    worker = in_process_workers(settings)
    await worker.wait_ready()
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        bad = [
            b"{not json",
            b'{"id": "x", "type": "post.created"}',
            b'{"id":"x","type":"nope.nope","data":{},"timestamp":"2024-01-15T10:30:00Z",'
            b'"site_id":"s1","user_id":"u1"}',
            b'{"id":"x","type":"post.created","data":{"id":"p","title":"t","n":9007199254740993},'
            b'"timestamp":"2024-01-15T10:30:00Z","site_id":"s1","user_id":"u1"}',
            b"\xff\xfe",
        ]
        for value in bad:
            await producer.send_and_wait(settings.events_topic, value, key=b"s1")
    finally:
        await producer.stop()
    good = build_event("post.created", {"id": "p", "title": "ok"}, site_id="s1", user_id="u1")
    await publish_events(settings, [good])
    await receiver.wait_for(lambda got: len(got) == 1)
    assert receiver.received[0].json["event"]["data"]["title"] == "ok"
    await worker.wait_metric('webhook_bridge_events_total{event_type="invalid"}', lambda v: v == 5)

    records = [json.loads(v) for _, v in await read_topic(settings, settings.deadletter_topic)]
    assert sorted(r["reason"] for r in records) == sorted(
        [
            "malformed_json",
            "schema_invalid",
            "unknown_event_type",
            "unsafe_integer",
            "malformed_json",
        ]
    )
    assert all(r["source"]["topic"] == settings.events_topic for r in records)
    assert worker.running


async def test_the_httpx_reference_sender_delivers_the_same(
    make_settings, receiver: Receiver, in_process_workers
) -> None:
    """BRIDGE_HTTP_CLIENT=httpx: the reference sender, through the same guard and contract."""
    from bridge.admin.topics import apply_topics

    settings = make_settings(http_client="httpx")
    await apply_topics(settings)
    receiver.statuses["/wh/broken"] = 302
    async with WebhookStore(settings) as store:
        await create(store, receiver, "fine", events=["*"], site_id="s1", user_id="u1")
        await create(store, receiver, "broken", events=["*"], site_id="s1", user_id="u1")
    worker = in_process_workers(settings)
    await worker.wait_ready()
    event = build_event("post.created", {"id": "p", "title": "é"}, site_id="s1", user_id="u1")
    await publish_events(settings, [event])
    await receiver.wait_for(lambda got: len(receiver.at("/wh/fine")) == 1)
    record = receiver.at("/wh/fine")[0]
    assert receiver.verified(record)
    assert record.headers["User-Agent"] == USER_AGENT
    assert record.delivery_id == delivery_id(event.id, "fine")
    await worker.wait_metric(
        'webhook_bridge_dead_letters_total{reason="attempts_exhausted"}', lambda v: v == 1
    )
    assert receiver.at("/elsewhere") == []


async def test_a_record_written_twice_is_delivered_once(
    settings: Settings, receiver: Receiver, in_process_workers
) -> None:
    """A write retried after its answer was lost writes its record twice (no idempotent
    producer): an event copy, and a copy of one of the bridge's retry records, each at its
    own offset. On the worker that reads them, each copy joins the first read's job, running
    or settled, rather than making the same request again (until 2026-12-06 the retry's copy
    was attempted in the same millisecond, and each copy scheduled its own next retry)."""
    import asyncio

    from tests.support.records import RawWriter
    from tests.support.waiting import poll

    async with WebhookStore(settings) as store:
        await create(store, receiver, "held", events=["post.created"], site_id="s1", user_id="u1")
        await create(store, receiver, "flaky", events=["post.created"], site_id="s1", user_id="u1")
    worker = in_process_workers(settings)
    await worker.wait_ready()
    event = build_event("post.created", {"id": "p", "title": "t"}, site_id="s1", user_id="u1")
    receiver.holds["/wh/held"] = hold = asyncio.Event()
    receiver.fail_first[delivery_id(event.id, "flaky")] = 1
    await publish_events(settings, [event])
    await receiver.wait_for(lambda _: receiver.at("/wh/held") and receiver.at("/wh/flaky"))
    await publish_events(settings, [event])  # the copy: "held" still running

    retry_tier = settings.retry_topics[0]
    records = await poll(
        lambda: read_topic(settings, retry_tier),
        until=lambda records: len(records) == 1,
        timeout=30,
        interval=0.1,
    )
    (key, value), *_ = records
    writer = await RawWriter(settings.kafka_bootstrap_servers).start()
    try:
        await writer.write(retry_tier, value, key=key)
    finally:
        await writer.stop()

    def joined(values: dict[str, float]) -> float:
        name = "webhook_bridge_jobs_joined_total"
        return sum(values.get(f'{name}{{state="{s}"}}', 0.0) for s in ("running", "settled"))

    # The event copy's two jobs joined ("held" still running), then the hold is let go.
    values = await poll(worker.metrics, until=lambda v: joined(v) >= 2, timeout=30, interval=0.1)
    assert joined(values) >= 2, values
    assert len(receiver.at("/wh/held")) == 1
    hold.set()
    values = await poll(worker.metrics, until=lambda v: joined(v) >= 3, timeout=30, interval=0.1)
    await worker.wait_metric("webhook_bridge_in_flight_requests", lambda v: v == 0)
    assert joined(values) == 3, values
    assert [r.status for r in receiver.at("/wh/held")] == [200]
    assert [r.status for r in receiver.at("/wh/flaky")] == [500, 200]
    assert all(receiver.verified(r) for r in receiver.received)
    assert len(await read_topic(settings, retry_tier)) == 2  # the record and its copy, no more
