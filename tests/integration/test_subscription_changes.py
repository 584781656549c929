"""Subscription changes take effect for the next event; the table survives worker restarts."""

from __future__ import annotations

import asyncio

import pytest

from bridge.config import Settings
from bridge.embedded import free_port
from bridge.events import build_event
from bridge.management import WebhookStore, publish_events
from tests.support.receivers import Receiver

pytestmark = pytest.mark.integration


def post(n: int, site: str = "s1") -> object:
    return build_event(
        "post.created", {"id": f"p{n}", "title": f"post {n}"}, site_id=site, user_id="u1"
    )


async def test_update_deactivate_and_delete_apply_to_the_next_event(
    settings: Settings, receiver: Receiver, workers
) -> None:
    worker = workers(settings)
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


async def test_a_slow_endpoint_does_not_hold_up_others_on_the_same_partition(
    settings: Settings, receiver: Receiver, workers
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
        worker = workers(settings)
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
