"""Subscription changes take effect for the next event; the table survives worker restarts."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import time
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from faust.tables import recovery as faust_recovery
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from bridge.admin.publish import publish_events
from bridge.config import Settings
from bridge.contract.events import build_event
from bridge.kafka.clients import client_kwargs
from bridge.subscriptions.store import WebhookStore
from bridge.worker import app as app_module
from bridge.worker import faust_patches
from bridge.worker.app import Bridge, _SubscriptionTable
from bridge.worker.embedded import free_port
from tests.support.builders import encode, webhook_record
from tests.support.processes import settings_env
from tests.support.receivers import Receiver
from tests.support.waiting import eventually, poll

pytestmark = pytest.mark.integration


def post(n: int, site: str = "s1") -> object:
    return build_event(
        "post.created", {"id": f"p{n}", "title": f"post {n}"}, site_id=site, user_id="u1"
    )


async def test_update_deactivate_and_delete_apply_to_the_next_event(
    settings: Settings, receiver: Receiver, in_process_workers
) -> None:
    worker = in_process_workers(settings)
    await worker.wait_ready()
    consumed = 0

    async def publish_right_after_change(n: int) -> None:
        # No wait between the change and the event: the worker must apply the subscription
        # change before matching an event published after it. Waiting for the event to be
        # consumed before the next change keeps later changes from overtaking it.
        nonlocal consumed
        await publish_events(settings, [post(n)])
        consumed += 1
        await worker.wait_metric(
            'webhook_bridge_events_total{event_type="post.created"}', lambda v: v == consumed
        )
        await worker.wait_metric("webhook_bridge_in_flight_requests", lambda v: v == 0)

    async with WebhookStore(settings) as store:
        await store.create(
            url=receiver.url("/a"),
            events=["post.created"],
            site_id="s1",
            user_id="u1",
            secret="secret-one",
            webhook_id="hook",
        )
        await publish_right_after_change(1)
        assert [r.path for r in receiver.received] == ["/a"]

        await store.update("hook", url=receiver.url("/b"), secret="secret-two")
        await publish_right_after_change(2)
        assert [r.path for r in receiver.received] == ["/a", "/b"]
        receiver.secrets["/b"] = "secret-two"
        assert receiver.verified(receiver.received[-1])

        await store.update("hook", events=["post.deleted"])
        await publish_right_after_change(3)
        await store.update("hook", events=["post.created"], active=False)
        await publish_right_after_change(4)
        await store.delete("hook")
        await publish_right_after_change(5)
        assert [r.path for r in receiver.received] == ["/a", "/b"]

        await store.create(
            url=receiver.url("/c"),
            events=["*"],
            site_id="s1",
            user_id="u1",
            secret="secret-three",
            webhook_id="hook2",
        )
        await publish_right_after_change(6)

    assert [r.path for r in receiver.received] == ["/a", "/b", "/c"]
    assert receiver.received[-1].json["event"]["data"]["id"] == "p6"
    values = await worker.metrics()
    assert values["webhook_bridge_subscription_sync_timeouts_total"] == 0


async def test_a_restarted_worker_recovers_every_webhook_from_kafka(
    settings: Settings, receiver: Receiver, workers
) -> None:
    names = [f"hook{i}" for i in range(8)]
    async with WebhookStore(settings) as store:
        for i, name in enumerate(names):
            await store.create(
                url=receiver.url(f"/{name}"),
                events=["post.created"],
                site_id="s1",
                user_id="u1",
                secret=f"secret-{i}",
                webhook_id=name,
            )
        await store.delete("hook3")
        await store.update("hook5", active=False)
    first = workers(settings)
    await first.wait_ready()
    await publish_events(settings, [post(1)])
    await receiver.wait_for(lambda got: len(got) == 6)
    first.kill()

    # The newest key must survive the restart too (see docs/operations.md on the embedded broker).
    async with WebhookStore(settings) as store:
        await store.create(
            url=receiver.url("/newest"),
            events=["post.created"],
            site_id="s1",
            user_id="u1",
            secret="secret-newest",
            webhook_id="newest",
        )
    second = workers(settings.replace(web_port=free_port()))
    await second.wait_ready()
    values = await second.metrics()
    assert values['webhook_bridge_subscriptions{state="active"}'] == 7
    assert values['webhook_bridge_subscriptions{state="inactive"}'] == 1
    await publish_events(settings, [post(2)])
    await receiver.wait_for(
        lambda got: len([r for r in got if r.json["event"]["data"]["id"] == "p2"]) == 7
    )
    second_round = sorted(
        r.path for r in receiver.received if r.json["event"]["data"]["id"] == "p2"
    )
    assert second_round == sorted(
        [f"/{n}" for n in names if n not in ("hook3", "hook5")] + ["/newest"]
    )


async def test_changes_read_as_the_table_finishes_recovering_are_applied(
    settings: Settings, in_process_workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two renames written as the worker's table completes its recovery, while its live
    (standby) reading of the subscriptions topic has begun: the first is being applied, the
    second is fetched and waits its turn in the tables' changelog queue when Faust resumes its
    flow. Faust's resume cleared that queue, so the second rename was never applied: the
    worker kept the created webhook until its next restart (one rename in about every other
    start under a stream of writes)."""
    async with WebhookStore(settings) as store:
        made = {
            webhook_id: await store.create(
                url="http://127.0.0.1:9/h",
                events=["post.created"],
                site_id="s1",
                user_id="u1",
                webhook_id=webhook_id,
            )
            for webhook_id in ("first", "second")
        }
        renaming = asyncio.Event()
        applying_first = asyncio.Event()
        failures: list[BaseException] = []
        apply = Bridge.on_subscription_event

        async def held_apply(self: Bridge, event: Any) -> None:
            # The first rename is applied once the recovery has completed (Faust's flow
            # resumed): meanwhile what the table reads next waits in the changelog queue.
            if renaming.is_set() and event.message.key == b"first" and not applying_first.is_set():
                applying_first.set()
                await self.app.tables.recovery.completed.wait()  # type: ignore[attr-defined]
            await apply(self, event)

        complete = _SubscriptionTable.on_recovery_completed

        async def renamed_while_completing(self: Any, active: Any, standby: Any) -> None:
            if not renaming.is_set():
                renaming.set()
                try:
                    await store.write(dataclasses.replace(made["first"], name="renamed"))
                    await eventually(applying_first.is_set, timeout=5, interval=0.01)
                    await store.write(dataclasses.replace(made["second"], name="renamed"))
                    queue = self.app.tables.changelog_queue

                    def second_is_queued() -> bool:
                        return any(e.message.key == b"second" for e in list(queue._queue))

                    await eventually(second_is_queued, timeout=5, interval=0.01)
                except BaseException as exc:
                    failures.append(exc)
                    raise
            await complete(self, active, standby)

        monkeypatch.setattr(Bridge, "on_subscription_event", held_apply)
        monkeypatch.setattr(_SubscriptionTable, "on_recovery_completed", renamed_while_completing)
        worker = in_process_workers(settings)
        await worker.wait_ready()
        assert not failures, failures
        index = worker.bridge.index

        def names() -> list[str | None]:
            return [getattr(index.get(w), "name", None) for w in made]

        assert await poll(names, until=lambda n: n == ["renamed", "renamed"], timeout=3) == [
            "renamed",
            "renamed",
        ]


