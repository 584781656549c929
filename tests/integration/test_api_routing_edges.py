"""The workers' API at the edges of routing, with two workers on the real broker: creates of one
client-chosen id racing through both; a relayed answer keeps `Cache-Control: no-store`; many
concurrent writes keep the subscriptions topic's end offsets exact (so the freshness barrier
waits for every one); a forged relay header does not make a worker change a webhook it does
not own; the API's metrics count each client's request once, relayed or routed."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry

from bridge.config import Settings
from bridge.kafka.clients import client_kwargs
from bridge.worker.api import RELAYED_BY
from tests.integration.test_api_changes import (
    AUTH,
    _attempts_partitions,
    _body,
    _id_owned_by,
    _two_workers,
)
from tests.support.api import SITE_AUTH
from tests.support.metrics import sample
from tests.support.workers import InProcessWorker

pytestmark = pytest.mark.integration


async def test_racing_creates_of_one_id(log_settings: Settings, in_process_workers) -> None:
    """The same body through both workers at once: one 201 and one 200 with the same webhook
    (secret and ETag); another body: one 201 and one 409."""
    async with httpx.AsyncClient(timeout=30.0) as client:
        first, second, _ = await _two_workers(log_settings, in_process_workers, client)
        for n in range(10):
            same = n % 2 == 0
            w = f"wh_c_{n}"
            other = _body(w) if same else {**_body(w), "name": "other"}
            a, b = await asyncio.gather(
                client.post(first.base_url + "/v1/webhooks", json=_body(w), headers=AUTH),
                client.post(second.base_url + "/v1/webhooks", json=other, headers=AUTH),
            )
            codes = sorted([a.status_code, b.status_code])
            assert codes == ([200, 201] if same else [201, 409]), (n, a.text, b.text)
            if same:
                assert a.json()["secret"] == b.json()["secret"]
                assert a.headers["ETag"] == b.headers["ETag"]


async def test_relayed_secret_answers_keep_no_store(
    log_settings: Settings, in_process_workers
) -> None:
    async with httpx.AsyncClient(timeout=30.0) as client:
        first, second, owners = await _two_workers(log_settings, in_process_workers, client)
        parts = _attempts_partitions(log_settings)
        owned_by_second = _id_owned_by(owners, second, parts, "hdr")
        direct_id = _id_owned_by(owners, first, parts, "hdr")
        direct = await client.post(
            first.base_url + "/v1/webhooks", json=_body(direct_id), headers=AUTH
        )
        assert direct.status_code == 201, direct.text
        assert direct.headers.get("Cache-Control") == "no-store"
        # Through the worker that does not own it: relayed, the secret in the body.
        created = await client.post(
            first.base_url + "/v1/webhooks", json=_body(owned_by_second), headers=AUTH
        )
        assert created.status_code == 201 and "secret" in created.json(), created.text
        assert created.headers.get("Cache-Control") == "no-store", dict(created.headers)
        rotated = await client.post(
            first.base_url + f"/v1/webhooks/{owned_by_second}/rotate-secret",
            json={},
            headers=AUTH,
        )
        assert rotated.status_code == 200 and "secret" in rotated.json(), rotated.text
        assert rotated.headers.get("Cache-Control") == "no-store", dict(rotated.headers)


async def test_concurrent_api_writes_keep_subscription_end_offsets_exact(
    log_settings: Settings, in_process_workers
) -> None:
    """40 creates, then 40 changes, at once through the two workers: each record is its own
    batch, so the end offsets the embedded broker reports are the records written (it reports
    a partition's last batch's first offset + 1)."""
    async with httpx.AsyncClient(timeout=30.0) as client:
        first, second, _ = await _two_workers(log_settings, in_process_workers, client)
        ids = [f"wh_r_{n}" for n in range(40)]
        made = await asyncio.gather(
            *(
                client.post(first.base_url + "/v1/webhooks", json=_body(w), headers=AUTH)
                for w in ids
            )
        )
        assert {r.status_code for r in made} == {201}
        changed = await asyncio.gather(
            *(
                client.patch(
                    second.base_url + f"/v1/webhooks/{w}", json={"name": "p"}, headers=AUTH
                )
                for w in ids
            )
        )
        assert {r.status_code for r in changed} == {200}
    consumer = AIOKafkaConsumer(
        **client_kwargs(log_settings), enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        await consumer.topics()
        topic = log_settings.subscriptions_topic
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(parts)
        ends = await consumer.end_offsets(parts)
        await consumer.seek_to_beginning(*parts)
        last: dict[int, int] = {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while loop.time() < deadline:
            got = await consumer.getmany(timeout_ms=500)
            if not got:
                break
            for tp, records in got.items():
                for record in records:
                    last[tp.partition] = record.offset
        reported = {tp.partition: end for tp, end in ends.items() if end}
        written = {p: offset + 1 for p, offset in last.items()}
        assert reported == written
        assert sum(written.values()) >= 80
    finally:
        await consumer.stop()


async def test_a_forged_relay_header_does_not_bypass_the_owner(
    log_settings: Settings, in_process_workers
) -> None:
    """Two changes with one If-Match, each sent with a made-up relay header, one to each worker:
    the worker that does not own the webhook does not make it (it holds the change, as while
    its owner moves, then answers 503 when it has not become the owner within its hold), so no
    update is lost; only the owner's is made."""
    async with httpx.AsyncClient(timeout=30.0) as client:
        first, second, owners = await _two_workers(log_settings, in_process_workers, client)
        w = _id_owned_by(owners, second, _attempts_partitions(log_settings), "f")
        created = await client.post(second.base_url + "/v1/webhooks", json=_body(w), headers=AUTH)
        forged = {**AUTH, "If-Match": created.headers["ETag"], RELAYED_BY: "http://127.0.0.1:1"}
        a, b = await asyncio.gather(
            client.patch(first.base_url + f"/v1/webhooks/{w}", json={"name": "a"}, headers=forged),
            client.patch(second.base_url + f"/v1/webhooks/{w}", json={"name": "b"}, headers=forged),
        )
        assert (a.status_code, b.status_code) == (503, 200), (a.text, b.text)
        assert "Retry-After" in a.headers
        shown = await client.get(second.base_url + f"/v1/webhooks/{w}", headers=AUTH)
        assert shown.json()["name"] == "b"


