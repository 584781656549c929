"""The seeded event load of the chaos tests: events published in paced bursts, each delivery
told to fail its first few requests."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bridge.config import Settings
from bridge.contract.events import Event, build_event
from bridge.contract.payload import delivery_id
from tests.support.receivers import Receiver
from tests.support.records import RawWriter


@dataclass(frozen=True)
class Load:
    """``count`` events of account u1, of ``types`` and ``sites`` at random, written ``burst``
    at a time with ``pause`` seconds between bursts; each delivery to a webhook of ``fails``
    fails its first 0 to ``fails[webhook]`` requests."""

    count: int
    types: Sequence[str]
    sites: Sequence[str]
    fails: Mapping[str, int]
    burst: int
    pause: float


async def publish(
    settings: Settings,
    receiver: Receiver,
    load: Load,
    rng: random.Random,
    events: list[Event],
    written: list[tuple[int, int]],
) -> None:
    """Publish ``load``, drawing from ``rng``; each event is appended to ``events`` before it is
    written and its (partition, offset) to ``written`` once it is."""
    writer = await RawWriter(settings.kafka_bootstrap_servers).start()
    try:
        for n in range(load.count):
            event = build_event(
                rng.choice(load.types),
                {"id": f"p{n}", "title": f"post {n}"},
                site_id=rng.choice(load.sites),
                user_id="u1",
            )
            events.append(event)
            for hook, most in load.fails.items():
                receiver.fail_first[delivery_id(event.id, hook)] = rng.randint(0, most)
            written.append(
                await writer.write(settings.events_topic, event.to_bytes(), key=event.key)
            )
            if n % load.burst == load.burst - 1:
                await asyncio.sleep(load.pause)  # pacing the load, not waiting for anything
    finally:
        await writer.stop()
