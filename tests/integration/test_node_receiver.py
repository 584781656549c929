"""The documentation's own Node.js receiver verifies every delivery the bridge sends."""

from __future__ import annotations

import shutil

import pytest

from bridge.admin.publish import publish_events
from bridge.config import Settings
from bridge.contract.events import Event, build_event
from bridge.contract.payload import EncodedEvent, build_body
from bridge.subscriptions.store import WebhookStore
from bridge.subscriptions.webhook import Webhook
from bridge.worker.embedded import free_port
from tests.support.receivers import NODE_DIR, NodeSpecReceiver

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("node") is None or not (NODE_DIR / "node_modules" / "express").exists(),
        reason="needs node and `npm ci` in tests/node (the test command does both)",
    ),
]

# Data that a naive encoder gets wrong for JavaScript: floats that print differently, keys that
# JavaScript reorders, escapes, non-ASCII, astral characters and text that looks like a surrogate
# escape (lone surrogates themselves are refused: invalid_text), deep nesting.
TRICKY = [
    {"id": "p1", "title": "Plain"},
    {"id": "p2", "title": "Ünïcödé ✓ 日本語 🎉", "ratio": 1.0, "small": 1.5e-07, "neg": -0.0},
    {"id": "p3", "title": "keys", "b": 1, "10": 2, "a": 3, "2": 4, "01": 5, "4294967295": 6},
    {"id": "p4", "title": 'esc " \\ / \n\t\u0001\u007f\u2028\u2029 </script>'},
    {"id": "p5", "title": "nums", "big": 1e21, "huge": 1.7976931348623157e308, "n": [0.1, 2e-7]},
    {"id": "p6", "title": "\U0001f600 \\ud800 \\u", "deep": {"x": [{"y": [None, True, False]}]}},
    {"id": "p7", "title": "max safe", "n": 9007199254740991, "m": -9007199254740991},
]


def _largest(settings: Settings, webhook: Webhook) -> Event:
    """A ``post.created`` event whose delivery body to ``webhook`` is ``max_body_bytes`` long."""
    assert settings.max_body_bytes == 100 * 1024  # the default, express.json()'s limit

    def event(title: str) -> Event:
        return build_event(
            "post.created", {"id": "big", "title": title}, site_id="s1", user_id="u1"
        )

    size = len(build_body(EncodedEvent.of(event("")), webhook))
    largest = event("x" * (settings.max_body_bytes - size))
    assert len(build_body(EncodedEvent.of(largest), webhook)) == settings.max_body_bytes
    return largest


async def test_spec_receiver_verifies_every_delivery(
    settings: Settings, in_process_workers
) -> None:
    secret = "whsec_" + "x" * 40
    node = await NodeSpecReceiver(secret, free_port()).start()
    wrong = await NodeSpecReceiver("not-the-secret", free_port()).start()
    webhooks: dict[str, Webhook] = {}
    try:
        async with WebhookStore(settings) as store:
            webhooks["node"] = await store.create(
                url=node.url,
                events=["*"],
                site_id="s1",
                user_id="u1",
                secret=secret,
                webhook_id="node",
                name="Node ✓",
            )
            # Control: the same receiver with another secret must reject, or the check above
            # would prove nothing.
            await store.create(
                url=wrong.url,
                events=["post.created"],
                site_id="s1",
                user_id="u1",
                secret=secret,
                webhook_id="control",
            )
        worker = in_process_workers(settings)
        await worker.wait_ready()
        events = [build_event("post.created", data, site_id="s1", user_id="u1") for data in TRICKY]
        events.append(
            build_event("site.created", {"id": "s1", "name": "Ωmega"}, site_id="s1", user_id="u1")
        )
        events.append(build_event("test.event", {"webhook_id": "node"}, site_id="s1", user_id="u1"))
        # The largest body the bridge sends (max_body_bytes, by default express.json()'s own
        # limit): until 2026-12-07 it sent up to 1 MiB, and this receiver answered 413 past 100 kB.
        events.append(_largest(settings, webhooks["node"]))
        await publish_events(settings, events)
        await node.wait_for(len(events))
        await wrong.wait_for(len(TRICKY))
        assert sorted(r["delivery"] for r in node.results) == sorted(
            __import__("bridge").delivery_id(e.id, "node") for e in events
        )
        assert [r["status"] for r in node.results] == [200] * len(events), node.output
        assert {r["user_agent"] for r in node.results} == {"Position-Webhooks/1.0"}
        assert {r["content_type"] for r in node.results} == {"application/json"}
        assert [r["status"] for r in wrong.results] == [401] * len(TRICKY)
    finally:
        await node.stop()
        await wrong.stop()
