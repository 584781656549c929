"""bridge.api.store_repository (what ``python -m bridge.api`` serves from): a change is judged
and built from the topic as it is, not from a view of it up to a second old."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bridge.api.app import ApiConfig, create_app
from bridge.api.auth import TokenSet
from bridge.api.repository import MemoryRepository
from bridge.api.service import WebhookService
from bridge.api.store_repository import StoreRepository
from bridge.subscriptions.changes import disabled_record
from bridge.subscriptions.webhook import Webhook, webhook_from_record
from tests.support.builders import webhook_record
from tests.support.waiting import PROMPT, eventually
from tests.unit.api.conftest import Clock, auth, control_service


class TopicStore:
    """WebhookStore's load, write and delete over a dict standing for the subscriptions topic,
    counting the loads."""

    def __init__(self) -> None:
        self.topic: dict[str, Webhook] = {}
        self.loads = 0

    async def load(self) -> dict[str, Webhook]:
        self.loads += 1
        return dict(self.topic)

    async def write(self, webhook: Webhook) -> Webhook:
        self.topic[webhook.id] = webhook
        return webhook

    async def delete(self, webhook_id: str) -> None:
        self.topic.pop(webhook_id, None)


def disable_elsewhere(store: TopicStore, webhook_id: str) -> None:
    """A worker (or the CLI) turns the webhook off, through the topic."""
    current = store.topic[webhook_id]
    store.topic[webhook_id] = webhook_from_record(
        disabled_record(current, "endpoint_gone", datetime.now(UTC))
    )


async def test_a_change_made_elsewhere_a_moment_ago_is_seen_by_the_next_change(
    tokens: TokenSet,
) -> None:
    """Until 2026-12-06 a change was judged against a view up to a second old: an If-Match of
    the version before a disable made elsewhere passed, and a PATCH without one wrote the
    disable away."""
    store = TopicStore()
    repository = StoreRepository(store)  # type: ignore[arg-type]  # as python -m bridge.api
    service = WebhookService(repository, clock=Clock())
    app = create_app(service, control_service(MemoryRepository()), tokens, config=ApiConfig())
    async with TestClient(TestServer(app)) as client:
        body: dict[str, Any] = {"url": "https://example.com/h", "events": ["*"], "site_id": "s"}
        for webhook_id in ("wh_1", "wh_2"):
            created = await client.post(
                "/v1/webhooks", json={"id": webhook_id, **body}, headers=auth()
            )
            assert created.status == 201
        etag = (await client.get("/v1/webhooks/wh_1", headers=auth())).headers["ETag"]
        disable_elsewhere(store, "wh_1")
        stale = await client.patch(
            "/v1/webhooks/wh_1", json={"name": "renamed"}, headers={**auth(), "If-Match": etag}
        )
        assert stale.status == 412
        disable_elsewhere(store, "wh_2")
        patched = await client.patch("/v1/webhooks/wh_2", json={"name": "r"}, headers=auth())
        assert patched.status == 200
        kept = store.topic["wh_2"]
        assert (kept.active, kept.extra.get("disabled_reason"), kept.name) == (
            False,
            "endpoint_gone",
            "r",
        )


async def test_listings_within_the_cache_share_one_load() -> None:
    store = TopicStore()
    repository = StoreRepository(store, cache_seconds=60.0)  # type: ignore[arg-type]
    for _ in range(3):
        await repository.scan(after=None, limit=10, where=lambda webhook: True)
    assert store.loads == 1
    await repository.get("wh_1")
    assert store.loads == 2  # one webhook: always read afresh


async def test_current_is_one_fresh_load_for_many_lookups() -> None:
    """A replay asks for the webhook of each letter: one load of the topic for all of them
    (until 2026-12-06 ``serve`` read the whole topic for each webhook a replay touched)."""
    store = TopicStore()
    store.topic = {f"wh_{n}": webhook_from_record(webhook_record(id=f"wh_{n}")) for n in range(5)}
    repository = StoreRepository(store, cache_seconds=60.0)  # type: ignore[arg-type]
    await repository.scan(after=None, limit=10, where=lambda webhook: True)
    disable_elsewhere(store, "wh_1")  # after the cached view was read
    lookup = await repository.current()
    assert store.loads == 2
    assert [lookup(f"wh_{n}") is not None for n in range(6)] == [True] * 5 + [False]
    assert lookup("wh_1").active is False  # afresh, not the cached view
    assert store.loads == 2


class GatedStore(TopicStore):
    """A TopicStore whose loads take the topic as they begin, then wait for ``gate``."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.cancelled = 0

    async def load(self) -> dict[str, Webhook]:
        self.loads += 1
        taken = dict(self.topic)
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return taken


