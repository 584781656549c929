"""Recoveries at their edges, on the real broker: stopped or cancelled while a delivery is being
written, released and resumed mid-batch, a `since` before 1970, a webhook changed while its
recovery runs."""

from __future__ import annotations

import asyncio
import functools
import json
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from bridge.admin import recovery as recovery_module
from bridge.admin.loop_share import STRETCH_RECORDS
from bridge.admin.publish import publish_events
from bridge.admin.recovery import Operation, RecoveryRequest, SharedPace, recover
from bridge.api.kafka_sources import kafka_recovery_runner
from bridge.api.recoveries import Recoveries
from bridge.config import Settings
from bridge.contract.events import Event, build_event, format_timestamp
from bridge.delivery.pending_retry import PendingRetry
from bridge.kafka.reading import read_topic
from bridge.subscriptions.webhook import Webhook
from tests.support.api import LOG_AUTH
from tests.support.journals import Journal
from tests.support.receivers import Receiver, subscribe
from tests.support.records import RawWriter
from tests.support.shares import CountedShare
from tests.support.waiting import eventually, poll
from tests.support.workers import InProcessWorker

pytestmark = pytest.mark.integration

WEBHOOK = Webhook(
    id="a",
    name="a",
    url="http://127.0.0.1:9/a",
    secret="s" * 32,
    events=frozenset({"post.created"}),
    site_id="s1",
    user_id="u1",
)


def post(n: int) -> Event:
    return build_event(
        "post.created", {"id": f"p{n}", "title": f"post {n}"}, site_id="s1", user_id="u1"
    )


def last_hour(rate: float = 100_000) -> RecoveryRequest:
    """The last hour of :data:`WEBHOOK`'s events; at ``rate`` a stop lands while a write waits
    for the broker."""
    now = datetime.now(UTC)
    return RecoveryRequest(WEBHOOK, now - timedelta(hours=1), now + timedelta(seconds=1), rate=rate)


async def retried(settings: Settings) -> Counter[str]:
    """Delivery ids in the first retry tier, with how often each was written."""
    records = await read_topic(settings, settings.retry_topics[0])
    return Counter(json.loads(value)["delivery_id"] for _, value in records if value)


async def test_after_a_release_and_resume_nothing_is_enqueued_twice(settings: Settings) -> None:
    """The worker running a recovery stops while a write waits for the broker (the producer
    sends what it was given when it stops): the write is counted and the resuming worker reads
    on after it, so each of 300 deliveries is in the retry tier once."""
    await publish_events(settings, [post(n) for n in range(300)])
    journal = Journal()
    first = Recoveries(kafka_recovery_runner(settings), journal=journal, url="http://w1")
    operation = await first.start(last_hour())
    await eventually(lambda: operation.enqueued >= 40, timeout=30)
    await first.close()  # the worker stops: released
    record = await journal.read(operation.id)
    assert record is not None and record["state"] == "running" and record["runner"] is None

    second = Recoveries(kafka_recovery_runner(settings), journal=journal, url="http://w2")
    resumed = await second.resume(Operation.from_record(record, WEBHOOK))
    await eventually(lambda: not second.running_here(resumed.id), timeout=60)
    assert resumed.state == "done" and resumed.enqueued == 300
    written = await retried(settings)
    assert len(written) == 300 and set(written.values()) == {1}


async def test_a_cancelled_recovery_counts_every_delivery_it_enqueued(settings: Settings) -> None:
    """Cancelled while a write waits for the broker: the answer counts that write too, as
    many as the retry tier holds."""
    await publish_events(settings, [post(n) for n in range(300)])
    recoveries = Recoveries(kafka_recovery_runner(settings))
    operation = await recoveries.start(last_hour())
    await eventually(lambda: operation.enqueued >= 20, timeout=30)
    answered = await recoveries.cancel(operation.id)
    assert answered is not None and answered.state == "cancelled"
    assert sum((await retried(settings)).values()) == answered.enqueued


