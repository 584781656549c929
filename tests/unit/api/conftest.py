"""Fixtures of the API tests: tokens, an in-memory service and a client of its application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bridge.api.app import ApiConfig, create_app
from bridge.api.auth import TokenSet, hash_token
from bridge.api.repository import MemoryRepository
from bridge.api.service import WebhookService
from bridge.contract.events import Event, build_event
from bridge.errors import InvalidSubscription
from bridge.subscriptions.webhook import Webhook

ADMIN = "wbt_admin-token-0123456789abcdef0123456789abcdef"
READER = "wbt_reader-token-0123456789abcdef0123456789abcdef"
WRITER = "wbt_writer-token-0123456789abcdef0123456789abcdef"
SITE_1 = "wbt_site1-token-0123456789abcdef0123456789abcdef"
USER_1 = "wbt_user1-token-0123456789abcdef0123456789abcdef"

TOKENS = {
    "tokens": [
        {"name": "admin", "sha256": hash_token(ADMIN), "scopes": ["read", "write"]},
        {"name": "reader", "sha256": hash_token(READER), "scopes": ["read"]},
        {"name": "writer", "sha256": hash_token(WRITER), "scopes": ["write"]},
        {
            "name": "site-1",
            "sha256": hash_token(SITE_1),
            "scopes": ["read", "write"],
            "site_id": "site_1",
        },
        {
            "name": "user-1",
            "sha256": hash_token(USER_1),
            "scopes": ["read", "write"],
            "user_id": "user_1",
        },
    ]
}


def auth(token: str = ADMIN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Clock:
    """A settable clock (aware datetimes); each call moves it a millisecond on."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 15, 10, 30, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


@dataclass
class Published:
    """A test-event publisher that builds the event as send_test_event does, and keeps it."""

    events: list[Event] = field(default_factory=list)

    async def __call__(
        self, webhook: Webhook, message: str, *, site_id: str | None, user_id: str | None
    ) -> Event:
        if not webhook.active:
            raise InvalidSubscription("webhook_inactive", "inactive")
        site, user = site_id or webhook.site_id, user_id or webhook.user_id
        if site is None or user is None:
            raise InvalidSubscription("test_event_scope", "give the site id or the user id")
        data: dict[str, Any] = {"webhook_id": webhook.id}
        if message:
            data["message"] = message
        event = build_event("test.event", data, site_id=site, user_id=user)
        self.events.append(event)
        return event


@dataclass
class Api:
    client: TestClient[Any, Any]
    repository: MemoryRepository
    published: Published
    clock: Clock

    async def create(self, token: str = ADMIN, **body: Any) -> dict[str, Any]:
        body = {"url": "https://example.com/hook", "events": ["post.created"], **body}
        if "site_id" not in body and "user_id" not in body:
            body["site_id"] = "site_1"
            body["user_id"] = "user_1"
        response = await self.client.post("/v1/webhooks", json=body, headers=auth(token))
        assert response.status == 201, await response.text()
        result: dict[str, Any] = await response.json()
        return result


@pytest.fixture
def tokens() -> TokenSet:
    return TokenSet.from_mapping(TOKENS)


@pytest.fixture
async def api(tokens: TokenSet) -> AsyncIterator[Api]:
    repository = MemoryRepository()
    published = Published()
    clock = Clock()
    service = WebhookService(repository, publisher=published, clock=clock)
    app = create_app(service, tokens, config=ApiConfig(max_body_bytes=64 * 1024))
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield Api(client, repository, published, clock)
    finally:
        await client.close()