def webhook(webhook_id: str) -> Webhook:
    return webhook_from_record(webhook_record(id=webhook_id))


async def test_reads_at_once_share_loads_at_most_two() -> None:
    """Until 2026-12-07 each fresh read loaded the topic in turn: 10 reads of one webhook at
    10,000 webhooks took 8 s. Those that arrive while a load runs share the next one."""
    store = GatedStore()
    store.topic = {"wh_1": webhook("wh_1")}
    repository = StoreRepository(store)  # type: ignore[arg-type]
    first = asyncio.ensure_future(repository.get("wh_1"))
    await eventually(lambda: store.loads == 1)
    reads = [asyncio.ensure_future(repository.get("wh_1")) for _ in range(10)]
    reads.append(asyncio.ensure_future(repository.current()))
    await asyncio.sleep(0)
    store.gate.set()
    assert (await first) is not None
    for read in reads[:-1]:
        assert (await read) is not None
    assert (await reads[-1])("wh_1") is not None
    assert store.loads == 2
    together = await asyncio.gather(*(repository.get("wh_1") for _ in range(10)))
    assert all(found is not None for found in together)
    assert store.loads == 4  # one, then one for the other nine


async def test_a_read_never_shares_a_load_begun_before_it() -> None:
    """A read arriving while a load runs gets one begun after it arrived: a write
    acknowledged meanwhile (another process's) is in it."""
    store = GatedStore()
    repository = StoreRepository(store)  # type: ignore[arg-type]
    before = asyncio.ensure_future(repository.get("wh_1"))
    await eventually(lambda: store.loads == 1)
    store.topic["wh_1"] = webhook("wh_1")  # written elsewhere, acknowledged
    after = asyncio.ensure_future(repository.get("wh_1"))
    await asyncio.sleep(0)
    store.gate.set()
    assert await before is None  # its load began before the write
    assert await after is not None
    assert store.loads == 2


async def test_a_read_cancelled_alone_cancels_its_load() -> None:
    """A load no read waits for any more is cancelled, as a read's own load was with it; the
    next read begins another."""
    store = GatedStore()
    repository = StoreRepository(store)  # type: ignore[arg-type]
    read = asyncio.ensure_future(repository.get("wh_1"))
    await eventually(lambda: store.loads == 1)
    read.cancel()
    with pytest.raises(asyncio.CancelledError):
        await read
    await eventually(lambda: store.cancelled == 1)
    store.gate.set()
    store.topic["wh_1"] = webhook("wh_1")
    assert await repository.get("wh_1") is not None
    assert store.loads == 2


async def test_a_write_is_listed_though_a_load_begun_before_it_ends_after() -> None:
    """A load that began before a write through the repository does not become the view
    listings share: the view changed with the write is kept."""
    now = [0.0]
    store = GatedStore()
    store.gate.set()
    repository = StoreRepository(store, cache_seconds=1.0, clock=lambda: now[0])  # type: ignore[arg-type]

    async def listed() -> list[str]:
        found = await repository.scan(after=None, limit=10, where=lambda webhook: True)
        return [webhook.id for webhook in found]

    assert await listed() == []
    now[0] = 5.0  # the view is old: the next listing loads
    store.gate.clear()
    early = asyncio.ensure_future(listed())
    await eventually(lambda: store.loads == 2)
    await asyncio.wait_for(repository.put(webhook("wh_1")), timeout=PROMPT)  # not held by it
    store.gate.set()
    assert await early == []  # it arrived before the write
    assert await listed() == ["wh_1"]