async def test_a_slow_endpoint_does_not_hold_up_others_on_the_same_partition(
    settings: Settings, receiver: Receiver, in_process_workers
) -> None:
    # Another server: paths of one server are one endpoint, which shares its slots.
    slow = await Receiver().start()
    release = asyncio.Event()
    slow.holds["/slow"] = release
    try:
        async with WebhookStore(settings) as store:
            await store.create(
                url=slow.url("/slow"),
                events=["post.created"],
                site_id="s1",
                user_id="u1",
                secret="s-slow",
                webhook_id="slow",
            )
            await store.create(
                url=receiver.url("/fast"),
                events=["post.created"],
                site_id="s1",
                user_id="u1",
                secret="s-fast",
                webhook_id="fast",
            )
        worker = in_process_workers(settings)
        await worker.wait_ready()
        await publish_events(settings, [post(n) for n in range(20)])
        # All twenty reach the fast endpoint while the slow one still holds its first requests.
        await receiver.wait_for(lambda got: len([r for r in got if r.path == "/fast"]) == 20)
        assert not release.is_set()
        assert len(slow.received) >= 1
        release.set()
        await slow.wait_for(lambda got: len(got) == 20)
    finally:
        await slow.stop()


async def write_raw(settings: Settings, key: bytes | None, value: bytes | None) -> None:
    """One record straight to the subscriptions topic, bypassing WebhookStore's checks (in a
    batch of its own, as the embedded broker needs)."""
    producer = AIOKafkaProducer(
        **client_kwargs(settings), acks="all", linger_ms=0, enable_idempotence=False
    )
    await producer.start()
    try:
        await producer.send_and_wait(settings.subscriptions_topic, value, key=key)
    finally:
        await producer.stop()


