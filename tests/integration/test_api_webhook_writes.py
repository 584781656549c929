"""What a webhook's writes keep, through a real worker's ``/v1`` on the real broker, its
deliveries received and their signatures verified: no ``rate_limit`` below 0.01 is written,
and a record with one (an older writer's, another producer's) is delivered at 0.01, counted
once; a rotation overlap is taken only where a header carries the previous secret (Standard
Webhooks), and turning those headers on drops a previous secret that is not ``whsec_``; a
previous secret whose overlap has ended is not shown, and the next write (a change, the
bridge's disable) drops it from the compacted topic."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from standardwebhooks import Webhook as StandardWebhook

from bridge.admin.topics import apply_topics
from bridge.config import Settings
from bridge.contract import standard_webhooks
from bridge.contract.events import format_timestamp, parse_time
from bridge.contract.signing import verify
from bridge.kafka.clients import client_kwargs
from bridge.kafka.reading import read_topic
from tests.support.api import LOG_AUTH, write_token_file
from tests.support.receivers import Received, Receiver
from tests.support.waiting import poll
from tests.support.workers import InProcessWorker

pytestmark = pytest.mark.integration

AUTH = LOG_AUTH
WHSEC = "whsec_" + base64.b64encode(b"current-secret-of-32-bytes-here!").decode()
HEX_PREVIOUS = "a1" * 32  # a generated secret of a webhook without Standard Webhooks headers
RAISED = "webhook_bridge_subscription_rate_limits_raised_total"


async def write_records(settings: Settings, *records: dict[str, Any]) -> None:
    """Write subscription records as another producer (or an older version) would."""
    producer = AIOKafkaProducer(**client_kwargs(settings))
    await producer.start()
    try:
        for record in records:
            value = json.dumps(record).encode()
            await producer.send_and_wait(
                settings.subscriptions_topic, value, key=record["id"].encode()
            )
    finally:
        await producer.stop()


async def newest_record(settings: Settings, webhook_id: str) -> dict[str, Any]:
    records = await read_topic(settings, settings.subscriptions_topic)
    values = [v for k, v in records if k == webhook_id.encode() and v is not None]
    newest: dict[str, Any] = json.loads(values[-1])
    return newest


def record(webhook_id: str, url: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": webhook_id,
        "name": webhook_id,
        "url": url,
        "secret": WHSEC,
        "events": ["post.created"],
        "site_id": "s1",
        "user_id": "u1",
        "active": True,
        "created_at": "2026-12-01T00:00:00.000Z",
        "updated_at": "2026-12-01T00:00:00.000Z",
        **fields,
    }


def standard_signatures(received: Received) -> list[str]:
    return received.headers.get("webhook-signature", "").split()


def signed_by(received: Received, secret: str) -> bool:
    """Whether ``webhook-signature`` holds a signature with ``secret`` (its UTF-8 bytes
    unless ``whsec_``, as the bridge signs a secret without the prefix)."""
    key = standard_webhooks.secret_key(secret)
    stamp = int(received.headers["webhook-timestamp"])
    signature = standard_webhooks.sign(key, received.headers["webhook-id"], stamp, received.body)
    return signature in standard_signatures(received)


class Api:
    def __init__(self, client: httpx.AsyncClient, worker: InProcessWorker, receiver: Receiver):
        self.client, self.worker, self.receiver = client, worker, receiver

    async def call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        return await self.client.request(
            method, self.worker.base_url + path, json=body, headers=AUTH
        )

    async def delivered(self, webhook_id: str) -> Received:
        """Send a test event to the webhook; the request its endpoint receives."""
        path = f"/{webhook_id}"
        before = len(self.receiver.at(path))
        sent = await self.call("POST", f"/v1/webhooks/{webhook_id}/test", {"message": "m"})
        assert sent.status_code == 202, sent.text
        await self.receiver.wait_for(lambda _: len(self.receiver.at(path)) > before)
        return self.receiver.at(path)[-1]


@pytest.fixture
async def api(
    make_settings: Callable[..., Settings],
    in_process_workers: Callable[[Settings], InProcessWorker],
    receiver: Receiver,
    tmp_path: Any,
) -> Any:
    """A worker serving ``/v1`` with a delivery log; retries wait up to 300 s, so that a
    delivery deferred for its webhook's rate waits what the rate says (below 300 s)."""
    tokens = write_token_file(tmp_path / "tokens.json")
    settings = make_settings(delivery_log=True, api_tokens=str(tokens), retry_schedule=(0.3, 300.0))
    await apply_topics(settings)
    worker = in_process_workers(settings)
    await worker.wait_ready()
    async with httpx.AsyncClient(timeout=30) as client:
        yield Api(client, worker, receiver)