async def test_a_worker_answers_a_token_over_its_rate_429(
    log_settings: Settings, in_process_workers
) -> None:
    """The worker's /v1 takes ``api_rate_limit`` from its settings: at 1 a second a token has a
    burst of 2, then 429 with Retry-After; another token is not held back by it."""
    worker = in_process_workers(log_settings.replace(api_rate_limit=1.0))
    await worker.wait_ready()
    async with httpx.AsyncClient(base_url=worker.base_url, timeout=30.0) as client:
        began = time.monotonic()
        answers = []
        while not answers or answers[-1].status_code != 429:
            assert len(answers) < 20, [a.status_code for a in answers]
            answers.append(await client.get("/v1/webhooks", headers=AUTH))
        admitted = [a.status_code for a in answers[:-1]]
        # The burst, and one more a second the requests took (a loaded machine's slow answers).
        assert set(admitted) == {200} and len(admitted) <= 2 + (time.monotonic() - began)
        assert answers[-1].headers["Retry-After"] == "1", answers[-1].text
        assert (await client.get("/v1/webhooks", headers=SITE_AUTH)).status_code == 200


async def test_two_workers_pass_a_sites_webhook_limit_by_one_at_most(
    log_settings: Settings, in_process_workers
) -> None:
    """``api_max_webhooks`` on the real broker, two workers: twelve creations for one site,
    six through each worker at once, each relayed to its webhook's owner. Each worker counts
    and writes under one lock per site, so at most one creation of the other worker is unseen:
    the site ends with 3 or 4 webhooks, as many as were answered 201, the others 409 naming
    site_id; then a creation through either worker is 409, and a delete makes room."""
    settings = log_settings.replace(api_max_webhooks=3)
    async with httpx.AsyncClient(timeout=30.0) as client:
        first, second, _ = await _two_workers(settings, in_process_workers, client)
        workers = [first, second]
        answers = await asyncio.gather(
            *(
                client.post(
                    workers[n % 2].base_url + "/v1/webhooks",
                    json={**_body(f"wh_lim_{n}"), "site_id": "lim"},
                    headers=AUTH,
                )
                for n in range(12)
            )
        )
        codes = [a.status_code for a in answers]
        assert set(codes) <= {201, 409}, [a.text for a in answers]
        for refused in (a for a in answers if a.status_code == 409):
            assert [e["reason"] for e in refused.json()["errors"]] == ["webhook_limit"]
            assert refused.json()["errors"][0]["field"] == "site_id"
        listed = await client.get(
            first.base_url + "/v1/webhooks", params={"site_id": "lim"}, headers=AUTH
        )
        made = [w["id"] for w in listed.json()["items"]]
        assert len(made) == codes.count(201) and 3 <= len(made) <= 4, (made, codes)
        for worker in workers:
            more = await client.post(
                worker.base_url + "/v1/webhooks",
                json={**_body("wh_lim_more"), "site_id": "lim"},
                headers=AUTH,
            )
            assert more.status_code == 409, more.text
        for webhook_id in made[: len(made) - 2]:
            gone = await client.delete(second.base_url + f"/v1/webhooks/{webhook_id}", headers=AUTH)
            assert gone.status_code == 204
        again = await client.post(
            second.base_url + "/v1/webhooks",
            json={**_body("wh_lim_more"), "site_id": "lim"},
            headers=AUTH,
        )
        assert again.status_code == 201, again.text


def _api_answers(registry: CollectorRegistry) -> dict[tuple[str, str, str, str], float]:
    """``webhook_bridge_api_requests_total`` by (hop, route, method, status class); ``-`` for a
    hop the series does not have."""
    return {
        (
            s.labels.get("hop", "-"),
            s.labels["route"],
            s.labels["method"],
            s.labels["status_class"],
        ): (s.value)
        for family in registry.collect()
        if family.name == "webhook_bridge_api_requests"
        for s in family.samples
        if s.name.endswith("_total")
    }