#: Accepted by the embedded broker (Apache Kafka refuses keyless records on compacted topics):
#: no key, and an id escaped as a lone surrogate, which has no UTF-8 form.
KEYLESS_UNENCODABLE = (
    b'{"id":"\\ud800","name":"n","url":"https://hooks.example/","secret":"s","events":["*"],'
    b'"site_id":"s1","user_id":"u1","active":true}'
)


async def test_a_keyless_record_with_an_unencodable_id_delays_nothing(
    settings: Settings, receiver: Receiver, in_process_workers
) -> None:
    async with WebhookStore(settings) as store:
        await store.create(
            url=receiver.url("/a"),
            events=["post.created"],
            site_id="s1",
            user_id="u1",
            secret="secret-a",
            webhook_id="hook",
        )
    await write_raw(settings, None, KEYLESS_UNENCODABLE)  # read while the table recovers
    worker = in_process_workers(settings)
    await worker.wait_ready()
    await write_raw(settings, None, KEYLESS_UNENCODABLE)  # and read live
    await worker.wait_metric(
        'webhook_bridge_invalid_subscription_records_total{reason="null_key"}', lambda v: v == 2
    )

    # The bad records are the newest of their partitions: once they made the table "not
    # current" for ever, and every event waited subscription_sync_timeout (5 s) to be matched.
    for n in range(3):
        published = time.monotonic()
        await publish_events(settings, [post(n)])
        await receiver.wait_for(lambda got, n=n: len(got) == n + 1, timeout=10.0)
        # Well under the wait (1.1 s seen on a loaded machine: not 1 s, as this said).
        assert receiver.received[-1].at - published < settings.subscription_sync_timeout / 2
    values = await worker.metrics()
    assert values["webhook_bridge_subscription_sync_timeouts_total"] == 0

    # The management commands read the same records: a warning, not a UnicodeEncodeError.
    listing = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bridge.cli", "webhooks", "list"],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert listing.returncode == 0, listing.stderr
    assert [line.split()[0] for line in listing.stdout.splitlines()] == ["hook"]
    assert listing.stderr.count("skipping an invalid subscription record: null_key") == 2
    assert "Traceback" not in listing.stderr
    async with WebhookStore(settings) as store:
        await store.update("hook", name="renamed")
        assert (await store.load())["hook"].name == "renamed"


async def write_numbered(producer: AIOKafkaProducer, topic: str, numbers: range) -> None:
    """Webhook ``h{n}`` named ``n{n}`` for each ``n``, to partition 0 at offset ``n``, one record
    per batch: the embedded broker reports a partition's end as the first offset of its last
    batch + 1 (docs/producers.md), and a table's recovery reads up to it."""
    for n in numbers:
        metadata = await producer.send_and_wait(
            topic,
            encode(webhook_record(id=f"h{n}", name=f"n{n}")),
            key=f"h{n}".encode(),
            partition=0,
        )
        assert metadata.offset == n, (metadata.offset, n)


def hold_apply_until_resumed(monkeypatch: pytest.MonkeyPatch, offset: int) -> asyncio.Event:
    """Hold the table's apply of partition 0's record at ``offset`` until Faust's standby start
    has resumed the flow (and cleared the changelog queue): the returned event, set when the
    subscription table's recovery completes, which comes right after that resume."""
    resumed = asyncio.Event()
    apply = Bridge.on_subscription_event

    async def held_apply(self: Bridge, event: Any) -> None:
        if event.message.partition == 0 and event.message.offset == offset:
            await resumed.wait()
        await apply(self, event)

    complete = _SubscriptionTable.on_recovery_completed

    async def resumed_then_complete(self: Any, active: Any, standby: Any) -> None:
        resumed.set()
        await complete(self, active, standby)

    monkeypatch.setattr(Bridge, "on_subscription_event", held_apply)
    monkeypatch.setattr(_SubscriptionTable, "on_recovery_completed", resumed_then_complete)
    return resumed


