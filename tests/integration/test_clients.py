"""Kafka clients started against the embedded broker and cut off mid-start leave no connection
open (bridge.kafka.clients.started)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.conn import AIOKafkaConnection

from bridge.kafka.clients import started, stopped
from bridge.worker.embedded import EmbeddedBroker


@pytest.fixture
async def connections(
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[list[AIOKafkaConnection]]:
    """Every aiokafka connection made during the test (held here, so none is collected with a
    warning in a later test); those still open at its end are closed."""
    made: list[AIOKafkaConnection] = []
    init = AIOKafkaConnection.__init__

    def recorded(self: AIOKafkaConnection, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(AIOKafkaConnection, "__init__", recorded)
    yield made
    for conn in made:
        conn.close()


def still_open(made: list[AIOKafkaConnection]) -> list[AIOKafkaConnection]:
    return [conn for conn in made if conn.connected()]


async def test_a_consumer_cancelled_while_the_broker_answers_its_bootstrap_leaves_nothing_open(
    broker: EmbeddedBroker,
    monkeypatch: pytest.MonkeyPatch,
    connections: list[AIOKafkaConnection],
) -> None:
    """The task starting a consumer is cancelled (a worker stopping) while the bootstrap's
    metadata request is in flight; the answer comes after. aiokafka's bootstrap, cut off there,
    leaves that connection open and unreferenced: the start is let end, then stopped."""
    asked = asyncio.Event()
    answer = asyncio.Event()
    send = AIOKafkaConnection.send

    def held(self: AIOKafkaConnection, request: Any, *args: Any, **kwargs: Any) -> Any:
        if not type(request).__name__.startswith("MetadataRequest") or answer.is_set():
            return send(self, request, *args, **kwargs)

        async def later() -> Any:
            asked.set()
            await answer.wait()
            return await send(self, request, *args, **kwargs)

        return later()

    monkeypatch.setattr(AIOKafkaConnection, "send", held)
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap_servers, group_id=None)
    task = asyncio.ensure_future(started(consumer))
    await asyncio.wait_for(asked.wait(), 10)
    task.cancel()
    await asyncio.sleep(0.05)
    answer.set()
    done, _ = await asyncio.wait([task], timeout=10)
    assert done and task.cancelled()
    assert connections and still_open(connections) == []


async def test_a_consumer_started_then_stopped_leaves_nothing_open(
    broker: EmbeddedBroker, connections: list[AIOKafkaConnection]
) -> None:
    """The check above sees connections: they are open while the consumer runs."""
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap_servers, group_id=None)
    await started(consumer)
    await consumer.topics()
    assert still_open(connections)
    await stopped(consumer)
    assert connections and still_open(connections) == []
