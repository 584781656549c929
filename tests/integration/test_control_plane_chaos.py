"""The control plane across repeated rebalances: the delivery log, stats, recoveries and webhook
changes served by whichever workers are left, exactly as the topics hold them.

A seeded schedule (``CONTROL_PLANE_CHAOS_SEEDS``: comma-separated seeds, one test per seed; none
by default, so the suite skips it: 9-28 s a seed) of worker joins (roles ``all``, ``api`` and
``deliver``), graceful stops (SIGTERM, a bounded wait, then SIGKILL), SIGKILLs and pauses
(SIGSTOP for up to a second past the session timeout, then SIGCONT) runs while
events are published to webhooks whose endpoints fail each delivery's first 0-2 requests, two
recoveries run (one started before the pool changes, one during them), and webhooks are renamed
through random workers; meanwhile the attempts, stats and webhooks are read through random
workers. No answer is a 5xx other than ``503``. At the end, through every surviving worker with
the delivery log: each webhook's attempts (every page) are exactly the attempts topic's records
of it, newest first; one delivery's attempts are all there in order; the 1h stats count what the
topic holds; every recovery ended ``done`` with the count of events it had to enqueue, all of
which arrived again with their delivery ids; every rename answered ``200`` is in the
subscriptions topic and none was made twice (renames and recoveries are sent again with their
``Idempotency-Key`` after a ``503`` or no answer), and every worker shows the topic's newest
name. Meanwhile pairs of changes are sent at once through two random workers with the same
``If-Match``: of each pair at most one is made (in the topic), whatever the pool does, one
answered ``412`` never is, and one answered ``200`` is.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.admin.topics import apply_topics
from bridge.attempts.record import Attempt
from bridge.config import Settings
from bridge.contract.events import Event, format_timestamp
from bridge.contract.payload import delivery_id
from bridge.subscriptions.store import WebhookStore
from bridge.worker.embedded import free_port
from tests.support import chaos
from tests.support.api import LOG_AUTH, write_token_file
from tests.support.keyed import made_twice
from tests.support.processes import WorkerProcess
from tests.support.receivers import Receiver, create_verified
from tests.support.records import commits_behind, read_ends, topic_reader
from tests.support.waiting import poll
from tests.support.workers import InProcessWorker

pytestmark = pytest.mark.integration

#: Opt-in (9-28 s a seed, beyond what the suite's 10 minutes leave): seeds to run, comma-separated.
SEEDS = [int(seed) for seed in os.environ.get("CONTROL_PLANE_CHAOS_SEEDS", "").split(",") if seed]

#: Webhooks of account u1: id -> (site, or None for the account's every site; event filter).
HOOKS: dict[str, tuple[str | None, tuple[str, ...]]] = {
    "a": ("s1", ("*",)),
    "b": (None, ("*",)),
    "c": (None, ("post.created",)),
    "d": ("s2", ("*",)),
}
SITES = ("s1", "s2", "s3")
TYPES = ("post.created", "post.published")
EVENTS = 150
#: In the names given by the ETag races (the renames' names lack it).
RACED = "-raced-"
BURST, PAUSE = 10, 0.4
POOL_CHANGES = 5
MAX_CHILDREN = 3
#: A recovery started before the pool changes (after this many events) and one during them.
RECOVER_BEFORE, RECOVER_DURING = 20, 70
#: Redeliveries of b's deliveries, after these many events.
REDELIVER_AT = (40, 85, 120)
RECOVERY_RATE = 8
#: Seconds an attempt record may take to reach its owner's log (an answer given later than this
#: after the record was written must show it).
LAG = 2.5


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Member:
    """A worker of the pool: the in-process one that stays, or a child process."""

    base_url: str
    role: str
    process: WorkerProcess | None = None

    @property
    def alive(self) -> bool:
        return self.process is None or (
            self.process.process is not None and self.process.process.poll() is None
        )

    @property
    def serves_log(self) -> bool:
        return self.role in ("all", "api")


@dataclass
class Run:
    settings: Settings
    receiver: Receiver
    seed: int
    start_child: Callable[[str], WorkerProcess]
    members: list[Member] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    written: list[tuple[int, int]] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    #: (hook, name, status or None when no answer came) of each rename, in order.
    renames: list[tuple[str, str, int | None]] = field(default_factory=list)
    #: Pairs of changes sent at once with one ETag: (hook, ETag, [(name, status or None)]).
    races: list[tuple[str, str, list[tuple[str, int | None]]]] = field(default_factory=list)
    #: Every answer that was a 5xx other than 503: (method, path, status, body).
    server_errors: list[tuple[str, str, int, str]] = field(default_factory=list)
    #: Recoveries started: (hook, id).
    recoveries: list[tuple[str, str]] = field(default_factory=list)
    #: Redeliveries (of b) started: (delivery id, operation id).
    redeliveries: list[tuple[str, str]] = field(default_factory=list)
    #: Stats read during the chaos: (hook, asked at ms, answered at ms, attempts counted).
    reads: list[tuple[str, int, int, int]] = field(default_factory=list)
    publishing: bool = True
    #: 503 answers by their detail.
    unavailable: dict[str, int] = field(default_factory=dict)

    def rng(self, task: str) -> random.Random:
        return random.Random(f"{self.seed}-{task}")

    def serving(self) -> list[Member]:
        return [m for m in self.members if m.alive and m.serves_log]

    async def published(self, count: int) -> None:
        await poll(lambda: len(self.written) >= count, timeout=60, interval=0.02)

    async def call(
        self, client: httpx.AsyncClient, member: Member, method: str, path: str, **kw: Any
    ) -> httpx.Response | None:
        """One request; ``None`` when no answer came (the worker went). A 5xx other than 503
        is recorded."""
        try:
            response = await client.request(
                method, member.base_url + path, headers={**LOG_AUTH, **kw.pop("headers", {})}, **kw
            )
        except httpx.HTTPError:
            return None
        if response.status_code >= 500 and response.status_code != 503:
            self.server_errors.append((method, path, response.status_code, response.text[:300]))
        if response.status_code == 503:
            try:
                detail = str(response.json().get("detail"))
            except ValueError:
                detail = response.text[:80]
            self.unavailable[detail] = self.unavailable.get(detail, 0) + 1
        return response

    async def ask(
        self,
        client: httpx.AsyncClient,
        method: str,
        path: str,
        *,
        member: Member | None = None,
        timeout: float = 20.0,
        rng: random.Random | None = None,
        **kw: Any,
    ) -> httpx.Response:
        """A request answered other than 503 (or no answer), through ``member`` or a random
        serving worker each time, retried until ``timeout``."""
        rng = rng or self.rng(f"ask-{path}")
        deadline = time.monotonic() + timeout
        while True:
            target = member or rng.choice(self.serving())
            response = await self.call(client, target, method, path, **dict(kw))
            if response is not None and response.status_code != 503:
                return response
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"seed {self.seed}: {method} {path} via {target.base_url}: "
                    f"{'no answer' if response is None else response.text}"
                )
            await asyncio.sleep(0.2)  # Retry-After, shortened

    async def publish(self) -> None:
        load = chaos.Load(EVENTS, TYPES, SITES, dict.fromkeys(HOOKS, 2), BURST, PAUSE)
        rng = self.rng("events")
        try:
            await chaos.publish(self.settings, self.receiver, load, rng, self.events, self.written)
        finally:
            self.publishing = False

    async def churn(self, at: list[int]) -> None:
        rng = self.rng("pool")
        done: set[str] = set()
        for count in at:
            await self.published(count)
            alive = [m for m in self.members if m.process is not None and m.alive]
            # The one serving the log beside the staying worker is never the only one left
            # unkilled by choice: any may go.
            allowed = (["join"] if len(alive) < MAX_CHILDREN else []) + (
                ["term", "kill", "pause"] if alive else []
            )
            kind = rng.choice([k for k in allowed if k not in done] or allowed)
            done.add(kind)
            if kind == "join":
                role = rng.choice(["all", "all", "api", "deliver"])
                child = self.start_child(role)
                self.members.append(Member(child.base_url, role, child))
                self.log.append(f"join-{role}@{count}")
                continue
            victim = rng.choice(alive)
            assert victim.process is not None
            if kind == "kill":
                victim.process.kill()
            elif kind == "pause":
                # Stopped (SIGSTOP) for up to a second past its session timeout, then woken:
                # a worker the group may have dropped meanwhile without its knowing.
                paused = rng.uniform(0.5, self.settings.kafka_session_timeout + 1.0)
                victim.process.send_signal(signal.SIGSTOP)
                try:
                    await asyncio.sleep(paused)
                finally:
                    victim.process.send_signal(signal.SIGCONT)
                kind = f"pause{paused:.1f}s"
            else:
                await asyncio.to_thread(victim.process.stop, 3.0)
            self.log.append(f"{kind}-{victim.role}@{count}")

    async def rename(self, client: httpx.AsyncClient) -> None:
        rng = self.rng("rename")
        n = 0
        while self.publishing:
            hook = rng.choice(sorted(HOOKS))
            name = f"{hook}-{n}"
            n += 1
            # Sent again with its key, through any worker, after a 503 or no answer, for a few
            # seconds: made at most once however many workers it reached.
            deadline = time.monotonic() + 6.0
            while True:
                member = rng.choice(self.serving())
                response = await self.call(
                    client,
                    member,
                    "PATCH",
                    f"/v1/webhooks/{hook}",
                    json={"name": name},
                    headers={"Idempotency-Key": f"rename-{name}"},
                )
                if response is not None and response.status_code != 503:
                    break
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            status = None if response is None else response.status_code
            self.renames.append((hook, name, status))
            await asyncio.sleep(rng.uniform(0.1, 0.4))

    async def race(self, client: httpx.AsyncClient) -> None:
        """Two changes of one webhook sent at once through two random workers, each with the
        ETag one of them read: the lost update the owner's lock and fence must refuse."""
        rng = self.rng("race")
        n = 0
        while self.publishing:
            hook = rng.choice(sorted(HOOKS))
            serving = self.serving()
            read = await self.call(client, rng.choice(serving), "GET", f"/v1/webhooks/{hook}")
            if read is None or read.status_code != 200:
                await asyncio.sleep(0.2)
                continue
            etag = read.headers["ETag"]
            names = [f"{hook}{RACED}{n}-{i}" for i in range(2)]
            n += 1
            answers = await asyncio.gather(
                *(
                    self.call(
                        client,
                        rng.choice(serving),
                        "PATCH",
                        f"/v1/webhooks/{hook}",
                        json={"name": name},
                        headers={"If-Match": etag},
                    )
                    for name in names
                )
            )
            tried = [
                (name, None if a is None else a.status_code)
                for name, a in zip(names, answers, strict=True)
            ]
            self.races.append((hook, etag, tried))
            await asyncio.sleep(rng.uniform(0.1, 0.4))

    async def read(self, client: httpx.AsyncClient) -> None:
        rng = self.rng("read")
        while self.publishing:
            hook = rng.choice(sorted(HOOKS))
            member = rng.choice(self.serving())
            asked = now_ms()
            stats = await self.call(client, member, "GET", f"/v1/webhooks/{hook}/stats")
            answered = now_ms()
            if stats is not None and stats.status_code == 200:
                self.reads.append(
                    (hook, asked, answered, stats.json()["windows"]["1h"]["attempts"])
                )
            await self.call(client, member, "GET", f"/v1/webhooks/{hook}/attempts?limit=20")
            await self.call(client, member, "GET", f"/v1/webhooks/{hook}")
            await asyncio.sleep(rng.uniform(0.05, 0.2))

    async def redeliver(self, client: httpx.AsyncClient, at: list[int]) -> None:
        """After each count of ``at`` events, redeliver a delivery of b the receiver got: sent
        through two random workers at the same moment with one Idempotency-Key, then again
        through random workers until answered other than 503. Both find the webhook's owner,
        which starts one redelivery."""
        rng = self.rng("redeliver")
        for n, count in enumerate(at):
            await self.published(count)
            got = sorted(
                {r.delivery_id for r in self.receiver.at("/b") if r.status == 200}
                - {d for d, _ in self.redeliveries}
            )
            if not got:
                continue
            chosen = rng.choice(got)
            path = f"/v1/deliveries/{chosen}/redeliver"
            key = {"Idempotency-Key": f"redeliver-{n}-{self.seed}"}
            pair = [rng.choice(self.serving()) for _ in range(2)]
            first = await asyncio.gather(
                *(self.call(client, m, "POST", path, headers=key) for m in pair)
            )
            answers = [a for a in first if a is not None and a.status_code not in (404, 503)]
            deadline = time.monotonic() + LAG + 5
            while len(answers) < 2:
                answer = await self.ask(client, "POST", path, rng=rng, headers=key, timeout=30)
                # 404 while the attempt is on its way to the owner's log (the receiver got the
                # delivery before its attempt was written): nothing started; sent again.
                if answer.status_code != 404 or time.monotonic() > deadline:
                    answers.append(answer)
                else:
                    await asyncio.sleep(0.2)
            for answer in answers:
                assert answer.status_code == 202, f"seed {self.seed}: {answer.text}"
            ids = {a.json()["id"] for a in answers}
            assert len(ids) == 1, f"seed {self.seed}: one key, operations {ids}"
            self.redeliveries.append((chosen, ids.pop()))
            self.log.append(f"redeliver@{len(self.written)}")

    async def recover(self, client: httpx.AsyncClient, hook: str, since: datetime) -> None:
        """Start a recovery of ``hook`` through a random worker, retrying 503s and requests
        without an answer with the same Idempotency-Key: one recovery is started, whichever
        workers the request reached."""
        response = await self.ask(
            client,
            "POST",
            f"/v1/webhooks/{hook}/recoveries",
            json={"since": format_timestamp(since), "rate": RECOVERY_RATE},
            rng=self.rng(f"recover-{hook}"),
            headers={"Idempotency-Key": f"recover-{hook}-{self.seed}"},
        )
        assert response.status_code == 202, f"seed {self.seed}: {response.text}"
        self.recoveries.append((hook, response.json()["id"]))
        self.log.append(f"recover-{hook}@{len(self.written)}")


