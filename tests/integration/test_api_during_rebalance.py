"""The workers' ``/v1`` while their group rebalances, on the real broker: a second worker joins,
and requests sent meanwhile are held until the assignment settles and answered ``200``, not
``503``: a change sent to the joining worker before its first assignment names any owner, and
a read of a webhook's stats and a delivery lookup routed to the new owner while it still reads
the partition it was given (answered from the whole log once read, never from a part)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from bridge.config import Settings
from bridge.worker.delivery_log import attempts_partition
from bridge.worker.embedded import free_port
from tests.integration.test_api_changes import AUTH, _attempts_partitions, _body, _partitions
from tests.integration.test_worker_activity import _write_batched
from tests.support.waiting import eventually, poll

pytestmark = pytest.mark.integration


async def _listening(client: httpx.AsyncClient, base_url: str) -> bool:
    try:
        return (await client.get(base_url + "/healthz")).status_code == 200
    except httpx.TransportError:
        return False


async def test_a_change_sent_to_a_joining_worker_before_it_knows_an_owner_is_made(
    log_settings: Settings, in_process_workers
) -> None:
    async with httpx.AsyncClient(timeout=30.0) as client:
        first = in_process_workers(log_settings)
        await first.wait_ready()
        webhook_id = "wh_joining"
        created = await client.post(
            first.base_url + "/v1/webhooks", json=_body(webhook_id), headers=AUTH
        )
        assert created.status_code == 201, created.text

        second = in_process_workers(log_settings.replace(web_port=free_port()))
        # Its /v1 listens before it joins the group: no assignment names an owner yet.
        await eventually(lambda: _listening(client, second.base_url), timeout=30, interval=0.01)
        assert second.bridge.owner(webhook_id).url is None, "joined before the request was sent"
        headers = {**AUTH, "If-Match": created.headers["ETag"]}
        started = asyncio.get_running_loop().time()
        changed, shown = await asyncio.gather(
            client.patch(
                second.base_url + f"/v1/webhooks/{webhook_id}",
                json={"name": "held"},
                headers=headers,
            ),
            client.get(second.base_url + f"/v1/webhooks/{webhook_id}/stats", headers=AUTH),
        )
        took = asyncio.get_running_loop().time() - started
        assert changed.status_code == 200, (changed.status_code, changed.text)
        assert changed.json()["name"] == "held"
        assert shown.status_code == 200, (shown.status_code, shown.text)
        assert took < 10.0  # within the request timeout: held, not timed out
        read = await client.get(first.base_url + f"/v1/webhooks/{webhook_id}", headers=AUTH)
        assert read.json()["name"] == "held"


async def test_reads_routed_to_a_new_owner_still_reading_its_partition_wait_for_the_whole_log(
    log_settings: Settings, in_process_workers
) -> None:
    settings = log_settings
    count = _attempts_partitions(settings)
    # Two webhooks of each attempts partition: whichever the new owner gets, one is there.
    webhooks: list[str] = []
    for n in range(10_000):
        candidate = f"wh_m_{n}"
        partition = attempts_partition(candidate, count)
        if sum(attempts_partition(w, count) == partition for w in webhooks) < 2:
            webhooks.append(candidate)
        if len(webhooks) == 2 * count:
            break
    total = 600 * len(webhooks)  # more than one fetch per partition: reading takes a while
    per_webhook = total // len(webhooks)
    async with httpx.AsyncClient(timeout=30.0) as client:
        first = in_process_workers(settings)
        await first.wait_ready()
        for webhook_id in webhooks:
            created = await client.post(
                first.base_url + "/v1/webhooks", json=_body(webhook_id), headers=AUTH
            )
            assert created.status_code == 201, created.text
        await _write_batched(settings, webhooks, 0, total)
        reader = first.bridge.delivery_log
        assert reader is not None
        await eventually(
            lambda: sum(reader.read.values()) == total and reader.caught_up,
            timeout=60,
            interval=0.05,
        )

        second = in_process_workers(settings.replace(web_port=free_port()))
        second_url = second.settings.canonical_url

        def moving() -> str | None:
            """A webhook the first worker now routes to the second, which still reads its
            partition."""
            book = second.bridge.delivery_log
            for webhook_id in webhooks:
                owner = first.bridge.owner(webhook_id)
                if owner.url == second_url and book is not None:
                    if not book.complete(owner.partition):
                        return webhook_id
            return None

        webhook_id = await eventually(moving, timeout=60, interval=0.002)
        n = webhooks.index(webhook_id)
        delivery = f"d-{webhook_id}-{n}"  # its first record (as _write_batched names them)
        stats, attempts = await asyncio.gather(
            client.get(first.base_url + f"/v1/webhooks/{webhook_id}/stats", headers=AUTH),
            client.get(first.base_url + f"/v1/deliveries/{delivery}", headers=AUTH),
        )
        assert stats.status_code == 200, (stats.status_code, stats.text)
        assert stats.json()["windows"]["1h"]["attempts"] == per_webhook, stats.json()
        assert attempts.status_code == 200, (attempts.status_code, attempts.text)
        assert [a["delivery_id"] for a in attempts.json()["attempts"]] == [delivery]

        # The assignment settled as it should: the partitions split between the two workers.
        held = await poll(
            lambda: asyncio.gather(_partitions(client, first), _partitions(client, second)),
            until=lambda split: len(split[0] | split[1]) == count and all(split),
            timeout=30,
            interval=0.2,
        )
        assert attempts_partition(webhook_id, count) in held[1]