async def test_no_rate_limit_below_0_01_is_written_and_one_read_is_delivered_at_it(
    api: Api,
) -> None:
    """Until 2026-12-07 any positive rate was taken: 201, then the webhook's first delivery,
    and every later one deferred (rate_limited) until dead-lettered attempts_exhausted; at
    1e-320 its wait was infinite."""
    settings = api.worker.settings
    body = {"url": api.receiver.url("/new"), "events": ["*"], "site_id": "s1", "user_id": "u1"}
    for rate in (1e-6, 1e-320, 0.0099):
        refused = await api.call("POST", "/v1/webhooks", {**body, "id": "new", "rate_limit": rate})
        assert refused.status_code == 400, refused.text
        assert [(e["field"], e["reason"]) for e in refused.json()["errors"]] == [
            ("rate_limit", "minimum")
        ]
    assert (await api.call("GET", "/v1/webhooks/new")).status_code == 404

    # A record below it, as an older version or another producer wrote it.
    await write_records(settings, record("slow", api.receiver.url("/slow"), rate_limit=1e-320))
    await api.worker.wait_metric(RAISED, lambda v: v == 1)
    shown = await poll(
        lambda: api.call("GET", "/v1/webhooks/slow"),
        until=lambda r: r.status_code == 200,
        timeout=10,
        interval=0.1,
    )
    assert shown.json()["rate_limit"] == 0.01
    refused = await api.call("PATCH", "/v1/webhooks/slow", {"rate_limit": 1e-6})
    assert refused.status_code == 400, refused.text

    api.receiver.secrets["/slow"] = WHSEC
    first = await api.delivered("slow")
    assert api.receiver.verified(first)
    # The next delivery is over the rate: deferred for the 100 s a delivery at 0.01 a second
    # waits (infinitely long at 1e-320, cut to the longest retry wait, 300 s).
    second = await api.call("POST", "/v1/webhooks/slow/test", {"message": "again"})
    assert second.status_code == 202

    async def deferred() -> list[dict[str, Any]]:
        found = await api.call("GET", "/v1/webhooks/slow/attempts?outcome=skipped")
        return [a for a in found.json()["items"] if a["error"] == "rate_limited"]

    (skip,) = await poll(deferred, until=bool, timeout=30, interval=0.2)
    wait = (parse_time(skip["next_at"]) - parse_time(skip["at"])).total_seconds()
    assert 80 < wait <= 100.5, skip

    # The next change writes 0.01, and the worker reading that record counts nothing more.
    renamed = await api.call("PATCH", "/v1/webhooks/slow", {"name": "renamed"})
    assert renamed.status_code == 200, renamed.text
    assert (await newest_record(settings, "slow"))["rate_limit"] == 0.01
    read = await api.call("GET", "/v1/webhooks/slow")
    assert read.json()["name"] == "renamed" and read.json()["rate_limit"] == 0.01
    assert (await api.worker.metrics())[RAISED] == 1


async def test_an_overlap_is_taken_only_where_a_header_carries_the_previous_secret(
    api: Api,
) -> None:
    """X-Webhook-Signature carries the current secret alone; only the Standard Webhooks
    header carries a previous one. Until 2026-12-07 an overlap of a webhook without those
    headers was taken (200, its end shown) though no delivery carried it, and turning the
    headers on later signed them with its previous secret, not a whsec_ one."""
    settings = api.worker.settings
    body = {"id": "plain", "url": api.receiver.url("/plain"), "events": ["*"], "site_id": "s1"}
    created = await api.call("POST", "/v1/webhooks", {**body, "user_id": "u1"})
    assert created.status_code == 201, created.text
    first_secret = created.json()["secret"]
    refused = await api.call("POST", "/v1/webhooks/plain/rotate-secret", {"overlap_seconds": 60})
    assert refused.status_code == 409, refused.text
    assert [(e["field"], e["reason"]) for e in refused.json()["errors"]] == [
        ("overlap_seconds", "overlap_needs_standard_webhooks")
    ]
    assert "X-Webhook-Signature holds one signature" in refused.json()["detail"]
    unchanged = (await api.call("GET", "/v1/webhooks/plain")).json()
    assert unchanged["version"] == created.json()["version"]
    assert unchanged["previous_secret_expires_at"] is None
    api.receiver.secrets["/plain"] = first_secret
    assert api.receiver.verified(await api.delivered("plain"))
    # Rotated without an overlap, it signs with the new secret alone.
    rotated = await api.call("POST", "/v1/webhooks/plain/rotate-secret")
    assert rotated.status_code == 200 and rotated.json()["previous_secret_expires_at"] is None
    api.receiver.secrets["/plain"] = rotated.json()["secret"]
    assert api.receiver.verified(await api.delivered("plain"))

    # Records an older version wrote: overlaps of webhooks without the headers, whose previous
    # secrets are a generated hex one and a whsec_ one, both running.
    ends = "2999-01-01T00:00:00.000Z"
    previous_whsec = "whsec_" + base64.b64encode(b"previous-secret-of-32-bytes-too!").decode()
    await write_records(
        settings,
        record("hexprev", api.receiver.url("/hexprev"), previous_secret=HEX_PREVIOUS,
               previous_secret_expires_at=ends),
        record("whprev", api.receiver.url("/whprev"), previous_secret=previous_whsec,
               previous_secret_expires_at=ends),
    )  # fmt: skip
    older = [("hexprev", HEX_PREVIOUS, False), ("whprev", previous_whsec, True)]
    for webhook_id, previous, kept in older:
        shown = await poll(
            lambda webhook_id=webhook_id: api.call("GET", f"/v1/webhooks/{webhook_id}"),
            until=lambda r: r.status_code == 200,
            timeout=10,
            interval=0.1,
        )
        assert shown.json()["previous_secret_expires_at"] is None  # no header carries it
        on = await api.call("PATCH", f"/v1/webhooks/{webhook_id}", {"standard_webhooks": True})
        assert on.status_code == 200, on.text
        assert on.json()["previous_secret_expires_at"] == (ends if kept else None)
        written = await newest_record(settings, webhook_id)
        assert ("previous_secret" in written) == kept
        assert written["standard_webhooks"] is True
        received = await api.delivered(webhook_id)
        headers = {k.lower(): v for k, v in received.headers.items()}
        StandardWebhook(WHSEC).verify(received.body, headers)
        assert verify(WHSEC, received.body, received.headers["X-Webhook-Signature"])
        assert len(standard_signatures(received)) == (2 if kept else 1)
        assert signed_by(received, previous) == kept
        if kept:
            StandardWebhook(previous).verify(received.body, headers)


