"""bridge.kafka.reading: where a partition's records written after a moment begin
(stamped_by), and when a settling read takes a fetch that brings nothing as the end
(settled)."""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from hypothesis import given
from hypothesis import strategies as st

from bridge.config import Settings
from bridge.kafka import reading
from bridge.kafka.reading import settled, stamped_by
from tests.support.fakes import consumers_of
from tests.support.waiting import PROMPT


@dataclass
class Stamped:
    timestamp: int | None


@given(st.lists(st.one_of(st.none(), st.integers(0, 20))), st.integers(0, 20))
def test_the_prefix_up_to_the_first_later_record(stamps: list[int | None], limit: int) -> None:
    messages = [Stamped(t) for t in stamps]
    n = stamped_by(messages, limit)  # type: ignore[arg-type]
    assert all(m.timestamp is None or m.timestamp <= limit for m in messages[:n])
    # The first one left out is later; what follows it is left out whatever its stamp.
    assert n == len(messages) or (messages[n].timestamp or 0) > limit


class ColdConsumer:
    """A consumer whose fetches are answered after ``first_answer`` empty polls (``None``:
    never), the first answer bringing ``records``; ``answered_ms``: when a fetch at an earlier
    position was answered (before the read sought where it goes on)."""

    def __init__(
        self, first_answer: int | None, records: list[Stamped], answered_ms: int | None = None
    ) -> None:
        self.first_answer = first_answer
        self.records = records
        self.polls = 0
        self.answered_ms = answered_ms

    async def getmany(self, *tps: TopicPartition, timeout_ms: int) -> dict[Any, Any]:
        self.polls += 1
        await asyncio.sleep(0)
        if self.first_answer is not None and self.polls > self.first_answer:
            self.answered_ms = POSITIONED_MS + self.polls
            if self.records:
                records, self.records = self.records, []
                return {tps[0]: records}
        return {}

    def last_poll_timestamp(self, tp: TopicPartition) -> int | None:
        return self.answered_ms if tp.partition == 0 else None  # partition 1: never


#: When the read sought where it goes on (wall time, ms).
POSITIONED_MS = 1_000_000


async def _settle(consumer: ColdConsumer) -> list[Stamped]:
    out: list[Stamped] = []
    tp, empty = TopicPartition("events", 0), TopicPartition("events", 1)
    read = settled(
        consumer,  # type: ignore[arg-type]
        [tp, empty],
        100,
        0.001,
        positioned_ms=POSITIONED_MS,
        ends={tp: 1, empty: 0},  # a batch there, the empty partition never answered
    )
    async with aclosing(read) as settling:
        async for _, records in settling:
            out.extend(records)
    return out


@pytest.mark.parametrize("stale", [None, POSITIONED_MS - 5, POSITIONED_MS])
async def test_a_settling_read_waits_for_an_answer_at_its_position(stale: int | None) -> None:
    """Five fetches of the settle pass unanswered (a cold consumer); an answer from before the
    read was positioned (a fetch from the broker's reported end) does not count."""
    records = [Stamped(50), Stamped(60)]
    consumer = ColdConsumer(5, list(records), answered_ms=stale)
    assert await asyncio.wait_for(_settle(consumer), PROMPT) == records
    # Once answered, a fetch that brings nothing ends it at once (after one look at what an
    # answer may have brought as the wait ended).
    assert consumer.polls == 8


async def test_a_partition_never_answered_ends_the_settling_after_its_patience(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reading, "FIRST_ANSWER_PATIENCE", 0.05)
    consumer = ColdConsumer(None, [Stamped(50)])
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await asyncio.wait_for(_settle(consumer), PROMPT) == []
    assert 0.05 <= loop.time() - started < PROMPT and consumer.polls > 1


class LateConsumer(ColdConsumer):
    """aiokafka's race: the wait of a ``getmany`` ends as a fetch is answered, and it answers
    nothing though the answer's records are in hand (the next ``getmany`` returns them)."""

    async def getmany(self, *tps: TopicPartition, timeout_ms: int) -> dict[Any, Any]:
        self.polls += 1
        await asyncio.sleep(0)
        if self.answered_ms is None:
            self.answered_ms = POSITIONED_MS + 1  # answered, its records held back
            return {}
        if self.records:
            records, self.records = self.records, []
            return {tps[0]: records}
        return {}


async def test_the_records_of_an_answer_that_came_as_the_wait_ended_are_read() -> None:
    records = [Stamped(50), Stamped(60)]
    assert await asyncio.wait_for(_settle(LateConsumer(0, list(records))), PROMPT) == records


class CommittedTopic:
    """An ``AIOKafkaConsumer`` of a topic written in transactions: partition 0 holds three
    records then a commit marker (end 4), partition 1 a marker alone (end 1). As aiokafka does,
    a fetch skips a marker, moving the position past it, and hands over no record for it (a
    fetch at the end then brings nothing)."""

    def __init__(self, **kwargs: object) -> None:
        self.at: dict[int, int] = {}
        self.records = {0: 3, 1: 0}
        self.ends = {0: 4, 1: 1}

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def topics(self) -> set[str]:
        return {"committed"}

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0, 1}

    def assign(self, tps: object) -> None:
        pass

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.ends[tp.partition] for tp in tps}

    async def seek_to_beginning(self, *tps: TopicPartition) -> None:
        for tp in tps:
            self.at[tp.partition] = 0

    async def position(self, tp: TopicPartition) -> int:
        return self.at[tp.partition]

    async def getmany(self, *tps: TopicPartition, timeout_ms: int = 0) -> dict[Any, Any]:
        await asyncio.sleep(0)
        out: dict[Any, Any] = {}
        for tp in tps:
            at, held = self.at[tp.partition], self.records[tp.partition]
            if at < held:
                out[tp] = [
                    ConsumerRecord("committed", tp.partition, n, 1, 0, b"k", b"v", None, 1, 1, ())
                    for n in range(at, held)
                ]
                self.at[tp.partition] = held
            else:
                self.at[tp.partition] = self.ends[tp.partition]  # past the marker
        return out

    def last_poll_timestamp(self, tp: TopicPartition) -> int:
        return int(time.time() * 1000) + 1000


async def test_a_partition_ending_in_a_transaction_marker_is_read_to_its_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fetch that brings nothing, the positions at the ends: the read ends there (until
    2026-12-07 it raised TimeoutError; the embedded broker has no transactions)."""
    monkeypatch.setattr(reading, "new_consumer", consumers_of(CommittedTopic))
    settings = Settings.load(env={}, overrides={"kafka_bootstrap_servers": "127.0.0.1:1"})
    read = reading.stream_positioned(settings, "committed", timeout=PROMPT, settle=0.01)
    out: list[reading.Positioned] = []

    async def run() -> None:
        async with aclosing(read) as batches:
            async for batch in batches:
                out.extend(batch)

    await asyncio.wait_for(run(), PROMPT)
    assert [(r.partition, r.offset) for r in out] == [(0, 0), (0, 1), (0, 2)]
