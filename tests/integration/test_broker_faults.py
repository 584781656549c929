"""The link between a worker and its broker breaks, again and again, while events flow: every
connection cut, every byte held past the group's session timeout, new connections refused. The
worker must lose nothing, stall nothing once the link heals, and commit every partition to its
end. The broker advertises a relay (tests/support/relay.py) in front of it, so every connection
of the worker, and of the test's own writer, passes through the faults."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka.errors import KafkaError

from bridge.admin.topics import apply_topics
from bridge.config import Settings
from bridge.contract.events import Event, build_event
from bridge.contract.payload import delivery_id
from bridge.kafka.reading import read_topic
from bridge.subscriptions.store import WebhookStore
from bridge.worker.embedded import EmbeddedBroker, free_port
from tests.integration.conftest import settings_factory
from tests.support.api import LOG_AUTH, write_token_file
from tests.support.receivers import Received, Receiver
from tests.support.records import RawWriter, commits_behind, read_ends
from tests.support.relay import Relay
from tests.support.waiting import poll

pytestmark = pytest.mark.integration

#: Webhooks of account u1 for every event: ``flaky`` fails each delivery's first 0 to 2
#: requests (the retry tiers are written to through the faults), ``steady`` answers 200.
HOOKS = ("flaky", "steady")


@pytest.fixture
async def relayed(tmp_path) -> AsyncIterator[tuple[EmbeddedBroker, Relay]]:
    """A broker of this test's own, reached only through a relay."""
    broker_port, relay_port = free_port(), free_port()
    relay = await Relay(broker_port, relay_port).start()
    broker = EmbeddedBroker(
        broker_port, log_path=str(tmp_path / "tansu.log"), advertised_port=relay_port
    )
    broker.start()
    try:
        yield broker, relay
    finally:
        await relay.stop()
        broker.stop()


async def write(writer: RawWriter, settings: Settings, event: Event) -> None:
    """Write ``event``, again after each failure (a cut link fails a write; a duplicate record
    of the event is delivered with the same delivery id), for at most 60 s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while True:
        try:
            await writer.write(settings.events_topic, event.to_bytes(), key=event.key)
            return
        except KafkaError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.1)  # a backoff between attempts, not a synchronization


async def stats_of(base_url: str, webhook_id: str) -> tuple[int, int] | None:
    """The (attempts, successes) of the last hour a worker's /v1 shows for ``webhook_id``."""
    async with httpx.AsyncClient(base_url=base_url, headers=LOG_AUTH) as client:
        response = await client.get(f"/v1/webhooks/{webhook_id}/stats", timeout=10.0)
    if response.status_code != 200:
        return None
    window = response.json()["windows"]["1h"]
    return window["attempts"], window["successes"]


async def attempt_records(settings: Settings, webhook_id: str) -> list[dict[str, Any]]:
    """The attempt records of ``webhook_id`` in the attempts topic."""
    return [
        record
        for record in (
            json.loads(value)
            for _, value in await read_topic(settings, settings.attempts_topic)
            if value is not None
        )
        if record.get("webhook_id") == webhook_id
    ]


def requests_and_records(
    received: list[Received], records: list[dict[str, Any]]
) -> dict[str, tuple[int, int]]:
    """The deliveries with fewer attempt records than requests received (a record lost). More
    records is no loss: a write retried after a cut link can be written twice (no idempotent
    producer), and the log takes the copy for the same record read twice."""
    written = Counter(r["delivery_id"] for r in records)
    requests = Counter(r.delivery_id for r in received)
    return {
        delivery: (requests[delivery], written[delivery])
        for delivery in requests
        if written[delivery] < requests[delivery]
    }


