"""The delivery log's reader on the real broker: its periodic sweep runs between reads.

A sweep expires old attempts and stats buckets of every held webhook; at 100,000 webhooks a
whole one took 0.2-1.3 s in one call on the worker's event loop. The reader now sweeps a slice
at a time between its reads; here it does so while records go on arriving. A store whose disk
fails is opened again, after a wait, and read again to the end.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bridge.attempts.record import Attempt
from bridge.attempts.stores import DeliveryLogStore, MemoryStore, RocksStore
from bridge.config import Settings
from bridge.kafka.clients import client_kwargs
from bridge.worker.delivery_log import DeliveryLogReader, attempts_partition
from tests.support.attempt_logs import attempt_bytes
from tests.support.waiting import eventually
from tests.unit.attempts.test_attempts import attempt
from tests.unit.worker.test_delivery_log import Disk, StoreOnDisk

MAX_AGE = 3600.0


def reader_of(settings: Settings, store: DeliveryLogStore, **options: Any) -> DeliveryLogReader:
    """A reader of the attempts topic into ``store``, as a worker makes it."""
    return DeliveryLogReader(
        topic=settings.attempts_topic,
        consumer_factory=lambda: AIOKafkaConsumer(
            **client_kwargs(settings),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="none",
        ),
        store=store,
        max_age=MAX_AGE,
        **options,
    )


@asynccontextmanager
async def reading(
    settings: Settings, store: DeliveryLogStore, **options: Any
) -> AsyncIterator[tuple[DeliveryLogReader, AIOKafkaProducer]]:
    """A started reader of the attempts topic into ``store`` (:func:`reader_of`), and a
    started producer to write there; both stopped after."""
    reader = reader_of(settings, store, **options)
    producer = AIOKafkaProducer(**client_kwargs(settings))
    await producer.start()
    await reader.start()
    try:
        yield reader, producer
    finally:
        await reader.stop()
        await producer.stop()


def store_of(kind: str, directory: Path) -> DeliveryLogStore:
    """The delivery log's store of ``kind`` (``memory``, ``rocksdb`` in ``directory``)."""
    if kind == "memory":
        return MemoryStore(max_attempts=1000, max_age=MAX_AGE)
    return RocksStore(directory, max_attempts=1000, max_age=MAX_AGE)


async def test_the_reader_sweeps_expired_attempts_between_reads(settings: Settings) -> None:
    now = [time.time()]
    store = MemoryStore(max_attempts=1000, max_age=MAX_AGE)
    clocked = reading(settings, store, clock=lambda: now[0], sweep_interval=1.0)
    async with clocked as (reader, producer):
        partitions = await producer.partitions_for(settings.attempts_topic)
        reader.assign(partitions)

        async def write(count: int, at: float, prefix: str) -> None:
            for n in range(count):
                one = attempt(at, webhook_id=f"{prefix}-{n % 700}", delivery_id=f"{prefix}{n}")
                await producer.send(
                    settings.attempts_topic, attempt_bytes(one), key=one.webhook_id.encode()
                )
            await producer.flush()

        await write(2000, now[0] - 60, "old")
        await eventually(lambda: store.summary()["attempts"] == 2000, timeout=60.0)
        assert reader.sweeps == 0  # the clock stood still: no sweep was due
        # An hour and more later: the old attempts are past the age limit. New ones keep
        # arriving while the reader sweeps.
        now[0] += MAX_AGE + 120
        swept = reader.sweeps
        writing = asyncio.create_task(write(500, now[0] - 1, "new"))
        await eventually(lambda: reader.sweeps > swept and writing.done(), timeout=60.0)
        await writing
        await eventually(lambda: store.summary()["attempts"] == 500, timeout=60.0)
        assert all(a.delivery_id.startswith("new") for a in _kept(store))
        assert store.delivery("old0") == [] and len(store.delivery("new0")) == 1
        assert reader.gaps == [] and reader.invalid == 0


def _kept(store: MemoryStore) -> list[Attempt]:
    return [a for activity in store.activities() for a in activity.log.attempts()]


