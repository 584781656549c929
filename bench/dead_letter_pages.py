"""Pages of dead letters on the embedded broker: time and peak Python allocations of the first
pages of 100, at N letters of ~2 KB written ten a second (each stamped as it is dated, as the
bridge writes them). ``python -m bench.dead_letter_pages 40000`` (BENCHMARKS.md, "Webhook
listings and dead-letter pages")."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import tracemalloc
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer

from bridge.admin.dead_letters import DeadLetterFilter
from bridge.admin.topics import apply_topics
from bridge.api.auth import Principal
from bridge.api.kafka_sources import KafkaDeadLetters
from bridge.api.repository import MemoryRepository
from bridge.config import Settings
from bridge.contract.events import format_timestamp
from bridge.worker.embedded import EmbeddedBroker, free_port
from tests.unit.api.conftest import control_service, dead_letter

BASE = datetime(2026, 12, 4, 8, 0, tzinfo=UTC).timestamp()


async def measure(bootstrap: str, letters: int, pages: int = 3) -> None:
    overrides = {"kafka_bootstrap_servers": bootstrap, "deadletter_topic": "dlq-pages"}
    settings = Settings.load(env={}, overrides=overrides)
    await apply_topics(settings)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=5
    )
    await producer.start()
    sent = []
    for n in range(letters):
        at = BASE + n * 0.1
        letter = dead_letter(
            n, webhook_id=f"wh_{n % 50}", at=format_timestamp(datetime.fromtimestamp(at, UTC))
        )
        letter["detail"] = "x" * 1800
        sent.append(
            await producer.send(
                settings.deadletter_topic,
                json.dumps(letter).encode(),
                key=letter["webhook_id"].encode(),
                timestamp_ms=int(at * 1000),
            )
        )
    await asyncio.gather(*sent)
    await producer.stop()
    admin = Principal("admin", frozenset({"read", "write"}))
    control = control_service(MemoryRepository(), dead_letters=KafkaDeadLetters(settings))
    cursor = None
    for number in range(1, pages + 1):
        tracemalloc.start()
        began = time.perf_counter()
        page = await control.dead_letters(admin, DeadLetterFilter(), limit=100, cursor=cursor)
        took = time.perf_counter() - began
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        cursor = page.next_cursor
        print(
            f"{letters} letters, page {number}: {len(page.items)} letters in {took:.2f} s, "
            f"peak allocations {peak / 2**20:.1f} MiB"
        )


def main() -> None:
    letters = int(sys.argv[1]) if len(sys.argv) > 1 else 40_000
    broker = EmbeddedBroker(free_port())
    broker.start()
    try:
        asyncio.run(measure(broker.bootstrap_servers, letters))
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
