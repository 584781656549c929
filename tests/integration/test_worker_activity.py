"""``/v1`` served by workers from their delivery logs (``delivery_log``), on the real broker:
the attempts of a delivery that failed twice, every record of a batched topic held without gaps
and again after a restart, the partitions split between two workers (the revoked ones
forgotten), a request routed to the owner, and a worker still reading its partitions never
answering from a part of its log (it holds the request, then answers from the whole log, or 503
after the hold)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

import bridge
from bridge.admin.publish import publish_events
from bridge.admin.topics import apply_topics
from bridge.config import Settings
from bridge.contract import jsoncanon
from bridge.contract.events import build_event, format_timestamp
from bridge.contract.payload import delivery_id
from bridge.worker.delivery_log import attempts_partition
from bridge.worker.embedded import free_port
from tests.support.api import LOG_AUTH, SITE_AUTH
from tests.support.processes import WorkerProcess, settings_env
from tests.support.receivers import Receiver, subscribe
from tests.support.waiting import poll

pytestmark = pytest.mark.integration

AUTH = LOG_AUTH


async def get(worker: WorkerProcess, path: str, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(worker.base_url + path, timeout=10.0, **kwargs)


async def log_of(worker: WorkerProcess) -> dict[str, Any]:
    response = await get(worker, "/internal/v1/delivery-log", headers=AUTH)
    assert response.status_code == 200, response.text
    summary: dict[str, Any] = response.json()
    return summary


def test_workers_import_this_tree(log_settings: Settings) -> None:
    tree = str(Path(__file__).parents[2])
    assert bridge.__file__.startswith(tree)
    code = "import bridge; print(bridge.__file__)"
    child = subprocess.run(
        [sys.executable, "-c", code], env=settings_env(log_settings), capture_output=True, text=True
    )
    assert child.stdout.startswith(tree), child


async def test_the_workers_log_shows_two_failures_then_the_success_and_survives_a_restart(
    log_settings: Settings, receiver: Receiver, workers: Callable[[Settings], WorkerProcess]
) -> None:
    settings = log_settings
    receiver.scripts["/wh"] = [500, 503]
    await subscribe(settings, receiver, {"wh": "s1"}, ("post.created",))
    worker = workers(settings)
    await worker.wait_ready()
    where = (await get(worker, "/internal/v1/delivery-log", headers=AUTH)).json()
    assert where["served_by"] == settings.canonical_url
    # Counts over every site: not for a token restricted to one.
    refused = await get(worker, "/internal/v1/delivery-log", headers=SITE_AUTH)
    assert refused.status_code == 403 and refused.json()["type"].endswith("forbidden")

    event = build_event("post.created", {"id": "p1", "title": "t"}, site_id="s1", user_id="u1")
    await publish_events(settings, [event])
    target = delivery_id(event.id, "wh")
    await receiver.wait_for(lambda got: [r.status for r in got] == [500, 503, 200])

    async def attempts(w: WorkerProcess) -> list[dict[str, Any]]:
        response = await get(w, "/v1/webhooks/wh/attempts", headers=AUTH)
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    logged = await poll(
        lambda: attempts(worker), until=lambda a: len(a) == 3, timeout=30, interval=0.2
    )
    assert [(a["attempt"], a["status"], a["outcome"]) for a in logged] == [
        (3, 200, "success"),
        (2, 503, "failure"),
        (1, 500, "failure"),
    ]
    assert [a["next"] for a in logged] == [None, "retry", "retry"]
    delivery = await get(worker, f"/v1/deliveries/{target}", headers=AUTH)
    assert delivery.status_code == 200, delivery.text
    shown = delivery.json()
    assert [a["attempt"] for a in shown["attempts"]] == [1, 2, 3]
    assert shown["state"] == "delivered"
    stats = (await get(worker, "/v1/webhooks/wh/stats", headers=AUTH)).json()
    assert (stats["windows"]["1h"]["attempts"], stats["windows"]["1h"]["failures"]) == (3, 2)

    # Auth is enforced on the worker's /v1 and on its internal routes.
    for path in (
        "/v1/webhooks/wh/attempts",
        f"/v1/deliveries/{target}",
        "/internal/v1/activity/wh",
    ):
        assert (await get(worker, path)).status_code == 401
        wrong = {"Authorization": "Bearer wbt_not-a-token-0123456789abcdef0123456789"}
        assert (await get(worker, path, headers=wrong)).status_code == 401

    # A restart rebuilds the log from the attempts topic.
    worker.stop(grace=5.0)
    again = workers(settings)
    await again.wait_ready()
    assert await attempts(again) == logged
    assert (await get(again, f"/v1/deliveries/{target}", headers=AUTH)).json() == shown


def _attempt(webhook_id: str, n: int, now: float) -> bytes:
    at = datetime.fromtimestamp(now - 600 + n % 500, UTC)
    return jsoncanon.dumps(
        {
            "delivery_id": f"d-{webhook_id}-{n}",
            "webhook_id": webhook_id,
            "event_id": f"e-{n}",
            "event_type": "post.created",
            "attempt": 1,
            "outcome": "success" if n % 3 else "failure",
            "status": 200 if n % 3 else 500,
            "error": None if n % 3 else "http_status",
            "duration_seconds": 0.01,
            "at": format_timestamp(at),
            "next": None if n % 3 else "retry",
        }
    )


async def _write_batched(settings: Settings, webhooks: list[str], first: int, count: int) -> None:
    """``count`` attempt records spread over ``webhooks``, sent in large batches."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers, linger_ms=20, acks="all"
    )
    await producer.start()
    try:
        now = time.time()
        sent = []
        for n in range(first, first + count):
            webhook_id = webhooks[n % len(webhooks)]
            sent.append(
                await producer.send(
                    settings.attempts_topic, _attempt(webhook_id, n, now), key=webhook_id.encode()
                )
            )
        for future in sent:
            await future
    finally:
        await producer.stop()


