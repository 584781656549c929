"""bridge.worker.direct_topic.DirectTopic, fed by Faust's own conductor (no broker needed).

Records are given to ``app.topics.on_message`` exactly as Faust's consumer gives them after a
fetch (``ConsumerMessage``, as the aiokafka driver builds it); the intake is a recording fake.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import faust
import pytest
from faust.sensors import Sensor
from faust.types.tuples import TP, ConsumerMessage

from bridge.delivery.job import SourceRef
from bridge.worker.direct_topic import DirectTopic
from bridge.worker.faust_patches import UNBUFFERED, taken_offsets

TOPIC = "postion.events"
PROMPT = 2.0


class Intake:
    """Records what it was handed; ``room`` decides what ``accepts`` says."""

    def __init__(self, room: bool = True) -> None:
        self.room = room
        self.offered: list[tuple[bytes | None, SourceRef, Any]] = []
        self.handled: list[tuple[bytes | None, SourceRef, Any]] = []

    def accepts(self) -> bool:
        return self.room

    def offer(self, raw: bytes | None, source: SourceRef, ack: Any) -> None:
        assert self.room, "offer without room"
        self.offered.append((raw, source, ack))

    async def handle_event(self, raw: bytes | None, source: SourceRef, ack: Any) -> None:
        self.handled.append((raw, source, ack))


class Counting(Sensor):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.ins: list[int] = []
        self.outs: list[int] = []

    def on_message_in(self, tp: TP, offset: int, message: Any) -> None:
        self.ins.append(offset)

    def on_message_out(self, tp: TP, offset: int, message: Any) -> None:
        self.outs.append(offset)


class Rig:
    def __init__(self, app: faust.App, topic: DirectTopic, sensor: Counting) -> None:
        self.app = app
        self.topic = topic
        self.sensor = sensor
        self.starts = 0

    def message(self, offset: int, value: bytes = b"{}", partition: int = 1) -> ConsumerMessage:
        return ConsumerMessage(
            TOPIC,
            partition,
            offset,
            0.0,
            0,
            [],
            b"site_789",
            value,
            None,
            tp=TP(TOPIC, partition),
            generation_id=self.app.consumer_generation_id,
        )

    async def fetched(self, message: ConsumerMessage) -> Any:
        return await asyncio.wait_for(self.app.topics.on_message(message), PROMPT)


def new_app(name: str) -> faust.App:
    # On the test's loop: an app left to find its own would create loops nobody closes.
    return faust.App(
        name, broker="kafka://127.0.0.1:1", store="memory://", loop=asyncio.get_running_loop()
    )


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    app = new_app("direct-topic-test")
    sensor = Counting()
    app.sensors.add(sensor)
    holder: dict[str, Rig] = {}

    async def start_intake() -> Intake:
        holder["rig"].starts += 1
        return Intake()

    topic = DirectTopic(app, [TOPIC], start_intake)
    topic.subscribe()
    await app.topics._update_indices()
    await app.topics.on_partitions_assigned({TP(TOPIC, 1), TP(TOPIC, 2)})
    app.flow_control.resume()
    holder["rig"] = Rig(app, topic, sensor)
    yield holder["rig"]
    # The consumer's thread was never started, but its event loop exists: close it.
    app.consumer._thread.thread_loop.close()


async def test_the_worker_subscribes_to_the_topic_with_acknowledgements() -> None:
    app = new_app("direct-topic-sub")

    async def never() -> Intake:
        raise AssertionError

    topic = DirectTopic(app, [TOPIC, "other.events"], never)
    assert topic not in app.topics
    topic.subscribe()
    assert topic in app.topics
    assert topic.acks and topic.topics == [TOPIC, "other.events"]


async def test_the_first_record_starts_the_intake_and_later_ones_are_offered(rig: Rig) -> None:
    await rig.fetched(rig.message(7, b'{"id":"evt_1"}'))
    assert rig.starts == 1
    intake = rig.topic.intake
    assert isinstance(intake, Intake)
    # Before the intake existed the conductor took the waiting path.
    assert [(raw, src) for raw, src, _ in intake.handled] == [
        (b'{"id":"evt_1"}', SourceRef(TOPIC, 1, 7, b"site_789"))
    ]
    await rig.fetched(rig.message(8, b"raw bytes, not decoded", partition=2))
    await rig.fetched(rig.message(9, None))  # type: ignore[arg-type]
    assert rig.starts == 1
    assert [(raw, src) for raw, src, _ in intake.offered] == [
        (b"raw bytes, not decoded", SourceRef(TOPIC, 2, 8, b"site_789")),
        (None, SourceRef(TOPIC, 1, 9, b"site_789")),
    ]
    assert rig.sensor.ins == [7, 8, 9]
    # Faust's consumer checks this every few seconds and logs a stalled stream for a partition
    # with records to read and no recent time here (after stream_processing_timeout).
    inbound = rig.app.monitor.stream_inbound_time
    assert set(inbound) == {TP(TOPIC, 1), TP(TOPIC, 2)}
    assert all(time.monotonic() - t < PROMPT for t in inbound.values())


async def test_a_full_intake_is_waited_for_not_offered_to(rig: Rig) -> None:
    await rig.fetched(rig.message(1))
    intake = rig.topic.intake
    assert isinstance(intake, Intake)
    intake.room = False
    await rig.fetched(rig.message(2))
    assert [src.offset for _, src, _ in intake.handled] == [1, 2]
    assert intake.offered == []


async def test_acknowledging_marks_the_offset_committable_once(rig: Rig) -> None:
    await rig.fetched(rig.message(1))
    await rig.fetched(rig.message(2))
    intake = rig.topic.intake
    assert isinstance(intake, Intake)
    ack = intake.offered[0][2]
    consumer = rig.app.consumer
    assert consumer._acked[TP(TOPIC, 1)] == []
    ack()
    ack()  # a second call changes nothing
    assert consumer._acked[TP(TOPIC, 1)] == [2]
    assert rig.sensor.outs == [2]
    intake.handled[0][2]()
    assert consumer._acked[TP(TOPIC, 1)] == [2, 1]
    assert rig.sensor.outs == [2, 1]


async def test_records_fetched_before_a_rebalance_are_dropped_unacknowledged(rig: Rig) -> None:
    await rig.fetched(rig.message(1))
    intake = rig.topic.intake
    assert isinstance(intake, Intake)
    stale = rig.message(2)
    rig.app.consumer_generation_id += 1  # a rebalance happened since the fetch
    await rig.fetched(stale)
    intake.room = False
    await rig.fetched(stale)  # nor on the waiting path
    assert [src.offset for _, src, _ in intake.offered + intake.handled] == [1]
    assert rig.sensor.ins == [1]
    assert not stale.acked
    await rig.fetched(rig.message(3))  # fetched in the new generation
    assert [src.offset for _, src, _ in intake.handled] == [1, 3]


async def test_records_wait_while_the_flow_is_suspended(rig: Rig) -> None:
    await rig.fetched(rig.message(1))
    intake = rig.topic.intake
    assert isinstance(intake, Intake)
    rig.app.flow_control.suspend()
    waiting = asyncio.ensure_future(rig.fetched(rig.message(2)))
    for _ in range(10):  # every chance to run: it must still be waiting
        await asyncio.sleep(0)
    assert not waiting.done()
    assert [src.offset for _, src, _ in intake.handled + intake.offered] == [1]
    rig.app.flow_control.resume()
    await waiting
    assert [src.offset for _, src, _ in intake.handled + intake.offered] == [1, 2]
    assert rig.sensor.ins == [1, 2]


async def test_records_of_other_topics_go_through_the_conductor(rig: Rig) -> None:
    other = rig.app.topic("other.topic", value_type=bytes, value_serializer="raw")
    rig.app.topics.add(other)
    await rig.app.topics._update_indices()
    await rig.app.topics.on_partitions_assigned({TP(TOPIC, 1), TP("other.topic", 0)})
    message = ConsumerMessage(
        "other.topic",
        0,
        5,
        0.0,
        0,
        [],
        None,
        b"for the other channel",
        None,
        tp=TP("other.topic", 0),
        generation_id=rig.app.consumer_generation_id,
    )
    # Buffered by the other topic's channel: Faust's consumer must yield after it.
    assert await rig.fetched(message) is not UNBUFFERED
    event = other.queue.get_nowait()
    assert event.value == b"for the other channel"
    assert rig.topic.intake is None and rig.starts == 0
    assert await rig.fetched(rig.message(1)) is UNBUFFERED
    assert await rig.fetched(rig.message(2)) is UNBUFFERED
    assert rig.starts == 1


async def test_two_direct_topics_report_each_record_taken_once() -> None:
    """The events topic and the retry tiers are direct topics of one app: each record is
    reported to the commit guard once. (Reported twice, a record reads as a seek back, and the
    guard forgot the records taken before it, so a commit could pass them unacknowledged.)"""
    app = new_app("direct-topic-two")
    retry = "postion.retry.1"

    async def start_intake() -> Intake:
        return Intake()

    events_topic = DirectTopic(app, [TOPIC], start_intake)
    retry_topic = DirectTopic(app, [retry], start_intake)
    events_topic.subscribe()
    retry_topic.subscribe()
    await app.topics._update_indices()
    await app.topics.on_partitions_assigned({TP(TOPIC, 1), TP(retry, 1)})
    app.flow_control.resume()
    try:
        for offset in (1, 2, 3):
            for topic in (TOPIC, retry):
                message = ConsumerMessage(
                    topic, 1, offset, 0.0, 0, [], b"k", b"{}", None,
                    tp=TP(topic, 1), generation_id=app.consumer_generation_id,
                )  # fmt: skip
                await asyncio.wait_for(app.topics.on_message(message), PROMPT)
        taken = taken_offsets(app)
        for topic, direct in ((TOPIC, events_topic), (retry, retry_topic)):
            assert list(taken._parts[TP(topic, 1)].offsets) == [1, 2, 3]
            intake = direct.intake
            assert isinstance(intake, Intake)
            assert [src.topic for _, src, _ in intake.handled + intake.offered] == [topic] * 3
    finally:
        app.consumer._thread.thread_loop.close()
