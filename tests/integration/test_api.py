"""The API on the real broker: webhook writes land in the compacted subscriptions topic as
WebhookStore writes them (encrypted secrets included), versions catch changes made by others;
with a real worker and receiver, the delivery log, stats, recovery and redelivery routes."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bridge.admin.publish import publish_events, send_test_event
from bridge.admin.topics import apply_topics
from bridge.api.app import create_app
from bridge.api.auth import TokenSet, hash_token
from bridge.api.control import ControlService
from bridge.api.kafka_sources import KafkaActivitySource, KafkaDeadLetters, kafka_recovery_runner
from bridge.api.recoveries import Recoveries
from bridge.api.service import WebhookService
from bridge.api.store_repository import StoreRepository
from bridge.config import Settings
from bridge.contract import jsoncanon
from bridge.contract.events import Event, build_event, format_timestamp, parse_time
from bridge.contract.payload import delivery_id
from bridge.kafka.reading import read_topic
from bridge.subscriptions.secretbox import generate_key
from bridge.subscriptions.store import WebhookStore
from tests.support.receivers import Receiver, subscribe
from tests.support.waiting import poll

pytestmark = pytest.mark.integration

TOKEN = "wbt_integration-0123456789abcdef0123456789abcdef"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
READER = "wbt_integration-reader-0123456789abcdef0123456789"
SITE_2 = "wbt_integration-site2-0123456789abcdef0123456789a"
TOKENS = {
    "tokens": [
        {"name": "it", "sha256": hash_token(TOKEN), "scopes": ["read", "write"]},
        {"name": "reader", "sha256": hash_token(READER), "scopes": ["read"]},
        {"name": "s2", "sha256": hash_token(SITE_2), "scopes": ["read", "write"], "site_id": "s2"},
    ]
}


@asynccontextmanager
async def api_client(settings: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    """The API as ``python -m bridge.api serve`` builds it, over the test's topics."""
    async with WebhookStore(settings) as store:
        repository = StoreRepository(store, cache_seconds=0)
        service = WebhookService(repository, publisher=functools.partial(send_test_event, settings))
        control = ControlService(
            repository,
            KafkaActivitySource(settings),
            Recoveries(kafka_recovery_runner(settings)),
            KafkaDeadLetters(settings),
            redeliver_lookback=settings.delivery_log_max_age,
        )
        tokens = TokenSet.from_mapping(TOKENS)
        client = TestClient(TestServer(create_app(service, control, tokens)))
        await client.start_server()
        try:
            yield client
        finally:
            await client.close()