async def _released_while_writing(
    settings: Settings, events: int, stop_at: int
) -> tuple[dict[str, Any], list[str], Journal]:
    """A recovery of ``events`` fresh events whose worker stops while its delivery number
    ``stop_at + 1`` is being written (a slow broker): its release record, the deliveries
    written, and the journal."""
    await publish_events(settings, [post(n) for n in range(events)])
    written: list[str] = []

    async def first_write(item: PendingRetry) -> None:
        if len(written) >= stop_at:
            await asyncio.sleep(0.5)  # a slow broker: the worker stops while this write waits
        written.append(item.delivery_id)

    journal = Journal()
    first = Recoveries(
        functools.partial(recover, settings, write=first_write), journal=journal, url="http://w1"
    )
    operation = await first.start(last_hour())
    await eventually(lambda: len(written) >= stop_at, timeout=30)
    await first.close()
    record = await journal.read(operation.id)
    assert record is not None and record["runner"] is None
    return record, written, journal


async def _resumed(
    settings: Settings, journal: Journal, released: Operation, written: list[str], **kw: Any
) -> Operation:
    """``released`` resumed by another worker (``recover`` given ``kw``), once it ended."""

    async def second_write(item: PendingRetry) -> None:
        written.append(item.delivery_id)

    second = Recoveries(
        functools.partial(recover, settings, write=second_write, **kw),
        journal=journal,
        url="http://w2",
    )
    resumed = await second.resume(released)
    await eventually(lambda: not second.running_here(resumed.id), timeout=60)
    return resumed


async def test_a_resumed_recovery_ends_with_all_of_its_records_read(settings: Settings) -> None:
    """Released in the middle of a fetched batch: the resumed recovery counts on from where
    the first one recorded it had read, and ends with every record read (progress 1.0)."""
    record, written, journal = await _released_while_writing(settings, 300, 40)
    resumed = await _resumed(settings, journal, Operation.from_record(record, WEBHOOK), written)
    assert resumed.state == "done" and len(set(written)) == 300
    assert resumed.done == resumed.total and resumed.as_dict()["progress"] == 1.0


async def test_a_recovery_resumed_past_every_reported_end_reads_the_rest_of_its_batch(
    settings: Settings,
) -> None:
    """The embedded broker reports a partition whose last write was a batch as ending at that
    batch's first offset + 1: a recovery released past that end resumes with nothing to read up
    to the ends, and reads the rest from its consumer's first fetch, which can take longer than
    a settle. Until 2026-12-05 the resumed recovery ended at that first fetch, its records
    skipped (4 of 12 in a loaded run of tests/integration/test_api_changes.py; here the
    settle is 1 ms, shorter than any first fetch, to show it every time)."""
    # 12 events: one batch, in one partition.
    record, written, journal = await _released_while_writing(settings, 12, 8)
    released = Operation.from_record(record, WEBHOOK)
    past = [key for key, end in released.ends.items() if released.positions[key] > end]
    assert past and all(released.positions[key] >= end for key, end in released.ends.items())
    resumed = await _resumed(settings, journal, released, written, settle=0.001)
    assert resumed.state == "done" and len(set(written)) == len(written) == 12, written
    assert resumed.scanned == resumed.enqueued == 12


async def test_a_recovery_since_before_1970_recovers_every_retained_event(
    settings: Settings,
) -> None:
    """Any RFC 3339 time is a `since`; one before 1970 reads from each partition's start."""
    await publish_events(settings, [post(n) for n in range(3)])
    written: list[str] = []

    async def write(item: PendingRetry) -> None:
        written.append(item.delivery_id)

    since = datetime(1969, 12, 31, tzinfo=UTC)
    until = datetime.now(UTC) + timedelta(seconds=5)
    operation = Operation(RecoveryRequest(WEBHOOK, since, until, rate=1000))
    await asyncio.wait_for(recover(settings, operation, write=write), 60)
    assert operation.state == "done" and len(written) == 3