async def test_every_record_is_held_without_gaps_across_restarts_and_a_second_worker(
    log_settings: Settings, receiver: Receiver, workers: Callable[[Settings], WorkerProcess]
) -> None:
    settings = log_settings
    webhooks = [f"wh{i}" for i in range(12)]
    await subscribe(settings, receiver, dict.fromkeys(webhooks, "s1"), ("post.created",))
    await _write_batched(settings, webhooks, 0, 4000)

    def complete(total: int) -> Callable[[dict[str, Any]], bool]:
        return lambda s: s["attempts"] == total and s["records_read"] == total and not s["gaps"]

    a = workers(settings)
    await a.wait_ready()
    summary = await poll(lambda: log_of(a), until=complete(4000), timeout=60, interval=0.2)
    assert complete(4000)(summary), summary
    # Records written while the worker runs are read too (live, never paused).
    await _write_batched(settings, webhooks, 4000, 2000)
    summary = await poll(lambda: log_of(a), until=complete(6000), timeout=60, interval=0.2)
    assert complete(6000)(summary), summary
    partitions = len(summary["partitions"])
    assert partitions > 1

    a.stop(grace=5.0)
    a = workers(settings)
    await a.wait_ready()
    summary = await poll(lambda: log_of(a), until=complete(6000), timeout=60, interval=0.2)
    assert complete(6000)(summary), summary

    b = workers(settings.replace(web_port=free_port()))

    async def split() -> tuple[dict[str, Any], dict[str, Any]]:
        try:
            return await log_of(a), await log_of(b)
        except (httpx.HTTPError, AssertionError):
            return {"partitions": []}, {"partitions": []}

    def disjoint(pair: tuple[dict[str, Any], dict[str, Any]]) -> bool:
        one, two = pair
        return (
            bool(one["partitions"])
            and bool(two["partitions"])
            and not set(one["partitions"]) & set(two["partitions"])
            and len(one["partitions"]) + len(two["partitions"]) == partitions
            and one["caught_up"]
            and two["caught_up"]
            and one["attempts"] + two["attempts"] == 6000
        )

    one, two = await poll(split, until=disjoint, timeout=90, interval=0.3)
    assert disjoint((one, two)), (one, two)
    assert not one["gaps"] and not two["gaps"]

    # Every webhook is answered by either worker, from its owner's book (routed once).
    routed = 0
    for webhook_id in webhooks:
        owner_partition = attempts_partition(webhook_id, partitions)
        expected = sum(1 for n in range(6000) if webhooks[n % len(webhooks)] == webhook_id)
        for worker in (a, b):
            response = await get(worker, f"/v1/webhooks/{webhook_id}/stats", headers=AUTH)
            assert response.status_code == 200, response.text
            counted = response.json()["windows"]["1h"]
            assert counted["attempts"] == expected, (webhook_id, worker.base_url, counted)
            holds = (one if worker is a else two)["partitions"]
            routed += owner_partition not in holds
            # One delivery: every owner asked, or (webhook_id) the webhook's owner alone.
            n = webhooks.index(webhook_id) + len(webhooks) * 100
            shown = [
                (await get(worker, path, headers=AUTH)).json()
                for path in (
                    f"/v1/deliveries/d-{webhook_id}-{n}",
                    f"/v1/deliveries/d-{webhook_id}-{n}?webhook_id={webhook_id}",
                )
            ]
            assert shown[0] == shown[1] and shown[0]["webhook_id"] == webhook_id, shown
            assert [a["attempt"] for a in shown[0]["attempts"]] == [1], shown
    assert routed == len(webhooks)  # each webhook was asked once of the worker not holding it


