"""Recovering a webhook's events since a time, on the real broker with a real worker: exactly
that webhook's matching events from that time are sent again, with their first delivery ids."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest

from bridge.admin.publish import publish_events
from bridge.config import Settings
from bridge.contract.events import Event, build_event, format_timestamp
from bridge.contract.payload import delivery_id
from tests.support.processes import settings_env
from tests.support.receivers import Receiver, subscribe

pytestmark = pytest.mark.integration


def post(n: int, site: str, event_type: str = "post.created") -> Event:
    return build_event(
        event_type, {"id": f"p{n}", "title": f"post {n}"}, site_id=site, user_id="u1"
    )


def cli(settings: Settings, *args: str) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "webhooks", "recover", *args],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    shown: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return shown


async def test_recover_since_a_time_sends_that_webhooks_events_again_with_their_ids(
    settings: Settings, receiver: Receiver, workers
) -> None:
    await subscribe(settings, receiver, {"a": "s1", "b": "s2"}, ("post.created",))
    worker = workers(settings)
    await worker.wait_ready()

    before = [post(n, "s1") for n in range(3)]
    await publish_events(settings, before)
    # Record timestamps are the producer's clock in milliseconds: the next events are
    # published strictly after ``since``.
    since = datetime.now(UTC)
    while datetime.now(UTC) <= since:
        time.sleep(0.001)
    after = [post(n, "s1") for n in range(3, 7)]
    others = [post(10, "s1", "post.deleted"), post(11, "s2"), post(12, "s2")]
    await publish_events(settings, [*after, *others])
    await receiver.wait_for(lambda _: len(receiver.at("/a")) == 7 and len(receiver.at("/b")) == 2)

    # An --until past now is now: what the topic holds when the recovery starts (until
    # 2026-12-06 it reported the later until it never read to).
    until = "2099-01-01T00:00:00Z"
    shown = cli(settings, "a", "--since", format_timestamp(since), "--until", until, "--rate", "50")
    assert shown["state"] == "done" and shown["enqueued"] == 4 and shown["invalid"] == 0
    assert shown["progress"] == 1.0
    assert str(shown["until"]) <= format_timestamp(datetime.now(UTC)), shown

    expected = sorted(delivery_id(e.id, "a") for e in after)
    await receiver.wait_for(lambda _: len(receiver.at("/a")) == 11)
    again = sorted(r.delivery_id for r in receiver.at("/a")[7:])
    assert again == expected
    assert all(receiver.verified(r) for r in receiver.at("/a"))
    assert len(receiver.at("/b")) == 2

    # One delivery only, found among the hour's events.
    target = delivery_id(after[1].id, "a")
    shown = cli(settings, "a", "--since", "1h", "--delivery", target)
    assert shown["enqueued"] == 1 and shown["delivery_id"] == target
    await receiver.wait_for(lambda _: len(receiver.at("/a")) == 12)
    assert receiver.at("/a")[-1].delivery_id == target
    assert len(receiver.at("/b")) == 2

    # A delivery of another webhook is not one of this webhook's: nothing sent, exit 1, saying
    # which webhook was read.
    other = delivery_id(others[1].id, "b")
    refused = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "webhooks", "recover", "a", "--since", "1h"]
        + ["--delivery", other],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 1, refused
    assert refused.stderr.splitlines()[-1] == (
        f"webhook-bridge: no event of delivery {other!r} to webhook 'a' between --since and --until"
    )
    assert len(receiver.at("/a")) == 12 and len(receiver.at("/b")) == 2
