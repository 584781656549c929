"""A worker process paused past its session timeout (SIGSTOP) sees the pause when it wakes, and
the change sent to it meanwhile is made once, not before the fence's hold is over
(bridge.worker.pauses)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable

import httpx
import pytest

from bridge.config import Settings
from bridge.kafka.reading import read_topic
from tests.support.api import LOG_AUTH
from tests.support.processes import WorkerProcess
from tests.support.receivers import Receiver, subscribe
from tests.support.waiting import poll

pytestmark = pytest.mark.integration

NAME = "changed-after-the-pause"


async def test_a_change_sent_to_a_paused_worker_is_made_once_after_it_wakes(
    log_settings: Settings, receiver: Receiver, workers: Callable[[Settings], WorkerProcess]
) -> None:
    await subscribe(log_settings, receiver, {"wh": "s1"}, ("post.created",))
    worker = workers(log_settings)
    await worker.wait_ready()
    assert worker.process is not None
    pause = (
        log_settings.kafka_session_timeout + 1.0
    )  # the fault: longer than a member may be silent
    async with httpx.AsyncClient(base_url=worker.base_url, headers=LOG_AUTH, timeout=30) as client:
        read = await poll(
            lambda: client.get("/v1/webhooks/wh"),
            until=lambda r: r.status_code == 200,
            timeout=30,
            interval=0.2,
        )
        assert read.status_code == 200
        etag = read.headers["ETag"]
        worker.process.send_signal(signal.SIGSTOP)
        try:
            # Sent while the worker is stopped: it waits in the socket, read as the worker wakes.
            sent = asyncio.ensure_future(
                client.patch("/v1/webhooks/wh", json={"name": NAME}, headers={"If-Match": etag})
            )
            await asyncio.sleep(pause)
        finally:
            worker.process.send_signal(signal.SIGCONT)
            woke = time.monotonic()
        answered = await asyncio.wait_for(sent, 30)
        if answered.status_code == 503:  # not made: held past the hold through the rejoin
            answered = await poll(
                lambda: client.patch(
                    "/v1/webhooks/wh", json={"name": NAME}, headers={"If-Match": etag}
                ),
                until=lambda r: r.status_code != 503,
                timeout=30,
                interval=0.5,
            )
        made_after = time.monotonic() - woke
        assert answered.status_code == 200, answered.text
        assert answered.json()["name"] == NAME
    # Not made as the worker woke (its ownership unconfirmed), but once the fence's hold, a
    # session timeout from the first tick after the pause, was over (or a rebalance later).
    assert made_after >= log_settings.kafka_session_timeout - 0.05
    assert "the event loop did not run for" in worker.log_path.read_text()
    assert (await worker.metrics())["webhook_bridge_event_loop_pauses_total"] >= 1
    records = await read_topic(log_settings, log_settings.subscriptions_topic, key=b"wh")
    named = [value for _, value in records if value and json.loads(value).get("name") == NAME]
    assert len(named) == 1
