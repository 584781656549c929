"""Subscription changes take effect for the next event; the table survives worker restarts."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import time
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from bridge.admin.publish import publish_events
from bridge.config import Settings
from bridge.contract.events import build_event
from bridge.kafka.clients import client_kwargs
from bridge.subscriptions.store import WebhookStore
from bridge.worker.app import Bridge, _SubscriptionTable
from bridge.worker.embedded import free_port
from tests.support.processes import settings_env
from tests.support.receivers import Receiver
from tests.support.waiting import eventually, poll

pytestmark = pytest.mark.integration


def post(n: int, site: str = "s1") -> object:
    return build_event(
        "post.created", {"id": f"p{n}", "title": f"post {n}"}, site_id=site, user_id="u1"
    )


async def test_update_deactivate_and_delete_apply_to_the_next_event(
    settings: Settings, receiver: Receiver, in_process_workers
) -> None:
    worker = in_process_workers(settings)
    await worker.wait_ready()
    consumed = 0

    async def publish_right_after_change(n: int) -> None:
        # No wait between the change and the event: the worker must apply the subscription
        # change before matching an event published after it. Waiting for the event to be
        # consumed before the next change keeps later changes from overtaking it.
        nonlocal consumed
        await publish_events(settings, [post(n)])
        consumed += 1
        await worker.wait_metric(
            'webhook_bridge_events_total{event_type="post.created"}', lambda v: v == consumed
        )
        await worker.wait_metric("webhook_bridge_in_flight_requests", lambda v: v == 0)

    async with WebhookStore(settings) as store:
        await store.create(
            url=receiver.url("/a"),
            events=["post.created"],
            site_id="s1",
            user_id="u1",
            secret="secret-one",
            webhook_id="hook",
        )
        await publish_right_after_change(1)
        assert [r.path for r in receiver.received] == ["/a"]

        await store.update("hook", url=receiver.url("/b"), secret="secret-two")
        await publish_right_after_change(2)
        assert [r.path for r in receiver.received] == ["/a", "/b"]
        receiver.secrets["/b"] = "secret-two"
        assert receiver.verified(receiver.received[-1])

        await store.update("hook", events=["post.deleted"])
        await publish_right_after_change(3)
        await store.update("hook", events=["post.created"], active=False)
        await publish_right_after_change(4)
        await store.delete("hook")
        await publish_right_after_change(5)
        assert [r.path for r in receiver.received] == ["/a", "/b"]

        await store.create(
            url=receiver.url("/c"),
            events=["*"],
            site_id="s1",
            user_id="u1",
            secret="secret-three",
            webhook_id="hook2",
        )
        await publish_right_after_change(6)

    assert [r.path for r in receiver.received] == ["/a", "/b", "/c"]
    assert receiver.received[-1].json["event"]["data"]["id"] == "p6"
    values = await worker.metrics()
    assert values["webhook_bridge_subscription_sync_timeouts_total"] == 0


async def test_a_restarted_worker_recovers_every_webhook_from_kafka(
    settings: Settings, receiver: Receiver, workers
) -> None:
    names = [f"hook{i}" for i in range(8)]
    async with WebhookStore(settings) as store:
        for i, name in enumerate(names):
            await store.create(
                url=receiver.url(f"/{name}"),
                events=["post.created"],
                site_id="s1",
                user_id="u1",
                secret=f"secret-{i}",
                webhook_id=name,
            )
        await store.delete("hook3")
        await store.update("hook5", active=False)
    first = workers(settings)
    await first.wait_ready()
    await publish_events(settings, [post(1)])
    await receiver.wait_for(lambda got: len(got) == 6)
    first.kill()

    # The newest key must survive the restart too (see docs/operations.md on the embedded broker).
    async with WebhookStore(settings) as store:
        await store.create(
            url=receiver.url("/newest"),
            events=["post.created"],
            site_id="s1",
            user_id="u1",
            secret="secret-newest",
            webhook_id="newest",
        )
    second = workers(settings.replace(web_port=free_port()))
    await second.wait_ready()
    values = await second.metrics()
    assert values['webhook_bridge_subscriptions{state="active"}'] == 7
    assert values['webhook_bridge_subscriptions{state="inactive"}'] == 1
    await publish_events(settings, [post(2)])
    await receiver.wait_for(
        lambda got: len([r for r in got if r.json["event"]["data"]["id"] == "p2"]) == 7
    )
    second_round = sorted(
        r.path for r in receiver.received if r.json["event"]["data"]["id"] == "p2"
    )
    assert second_round == sorted(
        [f"/{n}" for n in names if n not in ("hook3", "hook5")] + ["/newest"]
    )


async def test_changes_read_as_the_table_finishes_recovering_are_applied(
    settings: Settings, in_process_workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two renames written as the worker's table completes its recovery, while its live
    (standby) reading of the subscriptions topic has begun: the first is being applied, the
    second is fetched and waits its turn in the tables' changelog queue when Faust resumes its
    flow. Faust's resume cleared that queue, so the second rename was never applied: the
    worker kept the created webhook until its next restart (one rename in about every other
    start under a stream of writes)."""
    async with WebhookStore(settings) as store:
        made = {
            webhook_id: await store.create(
                url="http://127.0.0.1:9/h",
                events=["post.created"],
                site_id="s1",
                user_id="u1",
                webhook_id=webhook_id,
            )
            for webhook_id in ("first", "second")
        }
        renaming = asyncio.Event()
        applying_first = asyncio.Event()
        failures: list[BaseException] = []
        apply = Bridge.on_subscription_event

        async def held_apply(self: Bridge, event: Any) -> None:
            # The first rename is applied once the recovery has completed (Faust's flow
            # resumed): meanwhile what the table reads next waits in the changelog queue.
            if renaming.is_set() and event.message.key == b"first" and not applying_first.is_set():
                applying_first.set()
                await self.app.tables.recovery.completed.wait()  # type: ignore[attr-defined]
            await apply(self, event)

        complete = _SubscriptionTable.on_recovery_completed

        async def renamed_while_completing(self: Any, active: Any, standby: Any) -> None:
            if not renaming.is_set():
                renaming.set()
                try:
                    await store.write(dataclasses.replace(made["first"], name="renamed"))
                    await eventually(applying_first.is_set, timeout=5, interval=0.01)
                    await store.write(dataclasses.replace(made["second"], name="renamed"))
                    queue = self.app.tables.changelog_queue

                    def second_is_queued() -> bool:
                        return any(e.message.key == b"second" for e in list(queue._queue))

                    await eventually(second_is_queued, timeout=5, interval=0.01)
                except BaseException as exc:
                    failures.append(exc)
                    raise
            await complete(self, active, standby)

        monkeypatch.setattr(Bridge, "on_subscription_event", held_apply)
        monkeypatch.setattr(_SubscriptionTable, "on_recovery_completed", renamed_while_completing)
        worker = in_process_workers(settings)
        await worker.wait_ready()
        assert not failures, failures
        index = worker.bridge.index

        def names() -> list[str | None]:
            return [getattr(index.get(w), "name", None) for w in made]

        assert await poll(names, until=lambda n: n == ["renamed", "renamed"], timeout=3) == [
            "renamed",
            "renamed",
        ]


