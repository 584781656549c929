"""bridge.worker.faust_patches: the task-free ``wait_for`` given to Faust's table recovery, the
record hand-off, the seeks after a rebalance, the fetcher's poll, the standby start of global
tables, what is fetched as recovery completes kept (the changelog queue, and the stream records
fetched after the seek), the records of a batch fetched before a seek of their partition
skipped, paused partitions kept out of the fetch when their buffer drains, and the end offsets
reported once per fetch."""

from __future__ import annotations

import asyncio
import importlib
import itertools
import pkgutil
import re
import subprocess
import sys
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from faust.tables import recovery
from faust.transport import consumer as faust_consumer
from hypothesis import given
from hypothesis import strategies as st
from mode import Service
from mode.utils.queues import FlowControlEvent, FlowControlQueue

from bridge.worker import faust_patches
from bridge.worker.faust_patches import (
    FETCHER_POLL,
    UNBUFFERED,
    UNBUFFERED_YIELD_EVERY,
    SeekStamps,
    commits,
    fetching,
    registry,
    seek_stamps,
    wait_for,
)
from bridge.worker.faust_patches import handoff as patched_handoff
from bridge.worker.faust_patches import recovery as patched_recovery
from bridge.worker.faust_patches.fetching import (
    _fetch_records,
    _Fetched,
    _getmany,
    _seek,
    _seek_to_beginning,
    _seek_uncommitted_to_start,
    _seek_wait,
    _wait_next_records,
)
from bridge.worker.faust_patches.handoff import _wait_first
from bridge.worker.faust_patches.recovery import _seek_offsets
from tests.support.patches import as_shipped


async def test_returns_what_the_awaitable_returns() -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    queue.put_nowait(7)
    assert await wait_for(queue.get(), timeout=5.0) == 7


async def test_waits_until_a_value_arrives() -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    getter = asyncio.ensure_future(wait_for(queue.get(), timeout=5.0))
    await asyncio.sleep(0)
    assert not getter.done()
    queue.put_nowait(3)
    assert await asyncio.wait_for(getter, 5.0) == 3


async def test_times_out_with_asyncio_timeout_error_and_cancels_the_wait() -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    with pytest.raises(asyncio.TimeoutError):
        await wait_for(queue.get(), timeout=0.01)
    # The cancelled getter does not swallow the next item.
    queue.put_nowait(1)
    assert queue.get_nowait() == 1


async def test_starts_no_task() -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    queue.put_nowait(1)
    before = len(asyncio.all_tasks())
    seen: list[int] = []

    async def probe() -> int:
        seen.append(len(asyncio.all_tasks()))
        return await queue.get()

    await wait_for(probe(), timeout=1.0)
    assert seen == [before]


# -- fast_record_handoff ---------------------------------------------------------------------------


class FakeConsumer(Service):
    """What the hand-off uses of Faust's consumer: a service with ``suspend_flow``."""

    def __init__(self) -> None:
        super().__init__()
        self.suspend_flow = asyncio.Event()


async def test_handoff_that_does_not_wait_runs_inline_without_tasks() -> None:
    consumer = FakeConsumer()
    tasks_seen: list[int] = []

    async def callback() -> str:
        tasks_seen.append(len(asyncio.all_tasks()))
        return "delivered"

    before = len(asyncio.all_tasks())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "coroutine ... was never awaited" would fail
        result = await _wait_first(consumer, callback(), consumer.suspend_flow.wait())
    assert result.results == ["delivered"] and not result.stopped
    assert tasks_seen == [before]


async def test_handoff_yields_to_the_loop_once_per_record() -> None:
    """Between two records a rebalance must be able to run (and stop the flow): without this
    yield a SIGKILL-and-restart benchmark lost records (BENCHMARKS.md)."""
    consumer = FakeConsumer()
    ran: list[str] = []
    asyncio.get_running_loop().call_soon(ran.append, "rebalance")

    async def callback() -> str:
        return "delivered"

    await _wait_first(consumer, callback(), consumer.suspend_flow.wait())
    assert ran == ["rebalance"]


async def test_records_no_stream_buffered_yield_once_every_few() -> None:
    """The events topic's hand-off returns UNBUFFERED: no stream buffer a rebalance clears
    holds its records, so the loop gets a turn every UNBUFFERED_YIELD_EVERY records; any
    other record still yields at once."""
    consumer = FakeConsumer()
    loop = asyncio.get_running_loop()

    async def unbuffered() -> object:
        return UNBUFFERED

    async def buffered() -> None:
        return None

    async def yielded(callback: Any) -> bool:
        ran: list[bool] = []
        loop.call_soon(ran.append, True)
        await _wait_first(consumer, callback(), consumer.suspend_flow.wait())
        return bool(ran)

    assert await yielded(buffered)  # and the count starts again
    turns = [await yielded(unbuffered) for _ in range(3 * UNBUFFERED_YIELD_EVERY)]
    assert turns == ([False] * (UNBUFFERED_YIELD_EVERY - 1) + [True]) * 3
    assert not await yielded(unbuffered)
    assert await yielded(buffered)


async def test_handoff_that_waits_finishes_when_the_wait_ends() -> None:
    consumer = FakeConsumer()
    queue: asyncio.Queue[str] = asyncio.Queue(maxsize=1)
    queue.put_nowait("full")

    async def callback() -> str:
        await queue.put("second")  # waits for room, like a full stream buffer
        return "delivered"

    handoff = asyncio.ensure_future(_wait_first(consumer, callback(), consumer.suspend_flow.wait()))
    await asyncio.sleep(0.01)
    assert not handoff.done()
    assert queue.get_nowait() == "full"
    result = await asyncio.wait_for(handoff, 5.0)
    assert "delivered" in result.results
    assert queue.get_nowait() == "second"