async def read_topic(settings: Settings, topic: str) -> list[Any]:
    """Every record of ``topic`` (its partitions in turn, each in offset order)."""
    async with topic_reader(settings.kafka_bootstrap_servers, topic) as (consumer, _):
        records: dict[int, list[Any]] = {}
        while batch := await consumer.getmany(timeout_ms=300):
            for tp, messages in batch.items():
                records.setdefault(tp.partition, []).extend(messages)
        return [r for p in sorted(records) for r in records[p]]


def newest_first(attempts: list[Attempt]) -> list[dict[str, Any]]:
    """The log's order: by start, delivery id and attempt number, newest first; of records
    with the same three (a record read twice, or one delivery's attempt made by two workers in
    the same millisecond across a rebalance), the first in the topic, as the log keeps it."""
    unique: dict[tuple[float, str, int], Attempt] = {}
    for a in attempts:
        unique.setdefault((a.at_seconds, a.delivery_id, a.attempt), a)
    return [unique[key].as_dict() for key in sorted(unique, reverse=True)]


def matches(hook: str, event: Event) -> bool:
    site, filters = HOOKS[hook]
    return (site is None or site == event.site_id) and ("*" in filters or event.type in filters)


@pytest.mark.skipif(not SEEDS, reason="opt-in: CONTROL_PLANE_CHAOS_SEEDS=1,2,3")
@pytest.mark.parametrize("seed", SEEDS or [0])
async def test_the_control_plane_answers_exactly_across_repeated_rebalances(
    seed: int,
    make_settings: Callable[..., Settings],
    receiver: Receiver,
    workers: Callable[[Settings], WorkerProcess],
    in_process_workers: Callable[[Settings], InProcessWorker],
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    rng = random.Random(seed)
    settings = make_settings(
        delivery_log=True,
        api_tokens=str(write_token_file(tmp_path / "tokens.json")),
        retry_schedule=(0.2, 0.3, 0.4, 0.5),
    )
    await apply_topics(settings)
    async with WebhookStore(settings) as store:
        for hook, (site, filters) in HOOKS.items():
            await create_verified(store, receiver, hook, site_id=site, events=filters)

    def start_child(role: str) -> WorkerProcess:
        changes: dict[str, Any] = {"web_port": free_port(), "role": role}
        if role == "deliver":
            changes["delivery_log"] = False
        return workers(settings.replace(**changes))

    run = Run(settings, receiver, seed, start_child)
    staying = in_process_workers(settings.replace(web_port=free_port()))
    run.members.append(Member(staying.base_url, "all"))
    for role in ("all", "api"):
        child = start_child(role)
        run.members.append(Member(child.base_url, role, child))
    await staying.wait_ready()
    for member in run.members:
        if member.process is not None:
            await member.process.wait_ready()

    since = datetime.now(UTC)
    while datetime.now(UTC) <= since:
        await asyncio.sleep(0.001)
    pool_at = sorted(rng.sample(range(RECOVER_BEFORE + 5, EVENTS - 10), POOL_CHANGES))
    async with httpx.AsyncClient(timeout=10.0) as client:

        async def recoveries() -> None:
            await run.published(RECOVER_BEFORE)
            await run.recover(client, "a", since)
            await run.published(RECOVER_DURING)
            await run.recover(client, "c", since)

        await asyncio.gather(
            run.publish(),
            run.churn(pool_at),
            run.rename(client),
            run.race(client),
            run.read(client),
            recoveries(),
            run.redeliver(client, list(REDELIVER_AT)),
        )
        record_property("schedule", " ".join(run.log))
        assert not run.server_errors, f"seed {seed} ({' '.join(run.log)}): {run.server_errors}"

        # One recovery of a and of c (their requests were sent again with their keys until
        # answered), each ending done, with the count of events it had to enqueue.
        events_read = await read_topic(settings, settings.events_topic)
        stamped = {json.loads(r.value)["id"]: r.timestamp for r in events_read}
        ended: list[dict[str, Any]] = []
        for hook in ("a", "c"):
            listed = await run.ask(client, "GET", f"/v1/webhooks/{hook}/recoveries")
            assert listed.status_code == 200, f"seed {seed}: {listed.text}"
            ids = {item["id"] for item in listed.json()["items"]}
            assert ids == {i for h, i in run.recoveries if h == hook}, listed.text
            for operation_id in sorted(ids):

                async def shown(operation_id: str = operation_id) -> dict[str, Any]:
                    answer = await run.ask(client, "GET", f"/v1/recoveries/{operation_id}")
                    assert answer.status_code == 200, answer.text
                    body: dict[str, Any] = answer.json()
                    return body

                done = await poll(shown, until=lambda r: r["state"] != "running", timeout=40)
                window = (
                    datetime.fromisoformat(done["since"]).timestamp() * 1000,
                    datetime.fromisoformat(done["until"]).timestamp() * 1000,
                )
                due = [
                    e
                    for e in run.events
                    if matches(hook, e) and window[0] <= stamped[e.id] < window[1]
                ]
                assert (done["state"], done["enqueued"], done["invalid"]) == (
                    "done",
                    len(due),
                    0,
                ), f"seed {seed} ({' '.join(run.log)}): {done}"
                ended.append(done | {"due": [delivery_id(e.id, hook) for e in due]})
        record_property("recoveries", [(r["webhook_id"], r["resumed"]) for r in ended])
        # Each redelivery of b listed once, ended done with its one delivery enqueued.
        assert run.redeliveries, f"seed {seed}: no redelivery made"
        listed = await run.ask(client, "GET", "/v1/webhooks/b/recoveries?limit=100")
        assert listed.status_code == 200, f"seed {seed}: {listed.text}"
        assert {item["id"] for item in listed.json()["items"]} == {
            i for _, i in run.redeliveries
        }, listed.text
        for did, operation_id in run.redeliveries:
            answer = await poll(
                lambda o=operation_id: run.ask(client, "GET", f"/v1/recoveries/{o}"),
                until=lambda r: r.status_code == 200 and r.json()["state"] != "running",
                timeout=40,
            )
            done = answer.json()
            assert (done["state"], done["enqueued"], done["delivery_id"]) == ("done", 1, did), (
                f"seed {seed} ({' '.join(run.log)}): {done}"
            )
            ended.append(done | {"due": [did]})
        # Every operation ended once: one started twice (two runners) would end twice.
        endings: dict[str, int] = {}
        journal = await read_topic(settings, settings.recoveries_topic)
        for record in journal:
            value = None if record.value is None else json.loads(record.value)
            if value is not None and value.get("state") != "running":
                endings[value["id"]] = endings.get(value["id"], 0) + 1
        twice = {i for i, n in endings.items() if n != 1}
        assert not twice, f"seed {seed} ({' '.join(run.log)}): ended twice: " + "; ".join(
            f"{v['id'][:8]} {v.get('kind')} {v['state']} runner={v.get('runner')} "
            f"resumed={v.get('resumed')} enqueued={v.get('enqueued')} at={r.timestamp}"
            for r in journal
            if r.value is not None and (v := json.loads(r.value))["id"] in twice
        )

        # Every delivery made at least once, and once more for each recovery that had it due.
        needed: dict[str, int] = {}
        for event in run.events:
            for hook in HOOKS:
                if matches(hook, event):
                    needed[delivery_id(event.id, hook)] = 1
        for done in ended:
            for did in done["due"]:
                needed[did] += 1

        def short() -> dict[str, int]:
            made: dict[str, int] = {}
            for r in receiver.received:
                if r.status == 200:
                    made[r.delivery_id] = made.get(r.delivery_id, 0) + 1
            return {d: n for d, n in needed.items() if made.get(d, 0) < n}

        missing = await poll(short, until=lambda left: not left, timeout=40, interval=0.2)
        assert not missing, f"seed {seed} ({' '.join(run.log)}): not delivered {missing}"

        # Nothing left to deliver: every retry tier and the events topic committed to its end.
        async def behind() -> dict[str, dict[int, tuple[int, int]]]:
            bootstrap = settings.kafka_bootstrap_servers
            topics = (settings.events_topic, *settings.retry_topics)
            ends = {topic: await read_ends(bootstrap, topic) for topic in topics}
            return await commits_behind(bootstrap, settings.group_id, ends)

        left = await poll(behind, until=lambda left: not left, timeout=30, interval=0.5)
        assert not left, f"seed {seed}: (committed, end): {left}"

        # The attempts topic, as each webhook's log must show it.
        attempts_read = await read_topic(settings, settings.attempts_topic)
        by_hook: dict[str, list[Attempt]] = {hook: [] for hook in HOOKS}
        for record in attempts_read:
            attempt = Attempt.parse(record.value)
            by_hook[attempt.webhook_id].append(attempt)
        serving = run.serving()
        record_property("serving", len(serving))

        async def pages(member: Member, hook: str) -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = []
            cursor = ""
            while True:
                answer = await run.ask(
                    client,
                    "GET",
                    f"/v1/webhooks/{hook}/attempts?limit=200{cursor}",
                    member=member,
                )
                assert answer.status_code == 200, answer.text
                body = answer.json()
                assert "items" in body, f"seed {seed}: {answer.text}"
                items.extend(body["items"])
                if not body.get("next_cursor"):
                    return items
                cursor = f"&cursor={body['next_cursor']}"

        for hook, attempts in by_hook.items():
            expected = newest_first(attempts)
            ids = [(a["delivery_id"], a["attempt"], a["at"]) for a in expected]
            for member in serving:
                shown = await poll(
                    lambda member=member, hook=hook: pages(member, hook),
                    until=lambda shown, expected=expected: shown == expected,
                    timeout=10,
                    interval=0.3,
                )
                got = [(a["delivery_id"], a["attempt"], a["at"]) for a in shown]
                differ = [(x, y) for x, y in zip(shown, expected, strict=False) if x != y][:2]
                assert shown == expected, (
                    f"seed {seed} ({' '.join(run.log)}): {hook} via {member.role} "
                    f"{member.base_url}: {len(got)} shown, {len(ids)} in the topic; "
                    f"missing {sorted(set(ids) - set(got))[:5]}, extra "
                    f"{sorted(set(got) - set(ids))[:5]}, duplicates {len(got) - len(set(got))}; "
                    f"first differing (shown, topic): {differ}"
                )
                stats = await run.ask(client, "GET", f"/v1/webhooks/{hook}/stats", member=member)
                hour = stats.json()["windows"]["1h"]
                assert (hour["attempts"], hour["successes"]) == (
                    len(expected),
                    sum(1 for a in expected if a["outcome"] == "success"),
                ), f"seed {seed}: {hook} via {member.base_url}: {hour}"
            # One delivery (the one with the most attempts) in order, through each worker.
            counts: dict[str, int] = {}
            for a in expected:
                counts[a["delivery_id"]] = counts.get(a["delivery_id"], 0) + 1
            sample = max(sorted(counts), key=lambda d: counts[d])
            in_order = sorted(
                (a for a in expected if a["delivery_id"] == sample),
                key=lambda a: (datetime.fromisoformat(a["at"]), a["attempt"]),
            )
            for member in serving:
                answer = await run.ask(client, "GET", f"/v1/deliveries/{sample}", member=member)
                assert answer.status_code == 200, answer.text
                assert answer.json()["attempts"] == in_order, (
                    f"seed {seed}: delivery {sample} via {member.base_url}: {answer.text[:500]}"
                )

        # Renames: each answered 200 is in the topic; every worker shows the topic's newest.
        names: dict[str, list[str]] = {hook: [] for hook in HOOKS}
        values: list[dict[str, Any]] = []
        for record in await read_topic(settings, settings.subscriptions_topic):
            if record.value is None:
                continue
            value = json.loads(record.value)
            values.append(value)
            hook_id = value.get("id") or (record.key or b"").decode()
            if hook_id in names and isinstance(value.get("name"), str):
                names[hook_id].append(value["name"])
        # No rename made twice, however many workers its retries reached.
        assert not made_twice(values), f"seed {seed}: {made_twice(values)}"
        assert any(v.get("idempotency_keys") for v in values), f"seed {seed}: no keyed change"
        statuses = sorted({status for _, _, status in run.renames if status is not None})
        record_property("renames", statuses)
        assert set(statuses) <= {200, 503}, f"seed {seed}: {run.renames}"
        for hook in HOOKS:
            made = [name for h, name, status in run.renames if h == hook and status == 200]
            assert set(made) <= set(names[hook]), (
                f"seed {seed}: renames of {hook} answered 200 not in the topic: "
                f"{sorted(set(made) - set(names[hook]))}"
            )
            tried = [(name, status) for h, name, status in run.renames if h == hook]
            newest = names[hook][-1]
            renamed = [n for n in names[hook] if RACED not in n]
            # The newest rename is the last one answered 200, or one sent after it without an
            # answer.
            after = [n for n, _ in tried[[n for n, _ in tried].index(made[-1]) :]] if made else []
            assert not made or renamed[-1] in after, (
                f"seed {seed}: {hook}: {renamed[-1]} not in {after}"
            )
            for member in serving:
                shown = await run.ask(client, "GET", f"/v1/webhooks/{hook}", member=member)
                assert shown.json()["name"] == newest, (
                    f"seed {seed}: {hook} via {member.base_url}: {shown.json()['name']} "
                    f"but the topic's newest is {newest}"
                )

        # Of two changes sent with one ETag at most one was made; 412 never, 200 always.
        won = 0
        for hook, etag, pair in run.races:
            made_of_pair = [name for name, _ in pair if name in names[hook]]
            assert len(made_of_pair) <= 1, f"seed {seed}: {hook} {etag}: both made: {pair}"
            for name, status in pair:
                assert status in (200, 412, 503, None), f"seed {seed}: {hook}: {pair}"
                assert status != 200 or name in names[hook], f"seed {seed}: {hook}: {pair}"
                assert status != 412 or name not in names[hook], f"seed {seed}: {hook}: {pair}"
            won += sorted(status or 0 for _, status in pair) == [200, 412]
        record_property("races", (len(run.races), won))

        # Stats read during the chaos counted at least what was written LAG seconds before.
        stamps = {
            hook: sorted(
                r.timestamp for r in attempts_read if Attempt.parse(r.value).webhook_id == hook
            )
            for hook in HOOKS
        }
        short_reads = []
        for hook, asked, answered, counted in run.reads:
            floor = sum(1 for t in stamps[hook] if t < asked - LAG * 1000)
            ceiling = sum(1 for t in stamps[hook] if t <= answered + 1000)
            if not floor <= counted <= ceiling:
                short_reads.append((hook, asked, counted, floor, ceiling))
        record_property("short_reads", len(short_reads))
        assert not short_reads, f"seed {seed} ({' '.join(run.log)}): {short_reads[:5]}"
    print(
        f"seed {seed}: {' '.join(run.log)}; {len(attempts_read)} attempts, "
        f"{len(run.renames)} renames, {len(run.races)} races ({won} won by one, lost by the "
        f"other), {len(run.reads)} stats reads, "
        f"{len(run.redeliveries)} redeliveries, serving {len(serving)}; "
        f"503s: {run.unavailable}"
    )
