"""TableRepository answers from the index only once the table is shown current, else 503; a
listing of one site walks only that site's webhooks."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from bridge.api.auth import Principal
from bridge.api.problems import Problem
from bridge.api.repository import (
    SCAN_YIELD_EVERY,
    MemoryRepository,
    WebhookFilter,
    scan_ordered,
)
from bridge.api.service import WebhookService
from bridge.api.table_repository import TableRepository
from bridge.subscriptions.freshness import Placed, TableFreshness
from bridge.subscriptions.index import SubscriptionIndex
from bridge.subscriptions.serial import KeyedLocks
from bridge.subscriptions.webhook import Webhook, webhook_from_record
from tests.support.builders import webhook_record
from tests.support.turns import turns_during
from tests.support.waiting import PROMPT


def webhook(webhook_id: str) -> Webhook:
    return webhook_from_record(webhook_record(id=webhook_id))


class Store:
    """What the repository writes (the WebhookStore's two write methods), each record placed
    at the next offset of partition 0."""

    def __init__(self) -> None:
        self.written: list[Any] = []
        self._placed: dict[str, Placed] = {}

    async def write(self, value: Webhook) -> Webhook:
        self._place(value.id, value)
        return value

    async def delete(self, webhook_id: str) -> None:
        self._place(webhook_id, webhook_id)

    def _place(self, webhook_id: str, value: Any) -> None:
        self._placed[webhook_id] = Placed(0, len(self.written))
        self.written.append(value)

    def placed(self, webhook_id: str) -> Placed | None:
        return self._placed.get(webhook_id)


def repository(
    index: SubscriptionIndex, ends: Mapping[int, int], timeout: float = 0.2, current: bool = True
) -> Any:
    async def end_offsets() -> Mapping[int, int]:
        return ends

    freshness = TableFreshness(end_offsets, timeout=timeout)
    store = Store()
    return TableRepository(index, freshness, store, current=current), freshness  # type: ignore[arg-type]


async def test_reads_wait_until_the_table_applied_what_the_topic_held() -> None:
    index = SubscriptionIndex([webhook("a"), webhook("b"), webhook("c")])
    repo, freshness = repository(index, {0: 3, 1: 0})
    freshness.applied(0, 2)
    assert (await repo.get("a")).id == "a"
    found = await repo.scan(after="a", limit=1, where=lambda w: True)
    assert [w.id for w in found] == ["b"]


async def test_a_table_behind_its_topic_answers_503_not_an_old_version() -> None:
    index = SubscriptionIndex([webhook("a")])
    repo, freshness = repository(index, {0: 5})
    freshness.applied(0, 3)  # one record not applied
    with pytest.raises(Problem) as refused:
        await repo.get("a")
    assert refused.value.status == 503
    assert refused.value.headers["Retry-After"] == "1"


async def test_writes_go_to_the_store_and_say_where_they_were_placed() -> None:
    repo, _ = repository(SubscriptionIndex(), {})
    assert await repo.put(webhook("a")) == Placed(0, 0)
    assert await repo.delete("a") == Placed(0, 1)
    assert [getattr(w, "id", w) for w in repo._store.written] == ["a", "a"]


async def test_a_change_waits_for_the_table_to_apply_the_last_one_wherever_the_ends_say() -> None:
    """The broker's end offsets trail a write (the embedded broker's, after two producers wrote
    at once), so the table reads as current without it, and it trails longer than the time a
    write was once trusted to be applied within (``seen_within``, 0 here). A rename made then
    would be made over the version before the owner's disable: it waits (``503`` at its
    timeout) until the table applied the disable's record, then is made to the disabled
    webhook."""
    index = SubscriptionIndex([webhook("a")])
    repo, freshness = repository(index, {0: 0})  # ends that trail every write
    locks = KeyedLocks(applied=freshness.has_applied, seen_within=0.0)
    service = WebhookService(repo, locks=locks)
    writer = Principal("writer", frozenset({"read", "write"}))
    await service.update(writer, "a", {"active": False}, if_match=None)
    [disabled] = repo._store.written
    assert not disabled.active and index.get("a").active  # the table has not applied it

    reads = 0
    read = index.get

    def counted(webhook_id: str) -> Webhook | None:
        nonlocal reads
        reads += 1
        return read(webhook_id)

    index.get = counted  # type: ignore[method-assign]
    renaming = asyncio.ensure_future(
        service.update(writer, "a", {"name": "renamed"}, if_match=None)
    )
    while reads < 20 and not renaming.done():
        await asyncio.sleep(0.001)
    assert not renaming.done() and len(repo._store.written) == 1  # waiting, nothing written

    index.put(disabled)
    freshness.applied(0, 0)
    renamed = (await asyncio.wait_for(renaming, PROMPT)).webhook
    assert (renamed.name, renamed.active) == ("renamed", False)


async def test_without_current_reads_answer_from_the_table_as_it_is_once_it_was_current() -> None:
    """A starting worker's table, never current yet, can miss webhooks that exist: such reads
    wait for it too, or answer 503, never 404. Once it was current they answer from the table
    as it is (trailing its topic), without an end-offsets request each."""
    index = SubscriptionIndex([webhook("a")])
    ends = {0: 5}
    repo, freshness = repository(index, ends, current=False)
    freshness.applied(0, 3)  # still reading the topic at the start
    assert not freshness.ever_current
    for webhook_id in ("a", "b"):
        with pytest.raises(Problem) as refused:
            await repo.get(webhook_id)
        assert refused.value.status == 503
    freshness.applied(0, 4)
    assert (await repo.get("a")).id == "a"  # waited for a round: current
    assert freshness.ever_current
    ends[0] = 9  # behind its topic again: answered all the same, without waiting
    assert await repo.get("b") is None


async def test_a_listing_of_one_site_walks_only_that_sites_webhooks() -> None:
    hooks = [
        webhook_from_record(webhook_record(id=f"w{n:03d}", site_id=f"s{n % 3}")) for n in range(60)
    ]
    index = SubscriptionIndex(hooks)
    repo, freshness = repository(index, {0: 0})
    walked: list[str] = []

    def site_1(w: Webhook) -> bool:
        walked.append(w.id)
        return w.site_id == "s1"

    everything = await repo.scan(after="w010", limit=100, where=site_1)
    assert len(walked) == 49  # every webhook after w010
    walked.clear()
    hinted = await repo.scan(
        after="w010", limit=100, where=site_1, within=WebhookFilter(site_id="s1")
    )
    assert hinted == everything == [w for w in hooks if w.site_id == "s1" and w.id > "w010"]
    assert walked == [w.id for w in hinted]  # only site s1's


async def test_the_service_names_the_site_or_user_of_the_filter_or_the_token() -> None:
    seen: list[str | None] = []
    users: list[str | None] = []
    narrowed: list[tuple[str | None, str | None]] = []

    class Recording(MemoryRepository):
        async def scan(self, **kwargs: Any) -> list[Webhook]:
            within = kwargs["within"]
            seen.append(within.site_id)
            users.append(within.user_id)
            narrowed.append((within.state, within.event_type))
            return await super().scan(**kwargs)

    service = WebhookService(Recording())
    anyone = Principal("writer", frozenset({"read", "write"}))
    site_token = Principal("site", frozenset({"read"}), site_id="s2")
    await service.list(anyone, WebhookFilter(), limit=10, cursor=None)
    await service.list(anyone, WebhookFilter(site_id="s1"), limit=10, cursor=None)
    await service.list(site_token, WebhookFilter(), limit=10, cursor=None)
    await service.list(site_token, WebhookFilter(site_id="s2"), limit=10, cursor=None)
    with pytest.raises(Problem):  # another site than the token's: refused before any walk
        await service.list(site_token, WebhookFilter(site_id="s1"), limit=10, cursor=None)
    assert seen == [None, "s1", "s2", "s2"]
    account = Principal("account", frozenset({"read"}), user_id="u7")
    await service.list(account, WebhookFilter(), limit=10, cursor=None)
    await service.list(anyone, WebhookFilter(user_id="u8"), limit=10, cursor=None)
    assert users[-2:] == ["u7", "u8"]
    await service.list(
        site_token, WebhookFilter(state="disabled", event_type="post.created"), limit=1, cursor=None
    )
    assert (seen[-1], narrowed[-1]) == ("s2", ("disabled", "post.created"))


async def test_a_long_scan_lets_other_tasks_run() -> None:
    """A listing whose filter leaves every webhook out walks all of them: other tasks (the
    deliveries of a worker in role ``all``) run between steps of ``SCAN_YIELD_EVERY``, and a
    webhook removed meanwhile is not listed."""
    count = SCAN_YIELD_EVERY * 5
    hooks = [webhook_from_record(webhook_record(id=f"w{n:05d}")) for n in range(count)]
    index = SubscriptionIndex(hooks)

    def removing(turn: int) -> None:
        if turn == 2:
            index.remove(f"w{count - 1:05d}")

    scan = scan_ordered(index.ordered(), after=None, limit=count, where=lambda w: w.id > "w00000")
    found, turns = await turns_during(scan, removing)
    assert turns >= 4
    assert len(found) == count - 2  # not w00000, not the one removed


async def test_current_waits_for_the_table_even_where_reads_do_not() -> None:
    """A dead-letter replay judges its letters by the webhooks as the worker will find them
    when the retries are due: after a change made just before (a webhook turned on, then its
    letters replayed). Until 2026-12-06 it judged them by a table that could trail it."""
    index = SubscriptionIndex([webhook("a")])
    ends = {0: 4}
    repo, freshness = repository(index, ends, current=False)
    freshness.applied(0, 3)
    assert (await repo.get("a")).id == "a"  # current once
    ends[0] = 6  # a change the table has not applied
    assert (await repo.get("a")).id == "a"  # reads answer from the table as it is
    with pytest.raises(Problem) as refused:
        await repo.current()
    assert refused.value.status == 503
    freshness.applied(0, 5)
    lookup = await repo.current()
    assert lookup("a") is index.get("a") and lookup("b") is None
