"""Fault injection on the real broker: poison records on the events and subscriptions topics.

One worker (its own topics and group) reads everything this module writes. Each case writes
hostile records straight to a topic with a raw producer (no validation on the way), then a normal
event for a known webhook. After each case:

- the normal event reached its webhook within a second, and the worker is up;
- every event record written was delivered to each webhook it must reach, or dead-lettered with
  a reason (matched by source partition and offset); a record that is no event at all was
  dead-lettered; every delivery that was attempted ended delivered or dead-lettered;
- the group's committed offsets passed every record written (the offsets reached the ends);
- no webhook secret (a canary string) shows in the worker's output, its ``/metrics``, or any
  topic the worker writes.

Poison subscription records are each followed by a valid control webhook of the same site and
a probe event of that site: the control must get the probe (the table still applies changes),
and whatever the bridge made of the poison, the probe must settle.

At the end, the CLI's listings are checked for the canaries too, and the committed offsets are
compared with the partitions' end offsets. A hypothesis-driven test generates more records of
the same kinds against the same worker.

Records are spread over the events topic's partitions explicitly, avoiding a partition whose
commits are held up by an earlier case's record, so that one failing case does not fail the
cases after it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from aiokafka.errors import KafkaError
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from bridge.admin.topics import apply_topics
from bridge.config import Settings
from bridge.contract.events import format_timestamp
from bridge.contract.payload import delivery_id
from bridge.contract.resources import load_json
from bridge.contract.schemas import EVENT_TYPES
from bridge.subscriptions.store import WebhookStore
from bridge.worker.embedded import GROUP_TIMEOUTS, EmbeddedBroker, free_port
from tests.support.processes import WorkerProcess, settings_env
from tests.support.receivers import Receiver
from tests.support.records import RawWriter, TopicTail, committed_offsets, end_offsets
from tests.support.waiting import poll

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

#: The webhook every normal event goes to.
MAIN = "main"
MAIN_SITE = "site-main"
MAIN_USER = "user-main"
#: How soon the normal event after a case must be delivered.
NORMAL_WITHIN = 1.0
#: How long a case's records may take to settle: commits every second, the test schedule's
#: retries (0.3 s, 0.6 s), generously.
SETTLE_WITHIN = 8.0
#: When the normal event was late: how long to wait to say how late.
LATE_WITHIN = 15.0
POLL = 0.05

#: A lone surrogate, as ``\\ud800`` escapes in JSON text.
LONE = "\ud800"
LONE_LOW = "\udfff"


# -- encoding records ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RawJSON:
    """JSON text placed verbatim in a record (what ``json.dumps`` cannot write: 10,000 levels,
    numbers beyond the double range, ``NaN``)."""

    text: str


def encode(value: Any) -> bytes:
    """JSON text of ``value``, lone surrogates as ``\\udxxx`` escapes, with :class:`RawJSON`
    pieces in place."""
    pieces: dict[str, str] = {}

    def swap(item: Any) -> Any:
        if isinstance(item, RawJSON):
            token = f"@@raw{len(pieces)}@@"
            pieces[token] = item.text
            return token
        if isinstance(item, dict):
            return {k: swap(v) for k, v in item.items()}
        if isinstance(item, list):
            return [swap(v) for v in item]
        return item

    text = json.dumps(swap(value), ensure_ascii=True)
    for token, raw in pieces.items():
        text = text.replace(json.dumps(token), raw)
    return text.encode("ascii")


def nested_lists(depth: int, inner: str = "") -> RawJSON:
    return RawJSON("[" * depth + inner + "]" * depth)


#: A field left out of a record.
DROP = object()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def slug(name: str) -> str:
    """``name`` as a URL path segment or id: lower-case letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40]


def now_stamp() -> str:
    return format_timestamp(datetime.now(UTC))


# -- the suite: one worker, its receivers, and what was written ------------------------------


@dataclass
class Written:
    """An events-topic record this module wrote, and what must become of it."""

    case: str
    partition: int
    offset: int
    #: Webhook id -> delivery id of each delivery the record must end in: delivered, or
    #: dead-lettered (``None``: the event id has no UTF-8 form, so no UUIDv5 can be computed
    #: here; the delivery is then recognised by ``marker``).
    required: dict[str, str | None] = field(default_factory=dict)
    #: Not an event at all: it must be dead-lettered.
    invalid: bool = False
    #: ``data.id`` of the event, to recognise its deliveries whatever their id.
    marker: str | None = None
    event_id: str | None = None


@dataclass(frozen=True)
class Letter:
    webhook_id: Any
    reason: Any
    delivery_id: Any