async def test_a_recovery_stops_sending_event_types_the_webhook_no_longer_wants(
    log_settings: Settings,
    receiver: Receiver,
    in_process_workers: Callable[[Settings], InProcessWorker],
) -> None:
    """A worker's recovery matches each event against the webhook as it is then: once the
    webhook no longer wants post.created, no more of them are enqueued (the one being
    written at the change aside), and the recovery reads on to its end."""
    async with httpx.AsyncClient(timeout=30.0) as client:
        worker = in_process_workers(log_settings)
        await worker.wait_ready()
        await subscribe(log_settings, receiver, {"chg": "s1"}, ("post.created",))
        since = datetime.now(UTC)
        await eventually(lambda: datetime.now(UTC) > since)
        await publish_events(log_settings, [post(n) for n in range(20)])
        await receiver.wait_for(lambda _: len(receiver.at("/chg")) == 20)

        started = await client.post(
            worker.base_url + "/v1/webhooks/chg/recoveries",
            json={"since": format_timestamp(since), "rate": 2},
            headers=LOG_AUTH,
        )
        assert started.status_code == 202, started.text
        location = started.headers["Location"]

        async def shown() -> dict[str, Any]:
            response = await client.get(worker.base_url + location, headers=LOG_AUTH)
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            return body

        await poll(shown, until=lambda r: r["enqueued"] >= 2, timeout=30, interval=0.05)
        changed = await client.patch(
            worker.base_url + "/v1/webhooks/chg",
            json={"events": ["post.deleted"]},
            headers=LOG_AUTH,
        )
        assert changed.status_code == 200, changed.text
        at_change = (await shown())["enqueued"]
        # Unpaced once nothing is written: the rest is read at once.
        after = await poll(shown, until=lambda r: r["state"] == "done", timeout=30, interval=0.05)
        assert after["state"] == "done" and after["scanned"] == 20, after
        assert after["enqueued"] <= at_change + 1, (at_change, after)