def kept_by_the_log(records: list[dict[str, Any]]) -> tuple[int, tuple[int, int]]:
    """The attempts a delivery log counts of ``records`` (one per time to the millisecond,
    delivery id and attempt number, as it takes a record read twice), and the least and most
    successes among them: two workers attempting one record (its partition moved while the
    first ran) can make their requests in the same millisecond, two records of one attempt
    whose outcomes may differ, of which the log keeps the first it reads (on one worker, two
    reads of one record made two such requests until 2026-12-06)."""
    outcomes: dict[tuple[Any, Any, Any], set[str]] = {}
    for r in records:
        outcomes.setdefault((r["at"], r["delivery_id"], r["attempt"]), set()).add(r["outcome"])
    least = sum(1 for kept in outcomes.values() if kept == {"success"})
    most = sum(1 for kept in outcomes.values() if "success" in kept)
    return len(outcomes), (least, most)


async def break_the_link(relay: Relay, rng: random.Random, seconds: float) -> list[str]:
    """For ``seconds``, one fault after another, a fraction of a second apart (the first a cut):
    a cut of every connection; every byte held for up to 4 s (past the 2 s session timeout:
    the broker drops the worker from its group); new connections refused for up to 3 s after a
    cut. The faults injected, in order."""
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds
    done: list[str] = []
    try:
        while loop.time() < until:
            await asyncio.sleep(rng.uniform(0.2, 1.0))  # pacing the faults
            kind = rng.choice(("cut", "hold", "refuse")) if done else "cut"
            if kind == "cut":
                done.append(f"cut {relay.cut()}")
            elif kind == "hold":
                pause = rng.uniform(0.5, 4.0)
                relay.hold()
                await asyncio.sleep(pause)
                relay.release()
                done.append(f"hold {pause:.1f}s")
            else:
                pause = rng.uniform(0.5, 3.0)
                relay.refusing = True
                cut = relay.cut()
                await asyncio.sleep(pause)
                relay.refusing = False
                done.append(f"refuse {pause:.1f}s after cut {cut}")
    finally:
        relay.release()
        relay.refusing = False
    return done