class Suite:
    """The module's worker and receivers, a raw writer, a tail of the worker's output topics,
    and a ledger of every events-topic record written."""

    def __init__(
        self,
        settings: Settings,
        worker: WorkerProcess,
        receiver: Receiver,
        aux: Receiver,
        writer: RawWriter,
        tail: TopicTail,
        partitions: list[int],
    ) -> None:
        self.settings = settings
        self.worker = worker
        self.receiver = receiver
        self.aux = aux
        self.writer = writer
        self.tail = tail
        self.partitions = partitions
        self.ledger: dict[tuple[int, int], Written] = {}
        #: Canary secret -> the case that wrote it.
        self.canaries: dict[str, str] = {}
        #: Partition -> the case whose record holds its commits back.
        self.stuck: dict[int, str] = {}
        self.exited_at: str | None = None
        self._turn = 0

    @property
    def bootstrap(self) -> str:
        assert self.settings.kafka_bootstrap_servers is not None
        return self.settings.kafka_bootstrap_servers

    # -- writing ---------------------------------------------------------------------------------
    def canary(self, case: str) -> str:
        """A secret that must never show outside the subscriptions topic."""
        value = f"canary{uuid.uuid4().hex}"
        self.canaries[value] = case
        return value

    def envelope(self, **changes: Any) -> dict[str, Any]:
        """A valid post.created envelope for the main webhook's site, with ``changes``."""
        marker = unique("m")
        record: dict[str, Any] = {
            "id": unique("ev"),
            "type": "post.created",
            "data": {"id": marker, "title": "a post"},
            "timestamp": now_stamp(),
            "site_id": MAIN_SITE,
            "user_id": MAIN_USER,
        }
        record.update(changes)
        return {k: v for k, v in record.items() if v is not DROP}

    def for_main(self, envelope: dict[str, Any]) -> dict[str, str | None]:
        """The main webhook's delivery of ``envelope`` (a valid event of its site)."""
        return {MAIN: _delivery_id(envelope["id"], MAIN)}

    async def event(
        self,
        case: str,
        value: bytes | None,
        *,
        key: bytes | None = MAIN_SITE.encode(),
        headers: Sequence[tuple[str, bytes]] = (),
        required: dict[str, str | None] | None = None,
        invalid: bool = False,
        envelope: dict[str, Any] | None = None,
    ) -> Written:
        """Write one events-topic record to a partition whose commits are not held up."""
        healthy = [p for p in self.partitions if p not in self.stuck] or self.partitions
        self._turn += 1
        partition = healthy[self._turn % len(healthy)]
        try:
            partition, offset = await self.writer.write(
                self.settings.events_topic, value, key=key, partition=partition, headers=headers
            )
        except KafkaError as exc:
            pytest.skip(f"the embedded broker refuses this record: {exc!r}")
        data = envelope.get("data") if envelope is not None else None
        written = Written(
            case,
            partition,
            offset,
            dict(required or {}),
            invalid,
            data.get("id") if isinstance(data, dict) else None,
            envelope.get("id") if envelope is not None else None,
        )
        self.ledger[(partition, offset)] = written
        return written

    async def json_event(
        self,
        case: str,
        envelope: dict[str, Any],
        *,
        invalid: bool = False,
        required: dict[str, str | None] | None = None,
        **record: Any,
    ) -> Written:
        """Write ``envelope`` (``record``: its key, headers); unless ``invalid`` or told
        otherwise, the main webhook must get it: it is of the main webhook's site."""
        if required is None and not invalid:
            required = self.for_main(envelope)
        return await self.event(
            case, encode(envelope), invalid=invalid, envelope=envelope, required=required, **record
        )

    async def subscription(
        self, key: bytes | None, value: bytes | None, *, partition: int | None = None
    ) -> int:
        """Write a subscriptions-topic record; the partition it went to."""
        try:
            partition, _ = await self.writer.write(
                self.settings.subscriptions_topic, value, key=key, partition=partition
            )
        except KafkaError as exc:
            pytest.skip(f"the embedded broker refuses this record: {exc!r}")
        return partition

    def webhook(self, case: str, site: str, **changes: Any) -> dict[str, Any]:
        """A valid subscription record of ``site`` (and its own account) to the aux receiver."""
        record: dict[str, Any] = {
            "id": unique("wh"),
            "name": case,
            "url": self.aux.url("/" + slug(case)),
            "secret": self.canary(case),
            "events": ["*"],
            "site_id": site,
            "user_id": f"user-of-{site}",
            "active": True,
        }
        record.update(changes)
        return {k: v for k, v in record.items() if v is not DROP}

    async def probe(
        self, case: str, site: str, required: dict[str, str | None] | None = None
    ) -> Written:
        """A valid event of ``site``: it reaches the case's subscriptions, if they are usable."""
        envelope = self.envelope(site_id=site, user_id=f"user-of-{site}")
        return await self.json_event(case, envelope, key=site.encode(), required=required or {})

    async def normal(self, case: str) -> tuple[Written, str | None]:
        """A normal event for the main webhook; a problem unless it arrives within a second."""
        envelope = self.envelope(data={"id": unique("normal"), "title": f"after {case}"})
        target = _delivery_id(envelope["id"], MAIN)
        started = time.monotonic()
        written = await self.json_event(case, envelope)

        def arrived(got: list[Any]) -> bool:
            return any(r.delivery_id == target and r.status == 200 for r in got)

        try:
            await self.receiver.wait_for(arrived, NORMAL_WITHIN - (time.monotonic() - started))
        except TimeoutError:
            try:
                await self.receiver.wait_for(arrived, LATE_WITHIN)
            except TimeoutError:
                return written, (
                    f"the normal event after it was not delivered within {LATE_WITHIN:.0f} s"
                )
            late = time.monotonic() - started
            return written, f"the normal event after it was delivered after {late:.2f} s, not 1 s"
        got = next(r for r in self.receiver.received if r.delivery_id == target)
        if not self.receiver.verified(got):
            return written, "the normal event after it arrived with a signature that fails"
        return written, None

    # -- checking --------------------------------------------------------------------------------
    async def up(self, case: str) -> str | None:
        """A problem when the worker is not running or not healthy."""
        process = self.worker.process
        assert process is not None
        if process.poll() is not None:
            self.exited_at = self.exited_at or case
            return (
                f"the worker exited with {process.returncode} (noticed at {self.exited_at}):\n"
                + self.worker.tail(30)
            )
        try:
            async with httpx.AsyncClient() as client:
                response = await client.get(self.worker.base_url + "/healthz", timeout=2.0)
        except httpx.HTTPError as exc:
            return f"the worker's /healthz failed: {exc!r}"
        if response.status_code != 200:
            return f"the worker's /healthz answered {response.status_code}"
        return None

    def dead_letters(self) -> tuple[dict[tuple[int, int], list[Letter]], set[Any], list[str]]:
        """Dead letters of events-topic records by source (partition, offset); the delivery
        ids dead-lettered with a reason, whatever their source (a retry's dead letter has the
        retry record as its source); problems."""
        by_source: dict[tuple[int, int], list[Letter]] = {}
        ids: set[Any] = set()
        problems = []
        for record in self.tail.of(self.settings.deadletter_topic):
            try:
                letter = json.loads(record.value or b"")
                source = letter["source"]
                one = Letter(letter["webhook_id"], letter["reason"], letter["delivery_id"])
            except (ValueError, TypeError, KeyError) as exc:
                problems.append(f"unreadable dead letter at {record.offset}: {exc!r}")
                continue
            if isinstance(one.reason, str) and one.reason:
                ids.add(one.delivery_id)
            if source.get("topic") == self.settings.events_topic:
                at = (source.get("partition"), source.get("offset"))
                by_source.setdefault(at, []).append(one)
        return by_source, ids, problems

    def delivered(self) -> tuple[set[str], set[Any]]:
        """Delivery ids answered 200, and the ``data.id`` of their events."""
        ids, markers = set(), set()
        for got in [*self.receiver.received, *self.aux.received]:
            if got.status != 200:
                continue
            ids.add(got.delivery_id)
            try:
                data = got.json["event"]["data"]
            except (ValueError, KeyError, TypeError):
                continue
            if isinstance(data, dict):
                markers.add(data.get("id"))
        return ids, markers

    def unsettled_attempts(self, event_ids: set[str], lettered: set[Any]) -> list[str]:
        """Deliveries of these events attempted and neither delivered nor dead-lettered."""
        outcome: dict[str, bool] = {}
        deferred: dict[str, bool] = {}
        for record in self.tail.of(self.settings.attempts_topic):
            try:
                attempt = json.loads(record.value or b"")
            except ValueError:
                continue
            if attempt.get("event_id") not in event_ids:
                continue
            did = attempt.get("delivery_id")
            outcome[did] = outcome.get(did, False) or attempt.get("outcome") == "success"
            # A deferred attempt (its webhook's rate limit or endpoint cannot take it now) is
            # settled durably in a retry tier, due later than a case lasts.
            deferred[did] = attempt.get("outcome") == "skipped" and attempt.get("next") == "retry"
        return [
            f"delivery {did}: attempted, neither delivered nor dead-lettered"
            for did, success in sorted(outcome.items())
            if not success and did not in lettered and not deferred.get(did)
        ]

    def problems_of(self, written: Sequence[Written], committed: dict[int, int]) -> list[str]:
        letters, lettered, problems = self.dead_letters()
        delivered, markers = self.delivered()
        for w in written:
            where = f"{w.case} record at {w.partition}/{w.offset}"
            done = committed.get(w.partition, 0)
            if done <= w.offset:
                blocker = self.ledger.get((w.partition, done))
                held = (
                    f"; the first record not acknowledged there is {blocker.case}'s"
                    if (blocker is not None and blocker is not w)
                    else ""
                )
                problems.append(f"{where}: offset not committed (group at {done}{held})")
            own = letters.get((w.partition, w.offset), [])
            for letter in own:
                if not isinstance(letter.reason, str) or not letter.reason:
                    problems.append(f"{where}: dead letter without a reason: {letter}")
            reasoned = [x for x in own if isinstance(x.reason, str) and x.reason]
            if w.invalid:
                if not reasoned:
                    sent = " (it was delivered)" if w.marker in markers else ""
                    problems.append(f"{where}: not an event, and not dead-lettered{sent}")
                continue
            if any(x.webhook_id is None for x in reasoned):
                continue  # the record was refused as a whole
            for webhook_id, did in w.required.items():
                if did is not None and (did in delivered or did in lettered):
                    continue
                if did is None and w.marker is not None and w.marker in markers:
                    continue
                if any(x.webhook_id == webhook_id for x in reasoned):
                    continue
                problems.append(f"{where}: neither delivered to {webhook_id} nor dead-lettered")
        event_ids = {w.event_id for w in written if isinstance(w.event_id, str)}
        problems.extend(self.unsettled_attempts(event_ids, lettered))
        return problems

    async def settled(self, written: Sequence[Written]) -> list[str]:
        """Poll until every record of ``written`` is settled and committed (or the deadline)."""

        async def now() -> tuple[dict[int, int], list[str]]:
            committed = await committed_offsets(
                self.bootstrap, self.settings.group_id, self.settings.events_topic
            )
            return committed, self.problems_of(written, committed)

        committed, problems = await poll(
            now, until=lambda now: not now[1], timeout=SETTLE_WITHIN, interval=POLL * 4
        )
        for w in written:
            if committed.get(w.partition, 0) <= w.offset:
                blocker = self.ledger.get((w.partition, committed.get(w.partition, 0)))
                self.stuck.setdefault(w.partition, blocker.case if blocker else w.case)
        return problems

    async def leaks(self, canaries: Sequence[str]) -> list[str]:
        """Where any of ``canaries`` shows: the worker's output, /metrics, the output topics."""
        if not canaries:
            return []
        places: list[tuple[str, bytes]] = [("the worker's output", _read(self.worker.log_path))]
        try:
            async with httpx.AsyncClient() as client:
                metrics = await client.get(self.worker.base_url + "/metrics", timeout=5.0)
            places.append(("/metrics", metrics.content))
        except httpx.HTTPError:
            pass  # reported by ``up``
        for record in self.tail.records:
            blob = b"\0".join(
                [record.key or b"", record.value or b""]
                + [k.encode("utf-8", "replace") + v for k, v in record.headers]
            )
            places.append((f"topic {record.topic} offset {record.offset}", blob))
        return _find(canaries, places, self.canaries)

    def canaries_of(self, case: str) -> list[str]:
        return [c for c, owner in self.canaries.items() if owner == case]

    async def case(
        self, name: str, writes: Callable[[Suite, str], Awaitable[list[Written]]]
    ) -> None:
        """Run one case: its records, a normal event, then every check; one assertion."""
        down = await self.up(f"before {name}")
        if down:
            pytest.fail(down)
        log_start = len(_read(self.worker.log_path))
        written = await writes(self, name)
        normal, late = await self.normal(name)
        problems = [late] if late else []
        down = await self.up(name)
        if down:
            problems.append(down)
        else:
            problems += await self.settled([*written, normal])
        problems += await self.leaks(self.canaries_of(name))
        if problems:
            meanwhile = _complaints(_read(self.worker.log_path)[log_start:])
            pytest.fail(
                f"{name}:\n- "
                + "\n- ".join(problems)
                + "\nthe worker's complaints meanwhile:\n"
                + "\n".join(meanwhile or ["(none)"])
            )