async def test_a_slow_endpoint_does_not_hold_up_others_on_the_same_partition(
    settings: Settings, receiver: Receiver, in_process_workers
) -> None:
    # Another server: paths of one server are one endpoint, which shares its slots.
    slow = await Receiver().start()
    release = asyncio.Event()
    slow.holds["/slow"] = release
    try:
        async with WebhookStore(settings) as store:
            await store.create(
                url=slow.url("/slow"),
                events=["post.created"],
                site_id="s1",
                user_id="u1",
                secret="s-slow",
                webhook_id="slow",
            )
            await store.create(
                url=receiver.url("/fast"),
                events=["post.created"],
                site_id="s1",
                user_id="u1",
                secret="s-fast",
                webhook_id="fast",
            )
        worker = in_process_workers(settings)
        await worker.wait_ready()
        await publish_events(settings, [post(n) for n in range(20)])
        # All twenty reach the fast endpoint while the slow one still holds its first requests.
        await receiver.wait_for(lambda got: len([r for r in got if r.path == "/fast"]) == 20)
        assert not release.is_set()
        assert len(slow.received) >= 1
        release.set()
        await slow.wait_for(lambda got: len(got) == 20)
    finally:
        await slow.stop()


async def write_raw(settings: Settings, key: bytes | None, value: bytes | None) -> None:
    """One record straight to the subscriptions topic, bypassing WebhookStore's checks (in a
    batch of its own, as the embedded broker needs)."""
    producer = AIOKafkaProducer(
        **client_kwargs(settings), acks="all", linger_ms=0, enable_idempotence=False
    )
    await producer.start()
    try:
        await producer.send_and_wait(settings.subscriptions_topic, value, key=key)
    finally:
        await producer.stop()


#: Accepted by the embedded broker (Apache Kafka refuses keyless records on compacted topics):
#: no key, and an id escaped as a lone surrogate, which has no UTF-8 form.
KEYLESS_UNENCODABLE = (
    b'{"id":"\\ud800","name":"n","url":"https://hooks.example/","secret":"s","events":["*"],'
    b'"site_id":"s1","user_id":"u1","active":true}'
)


async def test_a_keyless_record_with_an_unencodable_id_delays_nothing(
    settings: Settings, receiver: Receiver, in_process_workers
) -> None:
    async with WebhookStore(settings) as store:
        await store.create(
            url=receiver.url("/a"),
            events=["post.created"],
            site_id="s1",
            user_id="u1",
            secret="secret-a",
            webhook_id="hook",
        )
    await write_raw(settings, None, KEYLESS_UNENCODABLE)  # read while the table recovers
    worker = in_process_workers(settings)
    await worker.wait_ready()
    await write_raw(settings, None, KEYLESS_UNENCODABLE)  # and read live
    await worker.wait_metric(
        'webhook_bridge_invalid_subscription_records_total{reason="null_key"}', lambda v: v == 2
    )

    # The bad records are the newest of their partitions: once they made the table "not
    # current" for ever, and every event waited subscription_sync_timeout (5 s) to be matched.
    for n in range(3):
        published = time.monotonic()
        await publish_events(settings, [post(n)])
        await receiver.wait_for(lambda got, n=n: len(got) == n + 1, timeout=10.0)
        assert receiver.received[-1].at - published < 1.0
    values = await worker.metrics()
    assert values["webhook_bridge_subscription_sync_timeouts_total"] == 0

    # The management commands read the same records: a warning, not a UnicodeEncodeError.
    listing = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bridge.cli", "webhooks", "list"],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert listing.returncode == 0, listing.stderr
    assert [line.split()[0] for line in listing.stdout.splitlines()] == ["hook"]
    assert listing.stderr.count("skipping an invalid subscription record: null_key") == 2
    assert "Traceback" not in listing.stderr
    async with WebhookStore(settings) as store:
        await store.update("hook", name="renamed")
        assert (await store.load())["hook"].name == "renamed"
