"""A starting worker's read of endpoints' recent answers (``bridge.worker.recent_answers``):
seconds to read the newest ``SEED_RECORDS`` attempt records (200,000 by default, an equal part
of each attempts partition) and resolve them, on an embedded broker of its own, median of three
reads; and the same with a topic of 20,000 records (a small deployment's hour).

``python -m bench.recent_answers``: the first deliveries of a starting worker wait for this
(the read begins as the worker starts, beside its group join and table recovery).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from bridge.admin.topics import apply_topics
from bridge.config import Settings
from bridge.delivery.recent_answers import SEED_RECORDS
from bridge.worker.embedded import EmbeddedBroker, free_port
from bridge.worker.recent_answers import read_recent_answers

from .control_plane import attempt_records
from .kit import make_settings, new_producer


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


async def _measure(bootstrap: str, workdir: Path, prefix: str, count: int) -> dict[str, float]:
    settings = make_settings(bootstrap, prefix, workdir)
    await apply_topics(settings)
    webhooks = [f"wh_{n}" for n in range(10_000)]
    # An hour's records, the newest 30 s old: all of them within the read's reach.
    await _fill(settings, attempt_records(webhooks, count, days=1 / 24))
    runs = []
    taken = 0
    for _ in range(3):
        started = time.perf_counter()
        answers = await read_recent_answers(settings)
        answers.endpoints(lambda _: None)
        runs.append(time.perf_counter() - started)
        taken = answers.taken + answers.skipped
    return {"records": count, "read": taken, "seconds": round(statistics.median(runs), 3)}


async def _main(bootstrap: str, workdir: Path) -> None:
    for n, count in enumerate((SEED_RECORDS + 50_000, 20_000)):
        result = await _measure(bootstrap, workdir, f"answers{n}", count)
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