async def test_webhook_routes_write_the_subscriptions_topic(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(secret_keys=f"k1:{generate_key()}")
    await apply_topics(settings)
    async with api_client(settings) as client, WebhookStore(settings) as cli:
        await _exercise(client, cli, settings)


async def _exercise(client: TestClient[Any, Any], cli: WebhookStore, settings: Settings) -> None:
    body = {
        "id": "wh_api",
        "url": "https://example.com/hook",
        "events": ["post.created"],
        "site_id": "site_1",
        "user_id": "user_1",
        "name": "From the API",
        # Standard Webhooks headers: the one header that carries a rotation's previous secret.
        "standard_webhooks": True,
    }
    response = await client.post("/v1/webhooks", json=body, headers=HEADERS)
    assert response.status == 201, await response.text()
    created = await response.json()

    # What the CLI reads back: the same webhook, its secret encrypted in the topic.
    stored = (await cli.load())["wh_api"]
    assert stored.secret == created["secret"] and stored.name == "From the API"
    raw = [v for k, v in await read_topic(settings, settings.subscriptions_topic) if k == b"wh_api"]
    assert raw and created["secret"].encode() not in raw[-1]
    assert jsoncanon.loads(raw[-1])["secret"] != created["secret"]

    again = await client.post("/v1/webhooks", json=body, headers=HEADERS)
    assert again.status == 200 and (await again.json())["secret"] == created["secret"]

    # A change through the CLI's path makes the API's ETag stale: 412, then the new one works.
    await cli.update("wh_api", name="Renamed by the CLI")
    stale = await client.patch(
        "/v1/webhooks/wh_api",
        json={"events": ["*"]},
        headers={**HEADERS, "If-Match": response.headers["ETag"]},
    )
    assert stale.status == 412, await stale.text()
    fresh = await client.get("/v1/webhooks/wh_api", headers=HEADERS)
    assert (await fresh.json())["name"] == "Renamed by the CLI"
    updated = await client.patch(
        "/v1/webhooks/wh_api",
        json={"events": ["*"]},
        headers={**HEADERS, "If-Match": fresh.headers["ETag"]},
    )
    assert updated.status == 200, await updated.text()
    assert (await cli.load())["wh_api"].events == frozenset({"*"})

    rotated = await (
        await client.post(
            "/v1/webhooks/wh_api/rotate-secret", json={"overlap_seconds": 60}, headers=HEADERS
        )
    ).json()
    after = (await cli.load())["wh_api"]
    assert after.secret == rotated["secret"] and after.previous_secret == created["secret"]

    test = await client.post("/v1/webhooks/wh_api/test", json={"message": "hi"}, headers=HEADERS)
    assert test.status == 202
    accepted = await test.json()
    event_id = accepted["event_id"]
    assert accepted["delivery_id"] == delivery_id(event_id, "wh_api")
    events = [jsoncanon.loads(v) for _, v in await read_topic(settings, settings.events_topic)]
    assert [(e["id"], e["type"], e["data"]) for e in events if isinstance(e, dict)] == [
        (event_id, "test.event", {"webhook_id": "wh_api", "message": "hi"})
    ]

    listing = await (await client.get("/v1/webhooks?site_id=site_1", headers=HEADERS)).json()
    assert [w["id"] for w in listing["items"]] == ["wh_api"]
    assert created["secret"] not in str(listing) and rotated["secret"] not in str(listing)

    deleted = await client.delete("/v1/webhooks/wh_api", headers=HEADERS)
    assert deleted.status == 204
    assert "wh_api" not in await cli.load()
    gone = await client.get("/v1/webhooks/wh_api", headers=HEADERS)
    assert gone.status == 404


def post(n: int, site: str) -> Event:
    return build_event(
        "post.created", {"id": f"p{n}", "title": f"post {n}"}, site_id=site, user_id="u1"
    )


async def get(client: TestClient[Any, Any], path: str, token: str = TOKEN) -> Any:
    response = await client.get(path, headers={"Authorization": f"Bearer {token}"})
    assert response.status == 200, await response.text()
    return await response.json()


async def finished(client: TestClient[Any, Any], location: str) -> dict[str, Any]:
    shown: dict[str, Any] = await poll(
        lambda: get(client, location),
        until=lambda op: op["state"] != "running",
        timeout=60,
        interval=0.2,
    )
    return shown


async def test_the_log_stats_recovery_and_redelivery_of_a_real_worker(
    settings: Settings, receiver: Receiver, workers
) -> None:
    receiver.scripts["/wh"] = [500, 503]
    await subscribe(settings, receiver, {"wh": "s1", "other": "s2"}, ("post.created",))
    worker = workers(settings)
    await worker.wait_ready()
    first = post(1, "s1")
    await publish_events(settings, [first])
    target = delivery_id(first.id, "wh")
    await receiver.wait_for(lambda got: [r.status for r in got] == [500, 503, 200])

    async with api_client(settings) as client:
        # The delivery, its attempts in order; the log, newest first; the stats.
        delivery = await poll(
            lambda: client.get(f"/v1/deliveries/{target}", headers=HEADERS),
            until=lambda response: response.status == 200,
            timeout=30,
            interval=0.5,
        )
        shown = await poll(
            lambda: get(client, f"/v1/deliveries/{target}"),
            until=lambda d: len(d["attempts"]) == 3,
            timeout=30,
            interval=0.5,
        )
        assert delivery.status == 200 and shown["state"] == "delivered"
        assert [(a["attempt"], a["status"], a["next"]) for a in shown["attempts"]] == [
            (1, 500, "retry"),
            (2, 503, "retry"),
            (3, 200, None),
        ]
        log = await get(client, "/v1/webhooks/wh/attempts")
        assert [a["attempt"] for a in log["items"]] == [3, 2, 1]
        assert log["items"] == shown["attempts"][::-1]
        stats = await get(client, "/v1/webhooks/wh/stats")
        for window in ("1h", "24h", "7d"):
            counted = stats["windows"][window]
            assert (counted["attempts"], counted["successes"], counted["failures"]) == (3, 1, 2)
        assert stats["last_success_at"] == log["items"][0]["at"]
        assert stats["last_failure_at"] == log["items"][1]["at"]
        assert stats["state"]["active"] is True and stats["state"]["health"] == "healthy"

        # Auth: no token, a read-only token writing, another site's token.
        assert (await client.get("/v1/webhooks/wh/attempts")).status == 401
        reader = {"Authorization": f"Bearer {READER}"}
        assert (
            await client.post(f"/v1/deliveries/{target}/redeliver", headers=reader)
        ).status == 403
        site_2 = {"Authorization": f"Bearer {SITE_2}"}
        assert (await client.get("/v1/webhooks/wh/stats", headers=site_2)).status == 404
        assert (await client.get(f"/v1/deliveries/{target}", headers=site_2)).status == 404
        assert (await get(client, "/v1/webhooks/other/stats", SITE_2))["webhook_id"] == "other"

        # Recover since a time: exactly that webhook's events from then, with their ids.
        # The last attempt started after the first event was published, and before these.
        since = parse_time(log["items"][0]["at"])
        after = [post(2, "s1"), post(3, "s1"), post(4, "s2")]
        await publish_events(settings, after)
        await receiver.wait_for(
            lambda _: len(receiver.at("/wh")) == 5 and len(receiver.at("/other")) == 1
        )
        response = await client.post(
            "/v1/webhooks/wh/recoveries",
            json={"since": format_timestamp(since), "rate": 50},
            headers=HEADERS,
        )
        assert response.status == 202, await response.text()
        assert response.headers["Location"] == f"/v1/recoveries/{(await response.json())['id']}"
        recovered = await finished(client, response.headers["Location"])
        assert recovered["state"] == "done" and recovered["enqueued"] == 2
        await receiver.wait_for(lambda _: len(receiver.at("/wh")) == 7)
        again = sorted(r.delivery_id for r in receiver.at("/wh")[5:])
        assert again == sorted(delivery_id(e.id, "wh") for e in after[:2])
        assert all(receiver.verified(r) for r in receiver.at("/wh"))

        # Redeliver the first delivery: the same id again.
        response = await client.post(f"/v1/deliveries/{target}/redeliver", headers=HEADERS)
        assert response.status == 202, await response.text()
        redelivered = await finished(client, response.headers["Location"])
        assert redelivered["state"] == "done" and redelivered["enqueued"] == 1
        await receiver.wait_for(lambda _: len(receiver.at("/wh")) == 8)
        assert receiver.at("/wh")[-1].delivery_id == target
        assert len(receiver.at("/other")) == 1
        # Its attempt is told from the event's own: manual, counted from 1 again.
        again = await poll(
            lambda: get(client, f"/v1/deliveries/{target}"),
            until=lambda d: len(d["attempts"]) == 4,
            timeout=30,
            interval=0.5,
        )
        assert [(a["attempt"], a["status"], a["trigger"]) for a in again["attempts"]] == [
            (1, 500, "scheduled"),
            (2, 503, "scheduled"),
            (3, 200, "scheduled"),
            (1, 200, "manual"),
        ]
        # ... and names the redelivery that sent it.
        assert [a["recovery_id"] for a in again["attempts"]] == [
            None,
            None,
            None,
            redelivered["id"],
        ]
        recovered_ids = {delivery_id(e.id, "wh") for e in after[:2]}
        log = await get(client, "/v1/webhooks/wh/attempts")
        assert {a["delivery_id"] for a in log["items"] if a["trigger"] == "manual"} == {
            target,
            *recovered_ids,
        }


async def test_python_m_bridge_api_serve_answers_and_counts_its_requests(
    settings: Settings, tmp_path: Any
) -> None:
    """The API as its own process: a token file, /v1 behind it, /metrics by route template,
    each token within its rate (``api_rate_limit``, here 1 a second: a burst of 2)."""
    import json
    import sys

    import httpx

    from bridge.worker.embedded import free_port
    from tests.support.processes import ChildProcess, settings_env

    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps(TOKENS))
    port = free_port()
    child = ChildProcess(tmp_path / "api.log")
    argv = [sys.executable, "-m", "bridge.api", "serve", "--tokens", str(tokens)]
    child.spawn(
        [*argv, "--port", str(port)], env=settings_env(settings.replace(api_rate_limit=1.0))
    )
    base = f"http://127.0.0.1:{port}"
    try:
        await child.wait_http(f"{base}/v1/openapi.json", timeout=30, what="the API")
        async with httpx.AsyncClient(base_url=base) as client:
            assert (await client.get("/v1/webhooks")).status_code == 401
            listed = await client.get("/v1/webhooks", headers=HEADERS)
            assert listed.status_code == 200, listed.text
            assert (await client.get("/v1/webhooks/nope", headers=HEADERS)).status_code == 404
            # A burst of 2 (those two); more a second than 1 then: 429 (a slow machine's
            # second may let one more through).
            over = await client.get("/v1/webhooks", headers=HEADERS)
            for _ in range(5):
                if over.status_code == 429:
                    break
                over = await client.get("/v1/webhooks", headers=HEADERS)
            assert over.status_code == 429 and over.headers["Retry-After"] == "1", over.text
            reader = {"Authorization": f"Bearer {READER}"}
            assert (await client.get("/v1/webhooks", headers=reader)).status_code == 200
            text = (await client.get("/metrics")).text
            # Liveness without a token, as a worker's, and not counted as an API request.
            alive = await client.get("/healthz")
            assert (alive.status_code, alive.json()) == (200, {"status": "ok"})
        assert "/healthz" not in text
        assert (
            'webhook_bridge_api_requests_total{hop="client",method="GET",route="/v1/webhooks",'
            'status_class="4xx"} 2.0' in text  # the 401 and the 429
        )
        assert 'route="/v1/webhooks/{webhook_id}"' in text and "nope" not in text
        assert TOKEN not in child.tail(1000)
    finally:
        child.stop(grace=5)
