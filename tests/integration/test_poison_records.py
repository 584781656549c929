"""Records a platform service (or anyone with write access) puts in the workers' topics that
are valid Kafka but hostile: each is dead-lettered with a reason or skipped, its partition goes
on and commits past it, and the worker's event loop is never held.

- an events-topic record with a huge key (its dead letter names the key by size and SHA-256,
  and is written under that SHA-256: the key twice, JSON-escaped, passed the request size);
- a retry-tier record whose attempts or attempt number cannot be written again (nested deeper
  than JSON allows here, an integer beyond 2^53): refused as ``invalid_retry_record`` before
  any attempt;
- a subscription record with thousands of objects as event types (jsonschema's ``uniqueItems``
  compared every pair: ~30 s of the loop for 6,000);
- records whose header key is not UTF-8, in the subscriptions and events topics: aiokafka's
  reader raised out of every fetch of their batch, and the worker crashed at every start;
- events whose data nests at and past MAX_DATA_DEPTH, to a failing endpoint (their retry
  records and dead letters must be written);
- retry records due far past their tier's delay (an hour, 10^300): one delay in all."""

from __future__ import annotations

import json
import time

import pytest

from bridge.config import Settings
from bridge.contract.payload import delivery_id
from tests.support.receivers import Receiver, subscribe
from tests.support.records import RawHeaderKey, RawWriter, TopicTail, committed_offsets
from tests.support.waiting import poll

pytestmark = pytest.mark.integration

PROMPT = 10.0


def post_created(event_id: str) -> dict[str, object]:
    """A valid event for the webhooks of site ``site-main``."""
    return {
        "id": event_id,
        "type": "post.created",
        "data": {"id": "p1", "title": "t"},
        "timestamp": "2024-01-01T00:00:00Z",
        "site_id": "site-main",
        "user_id": "u1",
    }


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(b"k" * 600_000, id="600kB-ascii-key"),
        # 200 kB of control bytes: six times larger once JSON-escaped in source.key
        pytest.param(b"\x01" * 200_000, id="200kB-control-key"),
    ],
)
async def test_invalid_event_with_large_key_is_dead_lettered_and_committed(
    settings: Settings, receiver: Receiver, in_process_workers, key: bytes
) -> None:
    await subscribe(settings, receiver, {"main": "site-main"}, ("*",))
    worker = in_process_workers(settings)
    await worker.wait_ready(60)
    bootstrap = settings.kafka_bootstrap_servers
    writer = await RawWriter(bootstrap).start()
    tail = await TopicTail(bootstrap, [settings.deadletter_topic]).start()
    try:
        _, poison = await writer.write(settings.events_topic, b"not json", key=key, partition=0)
        event = post_created("ev-after")
        _, after = await writer.write(
            settings.events_topic, json.dumps(event).encode(), key=b"site-main", partition=0
        )
        # the record after it is delivered
        await receiver.wait_for(lambda got: any(r.status == 200 for r in got), 15)

        def lettered() -> bool:
            for r in tail.of(settings.deadletter_topic):
                letter = json.loads(r.value or b"{}")
                src = letter.get("source", {})
                if src.get("partition") == 0 and src.get("offset") == poison:
                    return True
            return False

        committed = await poll(
            lambda: committed_offsets(bootstrap, settings.group_id, settings.events_topic),
            until=lambda c: c.get(0, 0) > after,
            timeout=15,
            interval=0.5,
        )
        problems = []
        if not lettered():
            problems.append("the invalid record was not dead-lettered")
        if committed.get(0, 0) <= after:
            problems.append(
                f"partition 0 committed at {committed.get(0)}; poison at {poison}, "
                f"next record at {after}: commits are blocked"
            )
        assert not problems, problems
    finally:
        await tail.stop()
        await writer.stop()


