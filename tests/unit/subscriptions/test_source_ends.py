"""``Bridge._source_ends``: the high-water marks a freshness round notes, read from the consumer."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from faust.types import TP

from bridge.config import Settings
from bridge.worker.app import Bridge

SETTINGS = Settings.load(env={}, overrides={"extra_source_topics": ("legacy.events",)})


class FakeConsumer:
    def __init__(self, highwaters: dict[TP, int | None], fail: BaseException | None = None):
        self.highwaters = highwaters
        self.fail = fail

    def assignment(self) -> set[TP]:
        return set(self.highwaters)

    def highwater(self, tp: TP) -> int | None:
        if self.fail is not None:
            raise self.fail
        return self.highwaters[tp]


def source_ends(consumer: FakeConsumer) -> Any:
    bridge: Any = SimpleNamespace(settings=SETTINGS, app=SimpleNamespace(consumer=consumer))
    return Bridge._source_ends(bridge)


def test_only_source_partitions_with_a_known_mark() -> None:
    events = SETTINGS.events_topic
    consumer = FakeConsumer(
        {
            TP(events, 0): 120,
            TP(events, 3): None,  # not fetched yet
            TP("legacy.events", 1): 7,
            TP(SETTINGS.retry_topics[0], 0): 55,
            TP(SETTINGS.subscriptions_topic, 0): 99,
        }
    )
    assert source_ends(consumer) == {(events, 0): 120, ("legacy.events", 1): 7}


def test_nothing_when_the_consumer_cannot_answer() -> None:
    # aiokafka asserts assignment; a stopping consumer raises its own error.
    tp = TP(SETTINGS.events_topic, 0)
    assert source_ends(FakeConsumer({tp: 5}, fail=AssertionError())) == {}
    assert source_ends(FakeConsumer({tp: 5}, fail=RuntimeError("not started"))) == {}
