"""A real worker's log never holds a character a terminal could act on, whatever the records
another producer wrote: subscription records with escape sequences, C1 controls,
bidirectional overrides and line breaks in their keys, field names and values are skipped and
logged (their reason and detail name what is wrong), and webhooks whose ids and names hold
them (ids are not judged on load) get deliveries whose failures are logged with their ids, in
text and in JSON lines: every line of the log stays one printable line (until 2026-12-07 text
lines wrote C0/C1 controls and bidi overrides raw, JSON lines C1 controls)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaProducer

from bridge.admin.publish import publish_events
from bridge.admin.topics import apply_topics
from bridge.config import Settings
from bridge.contract.events import build_event
from bridge.kafka.clients import client_kwargs
from tests.support.processes import WorkerProcess
from tests.support.receivers import Receiver
from tests.support.waiting import poll

pytestmark = pytest.mark.integration

#: What a terminal acts on: CSI and OSC sequences, BEL, backspace, a carriage return, a C1 CSI,
#: DEL, bidirectional overrides and isolates, a line and a paragraph separator, a zero-width
#: joiner.
HOSTILE = [
    "\x1b[2J\x1b[H",
    "\x1b]0;owned\x07",
    "\x08\x08\x08",
    "\r",
    "\x9b31m",
    "\x7f",
    "\u202e",
    "\u2066",
    "\u2028",
    "\u2029",
    "\u200d",
    "\n",
    "\x00",
]


def hostile_text(rng: random.Random) -> str:
    return "".join(rng.choice(HOSTILE) + rng.choice(["a", "wh", "id", "é"]) for _ in range(4))


def hostile_records(rng: random.Random, count: int, url: str) -> list[tuple[bytes | None, bytes]]:
    """Subscription records with hostile text in each part: those of shape 0 (every sixth)
    are webhooks of site ``s-hostile`` delivered to ``url``, the workers refuse the rest."""
    records: list[tuple[bytes | None, bytes]] = []
    for n in range(count):
        text = hostile_text(rng)
        key = f"wh_{n}{text}"
        shape = n % 6
        if shape == 0:
            key = key.replace("\x00", "")  # an id holds no NUL
        whole = {
            "id": key,
            "name": text,
            "url": url,
            "secret": "whsec_" + "A" * 44,
            "events": ["*"],
            "active": True,
            "site_id": text,
        }
        if shape == 0:  # a webhook: a hostile id and name, a field no webhook has
            value = json.dumps({**whole, "site_id": "s-hostile", text: text}).encode()
        elif shape == 1:  # the key and the id differ, both hostile
            value = json.dumps({**whole, "id": text}).encode()
        elif shape == 2:  # a hostile URL and event type
            value = json.dumps({**whole, "url": f"https://{text}/", "events": [text]}).encode()
        elif shape == 3:  # no JSON: raw hostile bytes
            value = text.encode() + b"\xff"
        elif shape == 4:  # fields of the wrong type, hostile
            value = json.dumps({**whole, "active": text, "secret": {text: [text]}}).encode()
        else:  # a key that is no UTF-8
            records.append((key.encode() + b"\xfe", json.dumps(whole).encode()))
            continue
        records.append((key.encode(), value))
    return records


def unprintable(line: str) -> list[str]:
    return [c for c in line if not c.isprintable()]


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_hostile_records_and_webhooks_are_logged_in_printable_lines_only(
    make_settings: Callable[..., Settings],
    workers: Callable[[Settings], WorkerProcess],
    receiver: Receiver,
    log_format: str,
) -> None:
    settings = make_settings(log_format=log_format)
    await apply_topics(settings)
    receiver.statuses["/fail"] = 500
    rng = random.Random(f"20261207-{log_format}")
    records = hostile_records(rng, 40, receiver.url("/fail"))
    webhooks = len(range(0, 40, 6))
    producer = AIOKafkaProducer(**client_kwargs(settings))
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(settings.subscriptions_topic, value, key=key)
    finally:
        await producer.stop()
    worker = workers(settings)
    await worker.wait_ready()
    name = "webhook_bridge_invalid_subscription_records_total"

    def skipped(values: dict[str, float]) -> float:
        return sum(v for k, v in values.items() if k.startswith(name + "{"))

    values = await poll(
        worker.metrics,
        until=lambda v: skipped(v) >= len(records) - webhooks,
        timeout=60,
        interval=0.2,
    )
    assert skipped(values) == len(records) - webhooks, values
    event = build_event(
        "post.created", {"id": "p", "title": "t"}, site_id="s-hostile", user_id="u1"
    )
    await publish_events(settings, [event])
    await receiver.wait_for(lambda got: len(got) >= webhooks, timeout=60)
    log = await poll(
        lambda: worker.tail(1_000_000),
        until=lambda text: text.count("delivery attempt failed") >= webhooks,
        timeout=30,
        interval=0.1,
    )
    assert log.count("invalid subscription record skipped") == len(records) - webhooks
    failed = [line for line in log.split("\n") if "delivery attempt failed" in line]
    assert len(failed) >= webhooks, log[-3000:]
    bad = [(line[:300], unprintable(line)) for line in log.split("\n") if unprintable(line)]
    assert not bad, bad[:3]
    # The webhooks are still named: their ids escaped, not dropped.
    assert any("\\u001b" in line or "\\x1b" in line for line in failed), failed[:3]