async def test_valid_event_with_large_key_whose_delivery_is_dead_lettered_settles(
    settings: Settings, receiver: Receiver, in_process_workers
) -> None:
    """A valid event (key 200 kB of control bytes) to an endpoint answering 410: its delivery must
    be dead-lettered (endpoint_gone) and its offset committed. The dead letter's ``source.key``
    repeats the key JSON-escaped (1.2 MB) and cannot be written, nor can the internal_error dead
    letter after it: the job never settles."""
    await subscribe(settings, receiver, {"gone": "site-main"}, ("*",))
    receiver.statuses["/gone"] = 410
    worker = in_process_workers(settings)
    await worker.wait_ready(60)
    bootstrap = settings.kafka_bootstrap_servers
    writer = await RawWriter(bootstrap).start()
    tail = await TopicTail(bootstrap, [settings.deadletter_topic]).start()
    try:
        event = post_created("ev-gone")
        _, offset = await writer.write(
            settings.events_topic, json.dumps(event).encode(), key=b"\x01" * 200_000, partition=0
        )
        await receiver.wait_for(lambda got: any(r.status == 410 for r in got), 15)
        committed = await poll(
            lambda: committed_offsets(bootstrap, settings.group_id, settings.events_topic),
            until=lambda c: c.get(0, 0) > offset,
            timeout=15,
            interval=0.5,
        )
        reasons = [
            json.loads(r.value or b"{}").get("reason") for r in tail.of(settings.deadletter_topic)
        ]
        problems = []
        if "endpoint_gone" not in reasons:
            problems.append(f"no endpoint_gone dead letter (dead letters: {reasons})")
        if committed.get(0, 0) <= offset:
            problems.append(f"partition 0 committed at {committed.get(0)}, record at {offset}")
        assert not problems, problems
    finally:
        await tail.stop()
        await writer.stop()


async def test_records_whose_header_key_is_not_utf8_are_read_and_the_next_event_delivered(
    settings: Settings, receiver: Receiver, in_process_workers
) -> None:
    """The bridge reads no header: such a key is read as Kafka's Java client reads it (U+FFFD
    for its malformed bytes), the event holding it delivered, and the events after it."""
    await subscribe(settings, receiver, {"main": "site-main"}, ("*",))
    bootstrap = settings.kafka_bootstrap_servers
    bad = [(RawHeaderKey(b"\xff\xfetrace"), b"v")]
    writer = await RawWriter(bootstrap).start()
    try:
        # In the subscriptions topic, read from its beginning at every start: the worker never
        # became ready.
        await writer.write(settings.subscriptions_topic, None, key=b"wh-other", headers=bad)
        worker = in_process_workers(settings)
        await worker.wait_ready(60)
        events = [post_created(f"ev-{n}") for n in ("poison", "after")]
        _, poison = await writer.write(
            settings.events_topic,
            json.dumps(events[0]).encode(),
            key=b"site-main",
            partition=0,
            headers=bad,
        )
        _, after = await writer.write(
            settings.events_topic, json.dumps(events[1]).encode(), key=b"site-main", partition=0
        )
        await receiver.wait_for(lambda got: len(got) >= 2, PROMPT)
        assert sorted(r.json["event"]["data"]["id"] for r in receiver.received) == ["p1", "p1"]
        assert {r.delivery_id for r in receiver.received} == {
            delivery_id(e["id"], "main") for e in events
        }
        committed = await poll(
            lambda: committed_offsets(bootstrap, settings.group_id, settings.events_topic),
            until=lambda c: c.get(0, 0) > after,
            timeout=PROMPT,
            interval=0.5,
        )
        assert committed.get(0, 0) > after > poison
    finally:
        await writer.stop()


def retry_record(attempts_json: str, attempt: int) -> bytes:
    event = post_created(f"ev-retry-{attempt}")
    now = time.time()
    head = json.dumps(
        {
            "delivery_id": "d-1",
            "webhook_id": "main",
            "event": event,
            "attempt": attempt,
            "not_before": now,
            "enqueued_at": now,
        }
    )
    return (head[:-1] + ', "attempts": ' + attempts_json + "}").encode()


HISTORIES = {
    "deep-300": '[{"x": ' + "[" * 300 + "]" * 300 + "}]",
    "unsafe-int": '[{"status": 9007199254740993}]',
    "none": "[]",
}