@pytest.mark.parametrize("first", ["deliver", "api"])
async def test_an_api_worker_holds_the_log_while_a_deliver_worker_delivers(
    log_settings: Settings,
    receiver: Receiver,
    workers: Callable[[Settings], WorkerProcess],
    first: str,
) -> None:
    settings = log_settings
    await subscribe(settings, receiver, {"wh": "s1"}, ("post.created",))
    # The worker that joins first leads the group. A deliver worker leading, which has no
    # attempts table, still publishes who owns the attempts partitions; an api worker leading
    # hands every member its global tables, which the deliver worker must subscribe to as well
    # (it once stopped consuming: "assignment for unsubscribed topic", no delivery made).
    deliver_settings = settings.replace(role="deliver", delivery_log=False)
    api_settings = settings.replace(role="api", web_port=free_port())
    if first == "deliver":
        deliver = workers(deliver_settings)
        await deliver.wait_ready()
        api = workers(api_settings)
        await api.wait_ready()
    else:
        api = workers(api_settings)
        await api.wait_ready()
        deliver = workers(deliver_settings)
        await deliver.wait_ready()
    # The deliver worker has no /v1; the api worker holds every attempts partition.
    assert (await get(deliver, "/v1/webhooks/wh/attempts", headers=AUTH)).status_code == 404
    summary = await poll(
        lambda: log_of(api), until=lambda s: len(s["partitions"]) == 6, timeout=30, interval=0.2
    )
    assert len(summary["partitions"]) == 6, summary

    event = build_event("post.created", {"id": "p1", "title": "t"}, site_id="s1", user_id="u1")
    await publish_events(settings, [event])
    await receiver.wait_for(lambda got: len(got) == 1)

    async def attempts() -> list[dict[str, Any]]:
        response = await get(api, "/v1/webhooks/wh/attempts", headers=AUTH)
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    logged = await poll(attempts, until=lambda a: len(a) == 1, timeout=30, interval=0.2)
    assert [(a["status"], a["delivery_id"]) for a in logged] == [(200, delivery_id(event.id, "wh"))]
    # The api worker consumes no events: the deliver worker made the delivery alone.
    metrics = await api.metrics()
    assert not any(k.startswith("webhook_bridge_events_total") and v for k, v in metrics.items())


