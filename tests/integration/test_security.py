"""The SSRF guard, Standard Webhooks signing, encrypted secrets, and secrets kept out of output."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest
from standardwebhooks.webhooks import Webhook as StandardWebhook

from bridge.admin.publish import publish_events
from bridge.admin.topics import apply_topics
from bridge.config import Settings
from bridge.contract.events import build_event
from bridge.kafka.reading import read_topic
from bridge.subscriptions.secretbox import generate_key
from bridge.subscriptions.store import WebhookStore
from tests.support.processes import settings_env
from tests.support.receivers import Receiver

pytestmark = pytest.mark.integration


def post(n: int) -> object:
    return build_event("post.created", {"id": f"p{n}", "title": "t"}, site_id="s1", user_id="u1")


class ConnectionCounter:
    """A TCP server that only counts the connections made to it."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> ConnectionCounter:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            writer.close()

        self._server = await asyncio.start_server(accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


async def letters(settings: Settings) -> list[dict]:
    return [json.loads(v) for _, v in await read_topic(settings, settings.deadletter_topic) if v]


async def test_the_guard_refuses_loopback_before_connecting(
    make_settings, in_process_workers
) -> None:
    counter = await ConnectionCounter().start()
    try:
        settings = make_settings(allow_networks=(), allow_http=True)
        await apply_topics(settings)
        async with WebhookStore(settings) as store:
            for name, host in (("v4", "127.0.0.1"), ("v6", "[::1]"), ("name", "localhost")):
                await store.create(
                    url=f"http://{host}:{counter.port}/hook",
                    events=["*"],
                    site_id="s1",
                    user_id="u1",
                    secret="secret-0123456789",
                    webhook_id=name,
                )
        worker = in_process_workers(settings)
        await worker.wait_ready()
        await publish_events(settings, [post(1)])
        values = await worker.wait_metric(
            'webhook_bridge_dead_letters_total{reason="destination_forbidden"}', lambda v: v == 3
        )
        assert values['webhook_bridge_ssrf_refusals_total{reason="loopback"}'] == 3
        assert counter.connections == 0
        records = await letters(settings)
        assert sorted(r["webhook_id"] for r in records) == ["name", "v4", "v6"]
        assert all(r["reason"] == "destination_forbidden" for r in records)
        # Not retried: exactly one (skipped) attempt each.
        assert all(len(r["attempts"]) == 1 for r in records)
    finally:
        await counter.stop()


async def test_plain_http_is_refused_unless_allowed(make_settings, in_process_workers) -> None:
    counter = await ConnectionCounter().start()
    try:
        settings = make_settings(allow_http=False)
        await apply_topics(settings)
        async with WebhookStore(settings) as store:
            await store.create(
                url=f"http://127.0.0.1:{counter.port}/hook",
                events=["*"],
                site_id="s1",
                user_id="u1",
                secret="secret-0123456789",
                webhook_id="plain",
            )
        worker = in_process_workers(settings)
        await worker.wait_ready()
        await publish_events(settings, [post(1)])
        await worker.wait_metric(
            'webhook_bridge_ssrf_refusals_total{reason="plain_http"}', lambda v: v == 1
        )
        assert counter.connections == 0
    finally:
        await counter.stop()


async def test_standard_webhooks_signatures_verify_with_the_reference_library(
    settings: Settings, receiver: Receiver, in_process_workers
) -> None:
    async with WebhookStore(settings) as store:
        hook = await store.create(
            url=receiver.url("/std"),
            events=["*"],
            site_id="s1",
            user_id="u1",
            webhook_id="std",
            standard=True,
        )
    assert hook.secret.startswith("whsec_")
    worker = in_process_workers(settings)
    await worker.wait_ready()
    await publish_events(settings, [post(1)])
    await receiver.wait_for(lambda got: len(got) == 1)
    first = receiver.received[0]
    headers = {k.lower(): v for k, v in first.headers.items()}
    assert headers["webhook-id"] == first.delivery_id
    StandardWebhook(hook.secret).verify(first.body, headers)
    # The documented signature is there too.
    receiver.secrets["/std"] = hook.secret
    assert receiver.verified(first)

    # Rotation with an overlap: both the old and the new secret verify the next delivery.
    async with WebhookStore(settings) as store:
        rotated = await store.rotate_secret("std", overlap=3600)
    await publish_events(settings, [post(2)])
    await receiver.wait_for(lambda got: len(got) == 2)
    second = receiver.received[1]
    headers = {k.lower(): v for k, v in second.headers.items()}
    assert len(headers["webhook-signature"].split()) == 2
    StandardWebhook(rotated.secret).verify(second.body, headers)
    StandardWebhook(hook.secret).verify(second.body, headers)
    receiver.secrets["/std"] = rotated.secret
    assert receiver.verified(second)  # X-Webhook-Signature uses the new secret


async def test_secrets_never_appear_in_anything_the_bridge_emits(
    make_settings, receiver: Receiver, workers, tmp_path
) -> None:
    settings = make_settings(secret_keys=f"k1:{generate_key()}")
    await apply_topics(settings)
    secrets = {}
    async with WebhookStore(settings) as store:
        for name, status in (("ok", 200), ("failing", 500), ("gone", 410), ("redirect", 302)):
            hook = await store.create(
                url=receiver.url(f"/{name}"),
                events=["*"],
                site_id="s1",
                user_id="u1",
                webhook_id=name,
                name=f"hook {name}",
                # Its rotation overlaps (below): only the Standard Webhooks header carries both.
                standard=name == "ok",
            )
            secrets[name] = hook.secret
            receiver.secrets[f"/{name}"] = hook.secret
            receiver.statuses[f"/{name}"] = status
        await store.rotate_secret("ok", overlap=60)
        current = await store.load()
    secrets["ok-new"] = current["ok"].secret
    receiver.secrets["/ok"] = current["ok"].secret
    worker = workers(settings)
    await worker.wait_ready()
    await publish_events(settings, [post(n) for n in range(3)])
    await worker.wait_metric(
        'webhook_bridge_dead_letters_total{reason="attempts_exhausted"}', lambda v: v == 6
    )
    await worker.wait_metric(
        'webhook_bridge_webhooks_disabled_total{reason="gone"}', lambda v: v == 1
    )
    # Deliveries were signed with the decrypted secret.
    assert all(receiver.verified(r) for r in receiver.at("/ok"))

    emitted: list[str] = [worker.tail(100_000), json.dumps(await worker.metrics())]
    topics = [
        settings.subscriptions_topic,
        settings.deadletter_topic,
        settings.attempts_topic,
        settings.status_topic,
        *settings.retry_topics,
        settings.events_topic,
    ]
    for topic in topics:
        for key, value in await read_topic(settings, topic):
            emitted.append(repr(key) + repr(value))
    listed = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "webhooks", "list", "--json"],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    emitted.append(listed.stdout + listed.stderr)
    emitted.extend(repr(w) for w in current.values())
    everything = "\n".join(emitted)
    assert "hook ok" in everything  # the search does see what was emitted
    for name, secret in secrets.items():
        assert secret not in everything, name
