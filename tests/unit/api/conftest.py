"""Fixtures of the API tests: tokens, in-memory services and sources, a client of the app."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bridge.admin.dead_letters import DeadLetterFilter, ReplayReport
from bridge.admin.recovery import Operation
from bridge.api.activity import EndpointStatus
from bridge.api.app import ApiConfig, create_app
from bridge.api.auth import TokenSet, hash_token
from bridge.api.control import ControlService, DeadLetterSource
from bridge.api.recoveries import Recoveries
from bridge.api.repository import MemoryRepository
from bridge.api.service import WebhookService
from bridge.attempts.book import Activity, ActivityBook
from bridge.attempts.record import Attempt
from bridge.contract.events import Event, build_event
from bridge.errors import InvalidSubscription
from bridge.subscriptions.webhook import Webhook
from bridge.worker.web import RUNNER_OPTIONS

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
    """A settable clock (aware datetimes); each call moves it a millisecond on. It starts an
    hour before :data:`NOW`, the activity fakes' time: webhooks are made before their log."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 15, 9, 30, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


@dataclass
class Published:
    """A test-event publisher that builds the event as send_test_event does, and keeps it."""

    events: list[Event] = field(default_factory=list)

    async def __call__(
        self,
        webhook: Webhook,
        message: str,
        *,
        site_id: str | None,
        user_id: str | None,
        event_id: str | None = None,
    ) -> Event:
        if not webhook.active:
            raise InvalidSubscription("webhook_inactive", "inactive")
        site, user = site_id or webhook.site_id, user_id or webhook.user_id
        if site is None or user is None:
            raise InvalidSubscription("test_event_scope", "give the site id or the user id")
        data: dict[str, Any] = {"webhook_id": webhook.id}
        if message:
            data["message"] = message
        event = build_event("test.event", data, site_id=site, user_id=user, event_id=event_id)
        self.events.append(event)
        return event


#: The wall time of the activity fakes: 2026-01-15T10:30:00Z.
NOW = 1768473000.0


def attempt(
    delivery_id: str,
    number: int,
    *,
    webhook_id: str = "wh_1",
    at: float = NOW - 60,
    outcome: str = "failure",
    status: int | None = 500,
    next: str | None = "retry",
    event_type: str = "post.created",
    event_at: str | None = None,
    recovery_id: str | None = None,
    manual: bool = False,
) -> Attempt:
    """An attempt record as the deliverer writes it, read back (``event_at``: the event's
    time, which records written before it was recorded lack)."""
    stamp = datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")
    return Attempt.of(
        {
            "delivery_id": delivery_id,
            "webhook_id": webhook_id,
            "event_id": f"evt_{delivery_id}",
            "event_type": event_type,
            "attempt": number,
            "outcome": outcome,
            "status": status,
            "error": None if outcome == "success" else "http_status",
            "duration_seconds": 0.02,
            "at": stamp.replace("+00:00", "Z"),
            "next": next,
            **({"event_at": event_at} if event_at is not None else {}),
            **({"trigger": "manual"} if manual or recovery_id is not None else {}),
            **({"recovery_id": recovery_id} if recovery_id is not None else {}),
        }
    )


class MemoryActivity:
    """An ActivitySource over an ActivityBook (what the worker's tables will hold); each
    delivery asked for is recorded."""

    indexes_deliveries = True

    def __init__(self) -> None:
        self.book = ActivityBook()
        self.attempts: list[Attempt] = []
        self.deliveries_asked: list[str] = []
        self.statuses: dict[str, EndpointStatus] = {}

    def add(self, *attempts: Attempt) -> None:
        for one in attempts:
            self.attempts.append(one)
            self.book.add(one, NOW)

    async def activity(self, webhook_id: str) -> Activity:
        return self.book.get(webhook_id) or self.book.empty()

    async def delivery(self, delivery_id: str) -> list[Attempt]:
        self.deliveries_asked.append(delivery_id)
        found = [a for a in self.attempts if a.delivery_id == delivery_id]
        return sorted(found, key=lambda a: (a.at_seconds, a.attempt))

    async def status(self, webhook_id: str) -> EndpointStatus | None:
        return self.statuses.get(webhook_id)


@dataclass
class MemoryDeadLetters:
    """Dead-letter records in a list; replays are recorded, with the lookup of the current
    webhooks each was given."""

    records: list[dict[str, Any]] = field(default_factory=list)
    replays: list[DeadLetterFilter] = field(default_factory=list)
    lookups: list[Callable[[str], Awaitable[Webhook | None]]] = field(default_factory=list)

    async def read(
        self, where: DeadLetterFilter, *, needed_until: Any = None
    ) -> AsyncGenerator[dict[str, Any], None]:
        for record in self.records:
            if where.matches(record):
                yield record

    async def replay(
        self,
        where: DeadLetterFilter,
        *,
        webhooks: Callable[[str], Awaitable[Webhook | None]],
        resume: Mapping[int, int] | None = None,
        deadline: float | None = None,
    ) -> ReplayReport:
        self.replays.append(where)
        self.lookups.append(webhooks)
        chosen = [r for r in self.records if where.matches(r)]
        return ReplayReport([str(r["delivery_id"]) for r in chosen if r.get("delivery_id")], 0)


def dead_letter(
    n: int, webhook_id: str | None = "wh_1", at: str = "2026-01-15T10:00:00.000Z"
) -> dict[str, Any]:
    """A dead-letter record of topics/schemas/deadletter.json."""
    return {
        "reason": "attempts_exhausted",
        "detail": "8 attempts",
        "source": {"topic": "events", "partition": 0, "offset": n, "key": None},
        "webhook_id": webhook_id,
        "delivery_id": f"dl_{n}" if webhook_id else None,
        "attempts": [],
        "dead_lettered_at": at,
    }


@dataclass
class Runner:
    """A recovery runner: enqueues ``enqueued`` deliveries, or with ``hold`` waits until
    cancelled; every operation it ran is kept."""

    enqueued: int = 2
    hold: bool = False
    ran: list[Operation] = field(default_factory=list)

    async def __call__(self, operation: Operation) -> Operation:
        self.ran.append(operation)
        if self.hold:
            await asyncio.Event().wait()
        operation.scanned = 5
        operation.enqueued = self.enqueued
        operation.total = operation.done = 5
        operation.finish()  # as recover() ends it
        return operation


def control_service(
    repository: MemoryRepository,
    activity: MemoryActivity | None = None,
    runner: Runner | None = None,
    dead_letters: DeadLetterSource | None = None,
) -> ControlService:
    return ControlService(
        repository,
        activity or MemoryActivity(),
        Recoveries(runner or Runner(), clock=lambda: NOW),
        dead_letters or MemoryDeadLetters(),
        clock=lambda: NOW,
    )


@dataclass
class Api:
    client: TestClient[Any, Any]
    repository: MemoryRepository
    published: Published
    clock: Clock
    activity: MemoryActivity
    runner: Runner
    dead_letters: MemoryDeadLetters

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
    activity, runner, dead_letters = MemoryActivity(), Runner(), MemoryDeadLetters()
    control = control_service(repository, activity, runner, dead_letters)
    app = create_app(service, control, tokens, config=ApiConfig(max_body_bytes=64 * 1024))
    # Served as the workers serve it (TestServer takes a runner's options at its start).
    server = TestServer(app)
    await server.start_server(**RUNNER_OPTIONS)
    client = TestClient(server)
    await client.start_server()
    try:
        yield Api(client, repository, published, clock, activity, runner, dead_letters)
    finally:
        await client.close()