def _delivery_id(event_id: Any, webhook_id: str) -> str | None:
    try:
        return delivery_id(event_id, webhook_id)
    except UnicodeEncodeError:
        return None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def _complaints(log: bytes, limit: int = 12) -> list[str]:
    """The worker's warnings and errors in ``log``: logger, message and the exception's last
    line, each different one once."""
    seen: dict[str, None] = {}
    for line in log.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict) or entry.get("level") not in ("warning", "error"):
            continue
        last = (entry.get("exception") or "").strip().splitlines()[-1:]
        text = f"  {entry.get('level')} {entry.get('logger')}: {entry.get('message')}"
        seen[" ".join([text, *last])[:300]] = None
    return list(seen)[:limit]


def _find(
    canaries: Sequence[str], places: Sequence[tuple[str, bytes]], owners: dict[str, str]
) -> list[str]:
    found = []
    for canary in canaries:
        # A prefix (40 random bits) also finds a secret cut short by a message's length limit.
        needle = canary[:16].encode()
        for place, blob in places:
            at = blob.find(needle)
            if at >= 0:
                excerpt = blob[max(0, at - 120) : at + len(needle) + 40]
                found.append(
                    f"the secret of {owners.get(canary, '?')} shows in {place}: "
                    f"{excerpt.decode('utf-8', 'replace')!r}"
                )
    return found


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def suite(
    broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Suite]:
    tmp = tmp_path_factory.mktemp("faults")
    prefix = f"f-{uuid.uuid4().hex[:10]}"
    # As tests/integration/conftest.py's make_settings, for the whole module.
    settings = Settings.load(
        env={},
        overrides={
            "kafka_bootstrap_servers": broker.bootstrap_servers,
            "group_id": prefix,
            "events_topic": f"{prefix}.events",
            "subscriptions_topic": f"{prefix}.webhooks",
            "deadletter_topic": f"{prefix}.deadletter",
            "attempts_topic": f"{prefix}.attempts",
            "status_topic": f"{prefix}.status",
            "recoveries_topic": f"{prefix}.recoveries",
            "retry_topic_prefix": f"{prefix}.retry",
            "web_port": free_port(),
            "data_dir": str(tmp / "data"),
            "log_level": "INFO",
            "retry_schedule": (0.3, 0.6),
            "retry_jitter": 0.0,
            "breaker_threshold": 1000,
            "drain_timeout": 5.0,
            "allow_http": True,
            "allow_networks": ("127.0.0.0/8",),
            **GROUP_TIMEOUTS,
        },
    )
    await apply_topics(settings)
    receiver = await Receiver().start()
    aux = await Receiver().start()
    writer = await RawWriter(broker.bootstrap_servers).start()
    outputs = [
        settings.attempts_topic,
        settings.deadletter_topic,
        settings.status_topic,
        *settings.retry_topics,
    ]
    tail = await TopicTail(broker.bootstrap_servers, outputs).start()
    worker = WorkerProcess(settings, tmp / "worker.log")
    partitions = await writer.partitions(settings.events_topic)
    running = Suite(settings, worker, receiver, aux, writer, tail, partitions)
    secret = running.canary("the main webhook")
    try:
        async with WebhookStore(settings) as store:
            await store.create(
                url=receiver.url(f"/{MAIN}"),
                events=["*"],
                site_id=MAIN_SITE,
                user_id=MAIN_USER,
                secret=secret,
                webhook_id=MAIN,
                name=MAIN,
            )
        receiver.secrets[f"/{MAIN}"] = secret
        worker.start()
        await worker.wait_ready()
        yield running
    finally:
        worker.stop(grace=5.0)
        await tail.stop()
        await writer.stop()
        await receiver.stop()
        await aux.stop()


