"""``topics apply`` without a broker: what it asks the broker to create, and what it makes of
the broker's answer (which refuses topics one by one, never as an exception)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from bridge.admin import topics
from bridge.admin.topics import apply_topics, min_insync_replicas
from bridge.config import Settings
from bridge.errors import ConfigError
from bridge.kafka.topics import declared_topics


class Admin:
    """An ``AIOKafkaAdminClient`` of a cluster holding no topic, answering ``create_topics``
    with the per-topic errors in ``ANSWERS`` (none by default)."""

    ANSWERS: dict[str, tuple[int, str | None]] = {}
    asked: list[Any] = []

    def __init__(self, **kwargs: object) -> None:
        self.closed = False

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        self.closed = True

    async def list_topics(self) -> list[str]:
        return []

    async def create_topics(self, new_topics: list[Any]) -> Any:
        Admin.asked = new_topics
        errors = [(t.name, *self.ANSWERS.get(t.name, (0, None))) for t in new_topics]
        return SimpleNamespace(topic_errors=errors)

    async def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
        spec = {s.name: s for s in declared_topics(SETTINGS)}
        return [{"topic": n, "partitions": [0] * spec[n].partitions} for n in names]

    async def describe_configs(self, resources: list[Any]) -> list[Any]:
        spec = {s.name: s for s in declared_topics(SETTINGS)}
        return [
            SimpleNamespace(
                resources=[
                    (0, None, 2, r.name, [(k, v) for k, v in spec[r.name].configs.items()])
                    for r in resources
                ]
            )
        ]


SETTINGS = Settings.load(env={}, overrides={"kafka_bootstrap_servers": "127.0.0.1:1"})


@pytest.fixture(autouse=True)
def admin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(topics, "AIOKafkaAdminClient", Admin)
    Admin.ANSWERS = {}
    Admin.asked = []


async def test_a_topic_the_broker_refuses_fails_the_apply_naming_it_and_why() -> None:
    """Until 2026-12-06 the answer was not read: a topic refused (here, more replicas than
    brokers) was reported created, and the workers started without it."""
    refused = SETTINGS.subscriptions_topic
    Admin.ANSWERS = {refused: (38, "Replication factor: 3 larger than available brokers: 1.")}
    with pytest.raises(ConfigError) as caught:
        await apply_topics(SETTINGS.replace(topic_replication_factor=3))
    message = str(caught.value)
    assert refused in message
    assert "InvalidReplicationFactorError (38)" in message
    assert "larger than available brokers" in message
    assert SETTINGS.events_topic not in message


async def test_a_topic_another_client_created_first_is_checked_as_an_existing_one() -> None:
    raced = SETTINGS.events_topic
    Admin.ANSWERS = {raced: (36, "Topic with this name already exists.")}
    report = await apply_topics(SETTINGS)
    assert raced in report.existing and raced not in report.created
    assert SETTINGS.subscriptions_topic in report.created
    assert not report.drift


@pytest.mark.parametrize(("replicas", "insync"), [(1, 1), (2, 1), (3, 2), (5, 2)])
async def test_created_topics_ask_for_enough_in_sync_replicas(replicas: int, insync: int) -> None:
    assert min_insync_replicas(replicas) == insync
    await apply_topics(SETTINGS.replace(topic_replication_factor=replicas))
    assert Admin.asked
    for asked in Admin.asked:
        assert asked.replication_factor == replicas
        assert dict(asked.topic_configs)["min.insync.replicas"] == str(insync)