async def test_handoff_that_waits_is_cancelled_by_a_flow_suspension() -> None:
    consumer = FakeConsumer()
    gate = asyncio.Event()
    cancelled = asyncio.Event()

    async def callback() -> str:
        try:
            await gate.wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "delivered"

    handoff = asyncio.ensure_future(_wait_first(consumer, callback(), consumer.suspend_flow.wait()))
    await asyncio.sleep(0.01)
    consumer.suspend_flow.set()
    result = await asyncio.wait_for(handoff, 5.0)
    assert "delivered" not in result.results
    await asyncio.wait_for(cancelled.wait(), 5.0)


async def test_handoff_errors_propagate() -> None:
    consumer = FakeConsumer()

    async def callback() -> None:
        raise ValueError("bad record")

    with pytest.raises(ValueError, match="bad record"):
        await _wait_first(consumer, callback(), consumer.suspend_flow.wait())


async def test_suspended_flow_takes_faust_s_own_path(monkeypatch: pytest.MonkeyPatch) -> None:
    consumer = FakeConsumer()
    consumer.suspend_flow.set()
    calls: list[int] = []
    original = patched_handoff._original_wait_first

    async def recording(self: object, *coros: object, timeout: object = None) -> object:
        calls.append(len(coros))
        return await original(self, *coros, timeout=timeout)

    monkeypatch.setattr(patched_handoff, "_original_wait_first", recording)

    async def callback() -> None:
        return None

    await _wait_first(consumer, callback(), consumer.suspend_flow.wait())
    assert calls == [2]


# -- reread_uncommitted_partitions ----------------------------------------------------------------


class FakeAiokafkaConsumer:
    """What the seeks use of aiokafka's consumer; ``order`` lists what happened, in order."""

    def __init__(self, committed: dict[TopicPartition, int | None]) -> None:
        self.committed_offsets = committed
        self.seeks: list[tuple[TopicPartition, ...]] = []
        self.order: list[Any] = []

    def assignment(self) -> set[TopicPartition]:
        return set(self.committed_offsets)

    async def committed(self, tp: TopicPartition) -> int | None:
        await asyncio.sleep(0)  # an answer from the broker
        self.order.append(("committed", tp))
        return self.committed_offsets[tp]

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.order.append(("seek", tp, offset))

    async def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        self.seeks.append(partitions)
        self.order.append(("seek_to_beginning", set(partitions)))

    async def position(self, tp: TopicPartition) -> int:
        return 0


async def test_uncommitted_stream_partitions_start_over_in_one_request() -> None:
    events0, events1 = TopicPartition("events", 0), TopicPartition("events", 1)
    retry0 = TopicPartition("retry.1", 0)
    table0 = TopicPartition("webhooks", 0)
    consumer = FakeAiokafkaConsumer({events0: 42, events1: None, retry0: 0, table0: None})
    stamps = SeekStamps()
    committed = await _seek_uncommitted_to_start(consumer, frozenset({"webhooks"}), stamps)
    assert committed[events0] == 42
    # The table's partition keeps the position its recovery gave it.
    assert len(consumer.seeks) == 1 and set(consumer.seeks[0]) == {events1, retry0}
    # Every committed offset is asked for before any seek: the seeks are counted as made.
    kinds = [step[0] for step in consumer.order]
    assert kinds == ["committed"] * 4 + ["seek", "seek_to_beginning"]
    assert consumer.order[4] == ("seek", events0, 42)
    assert stamps.count == 1
    assert {tp for tp, n in stamps.latest.items() if n == 1} == {events0, events1, retry0}


async def test_nothing_to_seek_when_everything_was_committed() -> None:
    consumer = FakeAiokafkaConsumer({TopicPartition("events", 0): 7})
    await _seek_uncommitted_to_start(consumer, frozenset())
    assert consumer.seeks == []


# -- prompt_fetcher ---------------------------------------------------------------------------


class FakeFetchingConsumer:
    """What Faust's ``_wait_next_records`` uses of its consumer."""

    def __init__(self, active: set[TopicPartition]) -> None:
        self.flow_active = True
        self.app = type("App", (), {"client_only": False})()
        self.not_waiting_next_records = asyncio.Event()
        self.active = active
        self.getmany_timeouts: list[float] = []
        self.slept: list[float] = []

    def _get_active_partitions(self) -> set[TopicPartition]:
        return self.active

    async def _getmany(self, active_partitions: Any, timeout: float) -> dict[Any, Any]:
        self.getmany_timeouts.append(timeout)
        return {TopicPartition("events", 0): ["record"]}

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


async def test_fetcher_asks_for_records_for_at_most_the_poll_interval() -> None:
    events = TopicPartition("events", 0)
    consumer = FakeFetchingConsumer({events})
    records, active = await _wait_next_records(consumer, 1.0)  # Faust's fetcher passes 1.0
    assert consumer.getmany_timeouts == [FETCHER_POLL] and FETCHER_POLL <= 0.1
    assert records == {events: ["record"]} and active == {events}
    assert consumer.not_waiting_next_records.is_set()


async def test_fetcher_without_active_partitions_looks_again_after_the_poll_interval() -> None:
    # While the tables recover no stream partition is active: Faust slept a whole second
    # here, so partitions resumed meanwhile waited for it.
    consumer = FakeFetchingConsumer(set())
    records, active = await _wait_next_records(consumer, 1.0)
    assert (records, active) == ({}, set())
    assert consumer.slept == [FETCHER_POLL]
    assert consumer.getmany_timeouts == []


# -- standby_after_active ---------------------------------------------------------------------


class FakeRecovery:
    def __init__(self, active_offsets: dict[TopicPartition, int]) -> None:
        self.active_tps = set(active_offsets)
        self.active_offsets: Counter[TopicPartition] = Counter(active_offsets)