def install_patches_before_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's Faust patches, installed now so that a test's hooks can wrap the patched
    code; the worker's own install is skipped (it would take the wrappers for changed Faust
    code)."""
    faust_patches.install()
    monkeypatch.setattr(app_module, "install_faust_patches", lambda: None)


async def names_missing(worker: Any, count: int) -> list[str]:
    """The webhooks of :func:`write_numbered` (``h0`` to ``h{count - 1}``) the worker's index
    does not hold as written, once it holds them all or after 3 s."""
    index = worker.bridge.index

    def missing() -> list[str]:
        return [
            f"h{n}" for n in range(count) if getattr(index.get(f"h{n}"), "name", None) != f"n{n}"
        ]

    result: list[str] = await poll(missing, until=lambda m: not m, timeout=3)
    return result


async def test_the_rest_of_a_batch_fetched_before_the_standby_seek_is_not_applied(
    settings: Settings, in_process_workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The table's standby start seeks the subscriptions partition back to where its recovery
    ended while a batch fetched before that seek is still being handed on, the partition under
    buffer pressure (handed on while paused). The rest of that batch went on being handed on
    after the seek: one of its records waited in the changelog queue when Faust's standby start
    cleared it, later ones were applied, and the re-read of the cleared one was then skipped as
    applied (offsets not above the last applied). Its webhook stayed missing until the next
    restart. Records of a partition sought since their batch was fetched are skipped: the
    re-read from the seek applies every one in order."""
    seed, extra = 10, 10  # written before the recovery's high-water mark, and after it
    last = seed - 1  # the active recovery ends with this offset; the standby seek goes there
    tp0 = (settings.subscriptions_topic, 0)
    sought = asyncio.Event()  # the standby seek is done
    # Faust's standby start has resumed the flow (and cleared): the table's apply of the
    # first record after the recovery's end waits for it.
    resumed = hold_apply_until_resumed(monkeypatch, seed)
    batches: list[list[int]] = []  # offsets of partition 0 in each batch the thread fetched
    held_across_seek = asyncio.Event()
    failures: list[BaseException] = []

    producer = AIOKafkaProducer(**client_kwargs(settings), acks="all", linger_ms=0)
    await producer.start()

    async def write(numbers: range) -> None:
        await write_numbered(producer, settings.subscriptions_topic, numbers)

    install_patches_before_hooks(monkeypatch)
    build_highwaters = faust_recovery.Recovery._build_highwaters

    async def hooked_build_highwaters(
        self: Any, consumer: Any, tps: Any, dest: Any, title: str
    ) -> None:
        if title == "standby" and not sought.is_set():
            # Right after the standby seek: the partition is under buffer pressure, so Faust
            # hands on what was fetched of it while it is paused.
            consumer._buffered_partitions.add(TP(*tp0))
            sought.set()
        await build_highwaters(self, consumer, tps, dest, title)
        if title == "active" and not batches:
            try:
                assert dest[TP(*tp0)] == last, dict(dest)
                await write(range(seed, seed + extra))  # read with the seed, in one batch
            except BaseException as exc:
                failures.append(exc)
                raise

    fetch_records = faust_aiokafka.AIOKafkaConsumerThread._fetch_records

    async def recorded_fetch(self: Any, *args: Any, **kwargs: Any) -> Any:
        records = await fetch_records(self, *args, **kwargs)
        for tp, batch in records.items():
            if (tp.topic, tp.partition) == tp0:
                batches.append([record.offset for record in batch])
        return records

    getmany = faust_consumer.Consumer.getmany

    async def held_getmany(self: Any, timeout: float) -> Any:
        async for tp, message in getmany(self, timeout):
            yield tp, message  # handed on (into the changelog queue) before this returns
            if (tp.topic, tp.partition) != tp0:
                continue
            if message.offset == last and not sought.is_set():
                # The recovery ends with this record: go on with the batch after the seek.
                await sought.wait()
                held_across_seek.set()
            elif message.offset == seed + 1 and sought.is_set():
                # One record of the batch waits in the changelog queue (the table is busy
                # with the one before): go on once the standby start resumed the flow.
                await resumed.wait()

    monkeypatch.setattr(faust_recovery.Recovery, "_build_highwaters", hooked_build_highwaters)
    monkeypatch.setattr(faust_aiokafka.AIOKafkaConsumerThread, "_fetch_records", recorded_fetch)
    monkeypatch.setattr(faust_consumer.Consumer, "getmany", held_getmany)
    try:
        await write(range(seed))
        worker = in_process_workers(settings)
        await worker.wait_ready()
    finally:
        await producer.stop()
    assert not failures, failures
    # The batch handed on across the seek held the records after the recovery's end.
    assert held_across_seek.is_set()
    assert any(last in batch and seed + extra - 1 in batch for batch in batches), batches
    assert await names_missing(worker, seed + extra) == []