@pytest.mark.parametrize(
    ("seed", "count", "delivery_log"),
    [(1, 1, False), (2, 2, True)],
    ids=["one-worker", "two-workers-with-the-log"],
)
async def test_a_broken_broker_link_loses_and_stalls_nothing(
    relayed: tuple[EmbeddedBroker, Relay],
    receiver: Receiver,
    workers,
    tmp_path,
    seed: int,
    count: int,
    delivery_log: bool,
) -> None:
    """With two workers, the faults also make them leave and rejoin their group; with the
    delivery log, every request the receiver got has its attempt record (none lost), and
    every worker's stats count exactly the records (one doubled by a retried write, or not
    read, shows) as the log counts them (see :func:`kept_by_the_log`)."""
    broker, relay = relayed
    rng = random.Random(seed)
    settings = settings_factory(broker, tmp_path / "data")(
        delivery_log=delivery_log, api_tokens=str(write_token_file(tmp_path / "tokens.json"))
    )
    await apply_topics(settings)
    async with WebhookStore(settings) as store:
        for name in HOOKS:
            receiver.secrets[f"/{name}"] = secret = f"secret-{name}-0123456789"
            await store.create(
                url=receiver.url(f"/{name}"),
                events=["*"],
                user_id="u1",
                secret=secret,
                webhook_id=name,
            )
    receiver.delays["/steady"] = 0.02
    pool = [
        workers(settings.replace(web_port=free_port(), data_dir=str(tmp_path / f"data-{n}")))
        for n in range(count)
    ]
    for worker in pool:
        await worker.wait_ready()

    events = [
        build_event(
            "post.created", {"id": f"p{n}", "title": f"post {n}"}, site_id=f"s{n % 5}", user_id="u1"
        )
        for n in range(160)
    ]
    for event in events:
        receiver.fail_first[delivery_id(event.id, "flaky")] = rng.randint(0, 2)

    writer = await RawWriter(settings.kafka_bootstrap_servers).start()
    try:
        faults = asyncio.create_task(break_the_link(relay, rng, seconds=15.0))
        for n, event in enumerate(events[:150]):
            await write(writer, settings, event)
            if n % 10 == 9:
                await asyncio.sleep(0.1)  # pacing the load across the faults
        injected = await faults
        # The link healed: events written now must be delivered too (nothing stalled).
        for event in events[150:]:
            await write(writer, settings, event)
    finally:
        await writer.stop()

    expected = {delivery_id(e.id, name) for e in events for name in HOOKS}

    def missing() -> set[str]:
        delivered = {
            r.delivery_id for r in receiver.received if r.status == 200 and receiver.verified(r)
        }
        return expected - delivered

    left = await poll(missing, until=lambda left: not left, timeout=120, interval=0.2)
    for worker in pool:
        assert worker.process is not None and worker.process.poll() is None, (
            f"a worker exited ({worker.process.returncode if worker.process else None}) "
            f"after {injected}:\n{worker.tail()}"
        )
    assert not left, (
        f"{len(left)} of {len(expected)} deliveries never succeeded after {injected} "
        f"({relay.cut_count} connections cut):\n{pool[0].tail()}"
    )

    # Every record settled: the events topic and every retry tier committed to their ends
    # (read again each time: a duplicate's retry record may still come).
    async def behind() -> dict[str, dict[int, tuple[int, int]]]:
        bootstrap = settings.kafka_bootstrap_servers
        ends = {
            topic: await read_ends(bootstrap, topic)
            for topic in (settings.events_topic, *settings.retry_topics)
        }
        return await commits_behind(bootstrap, settings.group_id, ends)

    late = await poll(behind, until=lambda late: not late, timeout=60, interval=0.5)
    assert not late, f"(committed, end) by topic and partition: {late} after {injected}"
    if delivery_log:
        for name in HOOKS:
            got = receiver.at(f"/{name}")
            records = await attempt_records(settings, name)
            # Every request made has its attempt record: none lost to the faults.
            assert not requests_and_records(got, records), (
                f"{name}: the deliveries whose (requests received, attempt records) differ: "
                f"{requests_and_records(got, records)} after {injected}"
            )
            attempts, (least, most) = kept_by_the_log(records)
            # One attempt record per request, as the log counts them: a record read again by
            # the worker running its job is joined, not attempted twice (until 2026-12-06 two
            # requests in one millisecond, counted as one attempt, 1 run in 13).
            assert attempts == len(got), (
                f"{name}: {len(got)} requests received, {attempts} attempts in the topic as "
                f"the log counts them, after {injected}"
            )

            def counted(
                shown: tuple[int, int] | None, kept: tuple[int, int, int] = (attempts, least, most)
            ) -> bool:
                return shown is not None and shown[0] == kept[0] and kept[1] <= shown[1] <= kept[2]

            for worker in pool:
                shown = await poll(
                    lambda worker=worker, name=name: stats_of(worker.base_url, name),
                    until=counted,
                    timeout=30,
                    interval=0.5,
                )
                assert counted(shown), (
                    f"{name} at {worker.base_url}: (attempts, successes) {shown} in the "
                    f"stats, {attempts} attempts and {least} to {most} successes in the topic "
                    f"({len(got)} requests), after {injected}"
                )
    dead = [v for _, v in await read_topic(settings, settings.deadletter_topic) if v is not None]
    assert not dead, f"dead letters after {injected}: {dead[:3]}"
    print(f"faults: {injected}; {relay.cut_count} connections cut of {relay.accepted}")
    assert relay.cut_count > 0


