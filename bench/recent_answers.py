"""A starting worker's read of endpoints' recent answers (``bridge.worker.recent_answers``):
seconds to read the newest ``SEED_RECORDS`` attempt records (100,000, an equal part of each
attempts partition) and to resolve them against a table holding their webhooks, on an embedded
broker of its own, median of three reads, and the memory the answers hold and the peak while
they are resolved (tracemalloc, a fourth read): of 100,000 and of 10,000 webhooks, and a
topic of 20,000 records; the records naming their endpoint as written since 2026-12-07 (no
resolving), and, for 100,000 webhooks, without it as earlier versions wrote them (each resolved
through the table).

``python -m bench.recent_answers``: the first deliveries of a starting worker wait for this
(the read begins as the worker starts, beside its group join and table recovery).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

from bridge.admin.topics import apply_topics
from bridge.config import Settings
from bridge.contract import jsoncanon
from bridge.delivery.recent_answers import SEED_RECORDS
from bridge.subscriptions.webhook import Webhook, parse_webhook
from bridge.worker.embedded import EmbeddedBroker, free_port
from bridge.worker.recent_answers import read_recent_answers

from .control_plane import attempt_records
from .kit import make_settings, new_producer, now_stamp


async def _fill(settings: Settings, records: list[tuple[bytes, bytes, int]]) -> None:
    producer = new_producer(settings.kafka_bootstrap_servers or "", linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(settings.attempts_topic, value, key=key, timestamp_ms=stamp)
            for key, value, stamp in records
        ]
        for future in futures:
            await future
    finally:
        await producer.stop()


def _table(webhook_ids: list[str]) -> dict[str, Webhook]:
    """The webhooks of ``webhook_ids`` as the subscriptions table holds them, each changed last
    two hours ago (before every attempt: all of them are resolved)."""
    stamp = now_stamp(time.time() - 7200)
    table = {}
    for webhook_id in webhook_ids:
        record = {
            "id": webhook_id,
            "name": webhook_id,
            "url": f"https://{webhook_id}.example/hook",
            "secret": "s" * 32,
            "events": ["*"],
            "site_id": "s1",
            "user_id": "u1",
            "active": True,
            "created_at": stamp,
            "updated_at": stamp,
        }
        webhook = parse_webhook(webhook_id.encode(), jsoncanon.dumps(record))
        assert webhook is not None
        table[webhook_id] = webhook
    return table


def _unnamed(records: list[tuple[bytes, bytes, int]]) -> list[tuple[bytes, bytes, int]]:
    """``records`` as versions before 2026-12-07 wrote them: without ``endpoint``."""
    out = []
    for key, value, stamp in records:
        record = json.loads(value)
        record.pop("endpoint", None)
        out.append((key, json.dumps(record, separators=(",", ":")).encode(), stamp))
    return out


async def _measure(
    bootstrap: str, workdir: Path, prefix: str, count: int, webhooks: int, *, named: bool = True
) -> dict[str, float | bool]:
    settings = make_settings(bootstrap, prefix, workdir)
    await apply_topics(settings)
    ids = [f"wh_{n}" for n in range(webhooks)]
    table = _table(ids)
    # An hour's records, the newest 30 s old: all of them within the read's reach.
    records = attempt_records(ids, count, days=1 / 24)
    await _fill(settings, records if named else _unnamed(records))
    reads, resolves = [], []
    for _ in range(3):
        started = time.perf_counter()
        answers = await read_recent_answers(settings)
        read = time.perf_counter()
        await answers.endpoints(table.get, time.time())
        reads.append(read - started)
        resolves.append(time.perf_counter() - read)
    tracemalloc.start()
    answers = await read_recent_answers(settings)
    held = tracemalloc.get_traced_memory()[0]
    await answers.endpoints(table.get, time.time())
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {
        "endpoint_named": named,
        "records": count,
        "read": answers.taken + answers.skipped,
        "webhooks": len(answers),
        "read_s": round(statistics.median(reads), 3),
        "resolve_s": round(statistics.median(resolves), 3),
        "held_mb": round(held / 2**20, 1),
        "peak_mb": round(peak / 2**20, 1),
    }


async def _main(bootstrap: str, workdir: Path) -> None:
    for n, (count, webhooks, named) in enumerate(
        (
            (SEED_RECORDS + 25_000, 100_000, True),
            (SEED_RECORDS + 25_000, 100_000, False),
            (SEED_RECORDS + 25_000, 10_000, True),
            (20_000, 10_000, True),
        )
    ):
        result = await _measure(bootstrap, workdir, f"answers{n}", count, webhooks, named=named)
        print(result, flush=True)


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        broker = EmbeddedBroker(free_port(), log_path=str(Path(directory) / "tansu.log"))
        broker.start()
        try:
            asyncio.run(_main(broker.bootstrap_servers, Path(directory)))
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
