"""Webhook changes and recoveries through the workers' ``/v1`` on the real broker, with two
workers: a change sent to either is made by the webhook's owner, so clients racing with one
``ETag`` through different workers get exactly one ``200``, and a change made through one worker
is read by the other at once; a recovery runs at the owner, is shown by both, and is resumed by
the other worker when its worker stops."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from bridge.admin.publish import publish_events
from bridge.config import Settings
from bridge.contract.events import Event, build_event, format_timestamp
from bridge.contract.payload import delivery_id
from bridge.kafka.reading import read_topic
from bridge.kafka.topics import declared_topics
from bridge.worker.delivery_log import attempts_partition
from bridge.worker.embedded import free_port
from tests.support.api import LOG_AUTH
from tests.support.receivers import Receiver, subscribe
from tests.support.waiting import poll
from tests.support.workers import InProcessWorker

pytestmark = pytest.mark.integration

AUTH = LOG_AUTH


def _attempts_partitions(settings: Settings) -> int:
    return next(
        t.partitions for t in declared_topics(settings) if t.name == settings.attempts_topic
    )


async def _partitions(client: httpx.AsyncClient, worker: InProcessWorker) -> set[int]:
    response = await client.get(worker.base_url + "/internal/v1/delivery-log", headers=AUTH)
    assert response.status_code == 200, response.text
    return set(response.json()["partitions"])


async def _two_workers(
    settings: Settings,
    start: Callable[[Settings], InProcessWorker],
    client: httpx.AsyncClient,
) -> tuple[InProcessWorker, InProcessWorker, dict[int, InProcessWorker]]:
    first = start(settings)
    await first.wait_ready()
    second = start(settings.replace(web_port=free_port()))
    await second.wait_ready()
    partitions = _attempts_partitions(settings)

    async def split() -> tuple[set[int], set[int]]:
        return await _partitions(client, first), await _partitions(client, second)

    held = await poll(
        split,
        until=lambda s: bool(s[0]) and bool(s[1]) and len(s[0] | s[1]) == partitions,
        timeout=60,
        interval=0.2,
    )
    owners = {p: first for p in held[0]} | {p: second for p in held[1]}
    return first, second, owners


def _id_owned_by(
    owners: dict[int, InProcessWorker], worker: InProcessWorker, partitions: int, tag: str
) -> str:
    for n in range(10_000):
        candidate = f"wh_{tag}_{n}"
        if owners[attempts_partition(candidate, partitions)] is worker:
            return candidate
    raise AssertionError("no id found")


def _body(webhook_id: str) -> dict[str, Any]:
    return {
        "id": webhook_id,
        "url": "http://127.0.0.1:9/hook",
        "events": ["post.created"],
        "site_id": "s1",
        "user_id": "u1",
        "name": "n0",
    }


async def test_racing_changes_through_two_workers_make_one_win_and_reads_see_it(
    log_settings: Settings, in_process_workers: Callable[[Settings], InProcessWorker]
) -> None:
    async with httpx.AsyncClient(timeout=30.0) as client:
        first, second, owners = await _two_workers(log_settings, in_process_workers, client)
        partitions = _attempts_partitions(log_settings)
        for owner, other in ((second, first), (first, second)):
            webhook_id = _id_owned_by(owners, owner, partitions, tag=str(id(owner)))
            # Created through the worker that does not own it: relayed to the owner.
            created = await client.post(
                other.base_url + "/v1/webhooks", json=_body(webhook_id), headers=AUTH
            )
            assert created.status_code == 201, created.text
            tag = created.headers["ETag"]
            # The same creation again, through the owner: idempotent, the same secret.
            again = await client.post(
                owner.base_url + "/v1/webhooks", json=_body(webhook_id), headers=AUTH
            )
            assert again.status_code == 200, again.text
            assert again.json()["secret"] == created.json()["secret"]

            for round_ in range(8):
                # Two clients, one ETag, each through a different worker, at the same moment.
                answers = await asyncio.gather(
                    *(
                        client.patch(
                            worker.base_url + f"/v1/webhooks/{webhook_id}",
                            json={"name": f"r{round_}-{i}"},
                            headers={**AUTH, "If-Match": tag},
                        )
                        for i, worker in enumerate((first, second))
                    )
                )
                statuses = sorted(a.status_code for a in answers)
                assert statuses == [200, 412], [a.text for a in answers]
                winner = next(a for a in answers if a.status_code == 200)
                tag = winner.headers["ETag"]
                # Either worker reads the change at once, with its ETag.
                for worker in (first, second):
                    read = await client.get(
                        worker.base_url + f"/v1/webhooks/{webhook_id}", headers=AUTH
                    )
                    assert read.status_code == 200, read.text
                    assert read.headers["ETag"] == tag
                    assert read.json()["name"] == winner.json()["name"]

            # A rotation and a deletion through the other worker are relayed too.
            rotated = await client.post(
                other.base_url + f"/v1/webhooks/{webhook_id}/rotate-secret",
                json={},
                headers={**AUTH, "If-Match": tag},
            )
            assert rotated.status_code == 200, rotated.text
            assert rotated.json()["secret"] != created.json()["secret"]
            gone = await client.delete(
                other.base_url + f"/v1/webhooks/{webhook_id}",
                headers={**AUTH, "If-Match": rotated.headers["ETag"]},
            )
            assert gone.status_code == 204, gone.text
            for worker in (first, second):
                read = await client.get(
                    worker.base_url + f"/v1/webhooks/{webhook_id}", headers=AUTH
                )
                assert read.status_code == 404, read.text

        # A change without a token is refused by the worker it was sent to (not relayed).
        stranger = await client.patch(
            first.base_url + f"/v1/webhooks/{_id_owned_by(owners, second, partitions, 'x')}",
            json={"name": "x"},
        )
        assert stranger.status_code == 401, stranger.text


async def _delivered_since(
    settings: Settings, receiver: Receiver, webhook_id: str, count: int
) -> tuple[datetime, list[Event]]:
    """``webhook_id`` subscribed (site s1, post.created) on ``receiver``, then ``count`` events
    published after the moment returned, and delivered."""
    await subscribe(settings, receiver, {webhook_id: "s1"}, ("post.created",))
    since = datetime.now(UTC)
    while datetime.now(UTC) <= since:
        await asyncio.sleep(0.001)
    events = [
        build_event("post.created", {"id": f"p{n}", "title": "t"}, site_id="s1", user_id="u1")
        for n in range(count)
    ]
    await publish_events(settings, events)
    await receiver.wait_for(lambda _: len(receiver.at(f"/{webhook_id}")) == count)
    return since, events


async def test_a_recovery_runs_at_the_owner_shows_everywhere_and_survives_its_worker(
    log_settings: Settings,
    receiver: Receiver,
    in_process_workers: Callable[[Settings], InProcessWorker],
) -> None:
    async with httpx.AsyncClient(timeout=30.0) as client:
        first, second, owners = await _two_workers(log_settings, in_process_workers, client)
        webhook_id = _id_owned_by(owners, first, _attempts_partitions(log_settings), "rec")
        since, events = await _delivered_since(log_settings, receiver, webhook_id, 12)
        path = f"/{webhook_id}"

        # Sent to the worker that does not own the webhook: run by the owner, shown by both.
        started = await client.post(
            second.base_url + f"/v1/webhooks/{webhook_id}/recoveries",
            json={"since": format_timestamp(since), "rate": 3},
            headers=AUTH,
        )
        assert started.status_code == 202, started.text
        location = started.headers["Location"]

        async def shown(worker: InProcessWorker) -> dict[str, Any]:
            response = await client.get(worker.base_url + location, headers=AUTH)
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            return body

        await poll(lambda: shown(second), until=lambda r: r["enqueued"] >= 3, timeout=30)
        # The owner stops mid-way: it releases the recovery, the other worker resumes it.
        await first.stop()
        done = await poll(
            lambda: shown(second), until=lambda r: r["state"] != "running", timeout=60
        )
        assert (done["state"], done["enqueued"], done["scanned"]) == ("done", 12, 12), done
        assert done["resumed"] == 1, done
        # Every event is delivered again with its delivery id. A retry record the stopped worker
        # had fetched but not settled is delivered again by the next owner of its partition
        # (at least once; receivers deduplicate): more than 12 may arrive, never fewer.
        expected = {delivery_id(e.id, webhook_id) for e in events}
        await receiver.wait_for(
            lambda _: {r.delivery_id for r in receiver.at(path)[12:]} == expected
        )
        again = [r.delivery_id for r in receiver.at(path)[12:]]
        assert set(again) == expected and len(again) <= 2 * len(expected), again
        assert all(receiver.verified(r) for r in receiver.at(path))


async def test_a_cancel_sent_at_once_to_the_worker_not_running_it_stops_the_recovery(
    log_settings: Settings,
    receiver: Receiver,
    in_process_workers: Callable[[Settings], InProcessWorker],
) -> None:
    """Started at the owner, cancelled through the other worker the moment the start is
    answered: that worker's view of the recoveries topic has yet to show the runner. Until
    2026-12-06 it recorded the recovery cancelled and answered so, while the owner ran on (its
    next record running again, every event sent); now it waits until its view is current and
    sends the cancel to the runner, which stops."""
    async with httpx.AsyncClient(timeout=30.0) as client:
        first, second, owners = await _two_workers(log_settings, in_process_workers, client)
        webhook_id = _id_owned_by(owners, first, _attempts_partitions(log_settings), "can")
        since, events = await _delivered_since(log_settings, receiver, webhook_id, 30)
        for _ in range(3):
            started = await client.post(
                first.base_url + f"/v1/webhooks/{webhook_id}/recoveries",
                json={"since": format_timestamp(since), "rate": 5},
                headers=AUTH,
            )
            assert started.status_code == 202, started.text
            location = started.headers["Location"]
            cancelled = await client.delete(second.base_url + location, headers=AUTH)
            assert cancelled.status_code == 200, cancelled.text
            answer = cancelled.json()
            assert answer["state"] == "cancelled", answer
            # The runner stopped it: it shows it cancelled with what it had enqueued.
            runner = await client.get(first.base_url + location, headers=AUTH)
            assert runner.status_code == 200, runner.text
            shown = runner.json()
            assert (shown["state"], shown["enqueued"]) == ("cancelled", answer["enqueued"])
            assert answer["enqueued"] < len(events), answer


async def test_keyed_requests_sent_again_through_either_worker_are_made_once(
    log_settings: Settings, in_process_workers: Callable[[Settings], InProcessWorker]
) -> None:
    """A client that lost its answers sends each request again, with its Idempotency-Key,
    through the other worker (and, for the recovery, after the worker that started it
    stopped): each answers what the first made, replayed, and nothing is made twice."""
    async with httpx.AsyncClient(timeout=30.0) as client:
        first, second, owners = await _two_workers(log_settings, in_process_workers, client)
        body = {k: v for k, v in _body("x").items() if k != "id"}

        async def twice(method: str, path: str, key: str, **kwargs: Any) -> list[httpx.Response]:
            answers = []
            for worker in (first, second):
                answers.append(
                    await client.request(
                        method,
                        worker.base_url + path,
                        headers={**AUTH, "Idempotency-Key": key},
                        **kwargs,
                    )
                )
            assert [a.status_code for a in answers] in ([201, 200], [200, 200], [202, 202]), [
                a.text for a in answers
            ]
            assert "Idempotent-Replayed" not in answers[0].headers
            assert answers[1].headers["Idempotent-Replayed"] == "true"
            return answers

        made, again = await twice("POST", "/v1/webhooks", "create-1", json=body)
        webhook_id = made.json()["id"]
        assert again.json()["id"] == webhook_id
        assert again.json()["secret"] == made.json()["secret"]

        rotated, again = await twice(
            "POST", f"/v1/webhooks/{webhook_id}/rotate-secret", "rotate-1", json={}
        )
        assert again.json()["secret"] == rotated.json()["secret"] != made.json()["secret"]
        for worker in (first, second):
            read = await client.get(worker.base_url + f"/v1/webhooks/{webhook_id}", headers=AUTH)
            assert read.headers["ETag"] == rotated.headers["ETag"]

        since = format_timestamp(datetime.now(UTC))
        started, again = await twice(
            "POST", f"/v1/webhooks/{webhook_id}/recoveries", "recover-1", json={"since": since}
        )
        recovery = started.json()["id"]
        assert again.json()["id"] == recovery
        assert again.headers["Location"] == started.headers["Location"]
        owner = owners[attempts_partition(webhook_id, _attempts_partitions(log_settings))]
        other = second if owner is first else first
        await owner.stop()

        async def sent_again() -> httpx.Response:
            return await client.post(
                other.base_url + f"/v1/webhooks/{webhook_id}/recoveries",
                json={"since": since},
                headers={**AUTH, "Idempotency-Key": "recover-1"},
            )

        # Once the other worker owns the webhook, it knows the recovery from the journal.
        answer = await poll(sent_again, until=lambda r: r.status_code != 503, timeout=60)
        assert answer.status_code == 202, answer.text
        assert answer.json()["id"] == recovery and answer.headers["Idempotent-Replayed"] == "true"
        listed = await client.get(
            other.base_url + f"/v1/webhooks/{webhook_id}/recoveries", headers=AUTH
        )
        assert [r["id"] for r in listed.json()["items"]] == [recovery]


async def test_a_keyed_redelivery_sent_to_both_workers_at_once_runs_once_at_the_owner(
    log_settings: Settings,
    receiver: Receiver,
    in_process_workers: Callable[[Settings], InProcessWorker],
) -> None:
    """A redelivery runs at its webhook's owner, found from the delivery id: the same
    Idempotency-Key sent through both workers at the same moment starts one redelivery (both
    answer it, one replayed), run by the owner, and the endpoint gets the delivery once more."""
    async with httpx.AsyncClient(timeout=30.0) as client:
        first, second, owners = await _two_workers(log_settings, in_process_workers, client)
        webhook_id = _id_owned_by(owners, first, _attempts_partitions(log_settings), "redel")
        await subscribe(log_settings, receiver, {webhook_id: "s1"}, ("post.created",))
        path = f"/{webhook_id}"
        event = build_event("post.created", {"id": "p1", "title": "t"}, site_id="s1", user_id="u1")
        await publish_events(log_settings, [event])
        await receiver.wait_for(lambda _: len(receiver.at(path)) == 1)
        delivered = delivery_id(event.id, webhook_id)
        for worker in (first, second):
            await poll(
                lambda w=worker: client.get(  # type: ignore[misc]
                    w.base_url + f"/v1/deliveries/{delivered}", headers=AUTH
                ),
                until=lambda r: r.status_code == 200,
                timeout=30,
            )

        # Without a token: refused by the worker asked, before any owner is asked.
        stranger = await client.post(second.base_url + f"/v1/deliveries/{delivered}/redeliver")
        assert stranger.status_code == 401, stranger.text

        started: list[str] = []
        for round_, query in enumerate(("", f"?webhook_id={webhook_id}", "")):
            answers = await asyncio.gather(
                *(
                    client.post(
                        worker.base_url + f"/v1/deliveries/{delivered}/redeliver{query}",
                        headers={**AUTH, "Idempotency-Key": f"redeliver-{round_}"},
                    )
                    for worker in (second, first)
                )
            )
            assert [a.status_code for a in answers] == [202, 202], [a.text for a in answers]
            ids = {a.json()["id"] for a in answers}
            assert len(ids) == 1, ids
            replayed = sorted(a.headers.get("Idempotent-Replayed", "") for a in answers)
            assert replayed == ["", "true"], (round_, replayed, [a.text for a in answers])
            started.append(ids.pop())

        async def ended() -> list[str]:
            states = []
            for recovery in started:
                shown = await client.get(
                    second.base_url + f"/v1/recoveries/{recovery}", headers=AUTH
                )
                assert shown.status_code == 200, shown.text
                states.append(shown.json()["state"])
            return states

        await poll(ended, until=lambda s: s == ["done"] * len(started), timeout=60)
        await receiver.wait_for(lambda _: len(receiver.at(path)) >= 1 + len(started))
        # Every record of these redeliveries names the owner as their runner: none ran twice.
        records = await read_topic(log_settings, log_settings.recoveries_topic)
        runners = {
            json.loads(value)["runner"]
            for key, value in records
            if value is not None and key is not None and key.decode() in started
        }
        assert runners <= {first.settings.canonical_url, None}, runners
        assert [r.delivery_id for r in receiver.at(path)] == [delivered] * (1 + len(started))