async def test_a_log_on_disk_survives_restarts_and_a_kill_reading_only_what_it_missed(
    log_settings: Settings, receiver: Receiver, workers: Callable[[Settings], WorkerProcess]
) -> None:
    settings = log_settings.replace(delivery_log_store="rocksdb")
    webhooks = [f"wh{i}" for i in range(12)]
    await subscribe(settings, receiver, dict.fromkeys(webhooks, "s1"), ("post.created",))
    await _write_batched(settings, webhooks, 0, 3000)

    def holds(total: int, read: int) -> Callable[[dict[str, Any]], bool]:
        return lambda s: (
            s["attempts"] == total
            and s["records_read"] == read
            and s["caught_up"]
            and not s["gaps"]
        )

    a = workers(settings)
    await a.wait_ready()
    summary = await poll(lambda: log_of(a), until=holds(3000, 3000), timeout=60, interval=0.2)
    assert holds(3000, 3000)(summary), summary
    assert summary["store"] == "rocksdb" and summary["disk_bytes"] > 0 and not summary["resumed"]
    written = sorted(summary["read"])  # the partitions the webhooks' records are in
    a.stop(grace=5.0)

    # Written while no worker runs: the restarted worker resumes every partition written to
    # from its checkpoint and reads these records only.
    await _write_batched(settings, webhooks, 3000, 1000)
    a = workers(settings)
    await a.wait_ready()
    summary = await poll(lambda: log_of(a), until=holds(4000, 1000), timeout=60, interval=0.2)
    assert holds(4000, 1000)(summary), summary
    assert sorted(summary["resumed"]) == written
    assert sum(summary["resumed"].values()) == 3000 and summary["reread"] == 0

    # Killed while records arrive: each is kept once after the restart, whatever was written.
    writing = asyncio.ensure_future(_write_batched(settings, webhooks, 4000, 2000))
    await poll(lambda: log_of(a), until=lambda s: s["records_read"] > 1200, timeout=60)
    a.kill()
    await writing
    a = workers(settings)
    await a.wait_ready()
    summary = await poll(lambda: log_of(a), until=lambda s: s["attempts"] == 6000, timeout=60)
    assert summary["attempts"] == 6000 and not summary["gaps"], summary
    assert summary["records_read"] < 2000, summary  # not the whole topic again

    # The log answers as an in-memory log read from the topic does (a worker of another group,
    # which holds every partition itself).
    memory = workers(
        settings.replace(
            delivery_log_store="memory",
            web_port=free_port(),
            group_id=settings.group_id + "-memory",
            data_dir=str(Path(str(settings.data_dir)) / "memory"),
        )
    )
    await memory.wait_ready()
    for webhook_id in webhooks[:3]:
        path = f"/v1/webhooks/{webhook_id}/attempts?limit=200"
        pages = []
        for worker in (a, memory):
            response = await get(worker, path, headers=AUTH)
            assert response.status_code == 200, response.text
            pages.append(response.json())
        assert pages[0] == pages[1] and len(pages[0]["items"]) == 200


def _immutable(paths: list[Path], on: bool) -> bool:
    """Set (``on``) or clear the immutable flag of ``paths`` and all under them (``chattr``,
    root only); whether that worked."""
    if not paths:
        return True
    try:
        done = subprocess.run(
            ["chattr", "-R", "+i" if on else "-i", *map(str, paths)], capture_output=True
        )
    except OSError:
        return False
    return done.returncode == 0


async def test_a_log_on_disk_that_cannot_be_written_is_not_ready_until_written_again(
    log_settings: Settings, receiver: Receiver, workers: Callable[[Settings], WorkerProcess]
) -> None:
    """The delivery log's files made unwritable (immutable, which binds root too) while records
    arrive: the worker is not ready and answers no page (503) rather than a part of the log;
    once they are writable again, it opens its databases again, reads on from their checkpoints
    and is ready, every attempt in its pages. Until 2026-12-07 it stayed ready and answered
    the part read before the first failed write, re-reading the same records ~70 times a
    second, until it was restarted."""
    settings = log_settings.replace(delivery_log_store="rocksdb")
    webhooks = [f"wh{i}" for i in range(6)]
    await subscribe(settings, receiver, dict.fromkeys(webhooks, "s1"), ("post.created",))
    await _write_batched(settings, webhooks, 0, 600)
    worker = workers(settings)
    await worker.wait_ready()
    await poll(lambda: log_of(worker), until=lambda s: s["attempts"] == 600, timeout=60)
    directory = Path(str(settings.resolved_data_dir)) / "delivery-log" / settings.attempts_topic
    partitions = sorted(p for p in directory.iterdir() if p.is_dir())
    frozen = partitions if _immutable(partitions, True) else []
    if not frozen:
        pytest.skip("chattr cannot make the log's files immutable here (it needs root)")
    try:
        await _write_batched(settings, webhooks, 600, 600)

        async def ready() -> int:
            return (await get(worker, "/readyz")).status_code

        assert (
            await poll(ready, until=lambda status: status == 503, timeout=30, interval=0.2) == 503
        )
        summary = await log_of(worker)
        assert summary["failed"] and not summary["caught_up"], summary
        page = await get(worker, "/v1/webhooks/wh0/attempts?limit=200", headers=AUTH)
        assert page.status_code == 503, page.text
        metrics = await worker.metrics()
        assert metrics['webhook_bridge_delivery_log_failures_total{operation="write"}'] >= 1
    finally:
        assert _immutable(frozen, False)
    assert await poll(ready, until=lambda status: status == 200, timeout=60, interval=0.2) == 200
    summary = await log_of(worker)
    assert summary["attempts"] == 1200 and not summary["failed"] and not summary["gaps"], summary
    page = await get(worker, "/v1/webhooks/wh0/attempts?limit=200", headers=AUTH)
    assert page.status_code == 200, page.text
    assert {i["delivery_id"] for i in page.json()["items"]} == {
        f"d-wh0-{n}" for n in range(0, 1200, 6)
    }
    # Not tried again at every fetch: a few failures per partition in all.
    failures = sum(
        v
        for k, v in (await worker.metrics()).items()
        if k.startswith("webhook_bridge_delivery_log_failures_total")
    )
    assert failures <= 12 * len(partitions), failures