def _counted(
    workers: list[InProcessWorker], before: list[dict[tuple[str, str, str, str], float]]
) -> tuple[Counter[tuple[str, str, str]], Counter[tuple[str, str, str]]]:
    """The answers counted since ``before`` (one per worker), summed over the workers: those
    not counted ``peer`` (what clients got), and those counted ``peer``."""
    clients: Counter[tuple[str, str, str]] = Counter()
    peers: Counter[tuple[str, str, str]] = Counter()
    for worker, earlier in zip(workers, before, strict=True):
        for (hop, *labels), value in _api_answers(worker.bridge.registry).items():
            added = int(value - earlier.get((hop, *labels), 0.0))
            if added:
                (peers if hop == "peer" else clients)[tuple(labels)] += added  # type: ignore[index]
    return clients, peers


async def test_the_api_counts_each_client_request_once_where_the_client_sent_it(
    log_settings: Settings, in_process_workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Changes and log reads of a webhook the other worker owns, sent to the worker that does
    not own it: relayed or routed to the owner, counted once over the two workers as the client
    got them (a 503 of the owner's too: it was paused past its session timeout), and counted
    at the owner as hop="peer". Until 2026-12-07 both workers counted each of them alike, and
    WebhookBridgeApiErrors saw an owner's 503 twice."""
    async with httpx.AsyncClient(timeout=30.0) as client:
        first, second, owners = await _two_workers(log_settings, in_process_workers, client)
        workers = [first, second]
        w = _id_owned_by(owners, second, _attempts_partitions(log_settings), "m")
        before = [_api_answers(worker.bridge.registry) for worker in workers]
        durations = sample(
            first.bridge.registry,
            "webhook_bridge_api_request_duration_seconds_count",
            route="/v1/webhooks/{webhook_id}",
            hop="client",
        )
        held = sample(
            second.bridge.registry,
            "webhook_bridge_api_held_seconds_count",
            outcome="unavailable",
            hop="peer",
        )
        got: Counter[tuple[str, str, str]] = Counter()

        async def send(
            method: str,
            route: str,
            path: str,
            body: dict[str, Any] | None = None,
            **headers: str,
        ) -> httpx.Response:
            answer = await client.request(
                method, first.base_url + path, json=body, headers={**AUTH, **headers}
            )
            got[(route, method, f"{answer.status_code // 100}xx")] += 1
            return answer

        one = "/v1/webhooks/{webhook_id}"
        created = await send("POST", "/v1/webhooks", "/v1/webhooks", _body(w))
        assert created.status_code == 201, created.text
        changed = await send("PATCH", one, f"/v1/webhooks/{w}", {"name": "n1"})
        assert changed.status_code == 200, changed.text
        stale = created.headers["ETag"]
        lost = await send("PATCH", one, f"/v1/webhooks/{w}", {"name": "n2"}, **{"If-Match": stale})
        assert lost.status_code == 412, lost.text
        for tail in ("attempts", "stats"):
            read = await send("GET", f"{one}/{tail}", f"/v1/webhooks/{w}/{tail}")
            assert read.status_code == 200, read.text
        # The owner paused past its session timeout writes no change: held there, then 503,
        # which the worker the client asked answers with.
        monkeypatch.setattr(second.bridge.pauses, "may_write", lambda: False)
        refused = await send("PATCH", one, f"/v1/webhooks/{w}", {"name": "n3"})
        assert refused.status_code == 503, refused.text
        monkeypatch.undo()
        deleted = await send("DELETE", one, f"/v1/webhooks/{w}")
        assert deleted.status_code == 204, deleted.text

        clients, peers = _counted(workers, before)
        assert clients == got
        assert peers == {
            ("/v1/webhooks", "POST", "2xx"): 1,
            (one, "PATCH", "2xx"): 1,
            (one, "PATCH", "4xx"): 1,
            (one, "PATCH", "5xx"): 1,
            ("/internal/v1/activity/{webhook_id}", "GET", "2xx"): 2,
            (one, "DELETE", "2xx"): 1,
        }
        timed = sample(
            first.bridge.registry,
            "webhook_bridge_api_request_duration_seconds_count",
            route=one,
            hop="client",
        )
        assert timed - durations == 4
        assert (
            sample(
                second.bridge.registry,
                "webhook_bridge_api_held_seconds_count",
                outcome="unavailable",
                hop="peer",
            )
            - held
            == 1
        )
        # The header is not trusted: a client sending it is counted as a peer, not lost.
        forged = await client.get(
            first.base_url + "/v1/webhooks", headers={**AUTH, RELAYED_BY: "http://127.0.0.1:1"}
        )
        assert forged.status_code == 200, forged.text
        clients, peers = _counted(workers, before)
        assert clients == got
        assert peers[("/v1/webhooks", "GET", "2xx")] == 1