async def test_a_partition_paused_for_the_standby_start_stays_paused_when_its_buffer_drains(
    settings: Settings, in_process_workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Faust pauses a global table's partitions when their active recovery ends, seeks them to
    where the table is (the standby start), then resumes them and its flow, which clears the
    tables' changelog queue: what the queue holds then was fetched before the seek and is read
    again. A partition under buffer pressure whose pressure dropped in between was made active
    again, paused or not (``Consumer.on_buffer_drop``): records fetched after the seek waited in
    the queue when it was cleared, the partition's position already past them, and were never
    applied. A paused partition stays paused until it is resumed, and the resumed reading from
    the seek applies every record."""
    seed, extra = 10, 10  # read by the active recovery, and written after the standby seek
    tp0 = TP(settings.subscriptions_topic, 0)
    drained = asyncio.Event()  # the partition's buffer pressure dropped after the standby seek
    failures: list[BaseException] = []

    producer = AIOKafkaProducer(**client_kwargs(settings), acks="all", linger_ms=0)
    await producer.start()

    async def write(numbers: range) -> None:
        await write_numbered(producer, settings.subscriptions_topic, numbers)

    install_patches_before_hooks(monkeypatch)
    build_highwaters = faust_recovery.Recovery._build_highwaters

    async def drained_after_the_standby_seek(
        self: Any, consumer: Any, tps: Any, dest: Any, title: str
    ) -> None:
        await build_highwaters(self, consumer, tps, dest, title)
        if title != "standby" or drained.is_set():
            return
        try:
            # Right after the standby seek (to offset seed - 1, where the active recovery
            # ended), the partition paused since then: records only its live reading reads.
            assert tp0 in consumer._paused_partitions
            await write(range(seed, seed + extra))
            # The partition was under buffer pressure (a put into a full changelog queue) and
            # the pressure drops (what the conductor's pressure-drop callback calls).
            consumer._buffered_partitions.add(tp0)
            consumer.on_buffer_drop(tp0)
            drained.set()
            queue = self.tables.changelog_queue

            def queued_or_not_fetched() -> bool:
                # Fetched now (the first record held in the table's callback, the rest behind
                # it in the queue), or not fetched until Faust resumes the partition.
                return tp0 not in consumer._get_active_partitions() or any(
                    e.message.offset == seed + extra - 1 for e in list(queue._queue)
                )

            await eventually(queued_or_not_fetched, timeout=5, interval=0.01)
        except BaseException as exc:
            failures.append(exc)
            raise

    hold_apply_until_resumed(monkeypatch, seed)
    monkeypatch.setattr(
        faust_recovery.Recovery, "_build_highwaters", drained_after_the_standby_seek
    )
    try:
        await write(range(seed))
        worker = in_process_workers(settings)
        await worker.wait_ready()
    finally:
        await producer.stop()
    assert not failures, failures
    assert drained.is_set()
    assert await names_missing(worker, seed + extra) == []


async def test_the_store_reports_where_each_write_of_a_webhook_was_acknowledged(
    settings: Settings,
) -> None:
    """:meth:`WebhookStore.placed`: the partition and offset of the newest record (a tombstone
    included) the store wrote of a webhook, which is where a reader of the topic finds it: a
    worker's API and disables wait for their table to have applied it before changing the
    webhook again (bridge.subscriptions.serial.KeyedLocks)."""
    async with WebhookStore(settings) as store:
        assert store.placed("wh_placed") is None
        made = await store.create(
            url="https://example.com/h",
            events=["post.created"],
            webhook_id="wh_placed",
            site_id="s1",
        )
        first = store.placed("wh_placed")
        await store.create(
            url="https://example.com/h", events=["post.created"], webhook_id="wh_b", site_id="s1"
        )
        await store.disable(made, "gone")
        second = store.placed("wh_placed")
        await store.delete("wh_placed")
        third = store.placed("wh_placed")
    assert first is not None and second is not None and third is not None
    assert first.partition == second.partition == third.partition
    assert first.offset < second.offset < third.offset

    consumer = AIOKafkaConsumer(**client_kwargs(settings), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(settings.subscriptions_topic, first.partition)
        consumer.assign([tp])
        found: dict[int, tuple[bytes | None, bytes | None]] = {}
        for placed in (first, second, third):
            consumer.seek(tp, placed.offset)
            record = await asyncio.wait_for(consumer.getone(), 10)
            found[record.offset] = (record.key, record.value)
    finally:
        await consumer.stop()
    assert set(found) == {first.offset, second.offset, third.offset}
    assert {key for key, _ in found.values()} == {b"wh_placed"}
    assert b'"active":false' in (found[second.offset][1] or b"")
    assert found[third.offset][1] is None