# -- the cases -------------------------------------------------------------------------------------

Case = Callable[[Suite, str], Awaitable[list[Written]]]
CASES: dict[str, Case] = {}


def case(name: str) -> Callable[[Case], Case]:
    def register(function: Case) -> Case:
        CASES[name] = function
        return function

    return register


@case("event: delivery body over max_body_bytes (2 MB title)")
async def _(s: Suite, name: str) -> list[Written]:
    envelope = s.envelope(data={"id": unique("big"), "title": "x" * 2_000_000})
    return [await s.json_event(name, envelope)]


@case("event: lone surrogate in the event id")
async def _(s: Suite, name: str) -> list[Written]:
    return [await s.json_event(name, s.envelope(id=unique("ev") + LONE))]


@case("event: lone surrogates in data (values and a key)")
async def _(s: Suite, name: str) -> list[Written]:
    data = {"id": unique("m"), "title": f"a {LONE} b {LONE_LOW}", LONE_LOW: [LONE]}
    return [await s.json_event(name, s.envelope(data=data))]


@case("event: random bytes, empty, truncated and BOM-prefixed values")
async def _(s: Suite, name: str) -> list[Written]:
    valid = encode(s.envelope())
    out = [
        await s.event(name, value, invalid=True)
        for value in (
            bytes(range(256)),
            b"\xff\xfe\x00\x81garbage\xc3",
            b"",
            b"\x00" * 64,
            valid[: len(valid) // 2],
        )
    ]
    # A byte-order mark: JSON texts must not start with one; either refused or read, never lost.
    bom = s.envelope()
    out.append(
        await s.event(name, b"\xef\xbb\xbf" + encode(bom), required=s.for_main(bom), envelope=bom)
    )
    return out


@case("event: JSON that is not an object")
async def _(s: Suite, name: str) -> list[Written]:
    values = [b"[]", b'"post.created"', b"null", b"1", b"true", b"{}", b"[{}]"]
    return [await s.event(name, value, invalid=True) for value in values]


@case("event: tombstones (null value), with and without a key")
async def _(s: Suite, name: str) -> list[Written]:
    return [
        await s.event(name, None, invalid=True),
        await s.event(name, None, key=None, invalid=True),
    ]


for _field in ("id", "type", "data", "timestamp", "site_id", "user_id"):

    def _wrong_types(field_name: str) -> Case:
        async def write(s: Suite, name: str) -> list[Written]:
            junk: list[Any] = [None, 7, 1.5, True, [], ["x"], ""]
            junk.append({} if field_name != "data" else "{}")
            return [
                await s.json_event(name, s.envelope(**{field_name: value}), invalid=True)
                for value in junk
            ]

        return write

    case(f"event: wrong types in {_field}")(_wrong_types(_field))


@case("event: a field missing, an unknown field")
async def _(s: Suite, name: str) -> list[Written]:
    out = []
    for missing in ("id", "type", "data", "timestamp", "site_id", "user_id"):
        out.append(await s.json_event(name, s.envelope(**{missing: DROP}), invalid=True))
    extra = s.envelope(secret_token={"nested": [1, 2]})
    out.append(await s.json_event(name, extra, invalid=True))
    return out


@case("event: deep nesting (10,000 lists, 10,000 objects, 300 lists)")
async def _(s: Suite, name: str) -> list[Written]:
    deep_objects = RawJSON('{"a":' * 10_000 + "1" + "}" * 10_000)
    out = []
    for value in (nested_lists(10_000), deep_objects, nested_lists(300)):
        envelope = s.envelope(data={"id": unique("m"), "title": "deep", "x": value})
        out.append(await s.json_event(name, envelope))
    return out


@case("event: numbers beyond what JavaScript keeps (2^53 + 1, 1e400, 5000 digits, NaN)")
async def _(s: Suite, name: str) -> list[Written]:
    out = []
    for value in (
        2**53 + 1,
        -(2**63),
        RawJSON("1e400"),
        RawJSON("-1e400"),
        RawJSON("1" + "0" * 5000),
        RawJSON("NaN"),
        RawJSON("Infinity"),
    ):
        envelope = s.envelope(data={"id": unique("m"), "title": "n", "n": value})
        out.append(await s.json_event(name, envelope, invalid=True))
    return out


@case("event: extreme numbers JavaScript keeps (2^53 - 1, 1e308, 5e-324, -0.0, 1e300 as int)")
async def _(s: Suite, name: str) -> list[Written]:
    out = []
    for value in (2**53 - 1, 1e308, 5e-324, -0.0, RawJSON("1e300"), RawJSON("0.1e-400")):
        envelope = s.envelope(data={"id": unique("m"), "title": "n", "n": value})
        out.append(await s.json_event(name, envelope))
    return out


@case("event: odd record keys (none, not UTF-8, empty, 100 kB)")
async def _(s: Suite, name: str) -> list[Written]:
    keys: list[bytes | None] = [None, b"\xff\xfe\xfd", b"", b"k" * 100_000]
    return [await s.json_event(name, s.envelope(), key=key) for key in keys]


@case("event: odd headers (binary, empty name, 10 kB, repeated)")
async def _(s: Suite, name: str) -> list[Written]:
    headers = [
        ("bin", b"\xff\x00\xfe"),
        ("", b""),
        ("h" * 1000, b"v" * 10_000),
        ("dup", b"1"),
        ("dup", b"2"),
    ]
    return [await s.json_event(name, s.envelope(), headers=headers)]


@case("event: lone surrogates in site and user ids, and in a test.event's webhook id")
async def _(s: Suite, name: str) -> list[Written]:
    return [
        await s.json_event(name, s.envelope(site_id=LONE), key=None, required={}),
        await s.json_event(name, s.envelope(user_id=LONE_LOW), required={}),
        await s.json_event(
            name,
            s.envelope(type="test.event", data={"webhook_id": MAIN + LONE}),
            required={},
        ),
    ]


@case("event: timestamps (impossible date, year 1, year 9999, nine decimals)")
async def _(s: Suite, name: str) -> list[Written]:
    out = [
        await s.json_event(name, s.envelope(timestamp="2024-02-30T00:00:00Z"), invalid=True),
        await s.json_event(name, s.envelope(timestamp="2024-01-15 10:30:00"), invalid=True),
    ]
    for stamp in (
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999Z",
        "2024-01-15T10:30:00.123456789Z",
    ):
        out.append(await s.json_event(name, s.envelope(timestamp=stamp)))
    return out


@case("event: ids at and over their limits, NUL, unknown type, duplicate keys")
async def _(s: Suite, name: str) -> list[Written]:
    out = [
        await s.json_event(name, s.envelope(id="i" * 199 + uuid.uuid4().hex[:1])),
        await s.json_event(name, s.envelope(id="i" * 201), invalid=True),
        await s.json_event(name, s.envelope(id="a\u0000b"), invalid=True),
        await s.json_event(name, s.envelope(site_id="s" * 10_000), invalid=True),
        await s.json_event(name, s.envelope(type="post.exploded"), invalid=True),
        await s.json_event(name, s.envelope(type="Post.Created"), invalid=True),
    ]
    # Duplicate keys: the last one wins, as in JavaScript.
    envelope = s.envelope()
    text = encode(envelope).replace(b'{"id":', b'{"type": "nope", "id":', 1)
    out.append(await s.event(name, text, required=s.for_main(envelope), envelope=envelope))
    return out


@case("event: test.event for the main webhook, and from another account")
async def _(s: Suite, name: str) -> list[Written]:
    mine = s.envelope(type="test.event", data={"webhook_id": MAIN, "message": "hi " + LONE})
    theirs = s.envelope(type="test.event", data={"webhook_id": MAIN}, user_id="someone-else")
    return [
        await s.json_event(name, mine),
        await s.json_event(name, theirs, required={}),
    ]


# Subscription records: each case uses a site of its own, so that its webhooks only ever get
# its probe events; then it writes a probe, which must settle whatever the bridge made of them.


def _site(name: str) -> str:
    return unique(slug(name))


async def _subscriptions(
    s: Suite, name: str, records: Sequence[tuple[bytes | None, bytes | None]], site: str
) -> list[Written]:
    """Write ``records``, then valid control webhooks of the same site, then a probe event of
    the site: the controls must get it (see :func:`_controlled_probe`)."""
    partitions = {await s.subscription(key, value) for key, value in records}
    return [await _controlled_probe(s, name, site, partitions)]


async def _controlled_probe(s: Suite, name: str, site: str, partitions: set[int]) -> Written:
    """A probe event of ``site`` after a valid control webhook of the site on each of
    ``partitions`` (where poison went): every control must get the probe, so the table still
    applies what follows poison on each partition it touched."""
    required: dict[str, str | None] = {}
    envelope = s.envelope(site_id=site, user_id=f"user-of-{site}")
    for partition in sorted(partitions):
        control = s.webhook(name, site, id=unique("control"))
        await s.subscription(*_keyed(control), partition=partition)
        required[control["id"]] = _delivery_id(envelope["id"], control["id"])
    return await s.json_event(name, envelope, key=site.encode(), required=required)


def _keyed(record: dict[str, Any]) -> tuple[bytes | None, bytes | None]:
    return str(record["id"]).encode("utf-8", "surrogatepass"), encode(record)


BAD_URLS = {
    "port 99999": "http://127.0.0.1:99999/x",
    "xn--": "http://xn--/",
    "unclosed IPv6": "http://[::1/x",
    "port 0": "http://127.0.0.1:0/x",
    "300-character label": "http://" + "a" * 300 + ".example/",
    "lone surrogate in the host": f"http://a{LONE}.example/",
}

for _label, _url in BAD_URLS.items():

    def _bad_url(url: str) -> Case:
        async def write(s: Suite, name: str) -> list[Written]:
            site = _site(name)
            return await _subscriptions(s, name, [_keyed(s.webhook(name, site, url=url))], site)

        return write

    case(f"subscription: URL with {_label}")(_bad_url(_url))


@case("subscription: lone surrogate in the URL's path")
async def _(s: Suite, name: str) -> list[Written]:
    site = _site(name)
    record = s.webhook(name, site, url=s.aux.url(f"/path{LONE}"))
    return await _subscriptions(s, name, [_keyed(record)], site)


@case("subscription: null key and an id with no UTF-8 form")
async def _(s: Suite, name: str) -> list[Written]:
    site = _site(name)
    record = s.webhook(name, site, id=unique("wh") + "\udc80")
    return await _subscriptions(s, name, [(None, encode(record))], site)


@case("subscription: previous_secret is an object holding a secret")
async def _(s: Suite, name: str) -> list[Written]:
    site = _site(name)
    record = s.webhook(
        name,
        site,
        previous_secret={"value": s.canary(name), "also": [s.canary(name)]},
        previous_secret_expires_at="2999-01-01T00:00:00Z",
    )
    return await _subscriptions(s, name, [_keyed(record)], site)


@case("subscription: random bytes holding a secret")
async def _(s: Suite, name: str) -> list[Written]:
    site = _site(name)
    secret = s.canary(name).encode()
    values = [
        b"\xff\xfe" + secret + b"\x00\x81",
        b'{"id": "x", "secret": "' + secret + b'"',  # truncated JSON
        b'{"secret": "' + secret + b'", "id": 5}',
        bytes(range(256)),
        b"",
    ]
    return await _subscriptions(s, name, [(unique("wh").encode(), v) for v in values], site)


@case("subscription: wrong types in every field, secrets inside them")
async def _(s: Suite, name: str) -> list[Written]:
    site = _site(name)
    changes: list[dict[str, Any]] = [
        {"secret": [s.canary(name)]},
        {"secret": {"key": s.canary(name)}},
        {"secret": 12345678},
        {"secret": ""},
        {"url": 5},
        {"url": ["http://127.0.0.1/"]},
        {"events": "post.created"},
        {"events": []},
        {"events": ["post.created", "post.exploded"]},
        {"active": "true"},
        {"active": 1},
        {"id": 5},
        {"id": ""},
        {"site_id": []},
        {"site_id": DROP, "user_id": DROP},
        {"name": None},
        {"name": "n" * 501},
        {"rate_limit": "fast"},
        {"rate_limit": 0},
        {"rate_limit": -1},
        {"standard_webhooks": "yes"},
        {"previous_secret": 5, "previous_secret_expires_at": 5},
        {"previous_secret_expires_at": {"at": "noon"}},
    ]
    records = [_keyed(s.webhook(name, site, **change)) for change in changes]
    records.append((b"a list", encode([s.webhook(name, site)])))
    return await _subscriptions(s, name, records, site)


@case("subscription: no scope, so the schema message quotes the record; secrets near its cut")
async def _(s: Suite, name: str) -> list[Written]:
    site = _site(name)
    # jsonschema quotes the whole record for a failed anyOf, cut at 200 characters: the
    # previous secret first, with the secret beyond the cut; then the secret across the cut
    # ("{'name': '" + 156 characters + "', 'secret': '" puts it at 180).
    unscoped = {"site_id": DROP, "user_id": DROP, "name": DROP, "secret": DROP}
    previous_first = {
        "previous_secret": s.canary(name),
        "name": "n" * 200,
        "secret": s.canary(name),
        **s.webhook(name, site, **unscoped),
    }
    secret_at_cut = {
        "name": "n" * 156,
        "secret": s.canary(name),
        **s.webhook(name, site, **unscoped),
    }
    records = [_keyed(previous_first), _keyed(secret_at_cut)]
    return await _subscriptions(s, name, records, site)


@case("subscription: deep nesting (10,000 lists, a secret at the bottom; 300 in an extra field)")
async def _(s: Suite, name: str) -> list[Written]:
    site = _site(name)
    secret = json.dumps(s.canary(name))
    # The extra field is no secret: a valid record's extra fields are listed as they are.
    records = [
        _keyed(s.webhook(name, site, name=nested_lists(10_000))),
        _keyed(s.webhook(name, site, secret=nested_lists(10_000, secret))),
        _keyed(s.webhook(name, site, extra=nested_lists(300, '"deep"'))),
    ]
    return await _subscriptions(s, name, records, site)


@case("subscription: numbers beyond the double range and 2^53")
async def _(s: Suite, name: str) -> list[Written]:
    site = _site(name)
    records = [
        _keyed(s.webhook(name, site, rate_limit=RawJSON("1e400"))),
        _keyed(s.webhook(name, site, rate_limit=RawJSON("1" + "0" * 5000))),
        _keyed(s.webhook(name, site, rate_limit=2**53 + 1)),
        _keyed(s.webhook(name, site, rate_limit=RawJSON("NaN"))),
    ]
    return await _subscriptions(s, name, records, site)


@case("subscription: a rate limit of 1e-300 deliveries per second, two events")
async def _(s: Suite, name: str) -> list[Written]:
    site = _site(name)
    # The first delivery uses the burst of one; the second would be due in 1e300 seconds.
    first = await _subscriptions(s, name, [_keyed(s.webhook(name, site, rate_limit=1e-300))], site)
    return [*first, await s.probe(name, site)]


@case("subscription: tombstones (unknown id, null key, key not UTF-8)")
async def _(s: Suite, name: str) -> list[Written]:
    site = _site(name)
    records: list[tuple[bytes | None, bytes | None]] = [
        (unique("wh").encode(), None),
        (None, None),
        (b"\xff\xfe\xfd", None),
    ]
    return await _subscriptions(s, name, records, site)


@case("subscription: key not UTF-8, its replacement decoding equal to the id")
async def _(s: Suite, name: str) -> list[Written]:
    site = _site(name)
    suffix = unique("wh")
    record = s.webhook(name, site, id="\ufffd\ufffd" + suffix)
    return await _subscriptions(s, name, [(b"\xff\xfe" + suffix.encode(), encode(record))], site)


@case("subscription: key differs from the id")
async def _(s: Suite, name: str) -> list[Written]:
    site = _site(name)
    record = s.webhook(name, site)
    return await _subscriptions(s, name, [(unique("other").encode(), encode(record))], site)


@case("subscription: encrypted-looking secret with no keys configured")
async def _(s: Suite, name: str) -> list[Written]:
    site = _site(name)
    records = [
        _keyed(s.webhook(name, site, secret="enc:v1:k1:" + s.canary(name))),
        _keyed(s.webhook(name, site, secret="enc:" + s.canary(name))),
    ]
    return await _subscriptions(s, name, records, site)


@case("subscription: Standard Webhooks secret that is not base64")
async def _(s: Suite, name: str) -> list[Written]:
    site = _site(name)
    record = s.webhook(name, site, secret="whsec_" + s.canary(name) + "!!", standard_webhooks=True)
    return await _subscriptions(s, name, [_keyed(record)], site)


@case("subscription: previous_secret_expires_at that is not a time")
async def _(s: Suite, name: str) -> list[Written]:
    site = _site(name)

    def whsec() -> str:
        return "whsec_" + base64.b64encode(s.canary(name).encode()).decode()

    record = s.webhook(
        name,
        site,
        secret=whsec(),
        standard_webhooks=True,
        previous_secret=whsec(),
        previous_secret_expires_at="not a time",
    )
    return await _subscriptions(s, name, [_keyed(record)], site)


@case("subscription: lone surrogates in name, site and user ids")
async def _(s: Suite, name: str) -> list[Written]:
    site = _site(name)
    records = [
        _keyed(s.webhook(name, site, name=f"n{LONE}")),
        _keyed(s.webhook(name, site + LONE, user_id=LONE_LOW)),
    ]
    return await _subscriptions(s, name, records, site)


@case("subscription: a valid but odd webhook must get its events")
async def _(s: Suite, name: str) -> list[Written]:
    site = _site(name)
    record = s.webhook(
        name,
        site,
        id=f"wh \u2713 {uuid.uuid4().hex[:8]} /../%00",
        name="\u00e9" * 500,
        url=s.aux.url("/odd?q=1&r=%20"),
        events=["post.created", "*"],
        rate_limit=1e9,
        extra={"nested": [1, {"b": None}], "Secret": "not the signing secret"},
        huge="h" * 1_000_000,
    )
    await s.subscription(*_keyed(record))
    envelope = s.envelope(site_id=site, user_id=f"user-of-{site}")
    probe = await s.json_event(
        name,
        envelope,
        key=site.encode(),
        required={record["id"]: _delivery_id(envelope["id"], record["id"])},
    )
    return [probe]


# -- the tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
async def test_poison_record(suite: Suite, name: str) -> None:
    await suite.case(name, CASES[name])


#: Characters of generated text: lone surrogates and control characters among the rest.
TEXT = st.text(st.characters(categories=["Cs", "Cc", "Lu", "Ll", "Nd", "Po", "Zs", "So"]))
SAFE_INTS = st.integers(-(2**53) + 1, 2**53 - 1)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | SAFE_INTS
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
NOT_STRINGS = (
    st.none() | st.booleans() | st.integers() | st.floats() | st.lists(SAFE_INTS, max_size=2)
)
TIMESTAMP = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?Z$")
#: Per field: values that make the envelope invalid whatever the rest.
JUNK: dict[str, st.SearchStrategy[Any]] = {
    "id": NOT_STRINGS | st.just("") | st.just("a\u0000b") | st.text(min_size=201, max_size=210),
    "type": NOT_STRINGS | TEXT.filter(lambda t: t not in EVENT_TYPES),
    "data": NOT_STRINGS | TEXT | st.lists(JSON_VALUES, max_size=3),
    "timestamp": NOT_STRINGS | TEXT.filter(lambda t: not TIMESTAMP.match(t)),
    "site_id": NOT_STRINGS | st.just(""),
    "user_id": NOT_STRINGS | st.just(""),
}
KEYS = st.none() | st.binary(max_size=40) | st.just(MAIN_SITE.encode())
HEADERS = st.lists(st.tuples(st.text(max_size=10), st.binary(max_size=40)), max_size=3)


@st.composite
def generated_events(draw: st.DrawFn) -> dict[str, Any]:
    """An events-topic record: arbitrary bytes, arbitrary JSON, or an envelope whose fields
    are each valid, missing or of a wrong type (plus valid data of random content)."""
    kind = draw(st.sampled_from(["bytes", "json", "envelope", "envelope"]))
    spec: dict[str, Any] = {"kind": kind, "key": draw(KEYS), "headers": draw(HEADERS)}
    if kind == "bytes":
        spec["value"] = draw(st.binary(max_size=300))
    elif kind == "json":
        spec["value"] = draw(JSON_VALUES)
    else:
        spec["fields"] = {
            name: draw(st.sampled_from(["valid", "valid", "valid", "missing", "junk"]))
            for name in JUNK
        }
        spec["junk"] = {name: draw(strategy) for name, strategy in JUNK.items()}
        spec["extra"] = draw(
            st.dictionaries(TEXT.filter(lambda t: t not in JUNK), JSON_VALUES, max_size=1)
        )
        spec["data"] = draw(
            st.dictionaries(
                TEXT.filter(lambda t: t not in ("id", "title")), JSON_VALUES, max_size=3
            )
        )
        spec["title"] = draw(TEXT)
    return spec


@st.composite
def generated_subscriptions(draw: st.DrawFn) -> dict[str, Any]:
    """A subscriptions-topic record: valid fields, some replaced by any JSON, some dropped,
    extra ones added; or arbitrary bytes, or a tombstone; with an odd key at times."""
    kind = draw(st.sampled_from(["record", "record", "record", "bytes", "tombstone"]))
    spec: dict[str, Any] = {"kind": kind}
    # Every field the schema knows, so that a field added to it is fuzzed too.
    fields = sorted(load_json("schemas/webhook.json")["properties"])
    spec["replace"] = draw(st.dictionaries(st.sampled_from(fields), JSON_VALUES, max_size=3))
    spec["drop"] = draw(st.lists(st.sampled_from(fields), max_size=2))
    spec["extra"] = draw(st.dictionaries(TEXT, JSON_VALUES, max_size=2))
    spec["secret_in"] = draw(
        st.sampled_from(["secret", "list", "object", "previous", "previous object"])
    )
    spec["key"] = draw(st.sampled_from(["id", "id", "none", "random"]))
    spec["random_key"] = draw(st.binary(max_size=20))
    spec["bytes"] = draw(st.binary(max_size=200))
    return spec


async def _write_generated_event(s: Suite, name: str, spec: dict[str, Any]) -> Written:
    key, headers = spec["key"], [(k, v) for k, v in spec["headers"]]
    if spec["kind"] == "bytes":
        return await s.event(name, spec["value"], key=key, headers=headers, invalid=True)
    if spec["kind"] == "json":
        # Arbitrary JSON is never a valid envelope (it would need six exact fields).
        value = encode(spec["value"])
        return await s.event(name, value, key=key, headers=headers, invalid=True)
    data = {**spec["data"], "id": unique("m"), "title": spec["title"]}
    envelope = s.envelope(data=data)
    for field_name, choice in spec["fields"].items():
        if choice == "missing":
            del envelope[field_name]
        elif choice == "junk":
            envelope[field_name] = spec["junk"][field_name]
    envelope.update(spec["extra"])
    invalid = bool(spec["extra"]) or any(c != "valid" for c in spec["fields"].values())
    # Valid envelopes may still carry data the bridge must refuse (integers beyond 2^53): then
    # a dead letter is the right end, which the checks accept in place of the delivery.
    return await s.json_event(name, envelope, key=key, headers=headers, invalid=invalid)


async def _write_generated_subscription(s: Suite, name: str, spec: dict[str, Any]) -> Written:
    site = _site("gen")
    record = s.webhook(name, site)
    secret = s.canary(name)
    where = spec["secret_in"]
    if where == "secret":
        record["secret"] = secret
    elif where == "list":
        record["secret"] = [secret]
    elif where == "object":
        record["secret"] = {"s": secret}
    elif where == "previous":
        record["previous_secret"] = secret
        record["previous_secret_expires_at"] = "2999-01-01T00:00:00Z"
    else:
        record["previous_secret"] = {"s": secret}
    for field_name in spec["drop"]:
        record.pop(field_name, None)
    record.update(spec["replace"])
    record.update(spec["extra"])
    keys = {
        "id": str(record.get("id")).encode("utf-8", "surrogatepass"),
        "none": None,
        "random": spec["random_key"],
    }
    key = keys[spec["key"]]
    if spec["kind"] == "record":
        partition = await s.subscription(key, encode(record))
    elif spec["kind"] == "bytes":
        partition = await s.subscription(key, spec["bytes"] + secret.encode())
    else:
        partition = await s.subscription(key, None)
    return await _controlled_probe(s, name, site, {partition})


@hypothesis_settings(
    max_examples=16,  # ~1 s each on the real broker: the suite stays within its 10 minutes
    deadline=None,
    # The worker keeps state across examples: shrinking would replay against a different one.
    phases=[Phase.explicit, Phase.generate],
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(batch=st.lists(generated_events() | generated_subscriptions(), min_size=1, max_size=4))
async def test_generated_poison_records(suite: Suite, batch: list[dict[str, Any]]) -> None:
    name = unique("generated")

    async def write(s: Suite, case_name: str) -> list[Written]:
        out = []
        for spec in batch:
            if "headers" in spec:
                out.append(await _write_generated_event(s, case_name, spec))
            else:
                out.append(await _write_generated_subscription(s, case_name, spec))
        return out

    await suite.case(name, write)


async def test_no_secret_in_cli_output_and_every_offset_committed(suite: Suite) -> None:
    """After everything above: the CLI's listings hold no secret, the committed offsets are
    the partitions' ends, and no secret shows anywhere the worker writes."""
    problems = []
    env = settings_env(suite.settings)
    places: list[tuple[str, bytes]] = []
    for command in (["webhooks", "list"], ["webhooks", "list", "--json"], ["dlq", "list"]):
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "bridge.cli", *command],
            env=env,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=120,
        )
        label = f"`webhook-bridge {' '.join(command)}`"
        places += [(f"{label} stdout", result.stdout), (f"{label} stderr", result.stderr)]
        if result.returncode != 0:
            last = result.stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
            problems.append(f"{label} exited with {result.returncode}: {last}")
    problems += _find(list(suite.canaries), places, suite.canaries)
    problems += await suite.leaks(list(suite.canaries))

    topic = suite.settings.events_topic

    async def behind_now() -> dict[int, tuple[int, int]]:
        ends = await end_offsets(suite.bootstrap, topic)
        committed = await committed_offsets(suite.bootstrap, suite.settings.group_id, topic)
        return {
            p: (committed.get(p, 0), end) for p, end in ends.items() if committed.get(p, 0) < end
        }

    behind = await poll(
        behind_now, until=lambda behind: not behind, timeout=SETTLE_WITHIN, interval=POLL * 4
    )
    for partition, (done, end) in sorted(behind.items()):
        blocker = suite.ledger.get((partition, done))
        owner = f": held by {blocker.case}'s record" if blocker else ""
        problems.append(f"partition {partition}: committed {done}, end {end}{owner}")
    assert not problems, "\n- ".join(["", *problems])