# Refused when read, whatever its attempt number: one case each (the unit tests of
# parse_retry go through every shape).
@pytest.mark.parametrize(
    ("history", "attempt"),
    # An attempt number no JSON reader keeps: read, then its record failed to encode (the
    # bridge's own error, until 2026-12-07).
    [("deep-300", 1), ("unsafe-int", 3), ("none", 2**53 + 1)],
    ids=["deep-retried-again", "unsafe-int-last-attempt", "unsafe-attempt-number"],
)
async def test_a_retry_record_whose_history_cannot_be_written_again_is_dead_lettered(
    settings: Settings, receiver: Receiver, in_process_workers, history: str, attempt: int
) -> None:
    await subscribe(settings, receiver, {"main": "site-main"}, ("*",))
    receiver.statuses["/main"] = 500
    worker = in_process_workers(settings)
    await worker.wait_ready(60)
    bootstrap = settings.kafka_bootstrap_servers
    tier = settings.retry_topics[0]
    writer = await RawWriter(bootstrap).start()
    tail = await TopicTail(bootstrap, [settings.deadletter_topic]).start()
    try:
        _, offset = await writer.write(
            tier, retry_record(HISTORIES[history], attempt), key=b"main", partition=0
        )
        committed = await poll(
            lambda: committed_offsets(bootstrap, settings.group_id, tier),
            until=lambda c: c.get(0, 0) > offset,
            timeout=15,
            interval=0.5,
        )
        reasons = [
            json.loads(r.value or b"{}").get("reason") for r in tail.of(settings.deadletter_topic)
        ]
        assert committed.get(0, 0) > offset, (
            f"tier partition 0 committed at {committed.get(0)}, the retry record is at {offset} "
            f"(dead letters: {reasons})"
        )
        assert "invalid_retry_record" in reasons
        assert receiver.received == []  # refused before any attempt
    finally:
        await tail.stop()
        await writer.stop()


async def test_subscription_record_with_many_object_event_types_is_skipped_promptly(
    settings: Settings, receiver: Receiver, in_process_workers
) -> None:
    await subscribe(settings, receiver, {"main": "site-main"}, ("*",))
    worker = in_process_workers(settings)
    await worker.wait_ready(60)
    writer = await RawWriter(settings.kafka_bootstrap_servers).start()
    try:
        poison = {
            "id": "poison",
            "name": "p",
            "url": "https://hooks.example/p",
            "secret": "s",
            "events": [{"a": i} for i in range(6000)],
            "site_id": "site-other",
            "active": True,
        }
        await writer.write(
            settings.subscriptions_topic,
            json.dumps(poison, separators=(",", ":")).encode(),
            key=b"poison",
        )
        event = post_created("ev-after-poison")
        started = time.monotonic()
        await writer.write(settings.events_topic, json.dumps(event).encode(), key=b"site-main")
        try:
            await receiver.wait_for(lambda got: any(r.status == 200 for r in got), 90)
        except TimeoutError:
            pytest.fail("the event after the poison subscription record was never delivered")
        took = time.monotonic() - started
        assert took < PROMPT, f"the event after it was delivered after {took:.1f} s"
    finally:
        await writer.stop()