async def test_webhook_changes_through_a_broken_link_are_answered_truly(
    relayed: tuple[EmbeddedBroker, Relay], workers, tmp_path
) -> None:
    """While the link breaks, clients create webhooks (their own ids) and rename them (with
    ``If-Match``) through either of two workers, again after each failure, as a client that
    got no answer or a ``503`` does. No answer is a ``500``; every change a worker answered
    ``2xx`` holds afterwards, on both workers and in the topic; none is lost or doubled."""
    broker, relay = relayed
    rng = random.Random(7)
    settings = settings_factory(broker, tmp_path / "data")(
        delivery_log=True, api_tokens=str(write_token_file(tmp_path / "tokens.json"))
    )
    await apply_topics(settings)
    pool = [
        workers(settings.replace(web_port=free_port(), data_dir=str(tmp_path / f"data-{n}")))
        for n in range(2)
    ]
    for worker in pool:
        await worker.wait_ready()
    statuses: list[int] = []
    loop = asyncio.get_running_loop()

    async def send(method: str, path: str, **kwargs: Any) -> httpx.Response:
        """``method`` on ``path`` through a worker chosen at random, again (within 90 s) after
        each error, ``503``, ``429`` or lost connection; the first other answer."""
        deadline = loop.time() + 90
        while True:
            base = rng.choice(pool).base_url
            try:
                async with httpx.AsyncClient(base_url=base, headers=LOG_AUTH) as client:
                    response = await client.request(method, path, timeout=30.0, **kwargs)
            except httpx.HTTPError:
                response = None
            if response is not None:
                statuses.append(response.status_code)
                if response.status_code not in (429, 503):
                    return response
            assert loop.time() < deadline, f"{method} {path}: no answer within 90 s"
            await asyncio.sleep(0.2)  # a client's backoff, not a synchronization

    async def change(n: int) -> None:
        webhook_id = f"w{n}"
        body = {
            "id": webhook_id,
            "url": f"http://127.0.0.1:9/{webhook_id}",
            "events": ["post.created"],
            "user_id": "u1",
            "name": "first",
        }
        created = await send("POST", "/v1/webhooks", json=body)
        assert created.status_code in (200, 201), created.text
        while True:  # rename, with the version read: a 412 reads it again
            shown = await send("GET", f"/v1/webhooks/{webhook_id}")
            assert shown.status_code == 200, shown.text
            if shown.json()["name"] == "second":
                return  # an earlier rename that got no answer was written
            renamed = await send(
                "PATCH",
                f"/v1/webhooks/{webhook_id}",
                json={"name": "second"},
                headers={"If-Match": shown.headers["ETag"]},
            )
            if renamed.status_code == 200:
                return
            assert renamed.status_code == 412, renamed.text

    faults = asyncio.create_task(break_the_link(relay, rng, seconds=15.0))
    await asyncio.gather(*(change(n) for n in range(24)))
    injected = await faults
    assert not [s for s in statuses if s >= 500 and s != 503], (
        f"answers {sorted(set(statuses))} after {injected}:\\n{pool[0].tail()}"
    )
    for worker in pool:
        async with httpx.AsyncClient(base_url=worker.base_url, headers=LOG_AUTH) as client:
            for n in range(24):
                shown = await poll(
                    lambda client=client, n=n: client.get(f"/v1/webhooks/w{n}", timeout=10.0),
                    until=lambda r: r.status_code == 200 and r.json()["name"] == "second",
                    timeout=30,
                    interval=0.2,
                )
                assert shown.status_code == 200 and shown.json()["name"] == "second", (
                    f"w{n} at {worker.base_url}: {shown.status_code} {shown.text}"
                )
    print(f"faults: {injected}; answers {sorted(set(statuses))}; {relay.cut_count} cut")
    assert relay.cut_count > 0


def test_the_embedded_broker_reads_no_variable_of_this_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker binary reads STORAGE_ENGINE (and more): one set for something else made the
    in-memory broker fail to start, or a valid one keep its data elsewhere, until 2026-12-07.
    It is started with no environment."""
    monkeypatch.setenv("STORAGE_ENGINE", "bogus://nowhere")
    broker = EmbeddedBroker(free_port(), log_path=str(tmp_path / "tansu.log"))
    broker.start()
    try:
        assert broker.pid is not None
        with open(f"/proc/{broker.pid}/environ", "rb") as environ:
            assert environ.read() == b""
    finally:
        broker.stop()