async def test_an_ended_overlap_is_not_shown_and_the_next_writes_drop_its_secret(
    api: Api,
) -> None:
    """Until 2026-12-07 the retired secret stayed in the record, written again to the
    compacted topic by every later change (the bridge's disable included), and answers showed
    the end of the overlap long past."""
    settings = api.worker.settings
    body = {"id": "std", "url": api.receiver.url("/std"), "events": ["*"], "site_id": "s1",
            "user_id": "u1", "standard_webhooks": True, "secret": WHSEC}  # fmt: skip
    assert (await api.call("POST", "/v1/webhooks", body)).status_code == 201
    rotated = await api.call("POST", "/v1/webhooks/std/rotate-secret", {"overlap_seconds": 1})
    assert rotated.status_code == 200, rotated.text
    new_secret = rotated.json()["secret"]
    ends = rotated.json()["previous_secret_expires_at"]
    assert (await newest_record(settings, "std"))["previous_secret_expires_at"] == ends

    # The overlap ends by itself: not shown once past, in a get and a listing alike.
    ended = await poll(
        lambda: api.call("GET", "/v1/webhooks/std"),
        until=lambda r: r.json()["previous_secret_expires_at"] is None,
        timeout=10,
        interval=0.1,
    )
    assert ended.json()["previous_secret_expires_at"] is None
    listed = (await api.call("GET", "/v1/webhooks?site_id=s1")).json()["items"]
    assert [w["previous_secret_expires_at"] for w in listed if w["id"] == "std"] == [None]
    received = await api.delivered("std")
    assert standard_signatures(received) and not signed_by(received, WHSEC)
    StandardWebhook(new_secret).verify(
        received.body, {k.lower(): v for k, v in received.headers.items()}
    )

    # The record keeps it until a write: a change drops it ...
    assert "previous_secret" in await newest_record(settings, "std")
    renamed = await api.call("PATCH", "/v1/webhooks/std", {"name": "renamed"})
    assert renamed.status_code == 200, renamed.text
    written = await newest_record(settings, "std")
    assert "previous_secret" not in written and "previous_secret_expires_at" not in written

    # ... and so does the bridge's disable, of a record another writer left it in.
    later = format_timestamp(datetime.now(UTC))
    await write_records(
        settings,
        {**written, "previous_secret": WHSEC, "previous_secret_expires_at": ends,
         "updated_at": max(later, written["updated_at"])},
    )  # fmt: skip
    # (read by the worker: shown without the ended overlap, as before)
    await poll(
        lambda: api.call("GET", "/v1/webhooks/std"),
        until=lambda r: r.json()["version"] != renamed.json()["version"],
        timeout=10,
        interval=0.1,
    )
    api.receiver.statuses["/std"] = 410
    sent = await api.call("POST", "/v1/webhooks/std/test", {"message": "gone"})
    assert sent.status_code == 202, sent.text
    disabled = await poll(
        lambda: newest_record(settings, "std"),
        until=lambda r: r.get("disabled_reason") == "gone",
        timeout=30,
        interval=0.2,
    )
    assert disabled["disabled_reason"] == "gone" and disabled["active"] is False
    assert "previous_secret" not in disabled and "previous_secret_expires_at" not in disabled
    # A new overlap may begin: the last one ended (it was refused as running until then).
    again = await api.call("POST", "/v1/webhooks/std/rotate-secret", {"overlap_seconds": 60})
    assert again.status_code == 200, again.text
