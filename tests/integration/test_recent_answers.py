"""A starting worker's read of endpoints' recent answers, on the real broker: the newest
attempt records of each partition, at most as many as asked, hostile records skipped, and
nothing raised when the topic cannot be read."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest

from bridge.config import Settings
from bridge.contract.events import format_timestamp
from bridge.kafka.topics import declared_topics
from bridge.worker.recent_answers import read_recent_answers
from tests.support.records import RawWriter

pytestmark = pytest.mark.integration


def attempt(n: int, duration: float, ago: float = 0.0) -> bytes:
    at = datetime.fromtimestamp(time.time() - ago, UTC)
    return json.dumps(
        {
            "delivery_id": f"d{n}",
            "webhook_id": f"wh{n}",
            "event_type": "post.created",
            "attempt": 1,
            "outcome": "success",
            "duration_seconds": duration,
            "at": format_timestamp(at),
        }
    ).encode()


async def test_the_newest_records_of_each_partition_are_read_and_no_more(
    settings: Settings,
) -> None:
    """Forty records to one partition, then hostile ones (not JSON, a tombstone, 20 KB, an
    attempt of another shape): a read of the newest 16 of each partition takes 16 of that
    partition, the newest, and skips what is no attempt."""
    writer = await RawWriter(settings.kafka_bootstrap_servers).start()
    try:
        for n in range(40):
            await writer.write(settings.attempts_topic, attempt(n, 0.01), key=b"k", partition=0)
        hostile = [b"{not json", None, b"x" * 20_000, b'{"webhook_id": "wh"}']
        for value in hostile:
            await writer.write(settings.attempts_topic, value, key=b"k", partition=0)
    finally:
        await writer.stop()
    partitions = next(
        t.partitions for t in declared_topics(settings) if t.name == settings.attempts_topic
    )
    answers = await read_recent_answers(settings, records=16 * partitions, timeout=30)
    assert answers.taken + answers.skipped == 16
    assert answers.skipped == len(hostile)
    assert answers.taken == 16 - len(hostile)
    newest = {f"wh{n}" for n in range(40 - answers.taken, 40)}
    assert set(answers._newest) == newest


async def test_answers_older_than_the_reach_are_not_taken(settings: Settings) -> None:
    """The embedded broker has no time index (a read from a time starts at the beginning):
    each record's own time is judged too."""
    writer = await RawWriter(settings.kafka_bootstrap_servers).start()
    try:
        await writer.write(settings.attempts_topic, attempt(1, 0.01, ago=7200), key=b"k")
        await writer.write(settings.attempts_topic, attempt(2, 0.01, ago=4000), key=b"k")
    finally:
        await writer.stop()
    answers = await read_recent_answers(settings, since=5400, timeout=30)
    assert set(answers._newest) == {"wh2"} and answers.skipped == 1


async def test_a_topic_that_cannot_be_read_is_no_answers_and_no_error(make_settings) -> None:
    """A worker whose attempts topic is missing (a misspelt setting), or whose broker cannot
    be reached, starts with nothing remembered, in the read's time at most."""
    missing = make_settings(attempts_topic="no-such-attempts-topic")
    answers = await read_recent_answers(missing, timeout=10)
    assert len(answers) == 0 and answers.taken == 0
    unreachable = make_settings(kafka_bootstrap_servers="127.0.0.1:9")
    answers = await read_recent_answers(unreachable, timeout=3)
    assert len(answers) == 0
