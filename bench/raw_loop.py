"""The latency ceiling: the shortest loop from the events topic to the receiver.

A raw aiokafka consumer (no group, no commits, no subscription table, no freshness check, no
retries, no attempt log, no Faust) reads every partition of the events topic with the worker's
fetch wait, and POSTs each event to its site's webhooks with aiohttp, up to 32 requests in
flight, signed and identified as the bridge signs and identifies them. It is the shortest loop
one would write with these libraries, doing none of what makes a bridge reliable: the ceiling
the worker's latency is quoted against, as the raw aiohttp loop is the ceiling for its
throughput (and, like that one, not a bound a worker with a faster HTTP path cannot pass).

Run as its own process, as the worker is, so that it shares the machine the same way::

    RAW_BROKER=127.0.0.1:9092 RAW_TOPIC=events RAW_WEBHOOKS=hooks.json \
    RAW_FETCH_WAIT_MS=50 RAW_READY=/tmp/ready python -m bench.raw_loop

``hooks.json`` is ``{"site id": [{"id", "url", "secret", ...}, ...]}``. The file named by
``RAW_READY`` is written once the consumer is assigned every partition and positioned at its
start; the loop then runs until it is signalled.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, TopicPartition

from bridge.contract.payload import delivery_id

IN_FLIGHT = 32


async def main() -> None:
    topic = os.environ["RAW_TOPIC"]
    webhooks: dict[str, list[dict[str, str]]] = json.loads(
        Path(os.environ["RAW_WEBHOOKS"]).read_text()
    )
    consumer = AIOKafkaConsumer(
        bootstrap_servers=os.environ["RAW_BROKER"],
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=int(os.environ.get("RAW_FETCH_WAIT_MS", "50")),
    )
    await consumer.start()
    slots = asyncio.Semaphore(IN_FLIGHT)
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=IN_FLIGHT),
        timeout=aiohttp.ClientTimeout(total=30),
    )
    tasks: set[asyncio.Task[None]] = set()

    async def post(url: str, body: bytes, headers: dict[str, str]) -> None:
        try:
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
        except (aiohttp.ClientError, TimeoutError):
            pass  # a ceiling, not a bridge: a lost delivery shows as a missing arrival
        finally:
            slots.release()

    try:
        await consumer.topics()  # metadata, so that the topic's partitions are known
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        Path(os.environ["RAW_READY"]).write_text("ready\n")
        while True:
            batch = await consumer.getmany(timeout_ms=1000)
            for messages in batch.values():
                for message in messages:
                    event: dict[str, Any] = json.loads(message.value or b"{}")
                    for hook in webhooks.get(event.get("site_id", ""), ()):
                        delivery = delivery_id(event["id"], hook["id"])
                        body = json.dumps(
                            {"id": delivery, "event": event, "webhook": {"id": hook["id"]}},
                            separators=(",", ":"),
                        ).encode()
                        signature = hmac.new(
                            hook["secret"].encode(), body, hashlib.sha256
                        ).hexdigest()
                        headers = {
                            "Content-Type": "application/json",
                            "X-Webhook-Signature": signature,
                            "X-Webhook-Event": str(event.get("type", "")),
                            "X-Webhook-Delivery": delivery,
                            "User-Agent": "Position-Webhooks/1.0",
                        }
                        await slots.acquire()
                        task = asyncio.create_task(post(hook["url"], body, headers))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
    finally:
        await consumer.stop()
        await session.close()


if __name__ == "__main__":
    try:
        import uvloop  # the worker's loop, when it is installed
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
