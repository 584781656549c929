"""The "what users would write" baseline: a Faust agent that POSTs each event with httpx.

One request per matching webhook, awaited inside the agent before the next event: no concurrency,
no retries, no subscription table (webhooks come from a JSON file read at start), no attempt log.
Run as its own process::

    NAIVE_BROKER=kafka://127.0.0.1:9092 NAIVE_TOPIC=events NAIVE_GROUP=g \
    NAIVE_WEBHOOKS=hooks.json NAIVE_DATADIR=/tmp/naive python -m bench.naive_app

``hooks.json`` is ``{"site id": [{"id", "name", "url", "secret"}, ...]}``. It uses the same
broker timeouts as the bridge (so that joining the group takes as long), nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import uuid

import faust
import httpx

BROKER = os.environ["NAIVE_BROKER"]
TOPIC = os.environ["NAIVE_TOPIC"]
GROUP = os.environ["NAIVE_GROUP"]
with open(os.environ["NAIVE_WEBHOOKS"]) as fh:
    WEBHOOKS: dict[str, list[dict[str, str]]] = json.load(fh)
NAMESPACE = uuid.UUID("6f1c1f4e-2b7a-5d0e-9c51-7e0b1e8f3a42")

app = faust.App(
    GROUP,
    broker=BROKER,
    store="memory://",
    datadir=os.environ.get("NAIVE_DATADIR", "/tmp/naive-faust"),
    web_enabled=False,
    topic_disable_leader=True,
    consumer_auto_offset_reset="earliest",
    broker_rebalance_timeout=4.0,
    broker_session_timeout=6.0,
    broker_heartbeat_interval=1.0,
)
events = app.topic(TOPIC, key_type=bytes, value_type=bytes, value_serializer="raw")
client: httpx.AsyncClient | None = None


@app.agent(events)
async def deliver(stream: faust.StreamT[bytes]) -> None:
    global client
    if client is None:
        client = httpx.AsyncClient(timeout=30.0)
    async for raw in stream:
        event = json.loads(raw)
        for hook in WEBHOOKS.get(event["site_id"], ()):
            delivery = str(uuid.uuid5(NAMESPACE, f"{event['id']}\x00{hook['id']}"))
            body = json.dumps(
                {
                    "id": delivery,
                    "event": {
                        k: event[k] for k in ("type", "data", "timestamp", "site_id", "user_id")
                    },
                    "webhook": {"id": hook["id"], "name": hook["name"]},
                },
                separators=(",", ":"),
            ).encode()
            signature = hmac.new(hook["secret"].encode(), body, hashlib.sha256).hexdigest()
            try:
                await client.post(
                    hook["url"],
                    content=body,
                    headers={
                        "Content-Type": "application/json",
                        "X-Webhook-Signature": signature,
                        "X-Webhook-Event": event["type"],
                        "X-Webhook-Delivery": delivery,
                        "User-Agent": "Position-Webhooks/1.0",
                    },
                )
            except httpx.HTTPError:
                pass  # what a naive loop does: the event is lost


if __name__ == "__main__":
    faust.Worker(app, loglevel="warning").execute_from_commandline()