async def test_standby_reading_of_a_recovered_global_partition_starts_where_recovery_ended(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seeks: list[tuple[str, dict[TopicPartition, int]]] = []

    async def recording(self: Any, consumer: Any, tps: Any, offsets: Any, title: str) -> None:
        seeks.append((title, {tp: offsets[tp] for tp in tps}))

    monkeypatch.setattr(patched_recovery, "_original_seek_offsets", recording)
    hooks0, hooks1 = TopicPartition("webhooks", 0), TopicPartition("webhooks", 1)
    other = TopicPartition("other-table", 0)
    recovery = FakeRecovery({hooks0: 26, hooks1: 37})
    standby_offsets: Counter[TopicPartition] = Counter({hooks0: -1, hooks1: 40, other: -1})
    await _seek_offsets(recovery, None, {hooks0, hooks1, other}, standby_offsets, "standby")
    await _seek_offsets(recovery, None, {hooks0}, Counter({hooks0: -1}), "active")
    assert seeks == [
        # From where the active recovery got to (or further, if standby reading was ahead);
        # a standby-only partition is left alone.
        ("standby", {hooks0: 26, hooks1: 40, other: -1}),
        ("active", {hooks0: -1}),
    ]
    assert standby_offsets == Counter({hooks0: -1, hooks1: 40, other: -1})  # not changed


# -- keep_fetched_records -------------------------------------------------------------------


def queues() -> tuple[FlowControlEvent, FlowControlQueue[int], FlowControlQueue[int]]:
    flow_control = FlowControlEvent()
    changelog: FlowControlQueue[int] = FlowControlQueue(
        flow_control=flow_control, clear_on_resume=True
    )
    stream: FlowControlQueue[int] = FlowControlQueue(
        flow_control=flow_control, clear_on_resume=True
    )
    return flow_control, changelog, stream


def test_stream_queues_are_cleared_without_the_changelog_queue() -> None:
    flow_control, changelog, stream = queues()
    for queue in (changelog, stream):
        queue.put_nowait(7)
    tables = type("Tables", (), {"changelog_queue": changelog})()
    app = type("App", (), {"flow_control": flow_control, "tables": tables})()
    patched_recovery._clear_stream_queues(app)
    assert (changelog.qsize(), stream.qsize()) == (1, 0)


def test_the_flow_resumes_clearing_nothing() -> None:
    flow_control, changelog, stream = queues()
    for queue in (changelog, stream):
        queue.put_nowait(7)
    app = type("App", (), {"flow_control": flow_control})()
    patched_recovery._resume_flow_clearing_nothing(app)
    assert flow_control.is_active()
    assert (changelog.qsize(), stream.qsize()) == (1, 1)
    flow_control.clear()  # a rebalance's clear still empties them
    assert (changelog.qsize(), stream.qsize()) == (0, 0)


class NoTables(dict[Any, Any]):
    """The recovery's table manager, without tables."""

    def __init__(self, changelog_queue: FlowControlQueue[int]) -> None:
        super().__init__()
        self.changelog_queue = changelog_queue

    def on_actives_ready(self) -> None: ...

    on_standbys_ready = on_actives_ready


class CompletingRecovery:
    """What ``Recovery.on_recovery_completed`` uses of the recovery, its app and consumer."""

    def __init__(self) -> None:
        self.flow_control, self.changelog_queue, self.stream_queue = queues()
        self.flow_control.resume()  # resumed for the standby reading
        self.stream_tp = TopicPartition("retry.1", 0)
        self.changelog_tp = TopicPartition("webhooks", 0)
        self.calls: list[str] = []
        self.paused = {self.stream_tp}
        self.log = self
        self.completed = asyncio.Event()
        self.tables = NoTables(self.changelog_queue)
        self.app = self.consumer = self.conf = self.assignor = self._fetcher = self
        self.on_rebalance_complete = self
        self.consumer_generation_id = 3
        self.broker_request_timeout = 1.0
        self.stream_queue_at_seek: int | None = None

    def info(self, *args: Any) -> None: ...

    dev = warning = info

    async def send(self) -> None: ...

    def _set_recovery_ended(self) -> None: ...

    def assignment(self) -> set[TopicPartition]:
        return {self.stream_tp, self.changelog_tp}

    def _is_changelog_tp(self, tp: TopicPartition) -> bool:
        return tp == self.changelog_tp

    async def _wait(self, coro: Any, timeout: float | None = None) -> None:
        await coro

    async def perform_seek(self) -> None:
        self.calls.append("seek")
        self.stream_queue_at_seek = self.stream_queue.qsize()
        assert self.stream_tp in self.paused  # nothing of it is handed on meanwhile
        # Records fetched after the seek, handed on before the flow resumes:
        self.stream_queue.put_nowait(2)
        self.changelog_queue.put_nowait(2)

    def resume_partitions(self, tps: set[TopicPartition]) -> None:
        self.calls.append(f"resume {sorted(tp.topic for tp in tps)}")
        self.paused -= tps

    def resume_flow(self) -> None:
        self.calls.append("resume_flow")

    async def maybe_start(self) -> None: ...

    def on_rebalance_end(self) -> None: ...

    def assigned_standbys(self) -> set[TopicPartition]:
        return {self.changelog_tp}


async def test_recovery_completes_seeking_paused_streams_and_keeping_what_is_fetched_after() -> (
    None
):
    recovery = CompletingRecovery()
    recovery.stream_queue.put_nowait(1)  # read before the seek
    recovery.changelog_queue.put_nowait(1)  # the standby reading's
    await patched_recovery._on_recovery_completed(recovery, generation_id=3)
    assert recovery.calls == ["seek", "resume ['retry.1']", "resume_flow"]
    assert recovery.stream_queue_at_seek == 0  # what was read before the seek: dropped
    assert list(recovery.stream_queue._queue) == [2]  # type: ignore[attr-defined]
    assert list(recovery.changelog_queue._queue) == [1, 2]  # type: ignore[attr-defined]
    assert recovery.completed.is_set() and recovery.flow_control.is_active()


async def test_recovery_completed_for_an_older_generation_resumes_nothing() -> None:
    recovery = CompletingRecovery()
    await patched_recovery._on_recovery_completed(recovery, generation_id=2)
    assert recovery.calls == [] and not recovery.completed.is_set()


# -- no_table_registration_pause ------------------------------------------------------------


class FakeTableManager:
    def __init__(self, *, stopping: bool = False) -> None:
        self.should_stop = stopping
        self.calls: list[str] = []
        self.recovery = self

    async def _update_channels(self) -> None:
        self.calls.append("channels")

    async def start(self) -> None:
        self.calls.append("recovery")

    async def sleep(self, seconds: float) -> None:
        raise AssertionError(f"slept {seconds} s")


async def test_table_manager_registers_the_tables_without_a_pause() -> None:
    manager = FakeTableManager()
    await patched_recovery._start_table_manager(manager)
    assert manager.calls == ["channels", "recovery"]


async def test_table_manager_that_is_stopping_registers_nothing() -> None:
    manager = FakeTableManager(stopping=True)
    await patched_recovery._start_table_manager(manager)
    assert manager.calls == []


# -- end_offset_once_per_fetch ------------------------------------------------------------------


class FakeGetmanyConsumer:
    """What Faust's ``getmany`` uses of its consumer; ``highwater`` counts its calls."""

    def __init__(self, records: dict[Any, list[Any]], active: set[Any] | None) -> None:
        self.records = records
        self.active = active
        self.flow_active = True
        self.should_stop = False
        self._buffered_partitions: set[Any] = set()
        self.reported: list[tuple[Any, int]] = []
        self.highwater_calls = 0
        self.seeks = 0
        monitor = type("Monitor", (), {"track_tp_end_offset": self._track})()
        self.app = type("App", (), {"consumer_generation_id": 1, "monitor": monitor})()
        self.scheduler = type("Scheduler", (), {"iterate": staticmethod(_round_robin)})()

    def _track(self, tp: Any, offset: int) -> None:
        self.reported.append((tp, offset))

    async def _wait_next_records(self, timeout: float) -> tuple[Any, Any]:
        return self.records, self.active

    def highwater(self, tp: Any) -> int:
        self.highwater_calls += 1
        return 1000 + tp.partition

    def _to_message(self, tp: Any, record: Any) -> tuple[str, Any]:
        return ("message", record)

    async def perform_seek(self) -> None:
        self.seeks += 1


def _round_robin(records: dict[Any, list[Any]]) -> Any:
    iterators = {tp: iter(values) for tp, values in records.items()}
    while iterators:
        for tp, it in list(iterators.items()):
            try:
                yield tp, next(it)
            except StopIteration:
                del iterators[tp]


async def _collect(consumer: Any) -> list[Any]:
    return [item async for item in _getmany(consumer, 1.0)]


async def test_end_offsets_are_read_and_reported_once_per_partition_per_fetch() -> None:
    a, b, idle = TopicPartition("events", 0), TopicPartition("events", 1), TopicPartition("x", 0)
    consumer = FakeGetmanyConsumer(
        {a: ["a0", "a1", "a2"], b: ["b0", "b1"], idle: ["i0"]}, active={a, b}
    )
    got = await _collect(consumer)
    # Same records, same order as Faust's own loop; the inactive partition's are not handed on.
    assert got == [
        (a, ("message", "a0")),
        (b, ("message", "b0")),
        (a, ("message", "a1")),
        (b, ("message", "b1")),
        (a, ("message", "a2")),
    ]
    assert consumer.reported == [(a, 1000), (b, 1001)]
    assert consumer.highwater_calls == 2
    # Faust's own loop hands on the same records (and reads the high-water mark five times).
    theirs = FakeGetmanyConsumer(
        {a: ["a0", "a1", "a2"], b: ["b0", "b1"], idle: ["i0"]}, active={a, b}
    )
    theirs.log = type("Log", (), {"dev": staticmethod(lambda *args: None)})()  # type: ignore[attr-defined]
    original: Any = faust_patches.ORIGINALS["end_offset_once_per_fetch"]
    assert original is not _getmany
    assert [item async for item in original(theirs, 1.0)] == got
    assert theirs.highwater_calls == 5 and set(theirs.reported) == set(consumer.reported)
    # The next fetch reports again.
    await _collect(consumer)
    assert consumer.reported == [(a, 1000), (b, 1001)] * 2


async def test_a_rebalance_during_the_fetch_stops_the_hand_off() -> None:
    a = TopicPartition("events", 0)
    consumer = FakeGetmanyConsumer({a: ["a0", "a1", "a2"]}, active=None)
    got = []
    async for item in _getmany(consumer, 1.0):
        got.append(item)
        consumer.app.consumer_generation_id += 1
    assert got == [(a, ("message", "a0"))]


# -- skip_records_fetched_before_a_seek ----------------------------------------------------------


def _stamped(records: dict[Any, list[Any]], stamps: SeekStamps) -> Any:
    fetched = _Fetched(records)
    fetched.fetched_at = stamps.count
    return fetched


async def test_records_of_a_partition_sought_after_their_fetch_are_not_handed_on() -> None:
    table, retry = TopicPartition("webhooks", 0), TopicPartition("retry.1", 0)
    consumer = FakeGetmanyConsumer({}, active=None)
    consumer._thread = thread = type("Thread", (), {})()  # type: ignore[attr-defined]
    stamps = seek_stamps(thread)
    stamps.sought([table, retry])  # seeks before the fetch change nothing
    consumer.records = _stamped({table: ["t5", "t6", "t7"], retry: ["r0", "r1", "r2"]}, stamps)
    got = []
    async for _tp, message in _getmany(consumer, 1.0):
        got.append(message[1])
        if message[1] == "t5":
            # A table's standby start seeks its partition back while the batch is handed on.
            stamps.sought([table])
    # The rest of the table's records wait for the read from the seek; the retry tier's go on.
    assert got == ["t5", "r0", "r1", "r2"]
    # The next batch, fetched after the seek, is handed on whole.
    consumer.records = _stamped({table: ["t3", "t4", "t5"]}, stamps)
    assert [m[1] for _, m in await _collect(consumer)] == ["t3", "t4", "t5"]


def test_a_record_is_stale_only_when_its_partition_was_sought_after_its_fetch() -> None:
    a, b = TopicPartition("t", 0), TopicPartition("t", 1)
    stamps = SeekStamps()
    fetched_before = stamps.count
    stamps.sought([a])
    fetched_between = stamps.count
    stamps.sought([b])
    assert stamps.stale(a, fetched_before) and stamps.stale(b, fetched_before)
    assert not stamps.stale(a, fetched_between) and stamps.stale(b, fetched_between)
    assert not stamps.stale(a, stamps.count) and not stamps.stale(b, stamps.count)
    assert not stamps.stale(TopicPartition("never", 0), fetched_before)


class FakeConsumerThread:
    """What the consumer thread's seeks and fetch use of Faust's thread."""

    def __init__(self, aiokafka_consumer: Any) -> None:
        self.aiokafka_consumer = aiokafka_consumer
        self.consumer = type("Consumer", (), {"_read_offset": {}, "flow_active": True})()
        conf = type("Conf", (), {"broker_request_timeout": 5.0})()
        self.app = type("App", (), {"conf": conf})()

    def _ensure_consumer(self) -> Any:
        return self.aiokafka_consumer

    async def call_thread(self, fun: Any, *args: Any) -> Any:
        return await fun(*args)


class FakeFetcher:
    def __init__(self, records: dict[Any, list[Any]]) -> None:
        self.records = records
        self._closed = False
        self._subscriptions = self
        self.contexts = 0

    def fetch_context(self) -> Any:
        fetcher = self

        class Context:
            def __enter__(self) -> None:
                fetcher.contexts += 1

            def __exit__(self, *exc: Any) -> None:
                pass

        return Context()

    async def fetched_records(self, active: Any, timeout: Any, max_records: Any) -> Any:
        return dict(self.records)


async def test_every_seek_of_the_consumer_thread_is_counted_and_every_batch_stamped() -> None:
    a, b = TopicPartition("webhooks", 0), TopicPartition("webhooks", 1)
    aiokafka_consumer = FakeAiokafkaConsumer({a: 3, b: None})
    aiokafka_consumer._fetcher = FakeFetcher({a: ["a3"]})  # type: ignore[attr-defined]
    aiokafka_consumer._closed = False  # type: ignore[attr-defined]
    thread = FakeConsumerThread(aiokafka_consumer)
    stamps = seek_stamps(thread)
    first = await _fetch_records(thread, aiokafka_consumer, {a, b})
    assert first == {a: ["a3"]} and first.fetched_at == 0
    await _seek_wait(thread, aiokafka_consumer, {a: 7, b: 0})
    assert stamps.stale(a, first.fetched_at) and stamps.stale(b, first.fetched_at)
    assert thread.consumer._read_offset == {a: 7}
    _seek(thread, a, 9)
    await _seek_to_beginning(thread, b)
    assert aiokafka_consumer.order[-2:] == [("seek", a, 9), ("seek_to_beginning", {b})]
    assert stamps.count == 3 and stamps.latest == {a: 2, b: 3}
    second = await _fetch_records(thread, aiokafka_consumer, {a, b})
    assert second.fetched_at == 3 and not stamps.stale(a, 3)
    thread.consumer.flow_active = False
    assert await _fetch_records(thread, aiokafka_consumer, {a, b}) == {}


async def test_a_suspended_flow_seeks_instead_of_handing_on() -> None:
    consumer = FakeGetmanyConsumer({TopicPartition("events", 0): ["a0"]}, active=None)
    consumer.flow_active = False
    assert await _collect(consumer) == []
    assert consumer.seeks == 1


# -- paused_partitions_stay_paused ----------------------------------------------------------------


class _Partitions:
    """The partition sets of Faust's consumer that ``on_buffer_drop`` reads and changes."""

    def __init__(self, paused: set[Any], buffered: set[Any]) -> None:
        #: ``on_buffer_full`` acts outside recovery only.
        self.app = type("App", (), {"in_recovery": False})()
        self._active_partitions: set[Any] = set()
        self._paused_partitions = paused
        self._buffered_partitions = buffered

    def _get_active_partitions(self) -> set[Any]:
        return self._active_partitions


def test_a_paused_partition_stays_paused_when_its_buffer_drains() -> None:
    table, retry = TopicPartition("webhooks", 0), TopicPartition("retry.1", 0)
    ours = _Partitions(paused={table}, buffered={table, retry})
    for tp in (table, retry):
        fetching._on_buffer_drop(ours, tp)
    # No longer under pressure either way; only the partition that is not paused is fetched.
    assert ours._buffered_partitions == set() and ours._active_partitions == {retry}
    fetching._on_buffer_drop(ours, table)  # not buffered: nothing changes
    assert ours._active_partitions == {retry}
    # Faust's own made the paused partition active too.
    theirs = _Partitions(paused={table}, buffered={table, retry})
    original: Any = faust_patches.ORIGINALS["paused_partitions_stay_paused"]
    for tp in (table, retry):
        original(theirs, tp)
    assert theirs._active_partitions == {table, retry}


_PARTITIONS = [
    TopicPartition("webhooks", 0),
    TopicPartition("webhooks", 1),
    TopicPartition("retry.1", 0),
]
#: What Faust's consumer does to its partition sets, as Faust does it, and the buffer drop
#: under test.
_OPERATIONS = ("pause", "resume", "buffer_full", "buffer_drop")


def _apply(partitions: _Partitions, operation: str, tps: set[Any], drop: Any) -> None:
    consumer: Any = partitions
    if operation == "pause":
        faust_consumer.Consumer.pause_partitions(consumer, tps)
    elif operation == "resume":
        faust_consumer.Consumer.resume_partitions(consumer, tps)
    for tp in sorted(tps):
        if operation == "buffer_full":
            faust_consumer.Consumer.on_buffer_full(consumer, tp)
        elif operation == "buffer_drop":
            drop(consumer, tp)


@given(
    st.lists(
        st.tuples(st.sampled_from(_OPERATIONS), st.sets(st.sampled_from(_PARTITIONS), min_size=1)),
        max_size=30,
    )
)
def test_paused_partitions_are_never_fetched_and_no_partition_is_left_behind(
    steps: list[tuple[str, set[Any]]],
) -> None:
    """Any sequence of pauses, resumes and buffer pressure rising and dropping: a paused
    partition is never in the fetched set, and one neither paused nor under buffer pressure
    always is (nothing waits for a resume that will not come)."""
    partitions = _Partitions(paused=set(), buffered=set())
    partitions._active_partitions.update(_PARTITIONS)
    for operation, tps in steps:
        _apply(partitions, operation, tps, fetching._on_buffer_drop)
        active, paused = partitions._active_partitions, partitions._paused_partitions
        assert not active & paused, (operation, tps)
        assert all(
            tp in active for tp in _PARTITIONS if tp not in paused | partitions._buffered_partitions
        ), (operation, tps)


def test_faust_s_own_buffer_drop_fetches_a_paused_partition() -> None:
    """What the property above rules out, with Faust's ``on_buffer_drop``."""
    partitions = _Partitions(paused=set(), buffered=set())
    partitions._active_partitions.update(_PARTITIONS)
    original: Any = faust_patches.ORIGINALS["paused_partitions_stay_paused"]
    table = {_PARTITIONS[0]}
    for operation in ("buffer_full", "pause", "buffer_drop"):
        _apply(partitions, operation, table, original)
    assert partitions._active_partitions & partitions._paused_partitions == table


class _CommitState:
    """The parts of Faust's consumer that ``_new_offset`` reads, as Faust keeps them."""

    def __init__(self) -> None:
        from collections import defaultdict

        from intervaltree import IntervalTree

        self.app = type("App", (), {})()
        self._acked: dict[Any, list[int]] = defaultdict(list)
        self._acked_index: dict[Any, set[int]] = defaultdict(set)
        self._gap: dict[Any, Any] = defaultdict(IntervalTree)
        self.tp = TopicPartition("events", 0)

    def hand_over(self, *offsets: int) -> None:
        for offset in offsets:
            faust_patches.taken_offsets(self.app).take(self.tp, offset)

    def ack(self, *offsets: int) -> None:
        for offset in offsets:
            self._acked[self.tp].append(offset)
            self._acked_index[self.tp].add(offset)

    def commit(self) -> int | None:
        return commits._new_offset(self, self.tp)


def test_a_commit_never_passes_an_unacknowledged_record() -> None:
    # Faust's own rule committed 39 here: it took the run 15..38 to start right after 14.
    state = _CommitState()
    state.hand_over(*range(14, 39))
    state.ack(*range(15, 39))
    assert state.commit() == 14
    state.ack(14)
    assert state.commit() == 39
    assert state._acked[state.tp] == [] and state._acked_index[state.tp] == set()


def test_a_hole_in_the_offsets_is_passed_once_the_records_around_it_are_acknowledged() -> None:
    state = _CommitState()
    state.hand_over(3, 4, 9, 10)  # 5..8: compacted away, or transaction markers
    state._gap[state.tp].addi(5, 10)  # what Faust's fetch loop records: 5..9, 9 included
    state.ack(3, 4, 10)
    assert state.commit() == 9
    state.ack(9)
    assert state.commit() == 11


def test_acknowledgements_of_records_handed_over_before_a_seek_count_but_never_lead() -> None:
    state = _CommitState()
    state.hand_over(20, 21, 22)
    # A rebalance: the consumer seeks back to the committed offset 20 and hands over again.
    state.hand_over(20, 21)
    state.ack(22)  # the earlier copy of 22 settles
    assert state.commit() == 20
    state.ack(20)
    assert state.commit() == 21
    state.ack(21)
    assert state.commit() == 22  # 22 is not handed over again yet: nothing past it


def test_nothing_handed_over_since_the_seek_commits_nothing() -> None:
    state = _CommitState()
    state.hand_over(5)
    faust_patches.taken_offsets(state.app).reset()
    state.ack(5, 6, 7)  # late acknowledgements from before the seek
    assert state.commit() is None


@given(
    offsets=st.lists(st.integers(0, 3), min_size=1, max_size=40).map(
        lambda steps: list(itertools.accumulate(s + 1 for s in steps))
    ),
    data=st.data(),
)
def test_commits_stay_below_every_unacknowledged_record(offsets: list[int], data: Any) -> None:
    state = _CommitState()
    state.hand_over(*offsets)
    order = data.draw(st.permutations(offsets))
    acknowledged: set[int] = set()
    committed = 0
    for offset in order:
        state.ack(offset)
        acknowledged.add(offset)
        point = state.commit()
        if point is not None:
            committed = max(committed, point)
        unsettled = [o for o in offsets if o not in acknowledged]
        assert not unsettled or committed <= min(unsettled)
    assert committed == offsets[-1] + 1


# -- the package ----------------------------------------------------------------------------------


def test_the_package_exports_exactly_the_public_names_of_its_modules() -> None:
    """Each module holds the patches of one part of Faust; the rest of the bridge imports their
    public names from the package (and patches a module's attributes where the module is)."""
    modules = [
        importlib.import_module(f"{faust_patches.__name__}.{info.name}")
        for info in pkgutil.iter_modules(faust_patches.__path__)
    ]
    names = {m.__name__.rsplit(".", 1)[1] for m in modules}
    assert names == {"commits", "connections", "fetching", "handoff", "recovery", "registry"}
    exported = [name for module in modules for name in module.__all__]
    assert sorted(faust_patches.__all__) == sorted(exported)
    for module in modules:
        for name in module.__all__:
            assert getattr(faust_patches, name) is getattr(module, name), name


# -- installing the patches -----------------------------------------------------------------------


@pytest.fixture
def pristine() -> Iterator[None]:
    """Faust as shipped during the test (each original as faust_patches found it), and
    whatever was installed before it afterwards."""
    with as_shipped(faust_patches.PATCHES, faust_patches.ORIGINALS):
        yield


@pytest.mark.parametrize("patch", faust_patches.PATCHES, ids=lambda p: p.name)
def test_each_fingerprint_is_the_shipped_original_s(patch: faust_patches.Patch) -> None:
    assert faust_patches.fingerprint(faust_patches.ORIGINALS[patch.name]) == patch.fingerprint


def test_install_puts_every_replacement_in_place_once(pristine: None) -> None:
    faust_patches.install()
    for patch in faust_patches.PATCHES:
        current = getattr(patch.owner, patch.attribute)
        expected = (
            faust_patches.ORIGINALS[patch.name]
            if patch.replacement is None
            else (patch.replacement)
        )
        assert current is expected, patch.name
    faust_patches.install()  # idempotent
    assert faust_consumer.Consumer._new_offset is commits._new_offset
    if sys.version_info < (3, 12):
        assert recovery.asyncio.wait_for is wait_for
        assert recovery.asyncio.sleep is asyncio.sleep  # the rest is asyncio's
        assert asyncio.wait_for is not wait_for


@pytest.mark.parametrize(
    "name", [p.name for p in faust_patches.PATCHES if not p.attribute == "asyncio"]
)
def test_a_changed_original_refuses_to_start_naming_the_patch(
    name: str, pristine: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    patch = next(p for p in faust_patches.PATCHES if p.name == name)

    def changed(*args: Any, **kwargs: Any) -> None:
        """Not the code the patch was written against."""

    monkeypatch.setattr(patch.owner, patch.attribute, changed)
    with pytest.raises(faust_patches.PatchMismatch, match=f"faust patch {re.escape(name)}:"):
        faust_patches.install()
    # Nothing was patched.
    for other in faust_patches.PATCHES:
        if other.name != name:
            assert getattr(other.owner, other.attribute) is faust_patches.ORIGINALS[other.name]


@pytest.mark.parametrize(
    "name", [p.name for p in faust_patches.PATCHES if not p.attribute == "asyncio"]
)
def test_an_original_wrapped_by_another_library_refuses_to_start(
    name: str, pristine: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``functools.wraps`` makes ``inspect.getsource`` read the wrapped function: a wrapper
    had the original's fingerprint whatever it did (until 2026-12-07)."""
    import functools

    patch = next(p for p in faust_patches.PATCHES if p.name == name)
    original = getattr(patch.owner, patch.attribute)
    target = getattr(original, "fun", original)

    @functools.wraps(target)
    def instrumented(*args: Any, **kwargs: Any) -> Any:
        return target(*args, **kwargs)

    assert faust_patches.fingerprint(instrumented) == patch.fingerprint  # what it fooled
    monkeypatch.setattr(patch.owner, patch.attribute, instrumented)
    with pytest.raises(
        faust_patches.PatchMismatch, match=f"faust patch {re.escape(name)}: .* wrapped"
    ):
        faust_patches.install()


def test_a_consumer_without_the_fetch_wait_it_sets_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fetch-wait patch sets aiokafka's own attribute: one renamed by an aiokafka release
    took the wait unseen, the fetches waiting 1.5 s (until 2026-12-07)."""
    from bridge.worker.faust_patches import fetching

    class Renamed:
        _fetch_max_wait = 1500

    monkeypatch.setattr(fetching, "_original_create_worker_consumer", lambda self, t: Renamed())
    with pytest.raises(faust_patches.PatchMismatch, match="fetch_max_wait"):
        fetching._create_worker_consumer(object(), object())


def test_another_faust_release_refuses_to_start(
    pristine: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry, "FAUST_VERSION", "0.15.2")
    with pytest.raises(faust_patches.PatchMismatch, match="faust-streaming 0.15.3 is installed"):
        faust_patches.install()
    assert faust_consumer.Consumer._new_offset is faust_patches.ORIGINALS["commit_settled_only"]


def test_the_worker_does_not_start_with_a_changed_original(
    pristine: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    from bridge.config import Settings
    from bridge.worker.app import Bridge

    def changed(self: Any, tp: Any) -> None:
        return None

    monkeypatch.setattr(faust_consumer.Consumer, "_new_offset", changed)
    settings = Settings.load(env={}, overrides={"data_dir": str(tmp_path)})
    with pytest.raises(faust_patches.PatchMismatch, match="faust patch commit_settled_only:"):
        Bridge(settings)


def _delete_everywhere(monkeypatch: pytest.MonkeyPatch, owner: Any, attribute: str) -> None:
    """``owner`` without ``attribute``: deleted from every class it comes from (as a release
    that dropped or renamed it)."""
    holders = [c for c in owner.__mro__ if attribute in vars(c)] if isinstance(owner, type) else []
    for holder in holders or [owner]:
        monkeypatch.delattr(holder, attribute)
    assert not hasattr(owner, attribute)


@pytest.mark.parametrize("patch", faust_patches.PATCHES, ids=lambda p: p.name)
def test_a_missing_original_refuses_to_start_naming_the_patch_and_what_is_missing(
    patch: faust_patches.Patch, pristine: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Until 2026-12-07 a missing attribute was a bare ``AttributeError`` (at import, or here),
    naming neither the patch nor the release."""
    _delete_everywhere(monkeypatch, patch.owner, patch.attribute)
    with pytest.raises(
        faust_patches.PatchMismatch,
        match=f"faust patch {re.escape(patch.name)}: .* has no {re.escape(patch.attribute)},",
    ):
        faust_patches.install()
    for other in faust_patches.PATCHES:  # nothing was patched
        if other.attribute != patch.attribute:
            assert getattr(other.owner, other.attribute) is faust_patches.ORIGINALS[other.name]


def test_a_consumer_without_on_buffer_full_refuses_to_start(
    pristine: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """The retry tiers' intake stops a full partition's fetching through it: until 2026-12-07
    the worker started without it and stopped at its first retry record, hours later maybe."""
    from bridge.config import Settings
    from bridge.worker.app import Bridge

    # (Faust's abstract ConsumerT.on_buffer_full is found instead: not the code relied on.)
    monkeypatch.delattr(faust_consumer.Consumer, "on_buffer_full")
    settings = Settings.load(
        env={},
        overrides={"data_dir": str(tmp_path), "kafka_bootstrap_servers": "127.0.0.1:1"},
    )
    with pytest.raises(faust_patches.PatchMismatch, match="faust patch retry_intake.buffer_full: "):
        Bridge(settings)


#: Deletes ``Consumer._new_offset`` (a release that renamed it) before anything of the bridge is
#: imported, then runs ``webhook-bridge run`` (its broker never reached).
MISSING_ORIGINAL_RUN = """
import sys
from faust.transport import consumer
del consumer.Consumer._new_offset
from bridge.cli.commands import main
sys.exit(main(["run", "--bootstrap-servers", "127.0.0.1:1", "--data-dir", sys.argv[1]]))
"""


def test_run_names_a_missing_original_in_one_line(tmp_path: Any) -> None:
    """Until 2026-12-07 the patch modules read the originals as they were imported: ``run``
    printed an ``AttributeError``'s traceback instead of its one line."""
    root = Path(__file__).resolve().parents[3]  # the bridge of this checkout, not an installed one
    done = subprocess.run(
        [sys.executable, "-c", MISSING_ORIGINAL_RUN, str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=root,
    )
    lines = done.stderr.splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert lines[0].startswith(
        "webhook-bridge: faust patch commit_settled_only: Consumer has no _new_offset, which the "
        "patch replaces or relies on; upstream behaviour it changes: "
    )


# -- a connection closed under a write ------------------------------------------------------------

#: Writes a request with aiokafka once the connection's transport was closed (the peer reset it),
#: on the loop named by argv[1], patched when argv[2] is "patched"; prints what ``send`` raised
#: ("-": nothing). In a process of its own: uvloop's loop, closed in this one after the other
#: tests of this file, waited for ever.
CLOSED_CONNECTION_PROBE = """
import asyncio, sys
import uvloop
from aiokafka.conn import AIOKafkaConnection
from aiokafka.protocol.metadata import MetadataRequest
from bridge.worker import faust_patches

async def write():
    accepted = []

    async def accept(reader, writer):
        accepted.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    connection = AIOKafkaConnection("127.0.0.1", port)
    connection._reader, connection._writer = await asyncio.open_connection("127.0.0.1", port)
    connection._versions = {MetadataRequest.API_KEY: (0, 0)}
    connection._read_task = asyncio.ensure_future(asyncio.sleep(3600))  # as connect() starts one
    connection._writer.transport.close()
    await asyncio.sleep(0)  # the transport's close runs
    try:
        sent = connection.send(MetadataRequest([]))
    except Exception as exc:
        cause = type(exc.__cause__).__name__ if exc.__cause__ else ""
        return f"{type(exc).__name__} {cause} {exc}"
    else:
        sent.close()  # (the standard library's loop takes the write and drops it)
        return "-"
    finally:
        if connection._read_task is not None:  # (the patched send closed the connection)
            connection._read_task.cancel()
        for writer in accepted:
            writer.close()
        server.close()

if sys.argv[2] == "patched":
    faust_patches.install()
print((uvloop.run if sys.argv[1] == "uvloop" else asyncio.run)(write()))
"""


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_request_written_to_a_closed_connection_is_a_broken_connection(loop: str) -> None:
    """On uvloop, aiokafka's own ``send`` raises ``RuntimeError`` there, which killed a
    producer's sender task and a fetcher's task for good (measured with the broker's link cut,
    tests/integration/test_broker_faults.py); patched, it is the ``KafkaConnectionError`` that
    an ``OSError`` there becomes, which every caller retries."""

    def probe(patched: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", CLOSED_CONNECTION_PROBE, loop, patched],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout.strip()

    before, after = probe("shipped"), probe("patched")
    if loop == "uvloop":
        assert before.startswith("RuntimeError  unable to perform operation"), before
        assert after.startswith("KafkaConnectionError RuntimeError KafkaConnectionError: "), after
        assert "broken" in after
    else:
        assert (before, after) == ("-", "-")
