"""The API's webhook routes on the real broker: writes land in the compacted subscriptions topic
as WebhookStore writes them (encrypted secrets included), versions catch changes made by others."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bridge.admin.publish import send_test_event
from bridge.admin.topics import apply_topics
from bridge.api.app import create_app
from bridge.api.auth import TokenSet, hash_token
from bridge.api.service import WebhookService
from bridge.api.store_repository import StoreRepository
from bridge.config import Settings
from bridge.contract import jsoncanon
from bridge.kafka.reading import read_topic
from bridge.subscriptions.secretbox import generate_key
from bridge.subscriptions.store import WebhookStore

pytestmark = pytest.mark.integration

TOKEN = "wbt_integration-0123456789abcdef0123456789abcdef"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


async def test_webhook_routes_write_the_subscriptions_topic(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(secret_keys=f"k1:{generate_key()}")
    await apply_topics(settings)
    tokens = TokenSet.from_mapping(
        {"tokens": [{"name": "it", "sha256": hash_token(TOKEN), "scopes": ["read", "write"]}]}
    )
    async with WebhookStore(settings) as store, WebhookStore(settings) as cli:
        service = WebhookService(
            StoreRepository(store, cache_seconds=0),
            publisher=functools.partial(send_test_event, settings),
        )
        client = TestClient(TestServer(create_app(service, tokens)))
        await client.start_server()
        try:
            await _exercise(client, cli, settings)
        finally:
            await client.close()


async def _exercise(client: TestClient[Any, Any], cli: WebhookStore, settings: Settings) -> None:
    body = {
        "id": "wh_api",
        "url": "https://example.com/hook",
        "events": ["post.created"],
        "site_id": "site_1",
        "user_id": "user_1",
        "name": "From the API",
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
    event_id = (await test.json())["event_id"]
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