async def test_every_record_a_recovery_reads_is_paid_for_in_its_share(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recovery pays its LoopShare for every record it matches, in stretches of at most
    STRETCH_RECORDS records, and sleeps for them as its share asks (and takes a turn of the
    worker's SharedPace for each delivery it writes): here the share's clock
    counts the records matched (one second each) and its sleeps, so a quarter share sleeps
    three seconds for every record. 700 events of other sites, 100 of the webhook's, and 20
    that are not events, on the real broker; without the payments in any one of the paths
    (records skipped, matched and written, unreadable) the count falls short."""
    await publish_events(
        settings,
        [
            build_event("post.created", {"id": f"o{n}", "title": "o"}, site_id="s9", user_id="u9")
            for n in range(700)
        ]
        + [post(n) for n in range(100)],
    )
    writer = await RawWriter(settings.kafka_bootstrap_servers).start()
    try:
        for n in range(20):
            await writer.write(settings.events_topic, b"not an event", key=f"k{n}".encode())
    finally:
        await writer.stop()
    share = CountedShare(0.25)
    matched = 0
    real_select = recovery_module.select

    def counting(*args: Any) -> Any:
        nonlocal matched
        matched += 1
        share.work()
        return real_select(*args)

    monkeypatch.setattr(recovery_module, "select", counting)
    written: list[str] = []

    async def write(item: PendingRetry) -> None:
        written.append(item.delivery_id)

    reserved = []

    class Counting(SharedPace):
        def reserve(self) -> float:
            reserved.append(len(written))
            return super().reserve()

    operation = Operation(last_hour())
    running = recover(settings, operation, write=write, share=share, pace=Counting(1e9))
    await asyncio.wait_for(running, 60)
    assert operation.state == "done" and len(written) == 100
    assert reserved == list(range(100))  # each delivery waited its turn of the shared pace
    assert operation.scanned == matched == 820 and operation.invalid == 20
    assert sum(share.stretches) == pytest.approx(matched)  # every record, once
    assert max(share.stretches) <= STRETCH_RECORDS
    assert share.now == pytest.approx(matched / 0.25)  # work and sleeps: four seconds a record


async def test_one_sites_recoveries_take_half_of_a_workers_places(
    log_settings: Settings,
    receiver: Receiver,
    in_process_workers: Callable[[Settings], InProcessWorker],
) -> None:
    """A worker that runs two recoveries at once runs one of a site's webhooks: a second of
    the same site's is 429 naming the site while the first runs, another site's starts. A
    second recovery of one webhook over the same window is 409 naming the first. Requests sent
    all at once, their first records written to the broker together, take no more places."""
    worker = in_process_workers(log_settings.replace(api_max_recoveries=2))
    await worker.wait_ready()
    sites = {"p1": "s1", "p2": "s1", **{f"q{n}": "s2" for n in range(1, 7)}}
    await subscribe(log_settings, receiver, sites, ("post.created",))
    since = datetime.now(UTC)
    await eventually(lambda: datetime.now(UTC) > since)
    events = [post(n) for n in range(10)] + [
        build_event("post.created", {"id": f"q{n}", "title": "q"}, site_id="s2", user_id="u1")
        for n in range(10)
    ]
    await publish_events(log_settings, events)
    await receiver.wait_for(
        lambda _: len(receiver.at("/p1")) == 10 and len(receiver.at("/q1")) == 10
    )
    body = {"since": format_timestamp(since), "rate": 0.5}  # ten events: twenty seconds
    async with httpx.AsyncClient(base_url=worker.base_url, timeout=30.0) as client:
        first = await client.post("/v1/webhooks/p1/recoveries", json=body, headers=LOG_AUTH)
        assert first.status_code == 202, first.text
        second = await client.post("/v1/webhooks/p2/recoveries", json=body, headers=LOG_AUTH)
        assert second.status_code == 429, second.text
        assert "site's webhooks" in second.json()["detail"] and second.headers["Retry-After"]
        other = await client.post("/v1/webhooks/q1/recoveries", json=body, headers=LOG_AUTH)
        assert other.status_code == 202, other.text
        overlapping = await client.post("/v1/webhooks/p1/recoveries", json=body, headers=LOG_AUTH)
        assert overlapping.status_code == 409, overlapping.text
        assert first.json()["id"] in overlapping.json()["detail"]
        for started in (first, other):
            cancelled = await client.delete(started.headers["Location"], headers=LOG_AUTH)
            assert cancelled.json()["state"] == "cancelled", cancelled.text

        answers = await asyncio.gather(
            *(
                client.post(f"/v1/webhooks/{name}/recoveries", json=body, headers=LOG_AUTH)
                for name in sites
            )
        )
        made = [a for a in answers if a.status_code == 202]
        assert sorted(a.status_code for a in answers) == [202, 202] + [429] * 6, [
            (a.status_code, a.text) for a in answers
        ]
        made_for = {sites[a.json()["webhook_id"]] for a in made}
        assert made_for == {"s1", "s2"}  # one place each
        for started in made:
            cancelled = await client.delete(started.headers["Location"], headers=LOG_AUTH)
            assert cancelled.json()["state"] == "cancelled", cancelled.text


async def test_one_webhooks_recoveries_together_keep_to_its_rate_limit(settings: Settings) -> None:
    """Two recoveries of one webhook limited to 20 a second, each asking 20, run at once: they
    enqueue 20 a second together, not 40 (until 2026-12-06 each kept to the limit alone, and
    the delivery path deferred the excess). Moments are the monotonic clock's. The pace
    spaces the moments each write waits for, 1/20 s apart; a write woken late (a loaded
    machine) may land close to the next, on time, so two writes' gap bounds nothing, but the
    span of the twenty does: at least 19/20 s less the first write's lateness, where each
    recovery keeping the limit alone (the bug) took half of that."""
    import dataclasses
    import time

    from bridge.admin.recovery import WebhookPaces

    await publish_events(settings, [post(n) for n in range(10)])
    limited = dataclasses.replace(WEBHOOK, rate_limit=20.0)
    now = datetime.now(UTC)
    written: list[float] = []

    async def write(item: PendingRetry) -> None:
        written.append(time.monotonic())

    paces = WebhookPaces()

    def one() -> Any:
        request = RecoveryRequest(
            limited, now - timedelta(hours=1), now + timedelta(seconds=1), rate=20.0
        )
        return recover(settings, Operation(request), write=write, webhook_paces=paces)

    done = await asyncio.wait_for(asyncio.gather(one(), one()), 60)
    assert [operation.enqueued for operation in done] == [10, 10]
    written.sort()
    span = written[-1] - written[0]
    assert span >= 19 * 0.05 - 0.15, (span, written)  # 0.8 s, where 40 a second took 0.475
    assert len(paces) == 0
