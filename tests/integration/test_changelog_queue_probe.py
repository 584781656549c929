"""Opt-in (``CHANGELOG_QUEUE_PROBE_MAXSIZE=N``, 10-25 s a run): how full the tables' changelog
queue gets while a worker recovers its tables and starts their live reading under a stream of
subscription writes, and whether every record written is applied.

At Faust's default size (4096) the queue never holds more than one record
(``Recovery._slurp_changelogs`` empties it without suspending, and the hand-off yields after
every changelog record), its blocking ``put`` is never reached, and every record is applied.
At ``1`` every put counts as buffer pressure, the conductor marks the partition buffered
(``Consumer.on_buffer_full``), and Faust hands it on while paused for the standby seek: the
rest of the batch fetched before that seek was handed on after it, and its later records
overtook the re-read of the earlier ones, which the table then skipped as applied (397 to
2,053 records never applied in 8 of 9 runs with 30,000 seed records, before
``skip_records_fetched_before_a_seek``). After that, one record (never more) was missing in
4 of 7 runs, then 2 of 10 traced record by record: it waited in the queue when Faust's standby
start resumed the flow and cleared it (counted as ``cleared``), fetched after the standby seek
while the partition was paused, because the drop of the buffer pressure had made the paused
partition active again (``Consumer.on_buffer_drop``). In 5 of those 10 runs a batch was fetched
between the seek and the resume, in 4 the clear dropped a record of it, in 2 one the table had
not applied before. Since ``paused_partitions_stay_paused`` nothing is fetched there (10 runs
traced, no fetch between the seek and the resume; in those and 10 runs of this probe no record
cleared, none missing), and the probe allows no missing record. The default seed count
(30,000) is what showed the loss; 15,000 did not."""

from __future__ import annotations

import asyncio
import os
import random
from collections import defaultdict
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from faust.tables import manager as faust_tables

from bridge.config import Settings
from bridge.kafka.clients import client_kwargs
from bridge.worker.app import Bridge
from tests.support.builders import encode, webhook_record
from tests.support.waiting import poll

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        "CHANGELOG_QUEUE_PROBE_MAXSIZE" not in os.environ,
        reason="opt-in: set CHANGELOG_QUEUE_PROBE_MAXSIZE",
    ),
]

SEED_RECORDS = int(os.environ.get("CHANGELOG_QUEUE_PROBE_SEED_RECORDS", "30000"))
HOOKS = 2000


async def test_every_subscription_record_is_applied(
    settings: Settings, in_process_workers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    maxsize = int(os.environ["CHANGELOG_QUEUE_PROBE_MAXSIZE"])
    stats = {"max_qsize": 0, "full": 0, "blocking_put": 0, "cleared": 0, "puts": 0}
    original = faust_tables.TableManager.changelog_queue.fget
    assert original is not None

    def changelog_queue(self: Any) -> Any:
        if self._changelog_queue is not None:
            return original(self)
        queue = self._changelog_queue = self.app.FlowControlQueue(
            maxsize=maxsize, clear_on_resume=True
        )
        full, force, put, clear = queue.full, queue.force_put_nowait, queue.put, queue.clear

        def counted_full() -> bool:
            stats["full"] += bool(full())
            return bool(full())

        def counted_force(item: Any) -> None:
            force(item)
            stats["puts"] += 1
            stats["max_qsize"] = max(stats["max_qsize"], queue.qsize())

        async def counted_put(item: Any) -> None:
            stats["blocking_put"] += 1
            await put(item)

        def counted_clear() -> None:
            stats["cleared"] += queue.qsize()
            clear()

        queue.full, queue.force_put_nowait = counted_full, counted_force
        queue.put, queue.clear = counted_put, counted_clear
        return queue

    applied: dict[int, set[int]] = defaultdict(set)
    apply = Bridge.on_subscription_event

    async def recorded_apply(self: Bridge, event: Any) -> None:
        applied[event.message.partition].add(event.message.offset)
        await apply(self, event)

    monkeypatch.setattr(faust_tables.TableManager, "changelog_queue", property(changelog_queue))
    monkeypatch.setattr(Bridge, "on_subscription_event", recorded_apply)
    written: dict[int, set[int]] = defaultdict(set)
    last: dict[str, str] = {}
    producer = AIOKafkaProducer(**client_kwargs(settings), acks="all", linger_ms=5)
    await producer.start()
    stop = asyncio.Event()
    rng = random.Random(1)
    n = 0

    async def write(count: int, pick: Any) -> None:
        nonlocal n
        sent = []
        for _ in range(count):
            hook = pick()
            last[hook] = f"v{n}"
            n += 1
            value = encode(webhook_record(id=hook, name=last[hook]))
            sent.append(await producer.send(settings.subscriptions_topic, value, key=hook.encode()))
        for metadata in await asyncio.gather(*sent):
            written[metadata.partition].add(metadata.offset)

    async def writer() -> None:
        while not stop.is_set():
            await write(50, lambda: f"h{rng.randrange(HOOKS)}")
            await asyncio.sleep(0.005)  # the pace of the load, not a synchronisation

    writing: asyncio.Future[None] | None = None
    try:
        await write(SEED_RECORDS, lambda: f"h{n % HOOKS}")
        writing = asyncio.ensure_future(writer())
        worker = in_process_workers(settings)
        await worker.wait_ready()
        target = stats["puts"] + 2000  # go on writing into the live reading
        await poll(lambda: stats["puts"] >= target, timeout=10)
        stop.set()
        await writing
        index = worker.bridge.index

        def stale() -> list[str]:
            return [h for h, v in last.items() if getattr(index.get(h), "name", None) != v]

        await poll(stale, until=lambda s: not s, timeout=15)
        missing = {p: len(offsets - applied[p]) for p, offsets in written.items()}
        print("probe", stats, "never applied per partition", missing, "stale", stale())
        assert stats["blocking_put"] == 0
        assert not stale()
        assert sum(missing.values()) == 0, (missing, stats)
    finally:
        stop.set()
        if writing is not None:
            await asyncio.gather(writing, return_exceptions=True)
        await producer.stop()