async def test_a_log_on_disk_of_a_recreated_topic_is_dropped_and_read_again(
    log_settings: Settings, receiver: Receiver, workers: Callable[[Settings], WorkerProcess]
) -> None:
    settings = log_settings.replace(delivery_log_store="rocksdb")
    webhooks = [f"wh{i}" for i in range(12)]
    await subscribe(settings, receiver, dict.fromkeys(webhooks, "s1"), ("post.created",))
    await _write_batched(settings, webhooks, 0, 1200)
    a = workers(settings)
    await a.wait_ready()
    summary = await poll(lambda: log_of(a), until=lambda s: s["attempts"] == 1200, timeout=60)
    assert summary["attempts"] == 1200, summary
    a.stop(grace=5.0)

    # The topic is deleted and created again, with fewer records than were read.
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        await admin.delete_topics([settings.attempts_topic])
    finally:
        await admin.close()
    await apply_topics(settings)
    await _write_batched(settings, webhooks, 5000, 120)

    a = workers(settings)
    await a.wait_ready()
    summary = await poll(
        lambda: log_of(a), until=lambda s: s["attempts"] == 120 and s["caught_up"], timeout=60
    )
    assert summary["attempts"] == 120 and summary["records_read"] == 120, summary
    assert summary["reread"] > 0 and not summary["gaps"], summary
    response = await get(a, "/v1/webhooks/wh0/attempts", headers=AUTH)
    assert {i["delivery_id"] for i in response.json()["items"]} == {
        f"d-wh0-{n}" for n in range(5000, 5120) if n % 12 == 0
    }


async def test_a_worker_still_reading_its_partitions_never_answers_a_part_of_the_log(
    log_settings: Settings, receiver: Receiver, workers: Callable[[Settings], WorkerProcess]
) -> None:
    # A worker given attempts partitions reads them from the topic before its book is whole:
    # until then it holds a request for the log (bridge/worker/settling.py) and answers it once
    # the partition is read, or 503 when its hold (5 s) ends first. It answered 200 from the
    # part read so far (a new owner's stats counted none of a webhook's attempts, in
    # tests/integration/test_control_plane_chaos.py).
    settings = log_settings
    # At most the log's 1,000 attempts each (delivery_log_max_attempts).
    webhooks = [f"wh{i}" for i in range(50)]
    await subscribe(settings, receiver, dict.fromkeys(webhooks, "s1"), ("post.created",))
    total = 45_000
    await _write_batched(settings, webhooks, 0, total)
    worker = workers(settings)
    answers: list[tuple[int, int | None]] = []

    async def ask() -> bool:
        """Whether the worker is ready; each answer of its stats of wh0 kept."""
        try:
            async with httpx.AsyncClient() as client:
                stats = await client.get(
                    worker.base_url + "/v1/webhooks/wh0/stats", headers=AUTH, timeout=15.0
                )
                ready = await client.get(worker.base_url + "/readyz", timeout=5.0)
        except httpx.HTTPError:
            return False
        counted = stats.json()["windows"]["1h"]["attempts"] if stats.status_code == 200 else None
        answers.append((stats.status_code, counted))
        return ready.status_code == 200

    await poll(ask, timeout=60, interval=0.01)
    await poll(ask, timeout=5, interval=0.05)  # one more once ready
    expected = total // len(webhooks)
    assert answers and answers[-1] == (200, expected), answers[-5:]
    partial = [a for a in answers if a[0] == 200 and a[1] != expected]
    assert not partial, (len(answers), partial[:5])
    # Nor 404 while its table of webhooks is still read (it answered 404 for wh0, which
    # exists, until 2026-12-05: the log's routes read the table without waiting for it).
    assert {status for status, _ in answers} <= {200, 503}, answers