@pytest.mark.parametrize("kind", ["memory", "rocksdb"])
async def test_any_reassignments_under_sweeps_leave_every_record_held(
    settings: Settings, kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Partitions assigned, revoked and assigned again at random while records arrive and a
    sweep is always under way (their steps between fetches, an on-disk partition opened in a
    thread, a revoked one freed by the next sweep): once every partition is held again, every
    record is, exactly once, and nothing failed."""
    rng = random.Random(20261204)
    store = store_of(kind, tmp_path / "log")
    written = 0
    sweeping = reading(settings, store, sweep_interval=0.0)  # a sweep after every fetch
    async with sweeping as (reader, producer):
        partitions = sorted(await producer.partitions_for(settings.attempts_topic))
        for _ in range(8):
            chosen = set(rng.sample(partitions, rng.randint(0, len(partitions))))
            reader.assign(chosen)
            for _ in range(rng.randint(20, 120)):
                one = attempt(
                    time.time(), webhook_id=f"wh-{rng.randrange(60)}", delivery_id=f"d{written}"
                )
                await producer.send(
                    settings.attempts_topic, attempt_bytes(one), key=one.webhook_id.encode()
                )
                written += 1
            await producer.flush()
            await eventually(lambda want=chosen: reader.assigned == want, timeout=30.0)
        # Every partition revoked: what they held is freed though nothing is read.
        reader.assign(())
        await eventually(lambda: not reader.assigned and not reader.sweeping, timeout=30.0)
        if isinstance(store, MemoryStore):
            assert store.books == {} and store._dropped == []
        reader.assign(partitions)
        await eventually(lambda: store.summary()["attempts"] == written, timeout=60.0)
        held = [a.delivery_id for w in range(60) for a in _log(store, f"wh-{w}")]
        assert sorted(held) == sorted(f"d{n}" for n in range(written))
        assert reader.gaps == [] and reader.invalid == 0 and reader.sweeps > 0
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def _log(store: DeliveryLogStore, webhook_id: str) -> list[Attempt]:
    activity = store.get(webhook_id)
    return [] if activity is None else activity.log.attempts()


def _hostile_values(rng: random.Random) -> list[bytes | None]:
    """Attempt-topic values no worker writes: each must be skipped and counted, none kept.
    A valid attempt's fields with something beside them that is no JSON text (taken by the
    quick decoding until 2026-12-06), broken JSON, and random bytes."""
    valid = attempt_bytes(attempt(time.time(), webhook_id="wh-hostile", delivery_id="bad"))
    fields = valid[1:-1]
    beside = [
        b'"x": "\xff"',
        b'"x": 1e999',
        b'"x": ' + b"9" * 400,
        b'"\xff": 1',
        b'"x": {"a": [1e999]}',
        b'"x": "\xed\xa0\x80"',
        b'"x": ' + b"[" * 3000 + b"]" * 3000,
    ]
    values: list[bytes | None] = [b"{" + fields + b", " + member + b"}" for member in beside]
    changed = [
        (b'"webhook_id": "wh-hostile"', b'"webhook_id": ""'),
        (b'"attempt": 1,', b'"attempt": 1.0,'),
        (b'"delivery_id": "bad"', b'"delivery_id": "\\ud800"'),
        (b'"outcome": "success"', b'"outcome": ["success"]'),
    ]
    for was, wrong in changed:
        assert was in valid
        values.append(valid.replace(was, wrong))
    values += [None, b"", b"[]", b"NaN", valid[:-1]]
    values += [bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 400))) for _ in range(20)]
    return values


@pytest.mark.parametrize("kind", ["memory", "rocksdb"])
async def test_hostile_attempt_records_are_skipped_and_counted_between_valid_ones(
    settings: Settings, kind: str, tmp_path: Path
) -> None:
    """Whoever can write to the attempts topic: every value that is not an attempt record is
    skipped and counted, every valid one beside them kept, no gap; the RocksDB store, opened
    again, holds the valid ones only."""
    rng = random.Random(20261206)
    hostile = _hostile_values(rng)
    store = store_of(kind, tmp_path / "log")
    async with reading(settings, store) as (reader, producer):
        partitions = await producer.partitions_for(settings.attempts_topic)
        reader.assign(partitions)
        for n, value in enumerate(hostile):
            one = attempt(time.time(), webhook_id="wh-hostile", delivery_id=f"good{n}")
            for written in (value, attempt_bytes(one)):
                await producer.send(settings.attempts_topic, written, key=b"wh-hostile")
        await producer.flush()
        await eventually(lambda: sum(reader.read.values()) == 2 * len(hostile), timeout=60.0)
        assert reader.invalid == len(hostile) and reader.gaps == []
        kept = sorted(a.delivery_id for a in _log(store, "wh-hostile"))
        assert kept == sorted(f"good{n}" for n in range(len(hostile)))
    if isinstance(store, RocksStore):
        again = RocksStore(tmp_path / "log", max_attempts=1000, max_age=MAX_AGE)
        try:
            for partition in partitions:
                again.open(partition, time.time())
            kept = sorted(a.delivery_id for a in _log(again, "wh-hostile"))
            assert kept == sorted(f"good{n}" for n in range(len(hostile)))
        finally:
            again.close()


async def test_a_store_whose_disk_fails_is_opened_again_after_a_wait_and_read_to_the_end(
    settings: Settings, tmp_path: Path
) -> None:
    """While the disk fails (RocksDB refusing every write of a database after one failed, and
    opening it failing), the partitions written to are not answered from and their stores are
    tried again after waits that double, not at every fetch; once it works again, each is
    opened again and read from its checkpoint, and the log holds every record. Until
    2026-12-07 the reader went back to the checkpoint at every fetch (~70 times a second, a
    traceback each) and answered from the partitions, for as long as it ran."""
    disk = Disk()
    store = StoreOnDisk(tmp_path / "log", disk, max_attempts=1000, max_age=MAX_AGE)
    failures: list[str] = []
    async with reading(settings, store, on_store_failure=failures.append) as (reader, producer):
        partitions = sorted(await producer.partitions_for(settings.attempts_topic))
        reader.assign(partitions)

        async def write(start: int, count: int) -> None:
            for n in range(start, start + count):
                one = attempt(time.time(), webhook_id=f"wh-{n % 12}", delivery_id=f"d{n}")
                await producer.send(
                    settings.attempts_topic, attempt_bytes(one), key=one.webhook_id.encode()
                )
            await producer.flush()

        await write(0, 300)
        await eventually(
            lambda: store.summary()["attempts"] == 300 and reader.caught_up, timeout=60.0
        )
        written_to = sorted(int(p) for p in reader.summary()["read"])
        broke = time.monotonic()
        disk.broken = True
        await write(300, 300)
        await eventually(lambda: set(reader._failed) == set(written_to), timeout=30.0)
        assert not reader.caught_up and not any(reader.complete(p) for p in written_to)
        # Tried again after 0.5 s, then 1 s later (each opening fails): not at every fetch.
        await eventually(lambda: disk.failed_opens >= 2 * len(written_to), timeout=30.0)
        assert time.monotonic() - broke >= 1.5
        assert disk.failed_writes <= 2 * len(written_to), disk.failed_writes
        assert disk.failed_opens <= 3 * len(written_to), disk.failed_opens
        assert not reader.caught_up and not any(reader.complete(p) for p in written_to)
        disk.broken = False
        await eventually(
            lambda: store.summary()["attempts"] == 600 and reader.caught_up, timeout=60.0
        )
        held = [a.delivery_id for w in range(12) for a in _log(store, f"wh-{w}")]
        assert sorted(held) == sorted(f"d{n}" for n in range(600))
        assert reader.gaps == [] and not reader._failed
        assert set(failures) == {"write", "reopen"}


async def test_partitions_whose_stores_cannot_be_opened_when_assigned_are_read_once_they_open(
    settings: Settings, tmp_path: Path
) -> None:
    """A disk that fails when the partitions are assigned (at start, or at a rebalance): the
    reader goes on, answers none of them, tries them again after waits that double, and once
    the disk works reads every one to its end. Until 2026-12-07 the first failed opening
    stopped the reader."""
    disk = Disk()
    store = StoreOnDisk(tmp_path / "log", disk, max_attempts=1000, max_age=MAX_AGE)
    failures: list[str] = []
    disk.broken = True
    async with reading(settings, store, on_store_failure=failures.append) as (reader, producer):
        partitions = sorted(await producer.partitions_for(settings.attempts_topic))
        broke = time.monotonic()
        reader.assign(partitions)
        for n in range(200):
            one = attempt(time.time(), webhook_id=f"wh-{n % 12}", delivery_id=f"d{n}")
            await producer.send(
                settings.attempts_topic, attempt_bytes(one), key=one.webhook_id.encode()
            )
        await producer.flush()
        # Each partition tried at its assignment, again 0.5 s later, then 1 s after that.
        await eventually(lambda: len(failures) >= 3 * len(partitions), timeout=30.0)
        assert time.monotonic() - broke >= 1.5
        assert not reader.caught_up and not any(reader.complete(p) for p in partitions)
        assert store.summary()["attempts"] == 0 and set(failures) == {"open"}
        assert not reader.crashed and reader._consumer is not None  # still reading
        disk.broken = False
        await eventually(
            lambda: store.summary()["attempts"] == 200 and reader.caught_up, timeout=60.0
        )
        held = [a.delivery_id for w in range(12) for a in _log(store, f"wh-{w}")]
        assert sorted(held) == sorted(f"d{n}" for n in range(200))
        assert reader.gaps == [] and not reader._failed and set(failures) == {"open"}


async def test_attempts_written_to_another_partition_than_their_webhook_s_are_skipped(
    settings: Settings, tmp_path: Path
) -> None:
    """A writer other than the bridge puts a webhook's attempt records on partitions other
    than its key's: each is skipped and counted ``misplaced``, the real attempts are the log,
    and the checkpoint goes past the skipped ones (a restart reads none of them again). Until
    2026-12-07 one such record hid every real attempt of its webhook."""
    producer = AIOKafkaProducer(**client_kwargs(settings))
    await producer.start()
    try:
        count = len(await producer.partitions_for(settings.attempts_topic))
    finally:
        await producer.stop()
    assert count >= 2
    rng = random.Random(20261207)
    webhooks = [f"wh-{n}" for n in range(8)]
    store = RocksStore(tmp_path / "log", max_attempts=1000, max_age=MAX_AGE)
    real: dict[str, list[str]] = {w: [] for w in webhooks}
    misplaced = 0
    async with reading(settings, store, partitions=count) as (reader, producer):
        reader.assign(range(count))
        for n in range(160):
            webhook = rng.choice(webhooks)
            home = attempts_partition(webhook, count)
            foreign = rng.random() < 0.3
            partition = rng.choice([p for p in range(count) if p != home]) if foreign else home
            one = attempt(time.time(), webhook_id=webhook, delivery_id=f"d{n}")
            await producer.send(
                settings.attempts_topic,
                attempt_bytes(one),
                key=webhook.encode(),
                partition=partition,
            )
            if foreign:
                misplaced += 1
            else:
                real[webhook].append(f"d{n}")
        await producer.flush()
        await eventually(
            lambda: sum(reader.read.values()) == 160 and reader.caught_up, timeout=60.0
        )
        assert reader.misplaced == misplaced > 0 and reader.invalid == 0
        for webhook in webhooks:
            assert sorted(a.delivery_id for a in _log(store, webhook)) == sorted(real[webhook])
        positions = dict(reader.positions)
    store = RocksStore(tmp_path / "log", max_attempts=1000, max_age=MAX_AGE)
    async with reading(settings, store, partitions=count) as (reader, producer):
        reader.assign(range(count))
        await eventually(lambda: reader.caught_up, timeout=60.0)
        # Resumed past every record read, the skipped ones among them: none read again.
        assert reader.resumed == {p: offset + 1 for p, offset in positions.items()}
        assert reader.misplaced == 0
        for webhook in webhooks:
            assert sorted(a.delivery_id for a in _log(store, webhook)) == sorted(real[webhook])
