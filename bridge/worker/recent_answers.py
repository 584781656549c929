"""The recent answers of endpoints (:class:`~bridge.delivery.recent_answers.RecentAnswers`),
read from the tail of the attempts topic as a worker starts delivering."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import aclosing

from bridge.config import Settings
from bridge.delivery.recent_answers import (
    SEED_RECORDS,
    SEED_SINCE,
    SEED_TIMEOUT,
    RecentAnswers,
)
from bridge.kafka.reading import stream_positioned

__all__ = ["read_recent_answers"]

log = logging.getLogger(__name__)

#: Records read between two turns of the event loop.
_STEP = 1000


async def read_recent_answers(
    settings: Settings,
    *,
    since: float = SEED_SINCE,
    records: int = SEED_RECORDS,
    timeout: float = SEED_TIMEOUT,
) -> RecentAnswers:
    """The answers of the attempts topic's newest ``records`` records stamped within the last
    ``since`` seconds, read for ``timeout`` seconds at most. Never raises for the broker: what
    was read before a failure or the timeout is what is known (a record that is no attempt is
    skipped); the worker then hears the rest for itself."""
    answers = RecentAnswers(now=time.time(), since=since)
    begun = time.monotonic()
    stream = stream_positioned(
        settings,
        settings.attempts_topic,
        since_ms=int((answers.now - since) * 1000),
        newest=records,
        timeout=timeout,
    )
    ended = "read"
    try:
        async with asyncio.timeout(timeout), aclosing(stream) as batches:
            async for batch in batches:
                for n, record in enumerate(batch, start=1):
                    answers.add_value(record.value)
                    if n % _STEP == 0:
                        await asyncio.sleep(0)  # (the embedded broker's fetches are large)
    except TimeoutError:
        ended = f"cut at {timeout:g} s"
    except Exception as exc:  # the broker's (KafkaError, MissingTopic, OSError), or a bug
        ended = f"cut by {type(exc).__name__}"
    log.info(
        "endpoints' recent answers: %d attempt records, %d skipped, of %d endpoints (or "
        "webhooks, for records naming none) from %s, %s in %.2f s",
        answers.taken,
        answers.skipped,
        len(answers),
        settings.attempts_topic,
        ended,
        time.monotonic() - begun,
    )
    return answers
