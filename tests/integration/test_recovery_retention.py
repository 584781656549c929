"""Ended recoveries are forgotten after ``recovery_retention``, on the real broker with a real
worker: shown (and listed with their webhook's) while they run and for the retention after, then
their webhook's owner writes their tombstone, and the worker answers 404 (and lists none)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from bridge.admin.publish import publish_events
from bridge.config import Settings
from bridge.contract.events import build_event, format_timestamp
from bridge.kafka.reading import read_topic
from tests.support.api import LOG_AUTH, LOG_TOKEN
from tests.support.processes import settings_env
from tests.support.receivers import Receiver, subscribe
from tests.support.waiting import poll
from tests.support.workers import InProcessWorker

pytestmark = pytest.mark.integration


async def cli(
    settings: Settings, worker: InProcessWorker, *args: str, through_api: bool = False
) -> list[Any]:
    """``webhook-bridge webhooks recoveries ARGS``: its lines (as JSON with ``--json``)."""
    env = settings_env(settings)
    if through_api:
        env.update(BRIDGE_API_URL=worker.base_url, BRIDGE_API_TOKEN=LOG_TOKEN)
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bridge.cli", "webhooks", "recoveries", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = result.stdout.splitlines()
    return [json.loads(line) for line in lines] if "--json" in args else lines


async def test_an_ended_recovery_is_forgotten_after_the_retention(
    log_settings: Settings,
    receiver: Receiver,
    in_process_workers: Callable[[Settings], InProcessWorker],
) -> None:
    settings = log_settings.replace(recovery_retention=8.0)
    worker = in_process_workers(settings)
    await worker.wait_ready()
    await subscribe(settings, receiver, {"wh_kept": "s1"}, ("post.created",))
    since = datetime.now(UTC)
    while datetime.now(UTC) <= since:
        await asyncio.sleep(0.001)
    events = [
        build_event("post.created", {"id": f"p{n}", "title": "t"}, site_id="s1", user_id="u1")
        for n in range(3)
    ]
    await publish_events(settings, events)
    await receiver.wait_for(lambda _: len(receiver.at("/wh_kept")) == 3)

    async with httpx.AsyncClient(timeout=30.0) as client:
        started = await client.post(
            worker.base_url + "/v1/webhooks/wh_kept/recoveries",
            json={"since": format_timestamp(since)},
            headers=LOG_AUTH,
        )
        assert started.status_code == 202, started.text
        location = started.headers["Location"]
        recovery_id = started.json()["id"]

        async def shown() -> tuple[int, dict[str, Any]]:
            response = await client.get(worker.base_url + location, headers=LOG_AUTH)
            return response.status_code, response.json()

        status, done = await poll(shown, until=lambda s: s[1].get("state") == "done", timeout=30)
        assert status == 200 and done["enqueued"] == 3, done
        ended_at = asyncio.get_running_loop().time()

        async def listed() -> list[str]:
            response = await client.get(
                worker.base_url + "/v1/webhooks/wh_kept/recoveries", headers=LOG_AUTH
            )
            assert response.status_code == 200, response.text
            return [r["id"] for r in response.json()["items"]]

        assert await listed() == [recovery_id]
        # The CLI lists it too, from the topic and through the API.
        for through_api in (False, True):
            printed = await cli(settings, worker, "wh_kept", "--json", through_api=through_api)
            assert [(r["id"], r["state"], r["enqueued"]) for r in printed] == [
                (recovery_id, "done", 3)
            ]
        assert await cli(settings, worker, "wh_kept", "--state", "running") == []
        # Shown for the retention (8 s) after it ended, then 404.
        status, _ = await poll(shown, until=lambda s: s[0] == 404, timeout=30, interval=0.2)
        assert asyncio.get_running_loop().time() - ended_at >= 6.0
        assert await listed() == []
        assert await cli(settings, worker, "wh_kept") == []
    records = await read_topic(settings, settings.recoveries_topic)
    mine = [value for key, value in records if key == recovery_id.encode()]
    assert mine and mine[-1] is None  # the tombstone, after its records
    assert len(mine) >= 2