async def test_events_nested_at_and_past_the_data_depth_limit_all_settle(
    settings: Settings, receiver: Receiver, in_process_workers
) -> None:
    """``data`` nested MAX_DATA_DEPTH - 1 .. MAX_DATA_DEPTH + 2 levels, to an endpoint that
    answers 500: those at most MAX_DATA_DEPTH deep are attempted, retried (their retry records
    hold the event) and dead-lettered with every attempt; deeper ones are dead-lettered
    ``too_deep`` as read, never attempted. Every offset is committed. Until 2026-12-07 data
    254 levels deep was accepted, then its retry record and dead letter could not be written:
    its job never settled and its partition committed no further."""
    from bridge.contract.events import MAX_DATA_DEPTH

    await subscribe(settings, receiver, {"main": "site-main"}, ("*",))
    receiver.statuses["/main"] = 500
    worker = in_process_workers(settings)
    await worker.wait_ready(60)
    bootstrap = settings.kafka_bootstrap_servers
    writer = await RawWriter(bootstrap).start()
    tail = await TopicTail(bootstrap, [settings.deadletter_topic]).start()
    depths = range(MAX_DATA_DEPTH - 1, MAX_DATA_DEPTH + 3)
    try:
        offsets: dict[int, int] = {}
        for depth in depths:
            # ``data`` is one level; each list inside it one more.
            inner = "[" * (depth - 1) + "]" * (depth - 1)
            head = json.dumps(post_created(f"ev-depth-{depth}"))
            value = head.replace('"title": "t"', '"title": "t", "x": ' + inner)
            _, offsets[depth] = await writer.write(
                settings.events_topic, value.encode(), key=b"site-main", partition=0
            )
        last = max(offsets.values())

        def letters() -> dict[str, dict[str, object]]:
            found = {}
            for r in tail.of(settings.deadletter_topic):
                letter = json.loads(r.value or b"{}")
                source = letter.get("source") or {}
                event = letter.get("event") or {}
                key = event.get("id") if isinstance(event, dict) else None
                key = key or f"offset-{source.get('offset')}"
                found[str(key)] = letter
            return found

        committed = await poll(
            lambda: committed_offsets(bootstrap, settings.group_id, settings.events_topic),
            until=lambda c: c.get(0, 0) > last and len(letters()) >= len(depths),
            timeout=30,
            interval=0.5,
        )
        assert committed.get(0, 0) > last, (committed, offsets, sorted(letters()))
        kept = letters()
        attempted = {r.delivery_id for r in receiver.received}
        schedule = len(settings.retry_schedule) + 1
        for depth in depths:
            event_id = f"ev-depth-{depth}"
            if depth <= MAX_DATA_DEPTH:
                letter = kept[event_id]
                assert letter["reason"] == "attempts_exhausted", letter["reason"]
                assert len(letter["attempts"]) == schedule  # type: ignore[arg-type]
                assert delivery_id(event_id, "main") in attempted
            else:
                (letter,) = [x for x in kept.values() if x["reason"] == "too_deep"
                             and (x.get("source") or {}).get("offset") == offsets[depth]]  # type: ignore[union-attr]  # fmt: skip
                assert delivery_id(event_id, "main") not in attempted
    finally:
        await tail.stop()
        await writer.stop()


async def test_retry_records_due_far_ahead_hold_their_tier_one_delay_in_all(
    settings: Settings, receiver: Receiver, in_process_workers
) -> None:
    """Retry records in the first tier whose ``not_before`` is far past the tier's delay (a
    writer's clock ahead, a hostile record: an hour, 10^300) are attempted the tier's delay
    after they were taken, one behind another, and a correct record behind them with them;
    the tier commits past them all. Until 2026-12-07 each waited a whole delay from its turn."""
    # A first tier of 2 s: one delay in all, against four or more from each one's turn.
    settings = settings.replace(retry_schedule=(2.0, 0.6))
    await subscribe(settings, receiver, {"main": "site-main"}, ("*",))
    worker = in_process_workers(settings)
    await worker.wait_ready(60)
    bootstrap = settings.kafka_bootstrap_servers
    tier = settings.retry_topics[0]
    delay = settings.retry_schedule[0]
    writer = await RawWriter(bootstrap).start()
    try:
        now = time.time()
        ahead = [1e300, now + 3600.0, now + 600.0, now + 60.0, now]
        offsets = []
        started = time.monotonic()
        for n, not_before in enumerate(ahead):
            record = json.loads(retry_record("[]", 2))
            record.update(
                delivery_id=delivery_id(f"ev-ahead-{n}", "main"),
                event=post_created(f"ev-ahead-{n}"),
                not_before=not_before,
            )
            _, offset = await writer.write(
                tier, json.dumps(record).encode(), key=b"main", partition=0
            )
            offsets.append(offset)
        await receiver.wait_for(lambda got: len(got) >= len(ahead), 15)
        took = time.monotonic() - started
        assert sorted(r.delivery_id for r in receiver.received) == sorted(
            delivery_id(f"ev-ahead-{n}", "main") for n in range(len(ahead))
        )
        # One delay in all (each counted from when it was taken), with room for a slow fetch.
        assert took < 2 * delay + 1, f"{len(ahead)} records took {took:.1f} s"
        committed = await poll(
            lambda: committed_offsets(bootstrap, settings.group_id, tier),
            until=lambda c: c.get(0, 0) > max(offsets),
            timeout=PROMPT,
            interval=0.5,
        )
        assert committed.get(0, 0) > max(offsets)
    finally:
        await writer.stop()
