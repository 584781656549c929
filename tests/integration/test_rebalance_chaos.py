"""Nothing lost, nothing stalled across repeated rebalances, with retries and webhook changes.

A seeded schedule (``CHAOS_SEEDS``: comma-separated seeds, one test per seed; ``7`` by default)
of worker joins, graceful stops (SIGTERM, a bounded wait, then SIGKILL) and SIGKILLs runs while
events are published and webhooks renamed and widened. At the end every delivery that had to
happen happened (verified, with its documented id), none went to a URL older than a change made
before its event was published, nothing was dead-lettered, the group committed every partition
of the events topic and of every retry tier to its end, and every surviving worker's table holds
the subscriptions topic's newest records.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.admin.topics import apply_topics
from bridge.api.service import public_view
from bridge.config import Settings
from bridge.contract.events import Event
from bridge.contract.payload import delivery_id
from bridge.subscriptions.store import WebhookStore
from bridge.subscriptions.webhook import Webhook
from bridge.worker.embedded import free_port
from tests.support import chaos
from tests.support.api import LOG_AUTH, write_token_file
from tests.support.processes import WorkerProcess
from tests.support.receivers import Receiver, create_verified
from tests.support.records import commits_behind, read_ends
from tests.support.waiting import eventually, poll
from tests.support.workers import InProcessWorker

pytestmark = pytest.mark.integration

SEEDS = [int(seed) for seed in os.environ.get("CHAOS_SEEDS", "7").split(",")]

#: Webhooks of account u1: id -> (site, or None for the account's every site; event filter).
HOOKS: dict[str, tuple[str | None, tuple[str, ...]]] = {
    "a": ("s1", ("post.created",)),
    "b": ("s2", ("*",)),
    "c": (None, ("*",)),
    "d": ("s1", ("post.created", "post.published")),
    "e": (None, ("post.published",)),
    "f": ("s3", ("*",)),
}
#: Webhooks whose deliveries each fail their first 0-3 requests.
FLAKY = ("c", "d", "e", "f")
#: Endpoints that take a while to answer (deliveries in flight when a worker goes).
SLOW = {"b": 0.1, "d": 0.05}
SITES = ("s1", "s2", "s3", "s4")
TYPES = ("post.created", "post.published")
EVENTS = 300
#: Events published per burst, and the pause between bursts: ~10 s of publishing.
BURST, PAUSE = 10, 0.3
#: Changes of the pool (each a rebalance), and of webhooks, at points of the publishing.
POOL_CHANGES = 6
MAX_CHILDREN = 3


def path(name: str, version: int) -> str:
    return f"/{name}" if version == 0 else f"/{name}-v{version}"


def version_of(received_path: str) -> int:
    _, _, version = received_path.partition("-v")
    return int(version) if version else 0


def wanted(hook: str, filters: tuple[str, ...], event: Event) -> bool:
    site, _ = HOOKS[hook]
    return (site is None or site == event.site_id) and ("*" in filters or event.type in filters)


@dataclass
class Change:
    """A change of a webhook, acknowledged after ``published`` events were written."""

    hook: str
    url_version: int | None = None
    events: tuple[str, ...] | None = None
    published: int = 0


@dataclass
class Run:
    settings: Settings
    receiver: Receiver
    seed: int
    start_child: Callable[[], WorkerProcess]
    events: list[Event] = field(default_factory=list)
    #: (partition, offset) of each written event, in order.
    written: list[tuple[int, int]] = field(default_factory=list)
    children: list[WorkerProcess] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    def rng(self, task: str) -> random.Random:
        """Each task's own draws: the tasks run concurrently, and one shared generator would
        give each the draws of whichever ran first."""
        return random.Random(f"{self.seed}-{task}")

    async def published(self, count: int) -> None:
        await eventually(lambda: len(self.written) >= count, timeout=60, interval=0.02)

    async def publish(self) -> None:
        load = chaos.Load(EVENTS, TYPES, SITES, dict.fromkeys(FLAKY, 3), BURST, PAUSE)
        rng = self.rng("events")
        await chaos.publish(self.settings, self.receiver, load, rng, self.events, self.written)

    async def churn(self, at: list[int]) -> None:
        """At each count of published events, a join, a graceful stop or a SIGKILL: each kind
        at least once, the rest drawn among those the pool allows."""
        rng = self.rng("pool")
        done: set[str] = set()
        for count in at:
            await self.published(count)
            alive = [c for c in self.children if c.process and c.process.poll() is None]
            allowed = (["join"] if len(alive) < MAX_CHILDREN else []) + (
                ["term", "kill"] if alive else []
            )
            kind = rng.choice([k for k in allowed if k not in done] or allowed)
            done.add(kind)
            if kind == "join":
                self.children.append(self.start_child())
            else:
                victim = rng.choice(alive)
                if kind == "kill":
                    victim.kill()
                else:
                    await asyncio.to_thread(victim.stop, 3.0)
            self.log.append(f"{kind}@{count}")

    async def change(self, at: list[int]) -> None:
        versions = dict.fromkeys(HOOKS, 0)
        plan = [Change("c"), Change("a"), Change("e", events=("*",)), Change("c"), Change("b")]
        async with WebhookStore(self.settings) as store:
            for count, change in zip(at, plan, strict=True):
                await self.published(count)
                hook = change.hook
                if change.events is not None:
                    await store.update(hook, events=list(change.events))
                else:
                    versions[hook] += 1
                    change.url_version = versions[hook]
                    new = path(hook, versions[hook])
                    self.receiver.secrets[new] = self.receiver.secrets[path(hook, 0)]
                    if hook in SLOW:
                        self.receiver.delays[new] = SLOW[hook]
                    await store.update(hook, url=self.receiver.url(new))
                # Events written from here on come after the change (the one being written may
                # have been sent before it).
                change.published = len(self.written) + 1
                self.changes.append(change)
                self.log.append(f"change {hook}@{count}")


def expectations(run: Run) -> tuple[set[str], set[str], dict[str, int]]:
    """Delivery ids that must be delivered, ids that may be (an event published while its
    webhook's filter changed), and the lowest URL version each delivery may go to."""
    required: set[str] = set()
    allowed: set[str] = set()
    lowest: dict[str, int] = {}
    for n, event in enumerate(run.events):
        for hook, (_, filters) in HOOKS.items():
            before, after = filters, filters
            version = 0
            for change in run.changes:
                if change.hook != hook:
                    continue
                if n >= change.published:
                    before = after = change.events or after
                    version = change.url_version or version
                elif change.events is not None:
                    after = change.events
            did = delivery_id(event.id, hook)
            if wanted(hook, before, event) and wanted(hook, after, event):
                required.add(did)
            elif wanted(hook, before, event) or wanted(hook, after, event):
                allowed.add(did)
            lowest[did] = version
    return required, allowed, lowest


async def dead_letters(settings: Settings) -> dict[int, int]:
    return await read_ends(settings.kafka_bootstrap_servers, settings.deadletter_topic)


def table_view(webhooks: dict[str, Webhook]) -> dict[str, dict[str, Any]]:
    return {webhook_id: public_view(webhook) for webhook_id, webhook in webhooks.items()}


async def served_view(worker: WorkerProcess) -> dict[str, dict[str, Any]] | None:
    async with httpx.AsyncClient() as client:
        try:
            response = await client.get(
                worker.base_url + "/v1/webhooks?limit=100", headers=LOG_AUTH, timeout=5.0
            )
        except httpx.HTTPError:
            return None
    if response.status_code != 200:
        return None
    return {item["id"]: item for item in response.json()["items"]}


@pytest.mark.parametrize("seed", SEEDS)
async def test_retries_and_changes_across_repeated_rebalances_lose_and_stall_nothing(
    seed: int,
    make_settings: Callable[..., Settings],
    receiver: Receiver,
    workers: Callable[[Settings], WorkerProcess],
    in_process_workers: Callable[[Settings], InProcessWorker],
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    rng = random.Random(seed)  # the points of the schedule; each task draws its own
    settings = make_settings(
        delivery_log=True,
        api_tokens=str(write_token_file(tmp_path / "tokens.json")),
        retry_schedule=(0.2, 0.3, 0.4, 0.5, 0.5),
    )
    await apply_topics(settings)
    async with WebhookStore(settings) as store:
        for hook, (site, filters) in HOOKS.items():
            await create_verified(
                store, receiver, hook, site_id=site, events=filters, path=path(hook, 0)
            )
    for hook, delay in SLOW.items():
        receiver.delays[path(hook, 0)] = delay

    run = Run(settings, receiver, seed, lambda: workers(settings.replace(web_port=free_port())))
    staying = in_process_workers(settings.replace(web_port=free_port()))
    run.children.extend(run.start_child() for _ in range(2))
    await staying.wait_ready()
    for child in run.children:
        await child.wait_ready()

    points = sorted(rng.sample(range(15, EVENTS - 15), POOL_CHANGES + 5))
    pool_at = sorted(rng.sample(points, POOL_CHANGES))
    change_at = sorted(set(points) - set(pool_at))
    await asyncio.gather(run.publish(), run.churn(pool_at), run.change(change_at))
    record_property("schedule", " ".join(run.log))

    required, allowed, lowest = expectations(run)

    def delivered() -> set[str]:
        return {r.delivery_id for r in receiver.received if r.status == 200}

    got = await poll(delivered, until=lambda got: got >= required, timeout=45, interval=0.1)
    missing = required - got
    assert not missing, (
        f"seed {seed} ({' '.join(run.log)}): {len(missing)} of {len(required)} deliveries "
        f"never made, e.g. {sorted(missing)[:5]}"
    )
    unexpected = {r.delivery_id for r in receiver.received} - required - allowed
    assert not unexpected, f"seed {seed}: deliveries nobody subscribed to: {unexpected}"
    unverified = [r.path for r in receiver.received if not receiver.verified(r)]
    assert not unverified, f"seed {seed}: signatures not verified at {unverified[:5]}"
    stale = [
        (r.path, r.delivery_id)
        for r in receiver.received
        if version_of(r.path) < lowest[r.delivery_id]
    ]
    assert not stale, f"seed {seed}: sent to a URL changed before its event: {stale[:5]}"

    # Nothing stalled: every partition of the events topic and of every tier committed to its
    # end (the events' ends known from their writes, the tiers' read).
    event_ends: dict[int, int] = {}
    for partition, offset in run.written:
        event_ends[partition] = max(event_ends.get(partition, 0), offset + 1)
    ends = {settings.events_topic: event_ends}
    for tier in settings.retry_topics:
        ends[tier] = await read_ends(settings.kafka_bootstrap_servers, tier)

    async def behind() -> dict[str, dict[int, tuple[int, int]]]:
        return await commits_behind(settings.kafka_bootstrap_servers, settings.group_id, ends)

    left = await poll(behind, until=lambda left: not left, timeout=20, interval=0.3)
    assert not left, f"seed {seed}: (committed, end) by topic and partition: {left}"
    # No retry record was written after the ends were read.
    for tier in settings.retry_topics:
        assert await read_ends(settings.kafka_bootstrap_servers, tier) == ends[tier], (
            f"seed {seed}: {tier} grew"
        )
    assert not await dead_letters(settings), f"seed {seed}: dead letters written"

    # Every surviving worker's table holds the topic's newest records.
    async with WebhookStore(settings) as store:
        newest = table_view(await store.load())
    held = await poll(
        lambda: table_view({w.id: w for w in staying.bridge.index.all()}),
        until=lambda held: held == newest,
        timeout=5,
        interval=0.05,
    )
    assert held == newest, f"seed {seed}: the in-process worker's table differs"
    for child in run.children:
        if child.process is not None and child.process.poll() is None:
            served = await poll(
                lambda child=child: served_view(child),
                until=lambda served: served == newest,
                timeout=5,
                interval=0.2,
            )
            assert served == newest, f"seed {seed}: a worker's table differs: {served}"
    duplicates = sum(1 for r in receiver.received if r.status == 200) - len(delivered())
    record_property("duplicates", duplicates)
    print(
        f"seed {seed}: {' '.join(run.log)}; {len(required)} deliveries, "
        f"{len(receiver.received)} requests, {duplicates} duplicates"
    )
